"""CLI: `python -m vpp_devsim --port 0 ...` prints `MODBUS_PORT=<n>` as its first stdout line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from vpp_devsim.physics import BatteryParams
from vpp_devsim.registers import RegisterImage
from vpp_devsim.server import MODEL_IDS, DeviceSimulator, SimulatorConfig
from vpp_edge.logfmt import KeyValueFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpp_devsim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5020, help="0 picks a free port")
    parser.add_argument("--unit-id", type=int, default=1)
    parser.add_argument("--capacity-kwh", type=float, default=10.0)
    parser.add_argument("--max-charge-kw", type=float, default=5.0)
    parser.add_argument("--max-discharge-kw", type=float, default=5.0)
    parser.add_argument("--soc-min-pct", type=float, default=5.0, help="device's own SoC floor")
    parser.add_argument("--soc-max-pct", type=float, default=95.0, help="device's own SoC ceiling")
    parser.add_argument("--efficiency", type=float, default=0.9, help="round-trip efficiency")
    parser.add_argument("--tau-s", type=float, default=0.7, help="battery response time constant")
    parser.add_argument(
        "--derate-pct",
        type=float,
        default=100.0,
        help="share of the advertised power the hardware really delivers (fault injection)",
    )
    parser.add_argument("--pv-kwp", type=float, default=6.0,
                        help="peak of the built-in PV shape (ignored with --profile, whose kW are absolute)")
    parser.add_argument("--soc-pct", type=float, default=60.0, help="initial state of charge")
    parser.add_argument("--profile", type=Path, default=None, help="CSV with offset_s,pv_kw,load_kw")
    parser.add_argument("--time-scale", type=float, default=1.0, help="profile seconds per wall second")
    parser.add_argument("--start-offset-s", type=float, default=36000.0, help="profile time at start")
    parser.add_argument("--noise-pct", type=float, default=1.0, help="load noise (seeded)")
    parser.add_argument("--tick-s", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--print-register-map", action="store_true",
                        help="print the register map as a markdown table and exit")
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    battery = BatteryParams(
        capacity_kwh=args.capacity_kwh,
        max_charge_kw=args.max_charge_kw,
        max_discharge_kw=args.max_discharge_kw,
        soc_min_pct=args.soc_min_pct,
        soc_max_pct=args.soc_max_pct,
        round_trip_efficiency=args.efficiency,
        tau_s=args.tau_s,
        derate_pct=args.derate_pct,
    )
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        unit_id=args.unit_id,
        battery=battery,
        soc_pct=args.soc_pct,
        pv_kwp=args.pv_kwp,
        tick_s=args.tick_s,
        profile_path=args.profile,
        time_scale=args.time_scale,
        start_offset_s=args.start_offset_s,
        noise_pct=args.noise_pct,
        seed=args.seed,
    )


async def run(config: SimulatorConfig) -> None:
    """Serve until SIGTERM/SIGINT, then close the server cleanly."""
    sim = DeviceSimulator(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = await sim.start()
    sys.stdout.write(f"MODBUS_PORT={port}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.print_register_map:
        sys.stdout.write(RegisterImage(MODEL_IDS).markdown_map() + "\n")
        return
    # The platform's log line (vpp_edge.logfmt), on stderr: stdout carries the MODBUS_PORT line.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(args.log_level.upper())
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    asyncio.run(run(config_from_args(args)))


if __name__ == "__main__":
    main()
