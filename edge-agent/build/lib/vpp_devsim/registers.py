"""SunSpec holding-register image built from pysunspec2's JSON model definitions.

Offsets, sizes, types and scale-factor names all come from `sunspec2/models/json/model_N.json`,
so the simulator cannot drift from the standard by a hand-typed offset.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import sunspec2.device as ss_device
import sunspec2.mb as ss_mb

SUNSPEC_BASE_ADDR = 40000
SUNS_MARKER = (0x5375, 0x6E53)
END_MODEL_ID = 0xFFFF


@dataclass(frozen=True)
class PointLayout:
    """One point of a model: where it sits relative to the model's ID register."""

    name: str
    type: str
    offset: int
    size: int
    sf: str | int | None
    access: str
    units: str | None


@dataclass(frozen=True)
class ModelLayout:
    """A fixed-length SunSpec model; `length` is the value of its L register."""

    model_id: int
    name: str
    length: int
    points: dict[str, PointLayout]

    @property
    def total_registers(self) -> int:
        return self.length + 2


def model_layout(model_id: int) -> ModelLayout:
    """Lay out a model's top-level points from its pysunspec2 definition.

    Repeating groups are not supported: none of the models the simulator serves has one.
    """
    model_def = ss_device.get_model_def(model_id)
    group = model_def["group"]
    if group.get("groups"):
        raise ValueError(f"model {model_id} has repeating groups, not supported")
    points: dict[str, PointLayout] = {}
    offset = 0
    for pdef in group["points"]:
        size = int(pdef["size"])
        points[pdef["name"]] = PointLayout(
            name=pdef["name"],
            type=pdef["type"],
            offset=offset,
            size=size,
            sf=pdef.get("sf"),
            access=pdef.get("access", "R"),
            units=pdef.get("units"),
        )
        offset += size
    return ModelLayout(model_id=model_id, name=group["name"], length=offset - 2, points=points)


def regs_to_bytes(regs: Sequence[int]) -> bytes:
    return struct.pack(f">{len(regs)}H", *regs)


def bytes_to_regs(data: bytes) -> list[int]:
    return list(struct.unpack(f">{len(data) // 2}H", data))


def encode_point(point: PointLayout, value: int | str | None) -> list[int]:
    """Registers for a point value; None encodes SunSpec's "not implemented" pattern."""
    nbytes = point.size * 2
    if value is None:
        data = ss_mb.create_unimpl_value(point.type, len=nbytes)
    else:
        info = ss_mb.point_type_info[point.type]
        data = info.to_data(value, nbytes)
    data = data[:nbytes].ljust(nbytes, b"\0")
    return bytes_to_regs(data)


def decode_point(point: PointLayout, regs: Sequence[int]) -> int | str | None:
    """Point value from its registers; None when it holds the "not implemented" pattern."""
    info = ss_mb.point_type_info[point.type]
    value = info.data_to(regs_to_bytes(regs[: point.size]))
    if not info.is_impl(value):
        return None
    return value  # type: ignore[no-any-return]


class RegisterImage:
    """The simulator's holding registers from 40000: SunS, a model chain, the end marker."""

    def __init__(self, model_ids: Sequence[int], base_addr: int = SUNSPEC_BASE_ADDR) -> None:
        self.base_addr = base_addr
        self.layouts: dict[int, ModelLayout] = {}
        self.model_addr: dict[int, int] = {}
        regs: list[int] = list(SUNS_MARKER)
        for model_id in model_ids:
            layout = model_layout(model_id)
            self.layouts[model_id] = layout
            self.model_addr[model_id] = base_addr + len(regs)
            start = len(regs)
            regs.extend([0] * layout.total_registers)
            for point in layout.points.values():
                regs[start + point.offset : start + point.offset + point.size] = encode_point(point, None)
            regs[start] = model_id
            regs[start + 1] = layout.length
        regs.extend([END_MODEL_ID, 0])
        self.regs = regs

    def point(self, model_id: int, name: str) -> PointLayout:
        return self.layouts[model_id].points[name]

    def address(self, model_id: int, name: str) -> int:
        """Absolute (0-based) Modbus address of a point."""
        return self.model_addr[model_id] + self.point(model_id, name).offset

    def set_point(self, model_id: int, name: str, value: int | str | None) -> None:
        point = self.point(model_id, name)
        index = self.address(model_id, name) - self.base_addr
        self.regs[index : index + point.size] = encode_point(point, value)

    def get_point(self, model_id: int, name: str) -> int | str | None:
        point = self.point(model_id, name)
        index = self.address(model_id, name) - self.base_addr
        return decode_point(point, self.regs[index : index + point.size])

    def writable_addresses(self) -> set[int]:
        """Addresses of the points the models declare read-write."""
        out: set[int] = set()
        for model_id, layout in self.layouts.items():
            for point in layout.points.values():
                if point.access == "RW":
                    start = self.address(model_id, point.name)
                    out.update(range(start, start + point.size))
        return out

    def owner(self, address: int) -> tuple[int, str] | None:
        """(model id, point name) that holds an address, if any."""
        for model_id, layout in self.layouts.items():
            base = self.model_addr[model_id]
            if base <= address < base + layout.total_registers:
                for point in layout.points.values():
                    if base + point.offset <= address < base + point.offset + point.size:
                        return model_id, point.name
        return None

    def markdown_map(self) -> str:
        """Register map table for the README, generated from the same definitions."""
        lines = [
            "| address | model | point | type | size | scale factor | units | access |",
            "|---|---|---|---|---|---|---|---|",
            f"| {self.base_addr} | - | SunS marker (0x5375 0x6E53) | string | 2 | | | R |",
        ]
        for model_id, layout in self.layouts.items():
            lines.append(
                f"| {self.model_addr[model_id]} | {model_id} ({layout.name}) | ID, L={layout.length} "
                f"| uint16 | 2 | | | R |"
            )
            for point in layout.points.values():
                if point.name in ("ID", "L"):
                    continue
                lines.append(
                    f"| {self.address(model_id, point.name)} | {model_id} | {point.name} | {point.type} "
                    f"| {point.size} | {point.sf or ''} | {point.units or ''} | {point.access} |"
                )
        end = self.base_addr + len(self.regs) - 2
        lines.append(f"| {end} | end | 0xFFFF, L=0 | uint16 | 2 | | | R |")
        return "\n".join(lines)
