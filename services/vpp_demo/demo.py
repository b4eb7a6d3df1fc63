"""``make demo``: the whole platform on real parts, the market loop and an activation end to end.

Starts Tansu, every service (dispatch as two replicas: one active, one hot standby) and five sites (a
pymodbus device simulator and an edge agent each), shows the portfolio's live flexibility, runs the
market loop for both portfolios (``vpp_demo.market_loop``: forecast-based offers, bids before gate
closure, auction, awards, reservations, a time-compressed delivery at the meters, settlement), then
lets the market simulator send an operator's aFRR test activation (+40 % of the up capability for 60 s, then
-30 % of the down capability for 40 s). Mid-activation a site's agent is killed (the site stops
answering) and then the active dispatcher is killed with SIGKILL; the standby takes over. Prints
requested vs delivered (at the meters) per 4 s step and writes ``out/demo/tracking.png``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import grpc
from vpp.v1 import (
    aggregation_pb2,
    aggregation_pb2_grpc,
    common_pb2,
    dispatch_api_pb2,
    dispatch_api_pb2_grpc,
    forecasting_pb2,
    forecasting_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    market_api_pb2,
    market_api_pb2_grpc,
)

from vpp_demo.market_loop import plot_settlements, run_market_loop
from vpp_demo.plots import plot_forecasts, plot_tracking
from vpp_demo.stack import Stack, retry_warming
from vpp_demo.telemetry_tap import TelemetryTap
from vpp_devtools.process import exit_on_sigterm


def say(msg: str = "") -> None:
    print(msg, flush=True)


def run(out_dir: Path, up_s: int, down_s: int) -> dict[str, object]:
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    with Stack(out_dir / "run", replicas={"dispatch": 2}) as stack:
        tap = TelemetryTap(stack.bootstrap_servers).start()
        say(f"\nPlatform up in {time.monotonic() - started:.0f} s. Kafka (Tansu) at {stack.bootstrap_servers}")
        say("Letting the sites settle into self-consumption (the activation's baseline) ...\n")
        time.sleep(10)
        agg = aggregation_pb2_grpc.AggregationServiceStub(stack.channel("aggregation"))
        flex = agg.GetPortfolioFlexibility(
            aggregation_pb2.GetPortfolioFlexibilityRequest(interval_minutes=2, include_sites=True), timeout=5
        )
        gw = gateway_pb2_grpc.EdgeGatewayStub(stack.channel("gateway"))
        connected = gw.ListConnectedSites(gateway_pb2.ListConnectedSitesRequest(), timeout=5)
        head = "Sites (live, from telemetry)                        battery      flexibility"
        say(f"{head} ({flex.interval_minutes} min)")
        say(f"{'site':<12}{'online':>7}{'PV kWp':>8}{'SoC %':>7}{'batt kW':>9}{'max kW':>8}{'up kW':>9}{'down kW':>9}")
        specs = {s.site_id: s for s in stack.sites}
        for s in flex.sites:
            say(
                f"{s.site_id:<12}{'yes' if s.online else 'NO':>7}{specs[s.site_id].pv_kwp:>8.0f}{s.soc_pct:>7.1f}"
                f"{s.battery_power_kw:>9.2f}{s.max_discharge_kw:>8.0f}{s.up_kw:>9.1f}{s.down_kw:>9.1f}"
            )
        say(f"{'portfolio':<12}{flex.sites_online:>5}/{flex.sites_total}{'':>33}{flex.up_kw:>9.1f}{flex.down_kw:>9.1f}")
        say(f"Gateway holds {len(connected.sites)} site streams.\n")

        say("The market loop, for both portfolios (products and portfolios: vpp_common/markets/data)")
        runs = run_market_loop(stack, say)
        settlement_png = plot_settlements(runs, out_dir / "settlement.png")
        say("\nNow an operator's aFRR test activation on the whole fleet, with a site failing and a dispatcher killed.")

        market = market_api_pb2_grpc.MarketSimulatorStub(stack.channel("market"))
        start = market.StartActivation(
            market_api_pb2.StartActivationRequest(
                product="aFRR",
                step_s=4,
                phases=[
                    market_api_pb2.ActivationPhase(fraction=0.4, duration_s=up_s),
                    market_api_pb2.ActivationPhase(fraction=-0.3, duration_s=down_s),
                ],
            ),
            timeout=10,
        )
        act_id = start.activation_id
        say(
            f"\nActivation {act_id}: +40% of {start.up_capability_kw:.1f} kW up for {up_s} s, "
            f"then -30% of {start.down_capability_kw:.1f} kW down for {down_s} s (a setpoint every 4 s)\n"
        )
        say(
            f"{'step':>4} {'t s':>5} {'requested kW':>13} {'delivered kW':>13} {'error kW':>9} {'acks':>6}"
            f" {'dropped':>8} {'epoch':>6}"
        )
        printed: set[int] = set()
        t0 = time.monotonic()
        deadline = t0 + up_s + down_s + 35
        tracking = None
        events: list[tuple[float, str]] = []
        failed_site = "home-02"
        fail_at_s, kill_at_s = 0.3 * (up_s + down_s), 0.55 * (up_s + down_s)
        killed = ""
        while time.monotonic() < deadline:
            time.sleep(1.0)
            elapsed = time.monotonic() - t0
            if elapsed >= fail_at_s and not any(e[1].startswith("site") for e in events):
                os.kill(stack.proc(f"agent-{failed_site}").popen.pid, signal.SIGKILL)
                events.append((time.time(), f"site {failed_site} stops answering"))
                say(f"  -- {elapsed:.0f} s: agent of {failed_site} killed (SIGKILL): the site stops answering")
            if elapsed >= kill_at_s and not killed:
                killed = _kill_active_dispatcher(stack)
                events.append((time.time(), f"{killed} killed"))
                say(f"  -- {elapsed:.0f} s: active dispatcher {killed} killed (SIGKILL); the standby takes over")
            state = market.GetActivation(market_api_pb2.GetActivationRequest(activation_id=act_id), timeout=5)
            tracking = _tracking(stack, act_id)
            if tracking is None:
                continue
            for s in tracking.samples:
                if s.step not in printed and s.delivered_kw == s.delivered_kw:
                    printed.add(s.step)
                    say(
                        f"{s.step:>4} {s.at.ToNanoseconds() / 1e9 - tracking.samples[0].at.ToNanoseconds() / 1e9:>5.0f}"
                        f" {s.requested_kw:>13.2f} {s.delivered_kw:>13.2f} {s.error_kw:>9.2f}"
                        f" {s.sites_acked:>3}/{s.sites_commanded} {s.sites_dropped:>8} {s.leader_epoch:>6}"
                        + ("  late (takeover)" if s.late else "")
                    )
            if state.finished and tracking.samples and len(printed) == len(tracking.samples) and elapsed > kill_at_s:
                break
        if tracking is None:
            raise RuntimeError("dispatch never reported the activation: see out/demo/run/logs/dispatch.log")
        tap.stop()
        series = tap.snapshot()
        forecast_png = _forecast_section(stack, out_dir)

    closed = [s for s in tracking.samples if s.delivered_kw == s.delivered_kw]
    errors = [abs(s.error_kw) for s in closed]
    # The first step of each phase includes the ramp: judge steady tracking from the second step on.
    steady = [abs(s.error_kw) for i, s in enumerate(closed) if i > 0 and closed[i - 1].requested_kw == s.requested_kw]
    requested_abs = statistics.fmean(abs(s.requested_kw) for s in closed) if closed else 0.0
    summary: dict[str, object] = {
        "activation_id": tracking.activation_id,
        "steps": len(closed),
        "mean_abs_error_kw": round(statistics.fmean(errors), 3) if errors else None,
        "steady_mean_abs_error_kw": round(statistics.fmean(steady), 3) if steady else None,
        "steady_mean_abs_error_pct_of_request": round(100 * statistics.fmean(steady) / requested_abs, 2)
        if steady and requested_abs
        else None,
        "max_abs_error_kw": round(max(errors), 3) if errors else None,
        "median_activation_to_write_ms": round(tracking.median_activation_to_write_ms, 1),
        "commands_sent": tracking.commands_sent,
        "acks_received": tracking.acks_received,
        "acks_clamped": tracking.acks_clamped,
        "reallocations": tracking.reallocations,
        "reallocated_sites": list(tracking.reallocated_sites),
        "site_failed": failed_site,
        "dispatcher_killed": killed,
        "late_steps": sum(1 for s in closed if s.late),
        "leader_epochs": sorted({s.leader_epoch for s in closed}),
        "max_abs_error_kw_after_kill": round(max((abs(s.error_kw) for s in closed if s.leader_epoch > min(
            s2.leader_epoch for s2 in closed)), default=0.0), 3) if closed else None,
        "wall_time_s": round(time.monotonic() - started, 1),
        "settlements": {
            pid: {
                "product": r.delivered_product,
                "currency": r.currency,
                "awarded_kw": round(sum(a.awarded_kw for a in r.awards), 3),
                "net_revenue": round(r.settlement.net_revenue, 4) if r.settlement else None,
                "penalties": round(r.settlement.penalties, 4) if r.settlement else None,
                "under_delivered_mtus": sum(1 for line in r.settlement.lines if line.under_delivered)
                if r.settlement
                else None,
                "mtus": len(r.settlement.lines) if r.settlement else 0,
            }
            for pid, r in runs.items()
        },
    }
    png = plot_tracking(
        closed, series, out_dir / "tracking.png", title=f"aFRR activation {tracking.activation_id}", events=events
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    say("\nResult")
    say(f"  steps tracked:                 {summary['steps']}")
    say(f"  mean |requested - delivered|:  {summary['mean_abs_error_kw']} kW over all steps")
    say(
        f"  steady-state mean error:       {summary['steady_mean_abs_error_kw']} kW "
        f"({summary['steady_mean_abs_error_pct_of_request']} % of the mean request; ramps excluded)"
    )
    worst = max(closed, key=lambda x: abs(x.error_kw)) if closed else None
    if worst is not None:
        say(
            f"  worst step:                    {summary['max_abs_error_kw']} kW at step {worst.step} "
            "(a ramp after a setpoint change, or a site falling short before its share is moved)"
        )
    say(f"  activation -> Modbus write:    median {summary['median_activation_to_write_ms']} ms")
    say(
        f"  commands / acks / clamped:     {summary['commands_sent']} / {summary['acks_received']} / "
        f"{summary['acks_clamped']}"
    )
    say(
        f"  sites dropped, share moved:    {summary['reallocations']} "
        f"({', '.join(tracking.reallocated_sites) or 'none'}; {failed_site} was made to stop answering)"
    )
    say(
        f"  dispatcher failover:           {killed or 'none'} killed; steps by lease epochs "
        f"{summary['leader_epochs']}, {summary['late_steps']} step(s) late, "
        f"largest |error| after the kill {summary['max_abs_error_kw_after_kill']} kW"
    )
    say(f"  plot:                          {png}")
    if settlement_png is not None:
        say(f"  settlement plot:               {settlement_png}")
    if forecast_png is not None:
        say(f"  forecast plot:                 {forecast_png}")
    say(f"  summary:                       {out_dir / 'summary.json'}")
    say(f"  logs:                          {out_dir / 'run' / 'logs'}")
    say(f"  wall time:                     {summary['wall_time_s']} s; every process stopped.")
    return summary


def _kill_active_dispatcher(stack: Stack) -> str:
    """SIGKILL the replica holding the dispatch lease."""
    name = stack.dispatch_leader()
    if name is None:
        raise RuntimeError("no dispatch replica holds the lease: see out/demo/run/logs/dispatch-*.log")
    os.kill(stack.proc(name).popen.pid, signal.SIGKILL)
    return name


def _tracking(stack: Stack, activation_id: str) -> dispatch_api_pb2.GetActivationTrackingResponse | None:
    """Ask any dispatch replica that is up (each answers the same from what it reads)."""
    for i in range(stack.replica_count("dispatch")):
        if stack.proc(stack.replica_name("dispatch", i)).popen.poll() is not None:
            continue
        with grpc.insecure_channel(stack.target("dispatch", i)) as channel:
            try:
                return dispatch_api_pb2_grpc.DispatchServiceStub(channel).GetActivationTracking(
                    dispatch_api_pb2.GetActivationTrackingRequest(activation_id=activation_id), timeout=5
                )
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
    return None


def _forecast_section(stack: Stack, out_dir: Path) -> Path | None:
    """Portfolio forecasts (trained while the activation ran) as a table and a PNG with the bands."""
    if "forecasting" not in stack.ports:
        return None
    stub = forecasting_pb2_grpc.ForecastingServiceStub(stack.channel("forecasting"))
    say("\nForecasts (portfolio, next 36 h, from models trained on each site's real history)")
    forecasts = {}
    for name, stream in (
        ("PV", common_pb2.FORECAST_STREAM_PV),
        ("load", common_pb2.FORECAST_STREAM_LOAD),
        ("net", common_pb2.FORECAST_STREAM_NET),
    ):
        request = forecasting_pb2.GetForecastRequest(stream=stream, horizon_minutes=36 * 60, quantiles=[0.1, 0.5, 0.9])
        try:
            fc = retry_warming(functools.partial(stub.GetForecast, request, timeout=120), timeout_s=120)
        except grpc.RpcError as exc:
            say(f"  {name:<5} not available: {exc.code().name}: {exc.details()}")
            continue
        forecasts[name] = fc
        q = {
            qv: [next(v.power_kw for v in p.values if abs(v.quantile - qv) < 1e-9) for p in fc.points]
            for qv in (0.1, 0.5, 0.9)
        }
        say(
            f"  {name:<5} {len(fc.points)} slots, P50 energy {sum(q[0.5]) * 0.25:8.0f} kWh, "
            f"peak P10/P50/P90 {max(q[0.1]):6.1f} / {max(q[0.5]):6.1f} / {max(q[0.9]):6.1f} kW  ({fc.model})"
        )
        if fc.fallback_reason:
            say(f"        fallback: {fc.fallback_reason}")
    try:
        models = stub.ListModels(forecasting_pb2.ListModelsRequest(), timeout=10).models
        served = [m for m in models if m.served]
        waiting = sum(1 for m in served if m.fallback_reason)
        fingerprint = served[0].model_fingerprint if served else "?"
        say(
            f"  models served: {', '.join(sorted({m.model for m in served}))} "
            f"({len(served)} site streams, {waiting} on their fallback; configuration {fingerprint})"
        )
        tested = [m for m in served if m.backtest_task]
        for m in tested[:2]:
            say(
                f"    backtest of this configuration, {m.backtest_task}: MAE {m.backtest_mae_kw:.3f} kW, "
                f"pinball {m.backtest_pinball_kw:.3f} kW, P10-P90 coverage {m.backtest_coverage_p10_p90:.2f}"
            )
    except grpc.RpcError as exc:
        say(f"  models: {exc.code().name}: {exc.details()}")
    if not forecasts:
        return None
    return plot_forecasts(forecasts, out_dir / "forecast.png")


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--up-s", type=int, default=60)
    parser.add_argument("--down-s", type=int, default=40)
    args = parser.parse_args()
    try:
        run(args.out, args.up_s, args.down_s)
    except (RuntimeError, TimeoutError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
