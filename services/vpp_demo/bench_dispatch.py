"""``make bench-dispatch``: dispatch measured the way a TSO prequalifies it. Writes
``out/bench/dispatch.json`` and ``.md`` (quoted in the README), section by section:

* ``allocation``: the exact allocator against HiGHS on the same instances (1k, 10k, 100k sites);
* ``latency``: activation issued -> setpoint written over Modbus for real edge agents with device
  simulators, beside a raw kafka-python produce -> consume -> produce -> consume round trip on the same
  broker in the same run (the activation path crosses Kafka twice: activation in, command out);
* ``tracking``: a modelled aFRR signal (``vpp_demo.afrr_signal``) delivered by simulated sites
  (``vpp_demo.fleet``: response lag, noise, 10 % failing at random times), closed loop against open
  loop (pro-rata, no feedback), each on a fresh stack with the same fleet seed;
* ``failover``: two dispatch replicas, the active one killed with SIGKILL mid-activation.

    python -m vpp_demo.bench_dispatch [--sections allocation,latency,tracking,failover] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from vpp.v1 import dispatch_pb2, market_pb2

from vpp_common.kafka import Consumed, ConsumerSpec, EventConsumer, EventProducer, ensure_topics
from vpp_common.settings import ServiceSettings
from vpp_common.topics import ACKS, ACTIVATIONS, RUNS, TELEMETRY, TRACKING, Topic
from vpp_demo.afrr_signal import afrr_signal
from vpp_demo.sites import SiteSpec
from vpp_demo.stack import DEMO_SECRET, Stack

STEP_S = 4.0
PING = Topic("vpp.bench.ping.v1", "-", "-", 1)
PONG = Topic("vpp.bench.pong.v1", "-", "-", 1)


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))])


# -- taps and drivers (asyncio, the platform's own runtime) --------------------------------------------


@dataclass
class Tap:
    """Everything the bench reads back from Kafka: tracking samples, acks, run states, telemetry limits."""

    samples: dict[int, dispatch_pb2.TrackingSample] = field(default_factory=dict)
    acks: list[dispatch_pb2.CommandAck] = field(default_factory=list)
    runs: dict[int, dispatch_pb2.ActivationRun] = field(default_factory=dict)
    ratings_kw: dict[str, float] = field(default_factory=dict)  # site -> min(max charge, max discharge)
    activation_id: str = ""

    async def handle(self, item: Consumed) -> None:
        env = item.env
        if env.HasField("tracking"):
            if env.tracking.activation_id == self.activation_id:
                self.samples[env.tracking.step] = env.tracking
        elif env.HasField("ack_batch"):
            self.acks.extend(r.ack for r in env.ack_batch.records if r.ack.activation_id == self.activation_id)
        elif env.HasField("activation_run"):
            if env.activation_run.activation_id == self.activation_id:
                self.runs[env.activation_run.step] = env.activation_run
        elif env.HasField("telemetry_batch"):
            for r in env.telemetry_batch.records:
                t = r.telemetry
                self.ratings_kw[t.site_id] = min(t.max_charge_kw, t.max_discharge_kw)


async def run_activation(
    bootstrap: str,
    setpoints_kw: list[float] | Callable[[Tap], list[float]],
    *,
    warmup_s: float = 12.0,
    tail_s: float = 12.0,
    on_step: Callable[[int], None] | None = None,
) -> tuple[Tap, dict[int, float]]:
    """Tap the platform for ``warmup_s`` (site limits), then send one aFRR step every 4 s as the TSO would,
    then keep reading for ``tail_s`` (the last steps are measured after their end)."""
    settings = ServiceSettings(kafka_bootstrap_servers=bootstrap, kafka_fetch_max_wait_ms=50)
    producer = EventProducer(settings)
    await producer.start()
    tap = Tap(activation_id=f"bench-{uuid.uuid4().hex[:8]}")
    spec = ConsumerSpec([TRACKING, ACKS, RUNS, TELEMETRY], tap.handle, "bench-tap", None, start_at="latest")
    consumer = EventConsumer(settings, spec, producer)
    task = asyncio.create_task(consumer.run())
    issued: dict[int, float] = {}
    try:
        await asyncio.sleep(warmup_s)
        plan = setpoints_kw(tap) if callable(setpoints_kw) else setpoints_kw
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for k, setpoint in enumerate(plan, start=1):
            act = market_pb2.Activation(
                activation_id=tap.activation_id, step=k, product="aFRR", setpoint_kw=setpoint, portfolio_id="bench"
            )
            act.issued_at.GetCurrentTime()
            act.valid_until.FromNanoseconds(act.issued_at.ToNanoseconds() + int(2 * STEP_S * 1e9))
            issued[k] = act.issued_at.ToNanoseconds() / 1e9
            await producer.publish(ACTIVATIONS, "bench", act)
            if on_step is not None:
                on_step(k)
            if k % 25 == 0:
                done = [s for s in tap.samples.values() if s.delivered_kw == s.delivered_kw]
                err = [abs(s.error_kw) for s in done[-25:]]
                mean_err = statistics.fmean(err) if err else 0.0
                progress(f"  step {k}/{len(plan)}: {len(done)} measured, recent mean |error| {mean_err:.1f} kW")
            next_at += STEP_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        await asyncio.sleep(tail_s)
    finally:
        consumer.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 20)
        await producer.close()
    return tap, issued


# -- raw Kafka round trip ----------------------------------------------------------------------------


def raw_round_trip_ms(bootstrap: str, stop: threading.Event, out: list[float], fetch_wait_ms: int = 50) -> None:
    """kafka-python alone: ping produced, consumed, answered with a pong, pong consumed; at random moments
    (no phase lock with the fetch cycle), for as long as the activation runs."""
    rng = np.random.default_rng(7)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    ping = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=fetch_wait_ms, enable_auto_commit=False)
    pong = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=fetch_wait_ms, enable_auto_commit=False)
    ping_tp, pong_tp = TopicPartition(PING.name, 0), TopicPartition(PONG.name, 0)
    ping.assign([ping_tp])
    pong.assign([pong_tp])
    ping.seek_to_end(ping_tp)
    pong.seek_to_end(pong_tp)
    ping.poll(timeout_ms=200)
    pong.poll(timeout_ms=200)

    def echo() -> None:
        while not stop.is_set():
            for records in ping.poll(timeout_ms=200).values():
                for r in records:
                    producer.send(PONG.name, value=r.value)
                    producer.flush()

    echoer = threading.Thread(target=echo, daemon=True)
    echoer.start()
    try:
        while not stop.is_set():
            time.sleep(float(rng.uniform(0.2, 0.6)))
            token = uuid.uuid4().bytes
            sent = time.perf_counter()
            producer.send(PING.name, value=token)
            producer.flush()
            deadline = sent + 5
            got = False
            while not got and time.perf_counter() < deadline:
                for records in pong.poll(timeout_ms=100).values():
                    if any(r.value == token for r in records):
                        got = True
            if got:
                out.append((time.perf_counter() - sent) * 1000)
    finally:
        echoer.join(2)
        for c in (ping, pong):
            c.close()
        producer.close()


# -- helpers on processes ------------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not within {timeout_s:.0f} s")


def start_fleet(
    stack: Stack, workdir: Path, sites: int, block: str, args: list[str], duration_s: float
) -> subprocess.Popen[bytes]:
    profile = workdir / "fleet-profile.csv"
    if not profile.exists():
        from vpp_demo.fleet import Profile

        Profile.real().write_csv(profile)
    env = dict(os.environ, VPP_FLEET_SECRET=DEMO_SECRET)
    argv = [
        sys.executable, "-m", "vpp_demo.fleet",
        "--targets", stack.target("gateway"),
        "--sites", str(sites),
        "--block", block,
        "--profile", str(profile),
        "--duration-s", str(duration_s),
        "--stats-file", str(workdir / f"fleet-{block}.jsonl"),
        "--summary-file", str(workdir / f"fleet-{block}-summary.json"),
        *args,
    ]  # fmt: skip
    log = open(workdir / f"fleet-{block}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_fleet(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def fleet_summary(workdir: Path, block: str) -> dict[str, Any]:
    path = workdir / f"fleet-{block}-summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def dispatch_stack(workdir: Path, replicas: int, env: dict[str, str]) -> Stack:
    return Stack(
        workdir,
        sites=(),
        services=("dispatch", "gateway"),
        replicas={"dispatch": replicas},
        extra_env=env,
        progress=lambda m: progress(m.strip()),
    )


def award_of(tap: Tap, share: float) -> float:
    """The awarded capacity: ``share`` of the fleet's symmetric power (so 10 % failing still leaves room)."""
    return share * sum(tap.ratings_kw.values())


# -- sections ---------------------------------------------------------------------------------------


def section_allocation(quick: bool) -> list[dict[str, Any]]:
    from vpp_demo.allocation_bench import run_allocation_bench

    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    return run_allocation_bench(sizes=sizes, instances=2 if quick else 5, progress=progress)


def latency_sites(n: int) -> list[SiteSpec]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        kw = float(rng.choice([5.0, 8.0, 10.0, 30.0]))
        out.append(
            SiteSpec(
                site_id=f"lat-{i:03d}",
                kind="home" if kw <= 10 else "school",
                pv_kwp=kw,
                battery_capacity_kwh=2 * kw,
                battery_max_kw=kw,
                load_scale=float(rng.uniform(0.5, 2.0)),
                soc_pct=float(rng.uniform(40, 70)),
            )
        )
    return out


def section_latency(workdir: Path, n_sites: int, steps: int) -> dict[str, Any]:
    progress(f"== latency: {n_sites} real edge agents + device simulators, {steps} aFRR steps")
    with Stack(
        workdir / "latency",
        sites=latency_sites(n_sites),
        services=("aggregation", "dispatch", "gateway"),
        progress=lambda m: progress(m.strip()),
    ) as stack:
        ensure_topics(stack.bootstrap_servers, stack.site_partitions(), [PING, PONG])
        rtt: list[float] = []
        stop = threading.Event()
        pinger = threading.Thread(target=raw_round_trip_ms, args=(stack.bootstrap_servers, stop, rtt), daemon=True)
        pinger.start()

        def signal_for(tap: Tap) -> list[float]:
            award = award_of(tap, 0.4)
            return [award * float(x) for x in afrr_signal(steps * STEP_S, STEP_S, seed=11, compress=8.0)]

        try:
            tap, issued = asyncio.run(run_activation(stack.bootstrap_servers, signal_for, warmup_s=12))
        finally:
            stop.set()
            pinger.join(10)
    latencies = [
        a.written_at.ToNanoseconds() / 1e6 - issued[a.step] * 1e3
        for a in tap.acks
        if a.step in issued and a.HasField("written_at") and a.status in (1, 2)
    ]
    out = {
        "sites": n_sites,
        "steps": steps,
        "writes": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(pct(latencies, 99), 1) if latencies else None,
        "kafka_rtt_p50_ms": round(statistics.median(rtt), 1) if rtt else None,
        "kafka_rtt_p99_ms": round(pct(rtt, 99), 1) if rtt else None,
        "kafka_rtt_samples": len(rtt),
    }
    if latencies and rtt:
        out["p99_ratio_to_rtt"] = round(pct(latencies, 99) / pct(rtt, 99), 2)
    return out


FLEET_DYNAMICS = ["--lag-s", "1.0", "--ramp-kw-per-s", "0", "--noise-kw", "0.05"]


def tracking_run(workdir: Path, n_sites: int, compress: float, closed: bool, fail_share: float) -> dict[str, Any]:
    label = "closed" if closed else "open"
    duration_s = 3600.0 / compress
    steps = int(duration_s / STEP_S)
    run_dir = workdir / f"tracking-{label}"
    env = {"VPP_CLOSED_LOOP": "true" if closed else "false"}
    progress(f"== tracking ({label} loop): {n_sites} simulated sites, 1 h of aFRR signal x{compress:g} = {steps} steps")
    with dispatch_stack(run_dir, 1, env) as stack:
        blocks = max(1, math.ceil(n_sites / 500))
        per = math.ceil(n_sites / blocks)
        warmup_s = 25.0
        fail = ["--fail-share", str(fail_share), "--fail-after-s", str(warmup_s + 20),
                "--fail-before-s", str(warmup_s + duration_s - 30)]  # fmt: skip
        fleets = [
            start_fleet(
                stack,
                run_dir,
                per,
                f"t{b}",
                [*FLEET_DYNAMICS, *fail, "--seed", str(5 + b), "--truth-file", str(run_dir / f"truth-t{b}.jsonl")],
                duration_s + 120,
            )
            for b in range(blocks)
        ]
        try:
            wait_for(
                f"{n_sites} sites at dispatch",
                lambda: stack.metric("dispatch", "vpp_dispatch_sites_known") >= blocks * per,
                90,
            )
            award: list[float] = []

            def signal_for(tap: Tap) -> list[float]:
                award.append(award_of(tap, 0.5))
                return [award[0] * float(x) for x in afrr_signal(duration_s, STEP_S, seed=21, compress=compress)]

            tap, issued = asyncio.run(run_activation(stack.bootstrap_servers, signal_for, warmup_s=12))
        finally:
            for f in fleets:
                stop_fleet(f)
    samples = [
        tap.samples[k] for k in sorted(tap.samples) if tap.samples[k].delivered_kw == tap.samples[k].delivered_kw
    ]
    truth = truth_series([run_dir / f"truth-t{b}.jsonl" for b in range(blocks)])
    steps_out = []
    truth_errors = []
    for s in samples:
        end_s = issued.get(s.step + 1, issued[s.step] + STEP_S)
        true_kw = truth.get(int(end_s) - 1)  # the fleet's own delivery in the last whole second of the step
        if true_kw is not None:
            truth_errors.append(s.requested_kw - true_kw)
        steps_out.append([s.step, issued[s.step], s.requested_kw, s.delivered_kw, true_kw, s.sites_dropped])
    (run_dir / "steps.json").write_text(json.dumps({"award_kw": award[0], "steps": steps_out}))
    errors = np.array([s.error_kw for s in samples])
    delivered = np.array([s.delivered_kw for s in samples])
    summaries = [fleet_summary(run_dir, f"t{b}") for b in range(blocks)]
    failures = sum(len(s.get("failures", [])) for s in summaries)
    return {
        "award_kw": round(award[0], 1),
        "steps": steps,
        "measured_steps": len(samples),
        "rmse_pct": round(float(np.sqrt(np.mean(errors**2))) / award[0] * 100, 3),
        "max_pct": round(float(np.max(np.abs(errors))) / award[0] * 100, 3),
        "energy_mwh": round(float(np.sum(np.abs(delivered))) * STEP_S / 3.6e6, 4),
        "failed_sites": failures,
        # The same against the simulator's ground truth (noise-free battery - baseline, every site,
        # failed ones included): checks the platform's own meter measurement.
        "truth_rmse_pct": round(float(np.sqrt(np.mean(np.square(truth_errors)))) / award[0] * 100, 3)
        if truth_errors
        else None,
        "sites_dropped": max((s.sites_dropped for s in samples), default=0),
    }


def truth_series(paths: list[Path]) -> dict[int, float]:
    """The fleets' true delivery per wall-clock second, summed over fleet processes."""
    out: dict[int, float] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            point = json.loads(line)
            second = int(point["t"])
            out[second] = out.get(second, 0.0) + float(point["delivered_kw"])
    return out


def plot_tracking_runs(workdir: Path, png: Path) -> Path | None:
    """Requested vs delivered, closed and open loop, and their errors in % of the award."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for label in ("closed", "open"):
        path = workdir / f"tracking-{label}" / "steps.json"
        if path.exists():
            runs[label] = json.loads(path.read_text())
    if not runs:
        return None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for label, run in runs.items():
        steps = run["steps"]
        t0 = steps[0][1]
        ts = [(row[1] - t0) / 60 for row in steps]
        if label == "closed":
            ax1.step(ts, [row[2] for row in steps], where="post", color="black", lw=1, label="requested (aFRR signal)")
        ax1.plot(ts, [row[3] for row in steps], lw=0.8, label=f"delivered, {label} loop", alpha=0.8)
        ax2.plot(ts, [(row[2] - row[3]) / run["award_kw"] * 100 for row in steps], lw=0.8, label=f"{label} loop")
    ax1.set_ylabel("portfolio kW vs baseline")
    ax1.legend(loc="best", fontsize=8)
    ax1.set_title("aFRR tracking, simulated fleet with 10 % of sites failing at random times")
    ax2.set_ylabel("error, % of award")
    ax2.set_xlabel("minutes (the 1 h signal time-compressed, see docs/dispatch-bench.md)")
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def section_tracking(workdir: Path, n_sites: int, compress: float, fail_share: float, png: Path) -> dict[str, Any]:
    closed = tracking_run(workdir, n_sites, compress, True, fail_share)
    opened = tracking_run(workdir, n_sites, compress, False, fail_share)
    plot_tracking_runs(workdir, png)
    return {
        "sites": n_sites,
        "failing_share": fail_share,
        "signal": f"1 h of modelled aFRR (vpp_demo.afrr_signal) played x{compress:g}: {closed['steps']} steps of 4 s",
        "time_compression": compress,
        "award_kw": closed["award_kw"],
        "closed_loop_rmse_pct": closed["rmse_pct"],
        "closed_loop_max_pct": closed["max_pct"],
        "closed_loop_truth_rmse_pct": closed["truth_rmse_pct"],
        "open_loop_truth_rmse_pct": opened["truth_rmse_pct"],
        "open_loop_rmse_pct": opened["rmse_pct"],
        "open_loop_max_pct": opened["max_pct"],
        "rmse_ratio_open_to_closed": round(opened["rmse_pct"] / closed["rmse_pct"], 2) if closed["rmse_pct"] else None,
        "energy_mwh": closed["energy_mwh"],
        "closed": closed,
        "open": opened,
    }


def run_failover(workdir: Path, n_sites: int, steps: int, kill_at_step: int) -> dict[str, Any]:
    """Two dispatch replicas; SIGKILL the active one at ``kill_at_step``; read back what the sites got."""
    progress(f"== failover: {n_sites} simulated sites, 2 dispatch replicas, SIGKILL at step {kill_at_step}/{steps}")
    with dispatch_stack(workdir, 2, {}) as stack:
        fleet = start_fleet(
            stack, workdir, n_sites, "f0", ["--lag-s", "0.5", "--noise-kw", "0.02"], steps * STEP_S + 120
        )
        killed: list[tuple[str, float]] = []
        try:
            wait_for(
                "sites at both dispatch replicas",
                lambda: all(stack.metric(f"dispatch-{i}", "vpp_dispatch_sites_known") >= n_sites for i in range(2)),
                90,
            )
            wait_for("a dispatch leader", lambda: stack.dispatch_leader() is not None, 30)

            def kill(k: int) -> None:
                if k == kill_at_step:
                    name = stack.dispatch_leader()
                    assert name is not None
                    os.kill(stack.proc(name).popen.pid, signal.SIGKILL)
                    killed.append((name, time.time()))
                    progress(f"  step {k}: SIGKILL {name}")

            award: list[float] = []

            def signal_for(tap: Tap) -> list[float]:
                award.append(award_of(tap, 0.5))
                shape = afrr_signal(steps * STEP_S, STEP_S, seed=4, compress=4.0)
                shape = np.where(np.abs(shape) < 0.3, np.sign(shape + 1e-9) * 0.3, shape)  # keep it busy
                return [award[0] * float(x) for x in shape]

            tap, _ = asyncio.run(run_activation(stack.bootstrap_servers, signal_for, on_step=kill))
            new_leader = stack.dispatch_leader()
        finally:
            stop_fleet(fleet)
    summary = fleet_summary(workdir, "f0")
    measured = {k: s for k, s in tap.samples.items() if s.delivered_kw == s.delivered_kw}
    overshoot_kw = [
        max(0.0, (s.delivered_kw - s.requested_kw) * (1 if s.requested_kw >= 0 else -1)) for s in measured.values()
    ]
    late = sorted(k for k, r in tap.runs.items() if r.late)
    executed = set(tap.runs)
    return {
        "sites": n_sites,
        "steps": steps,
        "killed": killed[0][0] if killed else None,
        "new_leader": new_leader,
        "award_kw": round(award[0], 1),
        "late_steps": len(late),
        "late_step_numbers": late,
        "lost_steps": len(set(range(1, steps + 1)) - executed),
        "max_overshoot_kw": round(max(overshoot_kw, default=0.0), 2),
        "max_overshoot_pct": round(max(overshoot_kw, default=0.0) / award[0] * 100, 3),
        "double_applied": int(summary.get("double_applied", -1)),
        "duplicates_refused": int(summary.get("duplicates_refused", 0)),
        "stale_epoch_refused": int(summary.get("stale_epoch_refused", 0)),
        "measured_steps": len(measured),
        "per_step": [
            [k, round(s.requested_kw, 2), round(s.delivered_kw, 2), s.leader_epoch, s.late, s.sites_dropped]
            for k, s in sorted(measured.items())
        ],
        "max_abs_error_pct_after_kill": round(
            max((abs(s.error_kw) for k, s in measured.items() if k >= kill_at_step), default=0.0) / award[0] * 100, 3
        ),
    }


# -- report ---------------------------------------------------------------------------------------------


def render_md(result: dict[str, Any]) -> str:
    lines = [
        "# Dispatch benchmark (`make bench-dispatch`)",
        "",
        f"Run {result.get('run_at', '')} on {os.cpu_count()} cores.",
        "",
    ]
    if "allocation" in result:
        lines += [
            "## Allocation: exact allocator vs HiGHS",
            "",
            "| sites | ours (median ms) | ours with the 0.05 kW deadband (ms) | HiGHS (median ms) | HiGHS solver "
            "| max relative objective gap |",
            "|---:|---:|---:|---:|---|---:|",
        ]
        for row in result["allocation"]:
            banded = row.get("ours_with_deadband_ms", float("nan"))
            lines.append(
                f"| {row['sites']:,} | {row['ours_ms']:.2f} | {banded:.2f} | {row['highs_ms']:,.0f} "
                f"| {row.get('highs_solver') or '-'} | {row['max_rel_gap']:.1e} |"
            )
        lines.append("")
    if "latency" in result:
        r = result["latency"]
        lines += [
            "## Latency: activation issued -> setpoint written over Modbus",
            "",
            f"{r['sites']} real edge agents with device simulators, {r['writes']} writes over {r['steps']} steps: "
            f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms. Raw kafka-python round trip (ping -> pong, fetch wait 50 ms) "
            f"in the same run: p50 {r['kafka_rtt_p50_ms']} ms, p99 {r['kafka_rtt_p99_ms']} ms; "
            f"our p99 / raw p99 = {r.get('p99_ratio_to_rtt')}.",
            "",
        ]
    if "tracking" in result:
        r = result["tracking"]
        lines += [
            "## Tracking",
            "",
            f"{r['sites']} simulated sites, {r['failing_share']:.0%} failing at random times; {r['signal']}; "
            f"award {r['award_kw']} kW.",
            "",
            "| | RMSE (% of award) | max error (% of award) |",
            "|---|---:|---:|",
            f"| closed loop | {r['closed_loop_rmse_pct']} | {r['closed_loop_max_pct']} |",
            f"| open loop (pro-rata, no feedback) | {r['open_loop_rmse_pct']} | {r['open_loop_max_pct']} |",
            "",
            f"Open / closed RMSE: {r['rmse_ratio_open_to_closed']}x; "
            f"energy delivered (closed loop): {r['energy_mwh']} MWh.",
            "",
        ]
    if "failover" in result:
        r = result["failover"]
        lines += [
            "## Failover: SIGKILL of the active dispatcher mid-activation",
            "",
            f"{r['sites']} simulated sites, {r['steps']} steps, {r['killed']} killed, {r['new_leader']} took over: "
            f"late steps {r['late_steps']}, lost steps {r['lost_steps']}, largest overshoot {r['max_overshoot_kw']} kW "
            f"({r['max_overshoot_pct']} % of the award), commands applied twice {r['double_applied']} "
            f"(refused at the sites: {r['duplicates_refused']} duplicates, "
            f"{r['stale_epoch_refused']} from the deposed epoch).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="allocation,latency,tracking,failover")
    parser.add_argument("--out", default="out/bench")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the benchmark)")
    parser.add_argument("--latency-sites", type=int, default=50)
    parser.add_argument("--latency-steps", type=int, default=40)
    parser.add_argument("--tracking-sites", type=int, default=1000)
    parser.add_argument("--tracking-compress", type=float, default=6.0)
    parser.add_argument("--fail-share", type=float, default=0.1)
    parser.add_argument("--failover-sites", type=int, default=300)
    parser.add_argument("--failover-steps", type=int, default=30)
    args = parser.parse_args(argv)
    if args.quick:
        args.latency_sites, args.latency_steps = 5, 10
        args.tracking_sites, args.tracking_compress = 100, 60.0
        args.failover_sites, args.failover_steps = 50, 15
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "dispatch-work"
    json_path = out / "dispatch.json"
    result: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {}
    result["run_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    result["quick"] = args.quick
    for section in args.sections.split(","):
        if section == "allocation":
            result["allocation"] = section_allocation(args.quick)
        elif section == "latency":
            result["latency"] = section_latency(work, args.latency_sites, args.latency_steps)
        elif section == "tracking":
            result["tracking"] = section_tracking(
                work, args.tracking_sites, args.tracking_compress, args.fail_share, out / "dispatch-tracking.png"
            )
        elif section == "failover":
            kill_at = max(3, args.failover_steps // 2)
            result["failover"] = run_failover(work / "failover", args.failover_sites, args.failover_steps, kill_at)
        else:
            parser.error(f"--sections: unknown section {section!r}")
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        (out / "dispatch.md").write_text(render_md(result) + "\n")
        progress(f"{section} done -> {json_path}")
    print(render_md(result))


if __name__ == "__main__":
    main()
