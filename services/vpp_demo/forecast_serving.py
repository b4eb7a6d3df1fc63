"""Forecast serving at fleet size, a section of ``make bench``: a second forecasting process with 1,000
sites of real (seeded) history next to the running platform, measured as a market client would use it.

* ``GetForecast`` for one site (random site and stream, 36 h) and for the 1,000-site portfolio, beside a
  gRPC health check on the same server, while that process's trainer is fitting all 2,000 site
  streams in the background (the refit cycle in progress);
* the effect of that refit on the rest of the platform: aggregation's health check and
  ``GetPortfolioFlexibility`` before the fleet process started and while it refits (same run);
* the refit cost of the production configuration (``ModelSpec()``: 730 days of history), measured in
  this process on the real series as CPU seconds per site (PV + load, fit and validation), and what a
  cycle for 1,000 sites costs from it.

Standalone (outside ``make bench``): ``python -m vpp_demo.forecast_serving --sites 200``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vpp.v1 import aggregation_pb2, aggregation_pb2_grpc, common_pb2, forecasting_pb2, forecasting_pb2_grpc

from forecasting.mapping import LOAD, PV
from forecasting.models.spec import ModelSpec
from forecasting.seed import real_series, site_frames
from forecasting.selection import default_candidates, select_model
from forecasting.sites import SiteConfig
from forecasting.store import SLOT, HistoryStore
from vpp_demo.stack import Stack

Progress = Callable[[str], None]
STREAMS = (common_pb2.FORECAST_STREAM_PV, common_pb2.FORECAST_STREAM_LOAD, common_pb2.FORECAST_STREAM_NET)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "median_ms": round(statistics.median(values_ms), 3),
        "p99_ms": round(pct(values_ms, 0.99), 3),
        "max_ms": round(max(values_ms), 3),
    }


def fleet_sites(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` sites around Golden, Colorado (where the real PV was measured), of many sizes and orientations."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            {
                "site_id": f"fleet-{i:05d}",
                "pv": {
                    "latitude": round(39.4 + rng.random() * 0.8, 4),
                    "longitude": round(-105.4 + rng.random() * 0.7, 4),
                    "altitude_m": 1600 + rng.randrange(400),
                    "tilt_deg": rng.choice((15, 25, 30, 35, 45)),
                    "azimuth_deg": rng.choice((135, 158, 180, 200, 225)),
                    "kwp": round(rng.uniform(3, 60), 1),
                    "timezone": "America/Denver",
                },
                "load_scale": round(rng.uniform(0.5, 8.0), 2),
            }
        )
    return out


def seed_fleet(store_url: str, sites: list[SiteConfig], days: int, progress: Progress) -> None:
    """The real series, scaled per site, ``days`` back from now (what the demo seed writes, in bulk)."""
    store = HistoryStore(store_url)
    store.create_schema()
    load, pv_per_kwp = real_series()
    end = pd.Timestamp.now(tz="UTC").floor(SLOT)
    # One unit series (1 kWp, load scale 1; every fleet site shares the time zone), scaled per site.
    unit_site = sites[0].model_copy(update={"load_scale": 1.0, "pv": sites[0].pv.model_copy(update={"kwp": 1.0})})
    unit = site_frames([unit_site], load, pv_per_kwp, end, days)[unit_site.site_id]
    for k, site in enumerate(sites):
        frame = pd.DataFrame({"pv_kw": unit["pv_kw"] * site.pv.kwp, "load_kw": unit["load_kw"] * site.load_scale})
        store.put_slot_means(site.site_id, frame)
        if (k + 1) % 100 == 0 or k + 1 == len(sites):
            progress(f"      seeded {k + 1}/{len(sites)} sites ({days} days each)")
    store.close()


def timed(call: Callable[[], Any]) -> float:
    t = time.perf_counter()
    call()
    return (time.perf_counter() - t) * 1000


def platform_calls(stack: Stack, n: int) -> dict[str, list[float]]:
    """Aggregation's health check and portfolio flexibility: the rest of the platform."""
    with stack.channel("aggregation") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        agg = aggregation_pb2_grpc.AggregationServiceStub(ch)
        out: dict[str, list[float]] = {"health": [], "flexibility": []}
        for _ in range(n):
            out["health"].append(timed(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5)))
            req = aggregation_pb2.GetPortfolioFlexibilityRequest()
            out["flexibility"].append(timed(lambda: agg.GetPortfolioFlexibility(req, timeout=5)))  # noqa: B023
    return out


def refit_cost(progress: Progress, sites: int = 2) -> dict[str, Any]:
    """CPU seconds to fit and validate the production configuration for one site (PV + load), on the
    real series with the configuration's full training window (730 days plus look-back)."""
    spec = ModelSpec()
    load, pv_per_kwp = real_series()
    days = spec.history_days + 70
    per_site: list[float] = []
    per_stream: dict[str, list[float]] = {"pv": [], "load": []}
    for k in range(sites):
        site = SiteConfig.model_validate(fleet_sites(sites, seed=7)[k])
        load_end = load.dropna().index[-1].floor("D") - pd.Timedelta(days=30 * k)
        pv_end = pv_per_kwp.dropna().index[-1].floor("D") - pd.Timedelta(days=30 * k)
        total = 0.0
        for stream, series, end in ((LOAD, load * site.load_scale, load_end), (PV, pv_per_kwp * site.pv.kwp, pv_end)):
            history = series[(series.index >= end - pd.Timedelta(days=days)) & (series.index < end)]
            started = time.process_time()
            served = select_model(site, stream, history, end, spec, default_candidates)
            cpu_s = time.process_time() - started
            per_stream["pv" if stream == PV else "load"].append(cpu_s)
            total += cpu_s
            label = "pv" if stream == PV else "load"
            progress(f"      production fit {k + 1}/{sites} {label}: {cpu_s:.1f} CPU-s ({served.name})")
        per_site.append(total)
    cpu_per_site = statistics.median(per_site)
    return {
        "model_fingerprint": spec.fingerprint(),
        "history_days": days,
        "sites_measured": sites,
        "cpu_s_per_site": round(cpu_per_site, 1),
        "cpu_s_per_site_pv": round(statistics.median(per_stream["pv"]), 1),
        "cpu_s_per_site_load": round(statistics.median(per_stream["load"]), 1),
        "cycle_1000_sites_core_hours": round(cpu_per_site * 1000 / 3600, 2),
        "share_of_one_core_at_daily_refit_pct": round(100 * cpu_per_site * 1000 / 86_400, 1),
    }


def measure(
    stack: Stack,
    workdir: Path,
    *,
    n_sites: int = 1000,
    seed_days: int = 40,
    samples: int = 400,
    production_sites: int = 2,
    progress: Progress,
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    raw_sites = fleet_sites(n_sites)
    sites = [SiteConfig.model_validate(s) for s in raw_sites]
    (workdir / "fleet-sites.json").write_text(json.dumps({"sites": raw_sites}))
    store_url = f"sqlite:///{(workdir / 'fleet-history.sqlite').resolve()}"
    (workdir / "fleet-history.sqlite").unlink(missing_ok=True)
    progress(f"      seeding {n_sites} sites with {seed_days} days of real history")
    seed_fleet(store_url, sites, seed_days, progress)
    progress("      the rest of the platform before the fleet forecaster starts")
    before = platform_calls(stack, samples // 2)
    started = time.monotonic()
    name = "forecasting-fleet"
    stack.start_extra_service(
        name,
        "forecasting",
        {
            "VPP_SITES_FILE": str((workdir / "fleet-sites.json").resolve()),
            "VPP_STORE_URL": store_url,
            # A consumer group of its own: the stack's forecasting keeps all of its telemetry partitions.
            "VPP_KAFKA_GROUP_PREFIX": "fleet-",
        },
    )
    with stack.channel(name) as ch:
        stub = forecasting_pb2_grpc.ForecastingServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        portfolio = forecasting_pb2.GetForecastRequest(stream=common_pb2.FORECAST_STREAM_NET, horizon_minutes=2160)
        while True:  # the first issue cycle: every site's fallback forecast, then the portfolio's
            try:
                stub.GetForecast(portfolio, timeout=30)
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() - started > 1800:
                    raise
                cached = stack.metric(name, "vpp_forecasting_cached_sites")
                progress(f"      first issue cycle: {cached:.0f}/{n_sites} sites cached")
                time.sleep(10)
        first_cycle_s = time.monotonic() - started
        progress(f"      first issue cycle done in {first_cycle_s:.0f} s; measuring while the trainer refits")
        rng = random.Random(3)
        calls: dict[str, list[float]] = {"health": [], "site": [], "portfolio": []}
        for i in range(samples):
            calls["health"].append(timed(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5)))
            req = forecasting_pb2.GetForecastRequest(
                site_id=rng.choice(raw_sites)["site_id"], stream=rng.choice(STREAMS), horizon_minutes=2160
            )
            calls["site"].append(timed(lambda: stub.GetForecast(req, timeout=5)))  # noqa: B023
            calls["portfolio"].append(timed(lambda: stub.GetForecast(portfolio, timeout=5)))
            if i % 100 == 0:
                progress(f"      forecast requests {i}/{samples}")
        during = platform_calls(stack, samples // 2)
        fits = stack.metric(name, "vpp_forecasting_training_seconds_count")
        fit_cpu = stack.metric(name, "vpp_forecasting_training_cpu_seconds_total")
        cycle_s = stack.metric(name, "vpp_forecasting_refresh_seconds_sum") / max(
            1.0, stack.metric(name, "vpp_forecasting_refresh_seconds_count")
        )
        fallback = stack.metric(name, "vpp_forecasting_fallback_streams")
    stack.stop_proc(name)
    production: dict[str, Any] = {}
    if production_sites > 0:
        progress(f"      production refit cost: fitting ModelSpec() on {production_sites} sites' full history")
        production = refit_cost(progress, production_sites)
    site, port, hc = summary(calls["site"]), summary(calls["portfolio"]), summary(calls["health"])
    return {
        "sites": n_sites,
        "seed_days": seed_days,
        "first_issue_cycle_s": round(first_cycle_s, 1),
        "issue_cycle_mean_s": round(cycle_s, 1),
        "get_forecast_site": site,
        "get_forecast_portfolio": port,
        "grpc_health_check": hc,
        "site_over_health_check": round(site["median_ms"] / hc["median_ms"], 2),
        "targets": {
            "get_forecast_site_p99_under_10_ms": site["p99_ms"] < 10.0,
            "get_forecast_portfolio_p99_under_50_ms": port["p99_ms"] < 50.0,
        },
        "refit_in_progress": {
            "fits_done_during_bench": int(fits),
            "fit_cpu_s_mean": round(fit_cpu / fits, 2) if fits else None,
            "streams_on_fallback_at_end": int(fallback),
            "history_days": seed_days,
        },
        "platform_before": {k: summary(v) for k, v in before.items()},
        "platform_during_refit": {k: summary(v) for k, v in during.items()},
        "production_refit": production,
    }


def markdown(doc: dict[str, Any]) -> list[str]:
    s, p, h = doc["get_forecast_site"], doc["get_forecast_portfolio"], doc["grpc_health_check"]
    before, during, prod = doc["platform_before"], doc["platform_during_refit"], doc["production_refit"]
    fits = doc["refit_in_progress"]
    refit = (
        [
            f"Refit of the production configuration ({prod['model_fingerprint']}, {prod['history_days']} days of "
            f"history, measured on {prod['sites_measured']} sites): **{prod['cpu_s_per_site']} CPU-s per site** "
            f"(PV {prod['cpu_s_per_site_pv']}, load {prod['cpu_s_per_site_load']}); a cycle for 1,000 sites is "
            f"{prod['cycle_1000_sites_core_hours']} core-hours, i.e. {prod['share_of_one_core_at_daily_refit_pct']} % "
            "of one core at the daily refit (one niced training process)."
        ]
        if prod
        else []
    )
    return [
        f"## Forecast serving, {doc['sites']:,} sites (while their models refit in the background)",
        "",
        "| call | n | median ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {label} | {r['n']} | {r['median_ms']} | {r['p99_ms']} | {r['max_ms']} |"
            for label, r in (
                ("GetForecast, one site, 36 h", s),
                (f"GetForecast, portfolio of {doc['sites']:,} sites, 36 h", p),
                ("gRPC health check, same server", h),
                ("aggregation health check, before", before["health"]),
                ("aggregation health check, during refit", during["health"]),
                ("aggregation GetPortfolioFlexibility, before", before["flexibility"]),
                ("aggregation GetPortfolioFlexibility, during refit", during["flexibility"]),
            )
        ),
        "",
        f"Targets: site p99 < 10 ms: {'met' if doc['targets']['get_forecast_site_p99_under_10_ms'] else 'MISSED'}; "
        f"portfolio p99 < 50 ms: {'met' if doc['targets']['get_forecast_portfolio_p99_under_50_ms'] else 'MISSED'}. "
        f"First issue cycle (every site's fallback forecast and the portfolio): {doc['first_issue_cycle_s']} s; "
        f"mean issue cycle {doc['issue_cycle_mean_s']} s. During the run the trainer fit "
        f"{fits['fits_done_during_bench']} site streams ({fits['fit_cpu_s_mean']} CPU-s each on "
        f"{fits['history_days']} days of history); "
        f"{fits['streams_on_fallback_at_end']} were still on their fallback at the end.",
        "",
        *refit,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--seed-days", type=int, default=40)
    parser.add_argument("--production-sites", type=int, default=2, help="sites fit with ModelSpec() (0: skip)")
    args = parser.parse_args()

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with Stack(args.out / "run-forecast", progress=progress) as stack:
        doc = measure(
            stack,
            args.out / "forecast-fleet",
            n_sites=args.sites,
            seed_days=args.seed_days,
            samples=args.samples,
            production_sites=args.production_sites,
            progress=progress,
        )
    (args.out / "forecast_serving.json").write_text(json.dumps(doc, indent=2))
    print("\n".join(markdown(doc)))


if __name__ == "__main__":
    main()
