"""SunSpec discovery and point decoding, driven by pysunspec2's model definitions.

Discovery checks the "SunS" marker, walks the model chain to the end marker and records where
each model starts. Devices then map only the points they use, reading them in as few block
reads as the 125-register limit allows.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import sunspec2.device as ss_device
import sunspec2.mb as ss_mb

from vpp_edge.bridge import ModbusBridge, ModbusError
from vpp_edge.devices.errors import SunSpecError

SUNS_MARKER = (0x5375, 0x6E53)
END_MODEL_ID = 0xFFFF
BASE_ADDRESSES = (40000, 0, 50000)
MAX_MODELS = 64


@dataclass(frozen=True)
class PointDef:
    """A point's place in its model (offset from the model's ID register) and how to scale it."""

    model_id: int
    name: str
    type: str
    offset: int
    size: int
    sf: str | int | None


@functools.cache
def model_points(model_id: int) -> Mapping[str, PointDef]:
    """Top-level points of a model from `sunspec2/models/json/model_<id>.json`."""
    group = ss_device.get_model_def(model_id)["group"]
    points: dict[str, PointDef] = {}
    offset = 0
    for pdef in group["points"]:
        size = int(pdef["size"])
        points[pdef["name"]] = PointDef(model_id, pdef["name"], pdef["type"], offset, size, pdef.get("sf"))
        offset += size
    return points


def decode_raw(point: PointDef, regs: Sequence[int]) -> int | str | None:
    """Raw point value, or None when the device reports SunSpec's "not implemented"."""
    info = ss_mb.point_type_info[point.type]
    data = struct.pack(f">{point.size}H", *regs[: point.size])
    value = info.data_to(data)
    return value if info.is_impl(value) else None


def encode_raw(point: PointDef, value: int) -> list[int]:
    """Registers for a raw numeric point value."""
    data = ss_mb.point_type_info[point.type].to_data(value, point.size * 2)
    return list(struct.unpack(f">{point.size}H", data))


@dataclass(frozen=True)
class ModelMap:
    """Where discovery found each model: model id -> address of its ID register."""

    base_address: int
    model_addresses: Mapping[int, int]
    model_lengths: Mapping[int, int]

    def address(self, point: PointDef) -> int:
        return self.model_addresses[point.model_id] + point.offset


async def discover(bridge: ModbusBridge, base_addresses: Iterable[int] = BASE_ADDRESSES) -> ModelMap:
    """Find the SunS marker, then walk ID/L headers until the end marker."""
    base: int | None = None
    errors: list[str] = []
    for candidate in base_addresses:
        try:
            marker = await bridge.read_holding(candidate, 2)
        except ModbusError as exc:
            errors.append(f"{candidate}: {exc}")
            continue
        if tuple(marker) == SUNS_MARKER:
            base = candidate
            break
        errors.append(f"{candidate}: no SunS marker ({marker[0]:#06x} {marker[1]:#06x})")
    if base is None:
        raise SunSpecError("no SunSpec marker found: " + "; ".join(errors))
    addresses: dict[int, int] = {}
    lengths: dict[int, int] = {}
    address = base + 2
    for _ in range(MAX_MODELS):
        model_id, length = await bridge.read_holding(address, 2)
        if model_id == END_MODEL_ID:
            return ModelMap(base, addresses, lengths)
        addresses.setdefault(model_id, address)
        lengths.setdefault(model_id, length)
        address += 2 + length
    raise SunSpecError(f"no end marker after {MAX_MODELS} models from {base}")


@dataclass(frozen=True)
class ReadBlock:
    address: int
    count: int


def plan_blocks(model_map: ModelMap, points: Iterable[PointDef], max_count: int = 125) -> list[ReadBlock]:
    """Merge the used points into the fewest contiguous reads of at most `max_count` registers."""
    spans = sorted((model_map.address(p), model_map.address(p) + p.size) for p in points)
    blocks: list[ReadBlock] = []
    start, end = spans[0]
    for s, e in spans[1:]:
        if max(end, e) - start <= max_count:
            end = max(end, e)
        else:
            blocks.append(ReadBlock(start, end - start))
            start, end = s, e
    blocks.append(ReadBlock(start, end - start))
    return blocks


class RegisterView:
    """The registers fetched this cycle, addressable by point."""

    def __init__(self, model_map: ModelMap, blocks: Sequence[tuple[ReadBlock, Sequence[int]]]) -> None:
        self._map = model_map
        self._blocks = blocks

    def raw(self, point: PointDef) -> int | str | None:
        address = self._map.address(point)
        for block, regs in self._blocks:
            if block.address <= address and address + point.size <= block.address + block.count:
                index = address - block.address
                return decode_raw(point, regs[index : index + point.size])
        raise KeyError(f"point {point.model_id}.{point.name} was not read")

    def scaled(self, point: PointDef) -> float | None:
        """Value times 10**sf, None if the point or its scale factor is not implemented."""
        value = self.raw(point)
        if not isinstance(value, int):
            return None
        if point.sf is None:
            return float(value)
        if isinstance(point.sf, int):
            return value * 10.0**point.sf
        sf = self.raw(model_points(point.model_id)[point.sf])
        if not isinstance(sf, int) or not -10 <= sf <= 10:
            return None
        return value * 10.0**sf
