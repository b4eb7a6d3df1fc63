"""Hybrid inverter with battery and grid meter, seen through SunSpec models 10x, 124, 802 and 20x.

Measurements: PV from the inverter's DC power (10x DCW), battery power and SoC from 802, grid
power from the meter (20x W, > 0 import). The house load is not metered: it is what balances
the meter, load = grid + pv + battery.

Setpoint (model 124): discharge P -> StorCtl_Mod bit 1 and OutWRte = P / WDisChaRteMax;
charge P -> bit 0 and InWRte = P / WChaMax; 0 -> no bit. InOutWRte_RvrtTms makes the device
fall back to idle if the agent stops writing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from vpp_edge.bridge import ModbusBridge, ModbusError
from vpp_edge.devices.errors import DeviceError, SunSpecError
from vpp_edge.devices.snapshot import DeviceSnapshot
from vpp_edge.devices.sunspec import (
    ModelMap,
    PointDef,
    ReadBlock,
    RegisterView,
    discover,
    encode_raw,
    model_points,
    plan_blocks,
)
from vpp_edge.logfmt import kv

log = logging.getLogger(__name__)

INVERTER_MODELS = (103, 101, 102)
METER_MODELS = (203, 201, 202, 204)
STORAGE_MODEL = 124
BATTERY_MODEL = 802
CHARGE_BIT = 0x1
DISCHARGE_BIT = 0x2
INT16_MIN, INT16_MAX = -32768, 32767


@dataclass(frozen=True)
class WriteResult:
    """What reached the device: the quantised setpoint and when/how fast the write completed."""

    applied_kw: float
    written_at: datetime
    write_ms: float


@dataclass(frozen=True)
class _ControlScale:
    rate_sf: int
    charge_ref_kw: float
    discharge_ref_kw: float
    mode: int | None


class HybridInverter:
    """One SunSpec hybrid inverter behind a ModbusBridge; knows its points and its limits."""

    def __init__(self, bridge: ModbusBridge) -> None:
        self.bridge = bridge
        self.model_map: ModelMap | None = None
        self._points: dict[str, PointDef] = {}
        self._blocks: list[ReadBlock] = []
        self._snapshot: DeviceSnapshot | None = None
        self._control: _ControlScale | None = None

    @property
    def available(self) -> bool:
        return self._snapshot is not None

    @property
    def snapshot(self) -> DeviceSnapshot | None:
        """Latest good snapshot, or None after a failed read (never stale values)."""
        return self._snapshot

    async def setup(self) -> ModelMap:
        """Discover the model chain and plan the block reads for the points in use."""
        try:
            model_map = await discover(self.bridge)
        except ModbusError as exc:
            raise DeviceError(str(exc)) from exc
        found = set(model_map.model_addresses)
        inverter = next((m for m in INVERTER_MODELS if m in found), None)
        meter = next((m for m in METER_MODELS if m in found), None)
        missing = [
            name
            for name, ok in (
                ("inverter 101/102/103", inverter is not None),
                ("meter 201-204", meter is not None),
                ("storage 124", STORAGE_MODEL in found),
                ("battery 802", BATTERY_MODEL in found),
            )
            if not ok
        ]
        if missing or inverter is None or meter is None:
            raise SunSpecError(f"device lacks SunSpec models: {', '.join(missing)} (found {sorted(found)})")
        inv, met, sto, bat = (model_points(m) for m in (inverter, meter, STORAGE_MODEL, BATTERY_MODEL))
        self._points = {
            "pv_dcw": inv["DCW"],
            "pv_dcw_sf": inv["DCW_SF"],
            "inv_w": inv["W"],
            "inv_w_sf": inv["W_SF"],
            "grid_w": met["W"],
            "grid_w_sf": met["W_SF"],
            "wcha_max": sto["WChaMax"],
            "wcha_max_sf": sto["WChaMax_SF"],
            "stor_ctl_mod": sto["StorCtl_Mod"],
            "rate_sf": sto["InOutWRte_SF"],
            "out_rte": sto["OutWRte"],
            "in_rte": sto["InWRte"],
            "rvrt_tms": sto["InOutWRte_RvrtTms"],
            "wh_rtg": bat["WHRtg"],
            "wh_rtg_sf": bat["WHRtg_SF"],
            "wcha_rte_max": bat["WChaRteMax"],
            "wdischa_rte_max": bat["WDisChaRteMax"],
            "wchadischa_sf": bat["WChaDisChaMax_SF"],
            "soc": bat["SoC"],
            "soc_max": bat["SoCMax"],
            "soc_min": bat["SoCMin"],
            "soc_sf": bat["SoC_SF"],
            "bat_w": bat["W"],
            "bat_w_sf": bat["W_SF"],
        }
        read_names = [n for n in self._points if n not in ("out_rte", "in_rte", "rvrt_tms")]
        self._blocks = plan_blocks(model_map, [self._points[n] for n in read_names])
        self.model_map = model_map
        log.info(
            "sunspec_device_discovered",
            extra=kv(base=model_map.base_address, models=sorted(found), read_blocks=len(self._blocks)),
        )
        return model_map

    def _invalidate(self) -> None:
        self._snapshot = None
        self._control = None

    async def read(self) -> DeviceSnapshot:
        """Read the used points in block reads and build a snapshot; any failure -> DeviceError
        and the snapshot is cleared."""
        started = time.perf_counter()
        try:
            if self.model_map is None:
                await self.setup()
            assert self.model_map is not None
            fetched = [(block, await self.bridge.read_holding(block.address, block.count)) for block in self._blocks]
            snapshot, control = self._decode(RegisterView(self.model_map, fetched), started)
        except DeviceError:
            self._invalidate()
            raise
        except ModbusError as exc:
            self._invalidate()
            raise DeviceError(str(exc)) from exc
        self._snapshot = snapshot
        self._control = control
        return snapshot

    def _need(self, view: RegisterView, key: str) -> float:
        value = view.scaled(self._points[key])
        if value is None:
            point = self._points[key]
            raise SunSpecError(f"point {point.model_id}.{point.name} not implemented or bad scale factor")
        return value

    def _decode(self, view: RegisterView, started: float) -> tuple[DeviceSnapshot, _ControlScale]:
        pv_w = view.scaled(self._points["pv_dcw"])
        battery_kw = self._need(view, "bat_w") / 1000.0
        if pv_w is None:
            pv_w = max(0.0, self._need(view, "inv_w") - battery_kw * 1000.0)
        pv_kw = pv_w / 1000.0
        grid_kw = self._need(view, "grid_w") / 1000.0
        max_charge_kw = min(self._need(view, "wcha_max"), self._need(view, "wcha_rte_max")) / 1000.0
        max_discharge_kw = self._need(view, "wdischa_rte_max") / 1000.0
        rate_sf = view.raw(self._points["rate_sf"])
        if not isinstance(rate_sf, int):
            raise SunSpecError("point 124.InOutWRte_SF not implemented")
        mode = view.raw(self._points["stor_ctl_mod"])
        snapshot = DeviceSnapshot(
            measured_at=datetime.now(UTC),
            pv_power_kw=pv_kw,
            load_power_kw=grid_kw + pv_kw + battery_kw,
            battery_power_kw=battery_kw,
            grid_power_kw=grid_kw,
            soc_pct=self._need(view, "soc"),
            capacity_kwh=self._need(view, "wh_rtg") / 1000.0,
            max_charge_kw=max(0.0, max_charge_kw),
            max_discharge_kw=max(0.0, max_discharge_kw),
            soc_min_pct=view.scaled(self._points["soc_min"]) or 0.0,
            soc_max_pct=view.scaled(self._points["soc_max"]) or 100.0,
            read_rtt_ms=(time.perf_counter() - started) * 1000.0,
        )
        control = _ControlScale(
            rate_sf=rate_sf,
            charge_ref_kw=self._need(view, "wcha_max") / 1000.0,
            discharge_ref_kw=max_discharge_kw,
            mode=mode if isinstance(mode, int) else None,
        )
        return snapshot, control

    async def write_battery_setpoint(self, setpoint_kw: float, revert_s: int) -> WriteResult:
        """Write the battery setpoint via model 124 rates and StorCtl_Mod; returns what was applied."""
        control, model_map = self._control, self.model_map
        if control is None or model_map is None:
            raise DeviceError("device unavailable: no good read to take scale factors from")
        rate_unit = 10.0**control.rate_sf
        out_raw = in_raw = 0
        mode = 0
        applied_kw = 0.0
        if setpoint_kw > 0 and control.discharge_ref_kw > 0:
            out_raw = _to_int16(setpoint_kw / control.discharge_ref_kw * 100.0 / rate_unit)
            applied_kw = out_raw * rate_unit / 100.0 * control.discharge_ref_kw
            mode = DISCHARGE_BIT if out_raw else 0
        elif setpoint_kw < 0 and control.charge_ref_kw > 0:
            in_raw = _to_int16(-setpoint_kw / control.charge_ref_kw * 100.0 / rate_unit)
            applied_kw = -in_raw * rate_unit / 100.0 * control.charge_ref_kw
            mode = CHARGE_BIT if in_raw else 0
        p = self._points
        rates_addr = model_map.address(p["out_rte"])
        if model_map.address(p["in_rte"]) != rates_addr + 1 or model_map.address(p["rvrt_tms"]) != rates_addr + 3:
            raise DeviceError("unexpected model 124 layout")
        values = [
            *encode_raw(p["out_rte"], out_raw),
            *encode_raw(p["in_rte"], in_raw),
            0,
            *encode_raw(p["rvrt_tms"], max(0, min(65535, revert_s))),
        ]
        write_s = 0.0
        try:
            write_s += await self.bridge.write_registers(rates_addr, values)
            if control.mode != mode:
                write_s += await self.bridge.write_registers(
                    model_map.address(p["stor_ctl_mod"]), encode_raw(p["stor_ctl_mod"], mode)
                )
        except ModbusError as exc:
            raise DeviceError(f"setpoint write failed: {exc}") from exc
        written_at = datetime.now(UTC)
        self._control = _ControlScale(control.rate_sf, control.charge_ref_kw, control.discharge_ref_kw, mode)
        return WriteResult(applied_kw=applied_kw, written_at=written_at, write_ms=write_s * 1000.0)


def _to_int16(value: float) -> int:
    return max(INT16_MIN, min(INT16_MAX, round(value)))
