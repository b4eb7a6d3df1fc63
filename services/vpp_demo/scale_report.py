"""What ``make load-scale`` concludes from its measurements: per-level verdicts, cost per site, sizing,
and the report files (``scale.json``, ``scale.md``, ``scale.png``).

Pure functions over plain dicts, so the tests can check the report from made-up measurements without
starting anything; ``vpp_demo.scale`` does the measuring.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# A level is "held" when all of these are met (the brief's targets).
ACKED_SHARE_MIN = 0.999
ACK_P99_MAX_MS = 1000.0
VIEW_FRESH_P99_MAX_S = 2.0
COMMANDS_SHARE_MIN = 0.999
COMMAND_P99_MAX_MS = 1000.0
# Lag is "bounded" when the last third of the window is not above the first third by more than this
# (records; one record is one partition's flush of ~20 ms of samples, so 200 records is well under 1 s).
LAG_GROWTH_SLACK_RECORDS = 200.0
LAG_GROWTH_FACTOR = 1.5
# Sizing: keep a replica's CPU at or below this share of a core (headroom for reconnect storms and
# rebalances; a Python service uses one core at most).
REPLICA_CPU_TARGET = 0.6

REQUIRED_LEVEL_KEYS = (
    "sites",
    "acked_share",
    "ack_p50_ms",
    "ack_p99_ms",
    "view_fresh_p99_s",
    "lag_max_records",
    "gateway_cpu_pct",
    "broker_cpu_pct",
    "aggregation_cpu_pct",
    "harness_cpu_pct",
)
REQUIRED_KEYS = ("levels", "cost_per_1000_sites_pct_of_core", "commands", "max_sites_held", "raw_consume_records_per_s")
COMPONENTS = ("gateway", "broker", "aggregation", "dispatch")


# -- statistics ----------------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank quantile (``q`` in 0..1); nan when there are no values."""
    data = sorted(values)
    if not data:
        return math.nan
    return float(data[max(0, math.ceil(q * len(data)) - 1)])


def hist_percentile(hist: Mapping[int, int], q: float) -> float:
    """Nearest-rank quantile of a ``{value: count}`` histogram; nan when empty."""
    total = sum(hist.values())
    if not total:
        return math.nan
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def merge_hists(hists: Iterable[Mapping[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for hist in hists:
        for value, count in hist.items():
            out[value] = out.get(value, 0) + count
    return out


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares ``y = intercept + slope * x``; slope nan with fewer than two distinct xs."""
    if len(set(xs)) < 2:
        return (float(ys[0]) if ys else math.nan, math.nan)
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def lag_bounded(series: Sequence[float]) -> bool:
    """Lag does not grow over the window: the last third's mean is within the first third's (with slack)."""
    if len(series) < 3:
        return True
    third = max(1, len(series) // 3)
    first = float(np.mean(series[:third]))
    last = float(np.mean(series[-third:]))
    return last <= first * LAG_GROWTH_FACTOR + LAG_GROWTH_SLACK_RECORDS


# -- verdicts ------------------------------------------------------------------------------------------


def verdict(level: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Whether a level is held, and every target it missed (with the figure)."""
    missed: list[str] = []

    def bad(value: Any) -> bool:
        return value is None or (isinstance(value, float) and math.isnan(value))

    if bad(level["acked_share"]) or level["acked_share"] < ACKED_SHARE_MIN:
        missed.append(f"acked share {_f(level['acked_share'], '.4f')} < {ACKED_SHARE_MIN}")
    if bad(level["ack_p99_ms"]) or level["ack_p99_ms"] >= ACK_P99_MAX_MS:
        missed.append(f"ack p99 {_f(level['ack_p99_ms'], '.0f')} ms >= {ACK_P99_MAX_MS:.0f} ms")
    if bad(level["view_fresh_p99_s"]) or level["view_fresh_p99_s"] >= VIEW_FRESH_P99_MAX_S:
        missed.append(f"view freshness p99 {_f(level['view_fresh_p99_s'], '.2f')} s >= {VIEW_FRESH_P99_MAX_S:.0f} s")
    if not level.get("lag_bounded", True):
        missed.append(f"consumer lag growing (max {_f(level['lag_max_records'], '.0f')} records)")
    commands = level.get("commands")
    if commands is not None:
        share = commands.get("received_share")
        if bad(share) or share < COMMANDS_SHARE_MIN:
            missed.append(f"commands received {_f(share, '.4f')} < {COMMANDS_SHARE_MIN}")
        p99 = commands.get("p99_ms")
        if bad(p99) or p99 >= COMMAND_P99_MAX_MS:
            missed.append(f"command p99 {_f(p99, '.0f')} ms >= {COMMAND_P99_MAX_MS:.0f} ms")
    return (not missed, missed)


def fit_costs(
    levels: Sequence[Mapping[str, Any]],
    components: Sequence[str] = COMPONENTS,
    baseline: Mapping[str, Any] | None = None,
    suffix: str = "",
) -> dict[str, dict[str, Any]]:
    """Per component: CPU (% of a core) = fixed + per-site cost x N, least squares over the levels (and
    the idle platform, N = 0, when measured).

    Only levels where the platform did all the work (every sample acked within the window, however late;
    the fleet produced its samples) and the component stayed below 90 % of a core are used: past that the
    CPU a component gets stops following its demand and would bend the slope. With fewer than two such
    points every level is used (and the fit says so).
    """
    out: dict[str, dict[str, Any]] = {}
    idle = dict(baseline, acked_share=1.0) if baseline else None
    if idle is not None and suffix:
        # The idle platform has no activation: its figures stand for every part of a window.
        idle.update({f"{comp}_cpu_pct{suffix}": idle.get(f"{comp}_cpu_pct", math.nan) for comp in components})
    points = ([idle] if idle else []) + list(levels)
    for comp in components:
        key = f"{comp}_cpu_pct{suffix}"

        def kept_up(lv: Mapping[str, Any], key: str = key) -> bool:
            value = lv.get(key, math.nan)
            return (
                not math.isnan(value)
                and value < 90.0
                and lv.get("acked_share", 0) >= ACKED_SHARE_MIN
                and lv.get("generation_share", 1.0) >= 0.98
            )

        usable = [lv for lv in points if kept_up(lv)]
        note = "points where every sample was acked" + (", idle included" if baseline else "")
        if len({lv["sites"] for lv in usable}) < 2:
            usable = [lv for lv in points if key in lv and not math.isnan(lv[key])]
            note = "all points (fewer than two kept up below 90 % CPU): read as an upper bound"
        xs = [float(lv["sites"]) for lv in usable]
        ys = [float(lv[key]) for lv in usable]
        intercept, slope = linear_fit(xs, ys) if xs else (math.nan, math.nan)
        rss_key = f"{comp}_rss_mb"
        rss_levels = [lv for lv in usable if rss_key in lv]
        rss_fixed, rss_slope = (
            linear_fit([float(lv["sites"]) for lv in rss_levels], [float(lv[rss_key]) for lv in rss_levels])
            if rss_levels
            else (math.nan, math.nan)
        )
        out[comp] = {
            "fixed_pct": intercept,
            "per_1000_sites_pct": slope * 1000.0,
            "rss_fixed_mb": rss_fixed,
            "rss_per_1000_sites_mb": rss_slope * 1000.0,
            "levels_used": [int(x) for x in xs],
            "basis": note,
        }
    return out


def sizing(costs: Mapping[str, Mapping[str, Any]], sites: int, partitions: int) -> dict[str, dict[str, Any]]:
    """Replicas, cores and memory per component for ``sites``, from the fitted per-site costs."""
    out: dict[str, dict[str, Any]] = {}
    for comp, cost in costs.items():
        per_site = cost["per_1000_sites_pct"] / 1000.0
        fixed = max(0.0, cost["fixed_pct"]) if not math.isnan(cost["fixed_pct"]) else 0.0
        if math.isnan(per_site):
            continue
        load_cores = max(0.0, per_site * sites) / 100.0
        if comp == "broker":
            replicas = 1  # one broker process measured; a Kafka cluster spreads this over its brokers
            cores = load_cores + fixed / 100.0
        else:
            # each replica also carries the fixed (idle) cost: what is left of the target is for sites
            replicas = max(1, math.ceil(load_cores / max(0.05, REPLICA_CPU_TARGET - fixed / 100.0)))
            replicas = min(replicas, partitions) if comp in ("aggregation", "dispatch") else replicas
            cores = load_cores + replicas * fixed / 100.0
        rss_fixed = cost.get("rss_fixed_mb", math.nan)
        rss_slope = cost.get("rss_per_1000_sites_mb", math.nan) / 1000.0
        memory_mb = math.nan
        if not math.isnan(rss_fixed) and not math.isnan(rss_slope):
            memory_mb = replicas * max(0.0, rss_fixed) + max(0.0, rss_slope) * sites
        out[comp] = {
            "replicas": replicas,
            "cores": cores,
            "cores_per_replica": cores / replicas,
            "memory_mb": memory_mb,
        }
    return out


# -- the report ----------------------------------------------------------------------------------------


def build_report(
    levels: Sequence[dict[str, Any]],
    replicated: Sequence[dict[str, Any]],
    consume: Mapping[str, Any],
    meta: Mapping[str, Any],
    hold: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """``scale.json``: the required keys first, then everything the Markdown report draws on."""
    for level in [*levels, *replicated, *hold]:
        level["held"], level["missed"] = verdict(level)
    costs = fit_costs(levels, baseline=meta.get("baseline") or None)
    # The 1 Hz telemetry alone (the first part of every window), which the per-site targets are about.
    telemetry_costs = fit_costs(levels, baseline=meta.get("baseline") or None, suffix="_telemetry")
    has_telemetry = all(not math.isnan(c["per_1000_sites_pct"]) for c in telemetry_costs.values())
    held_single = [lv["sites"] for lv in levels if lv["held"]]
    held_replicated = [lv["sites"] for lv in replicated if lv["held"]]
    best = max([*held_single, *held_replicated], default=0)
    if hold:
        # "Held" means held for the long window: the ladder's short windows only nominate a level.
        best = max((lv["sites"] for lv in hold if lv["held"]), default=0)
    at_best = [lv for lv in [*hold, *levels, *replicated] if lv["sites"] == best and lv["held"]]
    # Commands at the largest N held; when none was held, at the smallest level measured (the closest to it).
    commands_level = at_best[0] if at_best else (min(levels, key=lambda lv: lv["sites"]) if levels else None)
    commands = dict(commands_level["commands"]) if commands_level and commands_level.get("commands") else {}
    commands.setdefault("sites", commands_level["sites"] if commands_level else 0)
    partitions = int(meta.get("site_partitions", 48))
    report: dict[str, Any] = {
        "levels": list(levels),
        "cost_per_1000_sites_pct_of_core": {
            comp: (telemetry_costs if has_telemetry else costs)[comp]["per_1000_sites_pct"]
            for comp in ("gateway", "broker", "aggregation")
        },
        "cost_per_1000_sites_basis": "telemetry alone (1 Hz samples, no activation)"
        if has_telemetry
        else "whole window (telemetry and an activation)",
        "cost_per_1000_sites_pct_of_core_with_activation": {
            comp: costs[comp]["per_1000_sites_pct"] for comp in ("gateway", "broker", "aggregation", "dispatch")
        },
        "cost_fit_telemetry": telemetry_costs,
        "commands": {
            "sites": commands.get("sites", 0),
            "received_share": commands.get("received_share", math.nan),
            "p50_ms": commands.get("p50_ms", math.nan),
            "p99_ms": commands.get("p99_ms", math.nan),
            **{k: v for k, v in commands.items() if k not in ("sites", "received_share", "p50_ms", "p99_ms")},
        },
        "max_sites_held": best,
        "raw_consume_records_per_s": consume.get("raw", {}).get("records_per_s", math.nan),
        "max_sites_held_single_replica": max(held_single, default=0),
        "max_sites_held_replicated": max(held_replicated, default=0),
        "replicated_levels": list(replicated),
        "hold_levels": list(hold),
        "cost_fit": costs,
        "consume": dict(consume),
        "sizing": {str(n): sizing(costs, n, partitions) for n in (10_000, 100_000)},
        "targets": {
            "acked_share_min": ACKED_SHARE_MIN,
            "ack_p99_max_ms": ACK_P99_MAX_MS,
            "view_fresh_p99_max_s": VIEW_FRESH_P99_MAX_S,
            "commands_received_share_min": COMMANDS_SHARE_MIN,
            "command_p99_max_ms": COMMAND_P99_MAX_MS,
        },
        "meta": dict(meta),
    }
    return report


def _f(value: Any, fmt: str = ".1f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, fmt)


def _bound(value_ms: Any) -> str:
    """A Prometheus bucket's upper bound (the quantile is at most this)."""
    return "-" if value_ms is None or not math.isfinite(value_ms) else f"≤{value_ms:g}"


def _level_rows(levels: Sequence[Mapping[str, Any]]) -> list[str]:
    """Two tables per set of levels: what the sites got, and what it cost."""
    rows = [
        "| sites | samples taken / owed | acked share | ack p50 / p99 ms | ack p99 ms: telemetry alone / "
        "with activation | gateway write p99 ms | view fresh p99 s | GetPortfolioFlexibility p99 ms: client / "
        "handler (loop lag) | lag max records | commands received / p50 / p99 ms | held |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lv in levels:
        cmd = lv.get("commands") or {}
        held = "yes" if lv.get("held") else "no: " + "; ".join(lv.get("missed", []))
        rows.append(
            f"| {lv['sites']:,} | {_f(lv.get('generation_share'), '.3f')} | {_f(lv['acked_share'], '.4f')} | "
            f"{_f(lv['ack_p50_ms'], '.0f')} / {_f(lv['ack_p99_ms'], '.0f')} | "
            f"{_f(lv.get('ack_p99_ms_telemetry'), '.0f')} / {_f(lv.get('ack_p99_ms_activation'), '.0f')} | "
            f"{_f(lv.get('gateway_write_p99_ms'), '.0f')} | {_f(lv['view_fresh_p99_s'], '.2f')} | "
            f"{_f(lv.get('view_call_p99_ms'), '.0f')} / {_bound(lv.get('view_call_server_p99_ms'))} "
            f"({_bound(lv.get('aggregation_loop_lag_p99_ms'))}) | "
            f"{_f(lv['lag_max_records'], '.0f')}{'' if lv.get('lag_bounded', True) else ' (growing)'} | "
            f"{_f(cmd.get('received_share'), '.4f')} / {_f(cmd.get('p50_ms'), '.0f')} / "
            f"{_f(cmd.get('p99_ms'), '.0f')} | {held} |"
        )
    rows += [
        "",
        "| sites | gateway % | broker % | aggregation % | dispatch % | market % | harness % (fleet + Locust + "
        "driver) | others on the machine % | RSS MB gateway / broker / aggregation / dispatch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        harness = (
            f"{_f(lv.get('harness_cpu_pct'))} ({_f(lv.get('fleet_cpu_pct'))} + {_f(lv.get('locust_cpu_pct'))} + "
            f"{_f(lv.get('driver_cpu_pct'))})"
        )
        rss = " / ".join(_f(lv.get(f"{c}_rss_mb"), ".0f") for c in ("gateway", "broker", "aggregation", "dispatch"))
        rows.append(
            f"| {lv['sites']:,} | {_f(lv.get('gateway_cpu_pct'))} | {_f(lv.get('broker_cpu_pct'))} | "
            f"{_f(lv.get('aggregation_cpu_pct'))} | {_f(lv.get('dispatch_cpu_pct'))} | "
            f"{_f(lv.get('market_cpu_pct'))} | {harness} | {_f(lv.get('other_cpu_pct'))} | {rss} |"
        )
    return rows


def markdown(report: Mapping[str, Any]) -> str:
    meta = report["meta"]
    costs = report["cost_fit"]
    consume = report.get("consume", {})
    lines = [
        "# Fleet scale test (`make load-scale`)",
        "",
        f"Run {meta.get('started_at', '?')} on {meta.get('machine', '?')}; {meta.get('duration_s', 0) / 60:.1f} min. "
        f"Every figure below was measured in this run ({meta.get('command', 'make load-scale')}).",
        "",
        "Setup: the real platform as processes on loopback (`vpp_demo.stack`): Tansu (memory storage), "
        "gateway, aggregation, dispatch and market (no bidding, no forecasting: nothing in the measured paths "
        "needs them). Sites are played by `vpp_demo.fleet` processes, "
        f"{meta.get('block_sites', '?')} sites each, one Locust user per block "
        "(`tests/load/locustfile_scale.py`); each site has its own gRPC stream, token and agent epoch, "
        "samples at 1 Hz and batches like the real agent (up to 10 s; a command ack within a random 0-1 s). "
        "Each level's window is the telemetry alone first, then the market runs an "
        f"activation ({meta.get('activation', '?')}), so every online site gets a command every 4 s.",
        "",
        "CPU is % of one core over the level's window, from `/proc/<pid>/stat`; 'others on the machine' is "
        "what other processes (not ours) used meanwhile, from `/proc/stat` — this machine is shared, so read "
        f"the levels with that in mind. Locust and the fleet run at nice {meta.get('harness_nice', 0)}: the sites "
        "would be elsewhere in reality, so the platform gets the cores first. 'Samples taken / owed' is what "
        "the fleet produced of its 1 Hz per site: below ~0.99 the harness itself was short of CPU. 'Ack' is "
        "the fleet's stream write to the gateway's ack (durable in Kafka), 'gateway write' the gateway's own "
        "histogram of the same (message in to Kafka ack; Prometheus bucket upper bound). "
        "GetPortfolioFlexibility is called every 0.5 s by this driver: 'client' is what the caller saw, "
        "'handler' aggregation's own time answering it (vpp_grpc_request_seconds), 'loop lag' how late "
        "aggregation's event loop ran a timer (vpp_event_loop_lag_seconds): the difference is waiting for a "
        "core on a machine the fleet shares, not the answer's work.",
        "",
        "## Levels (one gateway, one aggregation replica)",
        "",
        *_level_rows(report["levels"]),
        "",
    ]
    baseline = meta.get("baseline") or {}
    if baseline:
        lines += [
            f"Idle platform (no site connected, {baseline.get('window_s', 0):.0f} s before the first level), % of a "
            f"core: gateway {_f(baseline.get('gateway_cpu_pct'))}, broker {_f(baseline.get('broker_cpu_pct'))}, "
            f"aggregation {_f(baseline.get('aggregation_cpu_pct'))}, dispatch {_f(baseline.get('dispatch_cpu_pct'))}, "
            f"market {_f(baseline.get('market_cpu_pct'))} (others on the machine {_f(baseline.get('other_cpu_pct'))}).",
            "",
        ]
    if report.get("replicated_levels"):
        lines += [
            "## Top levels again with 2 gateway and 2 aggregation replicas",
            "",
            *_level_rows(report["replicated_levels"]),
            "",
        ]
        for lv in report["replicated_levels"]:
            shares = lv.get("replica_shares", {})
            lines.append(f"- {lv['sites']:,} sites: " + "; ".join(f"{k}: {v}" for k, v in shares.items()))
        lines.append("")
    if report.get("hold_levels"):
        hold_s = max(lv.get("window_s", 0) for lv in report["hold_levels"])
        lines += [
            f"## The ladder's largest levels held, again for {hold_s / 60:.0f} minutes "
            "(the next one down if one fails)",
            "",
            *_level_rows(report["hold_levels"]),
            "",
        ]
    held_for = (
        f" for {max(lv.get('window_s', 0) for lv in report['hold_levels']):.0f} s" if report.get("hold_levels") else ""
    )
    replicated = report.get("replicated_levels") or []
    if report["max_sites_held_replicated"]:
        two = f"two replicas of gateway and aggregation held up to {report['max_sites_held_replicated']:,}"
    elif replicated:
        two = "two replicas of gateway and aggregation held none of " + ", ".join(
            f"{lv['sites']:,}" for lv in replicated
        )
    else:
        two = "two replicas were not run"
    lines += [
        "## Verdict",
        "",
        f"Largest N held (acked share >= {ACKED_SHARE_MIN}, ack p99 < {ACK_P99_MAX_MS / 1000:.0f} s, view fresh p99 < "
        f"{VIEW_FRESH_P99_MAX_S:.0f} s, lag bounded, commands received >= {COMMANDS_SHARE_MIN} with p99 < "
        f"{COMMAND_P99_MAX_MS / 1000:.0f} s): **{report['max_sites_held']:,} sites**{held_for}. In the ladder's "
        f"short windows one replica each held up to {report['max_sites_held_single_replica']:,} sites; {two}.",
        "",
    ]
    cmd = report["commands"]
    lines += [
        f"Commands at {cmd.get('sites', 0):,} sites: received {_f(cmd.get('received_share'), '.4f')} of "
        f"sites online x steps ({cmd.get('received', '?')} of {cmd.get('expected', '?')}), market step -> agent "
        f"receipt p50 {_f(cmd.get('p50_ms'), '.0f')} ms, p99 {_f(cmd.get('p99_ms'), '.0f')} ms.",
        "",
        "## Cost per site (least squares over the levels)",
        "",
        "Each level's window starts with the 1 Hz telemetry alone, then an activation runs on top (a command,",
        "an ack and the samples of the step, per site every 4 s). The first table is the telemetry part (what",
        "`cost_per_1000_sites_pct_of_core` in scale.json holds), the second the whole window, activation included",
        "(what the sizing below uses).",
        "",
        "| component | telemetry alone: fixed % of a core | % per 1,000 sites |",
        "|---|---:|---:|",
    ]
    for comp, cost in report.get("cost_fit_telemetry", {}).items():
        lines.append(f"| {comp} | {_f(cost['fixed_pct'])} | {_f(cost['per_1000_sites_pct'], '.2f')} |")
    lines += [
        "",
        "| component | whole window: fixed % of a core | % of a core per 1,000 sites | RSS fixed MB | "
        "RSS MB per 1,000 sites | levels used |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for comp, cost in costs.items():
        lines.append(
            f"| {comp} | {_f(cost['fixed_pct'])} | {_f(cost['per_1000_sites_pct'], '.2f')} | "
            f"{_f(cost['rss_fixed_mb'], '.0f')} | {_f(cost['rss_per_1000_sites_mb'], '.1f')} | "
            f"{', '.join(str(s) for s in cost['levels_used'])} ({cost['basis']}) |"
        )
    harness = meta.get("harness_cost", {})
    if harness:
        lines += [
            "",
            "The harness itself (fleet processes + Locust + this driver): "
            f"{_f(harness.get('per_1000_sites_pct'), '.2f')} % of a core per 1,000 sites (fleet alone "
            f"{_f(harness.get('fleet_per_1000_sites_pct'), '.2f')} %), "
            f"{_f(harness.get('at_max_pct'))} % at {harness.get('at_sites', 0):,} sites. It runs on the same two "
            "cores as the platform, so every level's headroom is smaller by that much than it would be with the "
            "sites elsewhere.",
        ]
    raw = consume.get("raw", {})
    ours = consume.get("aggregation", {})
    if raw:
        lines += [
            "",
            "## Consume rate: raw broker vs aggregation",
            "",
            f"The same {raw.get('records', 0):,} telemetry records ({raw.get('samples', 0):,} samples, "
            f"{raw.get('mb', 0):.0f} MB) read from the beginning of `vpp.telemetry.v1` by: a plain kafka-python "
            f"consumer (no decoding): **{_f(raw.get('records_per_s'), ',.0f')} records/s** = "
            f"{_f(raw.get('samples_per_s'), ',.0f')} samples/s; the same consumer decoding every Envelope: "
            f"{_f(consume.get('raw_decode', {}).get('samples_per_s'), ',.0f')} samples/s; "
            f"aggregation's own consumer runtime and handler (`EventConsumer` + `Aggregator.on_telemetry_batch`, "
            f"a fresh process owning every partition): **{_f(ours.get('samples_per_s'), ',.0f')} samples/s** "
            f"({_f(ours.get('records_per_s'), ',.0f')} records/s). Ratio aggregation / raw: "
            f"**{_f(consume.get('ratio_aggregation_over_raw'), '.2f')}**.",
        ]
    sizes = report.get("sizing", {})
    if sizes:
        lines += [
            "",
            "## Sizing (from the per-site costs above)",
            "",
            f"Replicas keep each at <= {REPLICA_CPU_TARGET:.0%} of a core; site topics have "
            f"{meta.get('site_partitions', 48)} partitions, the ceiling for aggregation and dispatch replicas. Broker "
            "figures are Tansu's (memory storage) on this machine: a Kafka cluster's cost differs, and the bytes to "
            "keep are what sizes its disks.",
            "",
            "| sites | component | replicas | cores | memory MB |",
            "|---:|---|---:|---:|---:|",
        ]
        for n, comps in sizes.items():
            for comp, s in comps.items():
                lines.append(
                    f"| {int(n):,} | {comp} | {s['replicas']} | {_f(s['cores'], '.2f')} | "
                    f"{_f(s['memory_mb'], ',.0f')} |"
                )
        bytes_per_sample = consume.get("raw", {}).get("bytes_per_sample")
        if bytes_per_sample:
            for n in (10_000, 100_000):
                per_day_gb = bytes_per_sample * n * 86_400 / 1e9
                lines.append("")
                lines.append(
                    f"Telemetry at {n:,} sites: {bytes_per_sample:.0f} bytes per sample in Kafka -> "
                    f"{per_day_gb:,.1f} GB per day, {per_day_gb * 7:,.0f} GB for the topic's 7-day retention "
                    "(times the replication factor)."
                )
    notes = meta.get("notes", [])
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines += ["", "![scale](scale.png)", ""]
    return "\n".join(lines)


def write_plot(timeline: Sequence[Mapping[str, Any]], marks: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Throughput, latency and lag over time, with the levels marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(12, 9), sharex=True)
    t = [p["t"] / 60.0 for p in timeline]

    def col(key: str) -> list[float]:
        return [p.get(key, math.nan) if p.get(key) is not None else math.nan for p in timeline]

    ax = axes[0]
    ax.plot(t, col("generated_per_s"), label="samples taken /s", color="tab:gray", lw=1)
    ax.plot(t, col("acked_per_s"), label="samples acked /s", color="tab:blue", lw=1.2)
    ax.set_ylabel("samples / s")
    twin = ax.twinx()
    twin.plot(t, col("connected"), label="sites connected", color="tab:green", lw=1, ls="--")
    twin.set_ylabel("sites connected")
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    ax.plot(t, col("ack_p50_ms"), label="ack p50 ms", color="tab:blue", lw=1)
    ax.plot(t, col("ack_p99_ms"), label="ack p99 ms", color="tab:red", lw=1)
    ax.plot(t, [v * 1000 for v in col("view_age_s")], label="view age ms (now - as_of)", color="tab:purple", lw=1)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.axhline(1000, color="k", lw=0.6, ls=":")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    ax.plot(t, col("lag_max"), label="consumer lag max (records)", color="tab:orange", lw=1)
    ax.set_ylabel("records")
    ax.set_xlabel("minutes since start")
    ax.legend(loc="upper left", fontsize=8)
    for mark in marks:
        for ax in axes:
            color = "tab:green" if mark.get("held") else "tab:red"
            ax.axvspan(mark["t0"] / 60.0, mark["t1"] / 60.0, color=color, alpha=0.08)
        axes[0].annotate(
            mark["label"], (mark["t0"] / 60.0, 1.0), xycoords=("data", "axes fraction"), fontsize=7, va="bottom"
        )
    fig.suptitle("make load-scale: throughput, latency and lag per level (green: held, red: not held)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """Re-write ``scale.md`` from a run's ``scale.json`` (after the report's wording changed)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", type=Path, nargs="?", default=Path("out/load/scale.json"))
    args = parser.parse_args(argv)
    report = json.loads(args.json.read_text())
    args.json.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.json.with_suffix('.md')}")


if __name__ == "__main__":
    main()
