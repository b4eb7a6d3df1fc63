"""Real pymodbus TCP server around the site physics, ticked on a fixed wall-clock period.

Control interface (SunSpec model 124, as the edge agent uses it):
  * StorCtl_Mod bit 0 (CHARGE): charge at InWRte % of WChaMax;
  * StorCtl_Mod bit 1 (DISCHARGE): discharge at OutWRte % of WDisChaRteMax (model 802);
  * both bits: the two terms add; no bit: idle (0 kW);
  * InOutWRte_RvrtTms > 0: without a new control write for that many seconds the device
    reverts to idle, so a dead controller cannot leave the battery running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from vpp_devsim.physics import BatteryParams, SitePhysics
from vpp_devsim.profile import Profile
from vpp_devsim.registers import SUNSPEC_BASE_ADDR, RegisterImage
from vpp_edge.logfmt import kv

log = logging.getLogger("vpp_devsim")

MODEL_IDS = (1, 103, 124, 802, 203)
CHARGE_BIT = 0x1
DISCHARGE_BIT = 0x2
RATE_SF = -2  # 0.01 % resolution for InWRte/OutWRte
SOC_SF = -1
CONTROL_POINTS = frozenset({"StorCtl_Mod", "OutWRte", "InWRte", "InOutWRte_RvrtTms", "WChaMax"})
_WRITE_FCS = frozenset({6, 16, 22, 23})


def choose_sf(max_abs_value: float, limit: int = 32767) -> int:
    """Smallest scale factor >= 0 that keeps `max_abs_value` inside a 16-bit register."""
    sf = 0
    while max_abs_value / (10**sf) > limit:
        sf += 1
    return sf


def scaled(value: float, sf: int) -> int:
    return round(value / (10**sf))


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything the CLI can set; defaults give a 10 kWh / 5 kW battery with 6 kWp PV."""

    host: str = "127.0.0.1"
    port: int = 0
    unit_id: int = 1
    battery: BatteryParams = field(default_factory=BatteryParams)
    soc_pct: float = 60.0
    pv_kwp: float = 6.0
    tick_s: float = 0.25
    profile_path: Path | None = None
    time_scale: float = 1.0
    start_offset_s: float = 10 * 3600.0
    noise_pct: float = 1.0
    seed: int = 1
    serial_number: str = ""


class DeviceSimulator:
    """One simulated hybrid inverter + battery + meter, served over Modbus TCP."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        profile: Profile | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.physics = SitePhysics(config.battery, config.soc_pct)
        self.profile = profile or self._build_profile(config)
        self.image = RegisterImage(MODEL_IDS)
        self._writable = self.image.writable_addresses()
        peak_kw = max(
            config.pv_kwp,
            config.battery.max_charge_kw,
            config.battery.max_discharge_kw,
            max(p.load_kw + config.battery.max_charge_kw for p in self.profile.points),
            max(p.pv_kw + config.battery.max_discharge_kw for p in self.profile.points),
        )
        self.power_sf = choose_sf(peak_kw * 1000.0 * 1.2)
        self.energy_sf = choose_sf(config.battery.capacity_kwh * 1000.0, limit=65535)
        self._server: ModbusTcpServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._last_tick = 0.0
        self._last_control_write = 0.0
        self.port = 0
        # Fault injection for tests and demos: delay every Modbus answer by this much.
        self.response_delay_s = 0.0
        self._init_static_points()
        self._refresh_registers()

    @staticmethod
    def _build_profile(config: SimulatorConfig) -> Profile:
        kwargs: dict[str, float | int] = {
            "time_scale": config.time_scale,
            "start_offset_s": config.start_offset_s,
            "noise_pct": config.noise_pct,
            "seed": config.seed,
        }
        if config.profile_path is not None:
            return Profile.from_csv(config.profile_path, **kwargs)
        return Profile.default(config.pv_kwp, **kwargs)

    # ---------------------------------------------------------------- registers

    def _init_static_points(self) -> None:
        img, b = self.image, self.config.battery
        value: int | str
        serial = self.config.serial_number or f"SIM-{self.config.seed:06d}"
        for name, value in (("Mn", "VPP Project"), ("Md", "DevSim Hybrid"), ("Vr", "1.0.0"), ("SN", serial)):
            img.set_point(1, name, value)
        img.set_point(1, "DA", self.config.unit_id)
        img.set_point(1, "Pad", 0)
        for name, value in (("A_SF", -1), ("V_SF", -1), ("W_SF", self.power_sf), ("Hz_SF", -2),
                            ("WH_SF", 0), ("DCW_SF", self.power_sf), ("Tmp_SF", -1)):
            img.set_point(103, name, value)
        for name in ("Evt1", "Evt2"):
            img.set_point(103, name, 0)
        img.set_point(103, "TmpCab", 350)
        # model 124: storage control
        img.set_point(124, "WChaMax_SF", self.power_sf)
        img.set_point(124, "WChaMax", scaled(b.max_charge_kw * 1000.0, self.power_sf))
        img.set_point(124, "WChaDisChaGra_SF", 0)
        img.set_point(124, "WChaGra", 100)
        img.set_point(124, "WDisChaGra", 100)
        img.set_point(124, "StorCtl_Mod", 0)
        img.set_point(124, "MinRsvPct_SF", 0)
        img.set_point(124, "MinRsvPct", round(b.soc_min_pct))
        img.set_point(124, "ChaState_SF", SOC_SF)
        img.set_point(124, "InOutWRte_SF", RATE_SF)
        img.set_point(124, "OutWRte", 0)
        img.set_point(124, "InWRte", 0)
        img.set_point(124, "InOutWRte_RvrtTms", 0)
        # model 802: battery nameplate and limits
        for name, value in (("AHRtg_SF", 0), ("WHRtg_SF", self.energy_sf), ("WChaDisChaMax_SF", self.power_sf),
                            ("SoC_SF", SOC_SF), ("V_SF", -1), ("CellV_SF", -3), ("A_SF", -1), ("AMax_SF", 0),
                            ("W_SF", self.power_sf)):
            img.set_point(802, name, value)
        img.set_point(802, "AHRtg", round(b.capacity_kwh * 1000.0 / 400.0))
        img.set_point(802, "WHRtg", scaled(b.capacity_kwh * 1000.0, self.energy_sf))
        img.set_point(802, "WChaRteMax", scaled(b.max_charge_kw * 1000.0, self.power_sf))
        img.set_point(802, "WDisChaRteMax", scaled(b.max_discharge_kw * 1000.0, self.power_sf))
        img.set_point(802, "SoCMax", scaled(b.soc_max_pct, SOC_SF))
        img.set_point(802, "SoCMin", scaled(b.soc_min_pct, SOC_SF))
        for name, value in (("LocRemCtl", 0), ("AlmRst", 0), ("Typ", 4), ("State", 3), ("SetOp", 1),
                            ("SetInvState", 1), ("Evt1", 0), ("Evt2", 0), ("EvtVnd1", 0), ("EvtVnd2", 0),
                            ("V", 4000)):
            img.set_point(802, name, value)
        # model 203: grid meter
        for name, value in (("A_SF", -1), ("V_SF", -1), ("Hz_SF", -2), ("W_SF", self.power_sf), ("TotWh_SF", 0),
                            ("Evt", 0)):
            img.set_point(203, name, value)
        for name in ("PhV", "PhVphA", "PhVphB", "PhVphC"):
            img.set_point(203, name, 2300)
        for name in ("PPV", "PhVphAB", "PhVphBC", "PhVphCA"):
            img.set_point(203, name, 3984)

    def _refresh_registers(self) -> None:
        """Copy the physics state into the measurement points."""
        img, ph, sf = self.image, self.physics, self.power_sf
        battery_w = ph.battery_kw * 1000.0
        grid_w = ph.grid_kw * 1000.0
        pv_w = ph.pv_kw * 1000.0
        ac_w = pv_w + battery_w
        phase_a = ac_w / 3.0 / 230.0
        img.set_point(103, "W", scaled(ac_w, sf))
        img.set_point(103, "DCW", scaled(pv_w, sf))
        img.set_point(103, "A", scaled(abs(ac_w) / 230.0, -1))
        for name in ("AphA", "AphB", "AphC"):
            img.set_point(103, name, scaled(abs(phase_a), -1))
        for name in ("PhVphA", "PhVphB", "PhVphC"):
            img.set_point(103, name, 2300)
        img.set_point(103, "Hz", 5000)
        img.set_point(103, "WH", int(ph.pv_kwh * 1000.0) & 0xFFFFFFFF)
        img.set_point(103, "St", 4 if ph.pv_kw > 0.01 else 2)
        cha_st = 3 if ph.battery_kw > 0.01 else 4 if ph.battery_kw < -0.01 else 6
        soc_reg = scaled(ph.soc_pct, SOC_SF)
        img.set_point(124, "ChaState", soc_reg)
        img.set_point(124, "ChaSt", cha_st)
        img.set_point(802, "SoC", soc_reg)
        img.set_point(802, "ChaSt", cha_st)
        img.set_point(802, "W", scaled(battery_w, sf))
        img.set_point(802, "A", scaled(battery_w / 400.0, -1))
        img.set_point(203, "W", scaled(grid_w, sf))
        img.set_point(203, "A", scaled(abs(grid_w) / 230.0, -1))
        img.set_point(203, "Hz", 5000)
        img.set_point(203, "TotWhImp", int(ph.grid_import_kwh * 1000.0) & 0xFFFFFFFF)
        img.set_point(203, "TotWhExp", int(ph.grid_export_kwh * 1000.0) & 0xFFFFFFFF)

    def _control_kw(self) -> float:
        """Battery command encoded in model 124 (see module docstring)."""
        img = self.image
        mode = img.get_point(124, "StorCtl_Mod")
        mode_bits = 0 if not isinstance(mode, int) else mode
        rate_sf = img.get_point(124, "InOutWRte_SF")
        factor = 10.0 ** (rate_sf if isinstance(rate_sf, int) else 0)
        out_rte = img.get_point(124, "OutWRte")
        in_rte = img.get_point(124, "InWRte")
        wcha = img.get_point(124, "WChaMax")
        wcha_sf = img.get_point(124, "WChaMax_SF")
        charge_ref_kw = min(
            self.config.battery.max_charge_kw,
            (wcha if isinstance(wcha, int) else 0) * 10.0 ** (wcha_sf if isinstance(wcha_sf, int) else 0) / 1000.0,
        )
        kw = 0.0
        if mode_bits & DISCHARGE_BIT and isinstance(out_rte, int):
            kw += out_rte * factor / 100.0 * self.config.battery.max_discharge_kw
        if mode_bits & CHARGE_BIT and isinstance(in_rte, int):
            kw -= in_rte * factor / 100.0 * charge_ref_kw
        return kw if math.isfinite(kw) else 0.0

    def _revert_if_stale(self, now: float) -> None:
        revert = self.image.get_point(124, "InOutWRte_RvrtTms")
        if not isinstance(revert, int) or revert <= 0 or self.physics.command_kw == 0.0:
            return
        if now - self._last_control_write > revert:
            log.warning("control_revert_timeout", extra=kv(revert_s=revert, battery="idle"))
            self.image.set_point(124, "StorCtl_Mod", 0)
            self.physics.command_kw = 0.0

    # ---------------------------------------------------------------- modbus hook

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus action: serve reads from the image, accept writes only to RW points."""
        if self.response_delay_s > 0:
            await asyncio.sleep(self.response_delay_s)
        base = self.image.base_addr
        if function_code in _WRITE_FCS and set_values is not None:
            if any(a not in self._writable for a in range(address, address + count)):
                return ExcCodes.ILLEGAL_ADDRESS
            index = address - base
            self.image.regs[index : index + count] = [int(v) for v in set_values]
            self._last_control_write = self.clock()
            self.physics.command_kw = self._control_kw()
            return None
        offset = base - start_address
        current_registers[offset : offset + len(self.image.regs)] = self.image.regs
        return None

    # ---------------------------------------------------------------- lifecycle

    def tick(self, dt_s: float) -> None:
        """Advance the physics by dt_s and publish the new state to the registers."""
        now = self.clock()
        self._revert_if_stale(now)
        pv_kw, load_kw = self.profile.at(now - self._started_at)
        self.physics.step(dt_s, pv_kw, load_kw)
        self._refresh_registers()

    async def _tick_loop(self) -> None:
        period = self.config.tick_s
        next_at = self.clock() + period
        while True:
            await asyncio.sleep(max(0.0, next_at - self.clock()))
            now = self.clock()
            self.tick(now - self._last_tick)
            self._last_tick = now
            next_at += period
            if next_at < now:
                next_at = now + period

    async def start(self) -> int:
        """Bind the Modbus server (port 0 picks a free port), start ticking; returns the port."""
        device = SimDevice(
            id=self.config.unit_id,
            simdata=[SimData(SUNSPEC_BASE_ADDR, values=list(self.image.regs), datatype=DataType.REGISTERS)],
            action=self._on_access,
        )
        server = ModbusTcpServer(device, address=(self.config.host, self.config.port))
        await server.serve_forever(background=True)
        self._server = server
        sockets = getattr(server.transport, "sockets", None)
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        self._started_at = self._last_tick = self._last_control_write = self.clock()
        self.tick(0.0)
        self._ticker = asyncio.create_task(self._tick_loop(), name="devsim-tick")
        log.info(
            "modbus_simulator_listening", extra=kv(host=self.config.host, port=self.port, unit_id=self.config.unit_id)
        )
        return self.port

    async def stop(self) -> None:
        """Stop ticking and close the server and every client connection."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        log.info("modbus_simulator_stopped", extra=kv(port=self.port))
