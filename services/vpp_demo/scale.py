"""``make load-scale``: how many sites the platform holds on this machine, and what each site costs.

Starts the real platform (``vpp_demo.stack``: Tansu, gateway, aggregation, dispatch, market; no bidding
or forecasting, nothing on the measured paths needs them), then Locust headless with
``tests/load/locustfile_scale.py``: each Locust user is one ``vpp_demo.fleet`` block of sites, and this
driver steps the user count through a ladder of N (a control file the locustfile's load shape follows).
At each level, once every site is connected and online in aggregation and has settled, it measures
over a window: acked share and ack latency (from the fleet), view freshness and call latency
(GetPortfolioFlexibility every 0.5 s: now - as_of), consumer lag (services' /metrics), CPU and RSS of
every process (``/proc``), and runs an aFRR activation whose commands it follows to every site (market
step issue time from ``vpp.market.activations.v1`` to the agent's receipt).

Levels that one gateway and one aggregation replica cannot hold are run again with two of each. A
separate short run fills a fresh broker and compares the raw consume rate of the telemetry topic with
aggregation's own. ``vpp_demo.scale_report`` turns it all into ``out/load/scale.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import grpc
from vpp.v1 import aggregation_pb2, aggregation_pb2_grpc, envelope_pb2, market_api_pb2, market_api_pb2_grpc

from vpp_common.kafka import read_topic
from vpp_common.topics import ACTIVATIONS, TELEMETRY
from vpp_demo import scale_report
from vpp_demo.fleet import Profile
from vpp_demo.stack import DEMO_SECRET, Stack
from vpp_devtools.process import die_with_parent, exit_on_sigterm

SERVICES = ("gateway", "aggregation", "dispatch", "market")
LOCUSTFILE = Path(__file__).resolve().parents[2] / "tests" / "load" / "locustfile_scale.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROGRESS_EVERY_S = 10.0
BASELINE_S = 30.0  # the idle platform (no sites) before the first level: the fixed part of every cost
GRACE_S = 15.0  # after a window: acks of its last samples (batched up to 10 s by the agents) still count


def progress(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def harness_preexec(niceness: int) -> Callable[[], None]:
    """The load generator (Locust and the fleet processes it starts, which inherit it) runs at a lower CPU
    priority: sites live elsewhere in reality, so the platform gets the two cores first and the harness the
    rest. Its CPU is still measured; a level where it could not keep up shows in the generation share."""

    def preexec() -> None:
        die_with_parent()
        if niceness:
            os.nice(niceness)

    return preexec


# -- /proc ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process (all its threads), in seconds; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores (``/proc/stat``)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


@dataclass
class CpuSnapshot:
    t: float
    per_pid: dict[int, float]
    machine_busy: float

    @classmethod
    def take(cls, pids: list[int]) -> CpuSnapshot:
        per_pid = {pid: s for pid in pids if (s := cpu_seconds(pid)) is not None}
        return cls(time.time(), per_pid, machine_cpu()[0])


def cpu_pct(a: CpuSnapshot, b: CpuSnapshot, pids: list[int]) -> float:
    """% of one core the given processes used between two snapshots."""
    span = max(1e-6, b.t - a.t)
    used = sum(b.per_pid[p] - a.per_pid.get(p, b.per_pid[p]) for p in pids if p in b.per_pid)
    return used / span * 100.0


# -- what the fleet blocks measured ------------------------------------------------------------------------


class FleetStats:
    """Tails every block's JSON-lines stats file and keeps what the levels need, aggregated per second."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[Path, tuple[IO[str], list[str]]] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self.lat_by_s: dict[int, dict[int, int]] = {}
        self.gen_by_s: dict[int, int] = {}
        self.acked_by_s: dict[int, int] = {}
        self.cmds: list[list[Any]] = []
        self.pids: dict[str, int] = {}

    def poll(self) -> None:
        if not self.directory.exists():
            return
        for path in sorted(self.directory.glob("fleet-*.jsonl")):
            handle, partial = self._files.get(path) or (path.open(), [""])
            self._files[path] = (handle, partial)
            chunk = handle.read()
            if not chunk:
                continue
            lines = (partial[0] + chunk).split("\n")
            partial[0] = lines.pop()
            for raw in lines:
                if raw.strip():
                    self._ingest(json.loads(raw))

    def _ingest(self, line: dict[str, Any]) -> None:
        second = int(line["t"])
        hist = self.lat_by_s.setdefault(second, {})
        for ms, count in line.pop("lat_ms").items():
            hist[int(ms)] = hist.get(int(ms), 0) + count
        for key, target in (("gen_by_s", self.gen_by_s), ("acked_by_s", self.acked_by_s)):
            for s, count in line.pop(key).items():
                target[int(s)] = target.get(int(s), 0) + count
        self.cmds.extend(line.pop("cmds"))
        line.pop("msg_lat_ms", None)
        self.latest[line["block"]] = line
        self.pids[line["block"]] = int(line["pid"])

    def live(self) -> list[dict[str, Any]]:
        return [line for line in self.latest.values() if not line.get("final")]

    def connected(self) -> int:
        return sum(int(line["connected"]) for line in self.live())

    def total(self, key: str) -> int:
        return sum(int(line.get(key, 0)) for line in self.latest.values())

    def live_pids(self) -> list[int]:
        return [int(line["pid"]) for line in self.live()]

    def latency_hist(self, t0: float, t1: float) -> dict[int, int]:
        return scale_report.merge_hists(h for s, h in self.lat_by_s.items() if t0 <= s < t1)

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()


# -- the platform's own view: flexibility calls and /metrics ---------------------------------------------------


@dataclass
class ServiceMetrics:
    t: float
    lag_max: float = 0.0
    lag_by_service: dict[str, float] = field(default_factory=dict)
    gateway_connected: dict[str, float] = field(default_factory=dict)
    aggregation_partitions: dict[str, float] = field(default_factory=dict)
    aggregation_sites_owned: dict[str, float] = field(default_factory=dict)
    dispatch_commands: float = 0.0
    gateway_write_buckets: dict[float, float] = field(default_factory=dict)  # le (s) -> cumulative count
    # aggregation's own histograms, summed over replicas: "flex_call" (GetPortfolioFlexibility handler),
    # "loop_lag" (event loop), "gc_pause" (every generation); le (s) -> cumulative count
    aggregation_hists: dict[str, dict[float, float]] = field(default_factory=dict)


_AGGREGATION_HISTS = {
    "vpp_grpc_request_seconds": "flex_call",
    "vpp_event_loop_lag_seconds": "loop_lag",
    "vpp_gc_pause_seconds": "gc_pause",
}


def scrape(urls: dict[str, str]) -> ServiceMetrics:
    """The few series the levels need, by a plain scan of the exposition text (cheap enough every 2 s)."""
    out = ServiceMetrics(time.time())
    for name, url in urls.items():
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        lag = 0.0
        for line in text.splitlines():
            if line.startswith("vpp_kafka_consumer_lag_records{"):
                lag = max(lag, float(line.rsplit(" ", 1)[1]))
            elif line.startswith("vpp_gateway_connected_sites "):
                out.gateway_connected[name] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("vpp_kafka_partitions_owned{") and 'consumer="telemetry"' in line:
                out.aggregation_partitions[name] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("vpp_aggregation_sites_owned "):
                out.aggregation_sites_owned[name] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("vpp_dispatch_commands_total "):
                out.dispatch_commands += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vpp_gateway_kafka_write_seconds_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                bound = math.inf if le == "+Inf" else float(le)
                out.gateway_write_buckets[bound] = out.gateway_write_buckets.get(bound, 0.0) + float(
                    line.rsplit(" ", 1)[1]
                )
            elif name.startswith("aggregation") and "_bucket{" in line:
                key = _AGGREGATION_HISTS.get(line.split("_bucket{", 1)[0])
                if key is None or (key == "flex_call" and "GetPortfolioFlexibility" not in line):
                    continue
                le = line.split('le="', 1)[1].split('"', 1)[0]
                bound = math.inf if le == "+Inf" else float(le)
                hist = out.aggregation_hists.setdefault(key, {})
                hist[bound] = hist.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
        out.lag_by_service[name] = lag
        out.lag_max = max(out.lag_max, lag)
    return out


@dataclass
class FlexSample:
    t: float
    age_s: float
    call_ms: float
    online: int
    total: int
    partitions: int
    stale: int


class Probe(threading.Thread):
    """GetPortfolioFlexibility every 0.5 s (freshness, call latency) and /metrics every 2 s."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(name="scale-probe", daemon=True)
        self.aggregation_target = stack.target("aggregation")
        self.urls = {k: v for k, v in stack.metrics_urls().items() if not k.startswith("market")}
        self.flex: list[FlexSample] = []
        self.flex_errors: list[tuple[float, str]] = []
        self.metrics: list[ServiceMetrics] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_scrape = 0.0
        with grpc.insecure_channel(self.aggregation_target) as channel:
            stub = aggregation_pb2_grpc.AggregationServiceStub(channel)
            request = aggregation_pb2.GetPortfolioFlexibilityRequest()
            while not self._stop_event.is_set():
                started = time.perf_counter()
                try:
                    flex = stub.GetPortfolioFlexibility(request, timeout=5)
                    now = time.time()
                    call_ms = (time.perf_counter() - started) * 1000.0
                    as_of = flex.as_of.ToNanoseconds() / 1e9 if flex.HasField("as_of") else math.nan
                    self.flex.append(
                        FlexSample(
                            now,
                            now - as_of,
                            call_ms,
                            flex.sites_online,
                            flex.sites_total,
                            flex.partitions,
                            flex.partitions_stale,
                        )
                    )
                except grpc.RpcError as exc:
                    self.flex_errors.append((time.time(), exc.code().name if isinstance(exc, grpc.Call) else "?"))
                if time.monotonic() >= next_scrape:
                    next_scrape = time.monotonic() + 2.0
                    self.metrics.append(scrape(self.urls))
                self._stop_event.wait(max(0.0, 0.5 - (time.perf_counter() - started)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    def online(self) -> int:
        return self.flex[-1].online if self.flex else 0


# -- one phase: a stack, a Locust run, its levels ------------------------------------------------------------


@dataclass
class Phase:
    name: str
    replicas: dict[str, int]
    levels: list[int]
    hold_s: float  # window of the largest level of the phase
    baseline: bool = False  # measure the idle platform first


@dataclass
class Timeline:
    """Points for the plot and the per-level windows, relative to the start of the run."""

    start: float
    points: list[dict[str, Any]] = field(default_factory=list)
    marks: list[dict[str, Any]] = field(default_factory=list)


class ScaleRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.run_dir = self.out / "scale-run"
        self.timeline = Timeline(time.time())
        self.notes: list[str] = []
        self.profile_csv = self.run_dir / "profile.csv"
        self._last_point = 0.0
        self._last_totals: tuple[float, int, int] | None = None
        self.baseline: dict[str, Any] = {}
        self.service_env = dict(item.split("=", 1) for item in args.service_env)

    # -- control of the Locust shape --------------------------------------------------------------
    def _control(self, phase_dir: Path, **values: Any) -> None:
        path = phase_dir / "control.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(values))
        tmp.replace(path)

    def _start_locust(self, stack: Stack, phase: Phase, phase_dir: Path) -> subprocess.Popen[bytes]:
        self._control(phase_dir, users=0, spawn_rate=self.args.spawn_rate, stop=False)
        targets = ",".join(stack.target("gateway", i) for i in range(stack.replica_count("gateway")))
        env = dict(os.environ)
        env.update(
            {
                "VPP_FLEET_TARGETS": targets,
                "VPP_FLEET_BLOCK_SITES": str(self.args.block_sites),
                "VPP_FLEET_STATS_DIR": str(phase_dir / "fleet"),
                "VPP_FLEET_PROFILE": str(self.profile_csv),
                "VPP_FLEET_SECRET": DEMO_SECRET,
                "VPP_FLEET_CONTROL": str(phase_dir / "control.json"),
                "VPP_FLEET_BLOCK_PREFIX": phase.name[:1],
            }
        )
        argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-L", "WARNING"]
        argv += ["--csv", str(self.out / f"scale_{phase.name}"), "--csv-full-history"]
        log = (phase_dir / "locust.log").open("wb")
        return subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=harness_preexec(self.args.harness_nice),
        )

    def _stop_locust(self, locust: subprocess.Popen[bytes], fleet: FleetStats, phase_dir: Path) -> None:
        """Ramp to zero (each block drains and reports), then let Locust write its CSV and exit."""
        self._control(phase_dir, users=0, spawn_rate=50, stop=False)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and fleet.live():
            time.sleep(1)
            fleet.poll()
        time.sleep(2.5)  # one more CSV write with the blocks' last events
        self._control(phase_dir, users=0, spawn_rate=50, stop=True)
        try:
            locust.wait(30)
        except subprocess.TimeoutExpired:
            locust.send_signal(signal.SIGINT)
            try:
                locust.wait(15)
            except subprocess.TimeoutExpired:
                locust.kill()

    # -- phases --------------------------------------------------------------------------------------
    def run_phase(self, phase: Phase) -> list[dict[str, Any]]:
        phase_dir = self.run_dir / phase.name
        shutil.rmtree(phase_dir, ignore_errors=True)
        (phase_dir / "fleet").mkdir(parents=True)
        replicas = ", ".join(f"{v} {k}" for k, v in phase.replicas.items())
        progress(f"== phase {phase.name}: {replicas}; levels {', '.join(f'{n:,}' for n in phase.levels)}")
        results: list[dict[str, Any]] = []
        with Stack(
            phase_dir / "stack",
            sites=(),
            services=SERVICES,
            replicas=phase.replicas,
            progress=lambda m: progress(m.strip()),
            extra_env=self.service_env,
        ) as stack:
            fleet = FleetStats(phase_dir / "fleet")
            self._last_totals = None
            locust = self._start_locust(stack, phase, phase_dir)
            probe = Probe(stack)  # after the fork: gRPC does not like threads in its calls while forking
            probe.start()
            try:
                if phase.baseline:
                    self.baseline = self.measure_baseline(stack, fleet, locust)
                for n in phase.levels:
                    top = n == max(phase.levels)
                    window = phase.hold_s if top else self.args.window_s
                    result = self.run_level(stack, probe, fleet, locust, phase, phase_dir, n, window)
                    results.append(result)
                    rest = [m for m in phase.levels if m > n]
                    if result["collapsed"] and rest:
                        self.notes.append(
                            f"{phase.name}: stopped after {result['sites']:,} sites (acked share "
                            f"{result['acked_share']:.3f}, {result['connected_at_start']:,} connected): the platform "
                            f"had collapsed, so {', '.join(f'{m:,}' for m in rest)} could not be held and were not run"
                            + (f" (nor the {phase.hold_s:.0f} s hold of the largest level)" if phase.hold_s > 0 else "")
                        )
                        progress(f"{phase.name}: the platform collapsed at {n:,} sites; skipping {rest}")
                        break
            finally:
                progress(f"stopping the fleet and Locust (phase {phase.name})")
                self._stop_locust(locust, fleet, phase_dir)
                probe.stop()
                fleet.close()
        return results

    def measure_baseline(self, stack: Stack, fleet: FleetStats, locust: subprocess.Popen[bytes]) -> dict[str, Any]:
        """CPU and RSS of the idle platform (no site connected): the fixed part of each cost."""
        progress(f"[baseline] the idle platform, no sites, for {BASELINE_S:.0f} s")
        self._sleep(5.0, lambda: self._point(0, fleet, probe=None), locust)
        roles = self._pids(stack, fleet, locust)
        pids = [p for group in roles.values() for p in group]
        snap0 = CpuSnapshot.take(pids)
        self._sleep(BASELINE_S, lambda: self._point(0, fleet, probe=None), locust)
        snap1 = CpuSnapshot.take(pids)
        out: dict[str, Any] = {"sites": 0, "window_s": snap1.t - snap0.t}
        for role in ("gateway", "broker", "aggregation", "dispatch", "market", "locust", "driver"):
            out[f"{role}_cpu_pct"] = cpu_pct(snap0, snap1, roles[role])
            out[f"{role}_rss_mb"] = sum(r for p in roles[role] if (r := rss_mb(p)) is not None)
        machine = (snap1.machine_busy - snap0.machine_busy) / max(1e-6, snap1.t - snap0.t) * 100.0
        out["other_cpu_pct"] = machine - sum(cpu_pct(snap0, snap1, group) for group in roles.values())
        progress(
            "[baseline] cpu % gateway {gateway_cpu_pct:.0f} broker {broker_cpu_pct:.0f} aggregation "
            "{aggregation_cpu_pct:.0f} dispatch {dispatch_cpu_pct:.0f} market {market_cpu_pct:.0f} "
            "others {other_cpu_pct:.0f}".format(**out)
        )
        return out

    # -- one level -----------------------------------------------------------------------------------
    def _pids(self, stack: Stack, fleet: FleetStats, locust: subprocess.Popen[bytes]) -> dict[str, list[int]]:
        roles: dict[str, list[int]] = {"broker": [stack.broker.proc.pid] if stack.broker and stack.broker.proc else []}
        for service in SERVICES:
            roles[service] = [
                stack.proc(stack.replica_name(service, i)).popen.pid for i in range(stack.replica_count(service))
            ]
        roles["fleet"] = fleet.live_pids()
        roles["locust"] = [locust.pid]
        roles["driver"] = [os.getpid()]
        return roles

    def _wait(
        self,
        what: str,
        done: Callable[[], bool],
        timeout_s: float,
        tick: Callable[[], str],
        locust: subprocess.Popen[bytes],
    ) -> bool:
        deadline = time.monotonic() + timeout_s
        next_line = time.monotonic() + PROGRESS_EVERY_S
        while time.monotonic() < deadline:
            if locust.poll() is not None:
                raise RuntimeError(f"Locust exited with code {locust.returncode}; see its log")
            status = tick()
            if done():
                return True
            if time.monotonic() >= next_line:
                next_line += PROGRESS_EVERY_S
                progress(f"   {what}: {status}")
            time.sleep(1.0)
        progress(f"   {what}: gave up after {timeout_s:.0f} s ({tick()})")
        return False

    def _sleep(self, seconds: float, tick: Callable[[], str], locust: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if locust.poll() is not None:
                raise RuntimeError(f"Locust exited with code {locust.returncode}; see its log")
            tick()
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _point(self, n: int, fleet: FleetStats, probe: Probe | None) -> str:
        """Poll the fleet, add a timeline point (every ~2 s) and return a one-line status."""
        fleet.poll()
        now = time.time()
        generated, acked = fleet.total("generated"), fleet.total("acked")
        last_flex = probe.flex[-1] if probe is not None and probe.flex else None
        last_metrics = probe.metrics[-1] if probe is not None and probe.metrics else None
        if now - self._last_point >= 2.0:
            point: dict[str, Any] = {"t": now - self.timeline.start, "sites": n, "connected": fleet.connected()}
            if self._last_totals is not None:
                t_prev, g_prev, a_prev = self._last_totals
                span = max(1e-6, now - t_prev)
                point["generated_per_s"] = max(0.0, (generated - g_prev) / span)
                point["acked_per_s"] = max(0.0, (acked - a_prev) / span)
                hist = fleet.latency_hist(int(t_prev), int(now))
                point["ack_p50_ms"] = scale_report.hist_percentile(hist, 0.5)
                point["ack_p99_ms"] = scale_report.hist_percentile(hist, 0.99)
            point["view_age_s"] = last_flex.age_s if last_flex else math.nan
            point["lag_max"] = last_metrics.lag_max if last_metrics else math.nan
            self.timeline.points.append(point)
            self._last_totals = (now, generated, acked)
            self._last_point = now
        recent = fleet.latency_hist(int(now) - 10, int(now) + 1)
        return (
            f"connected {fleet.connected():,}/{n:,}, online in aggregation {probe.online() if probe else 0:,}, "
            f"ack p99 (10 s) {scale_report.hist_percentile(recent, 0.99):.0f} ms, "
            f"view age {last_flex.age_s if last_flex else math.nan:.2f} s, "
            f"lag {last_metrics.lag_max if last_metrics else math.nan:.0f}"
        )

    def run_level(
        self,
        stack: Stack,
        probe: Probe,
        fleet: FleetStats,
        locust: subprocess.Popen[bytes],
        phase: Phase,
        phase_dir: Path,
        n: int,
        window_s: float,
    ) -> dict[str, Any]:
        args = self.args
        users = math.ceil(n / args.block_sites)
        sites = users * args.block_sites
        label = f"[{phase.name} {sites:,}]"
        progress(f"{label} ramping to {users} blocks of {args.block_sites} sites")
        self._control(phase_dir, users=users, spawn_rate=args.spawn_rate, stop=False)
        ramp_started = time.monotonic()
        ready = self._wait(
            f"{label} ramp",
            lambda: fleet.connected() >= sites and probe.online() >= sites,
            max(120.0, sites / 50.0),
            lambda: self._point(sites, fleet, probe),
            locust,
        )
        ramp_s = time.monotonic() - ramp_started
        if not ready:
            self.notes.append(
                f"{phase.name} {sites:,}: not every site was connected and online after the ramp "
                f"({fleet.connected():,} connected, {probe.online():,} online); measured anyway"
            )
        progress(f"{label} all connected after {ramp_s:.0f} s; settling {args.settle_s:.0f} s")
        self._sleep(args.settle_s, lambda: self._point(sites, fleet, probe), locust)

        roles = self._pids(stack, fleet, locust)
        all_pids = [p for pids in roles.values() for p in pids]
        connected_at_start = fleet.connected()
        t0 = time.time()
        snap0 = CpuSnapshot.take(all_pids)
        snaps = [snap0]
        metrics0 = len(probe.metrics)
        activation = None
        # First telemetry alone (what the 1 Hz fleet costs), then an activation on top of it.
        window_s = max(window_s, args.telemetry_s + args.activation_s + 8.0)
        activation_at = t0 + args.telemetry_s
        snap_mid: CpuSnapshot | None = None
        progress(
            f"{label} measuring {window_s:.0f} s (telemetry alone for {args.telemetry_s:.0f} s, then an "
            f"activation of {args.activation_s:.0f} s)"
        )
        next_line = time.monotonic() + PROGRESS_EVERY_S
        while time.time() < t0 + window_s:
            status = self._point(sites, fleet, probe)
            if activation is None and time.time() >= activation_at:
                snap_mid = CpuSnapshot.take(all_pids)
                activation = self._start_activation(stack, probe)
            if time.monotonic() >= next_line:
                next_line += PROGRESS_EVERY_S
                snap = CpuSnapshot.take(all_pids)
                prev = snaps[-1]
                snaps.append(snap)
                cpu = {role: cpu_pct(prev, snap, pids) for role, pids in roles.items()}
                others = (snap.machine_busy - prev.machine_busy) / max(1e-6, snap.t - prev.t) * 100 - sum(cpu.values())
                progress(
                    f"{label} {time.time() - t0:4.0f}/{window_s:.0f} s {status}; cpu % gateway {cpu['gateway']:.0f} "
                    f"broker {cpu['broker']:.0f} aggregation {cpu['aggregation']:.0f} dispatch {cpu['dispatch']:.0f} "
                    f"harness {cpu['fleet'] + cpu['locust'] + cpu['driver']:.0f} others {others:.0f}"
                )
            if locust.poll() is not None:
                raise RuntimeError(f"Locust exited with code {locust.returncode}; see {phase_dir}/locust.log")
            time.sleep(1.0)
        t1 = time.time()
        snap1 = CpuSnapshot.take(all_pids)
        snaps.append(snap1)
        rss = {role: sum(r for p in pids if (r := rss_mb(p)) is not None) for role, pids in roles.items()}
        replica_rss = {
            stack.replica_name(s, i): rss_mb(pid) for s in ("gateway", "aggregation") for i, pid in enumerate(roles[s])
        }
        # The acks of the window's last samples (batched up to 10 s) and the activation's last commands.
        self._sleep(GRACE_S, lambda: self._point(sites, fleet, probe), locust)
        result = self._level_result(
            stack, probe, fleet, roles, phase, sites, t0, t1, snap0, snap1, snaps, metrics0, activation, snap_mid
        )
        result["ramp_s"] = ramp_s
        result["connected_at_start"] = connected_at_start
        share = result["acked_share"]
        # Past this the platform is not slow but gone (samples no longer acked, sites not even connected):
        # higher levels of the same phase cannot be held and are not worth their minutes.
        result["collapsed"] = (not ready) or math.isnan(share) or share < 0.9
        result.update({f"{role}_rss_mb": mb for role, mb in rss.items()})
        result["replica_rss_mb"] = replica_rss
        held, missed = scale_report.verdict(result)
        self.timeline.marks.append(
            {
                "t0": t0 - self.timeline.start,
                "t1": t1 - self.timeline.start,
                "label": (f"{sites / 1000:g}k" if sites >= 1000 else str(sites))
                + (f" x{phase.replicas.get('gateway', 1)}" if phase.replicas.get("gateway", 1) > 1 else ""),
                "held": held,
            }
        )
        cmd = result.get("commands") or {}
        progress(
            f"{label} done: acked {result['acked_share']:.4f}, ack p50/p99 {result['ack_p50_ms']:.0f}/"
            f"{result['ack_p99_ms']:.0f} ms, view p99 {result['view_fresh_p99_s']:.2f} s, lag max "
            f"{result['lag_max_records']:.0f}, commands {cmd.get('received_share', math.nan):.4f} p99 "
            f"{cmd.get('p99_ms', math.nan):.0f} ms -> {'HELD' if held else 'NOT held: ' + '; '.join(missed)}"
        )
        return result

    def _start_activation(self, stack: Stack, probe: Probe) -> dict[str, Any]:
        half = max(4, int(self.args.activation_s / 2))
        request = market_api_pb2.StartActivationRequest(
            product="aFRR",
            step_s=4,
            phases=[
                market_api_pb2.ActivationPhase(fraction=0.3, duration_s=half),
                market_api_pb2.ActivationPhase(fraction=-0.3, duration_s=half),
            ],
        )
        online = probe.online()
        started = time.time()
        try:
            with grpc.insecure_channel(stack.target("market")) as channel:
                response = market_api_pb2_grpc.MarketSimulatorStub(channel).StartActivation(request, timeout=10)
        except grpc.RpcError as exc:
            detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) else repr(exc)
            progress(f"   activation refused: {detail}")
            return {"error": detail, "online": online, "started": started}
        dispatch0 = probe.metrics[-1].dispatch_commands if probe.metrics else 0.0
        return {
            "activation_id": response.activation_id,
            "online": online,
            "started": started,
            "steps": math.ceil(half / 4) * 2,
            "dispatch_commands_before": dispatch0,
        }

    def _commands(
        self, stack: Stack, probe: Probe, fleet: FleetStats, activation: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Share of (site, step) commands that reached their site, and market step -> agent receipt."""
        if activation is None or "activation_id" not in activation:
            return {"error": (activation or {}).get("error", "no activation started"), "received_share": math.nan}
        activation_id = activation["activation_id"]
        issued: dict[int, float] = {}
        for record in read_topic(stack.bootstrap_servers, ACTIVATIONS.name, ACTIVATIONS.partitions, timeout_s=10):
            env = envelope_pb2.Envelope.FromString(record.value)
            if env.activation.activation_id == activation_id:
                issued[int(env.activation.step)] = env.activation.issued_at.ToNanoseconds() / 1e9
        first: dict[tuple[str, int], float] = {}
        for site, act, step, received, _dispatch_issued in fleet.cmds:
            if act == activation_id:
                key = (site, int(step))
                first[key] = min(first.get(key, received), received)
        latencies = [(received - issued[step]) * 1000.0 for (_, step), received in first.items() if step in issued]
        steps = len(issued) or activation["steps"]
        expected = activation["online"] * steps
        dispatch1 = probe.metrics[-1].dispatch_commands if probe.metrics else 0.0
        return {
            "activation_id": activation_id,
            "steps": steps,
            "sites_online": activation["online"],
            "expected": expected,
            "received": len(first),
            "received_share": len(first) / expected if expected else math.nan,
            "sent_by_dispatch": dispatch1 - activation["dispatch_commands_before"],
            "p50_ms": scale_report.percentile(latencies, 0.5),
            "p99_ms": scale_report.percentile(latencies, 0.99),
            "max_ms": max(latencies, default=math.nan),
        }

    def _level_result(
        self,
        stack: Stack,
        probe: Probe,
        fleet: FleetStats,
        roles: dict[str, list[int]],
        phase: Phase,
        sites: int,
        t0: float,
        t1: float,
        snap0: CpuSnapshot,
        snap1: CpuSnapshot,
        snaps: list[CpuSnapshot],
        metrics0: int,
        activation: dict[str, Any] | None,
        snap_mid: CpuSnapshot | None = None,
    ) -> dict[str, Any]:
        seconds = range(int(t0), int(t1))
        generated = sum(fleet.gen_by_s.get(s, 0) for s in seconds)
        acked = sum(fleet.acked_by_s.get(s, 0) for s in seconds)
        hist = fleet.latency_hist(t0, t1)
        flex = [f for f in probe.flex if t0 <= f.t <= t1]
        ages = [f.age_s for f in flex if not math.isnan(f.age_s)]
        metrics = [m for m in probe.metrics[metrics0:] if t0 <= m.t <= t1]
        lags = [m.lag_max for m in metrics]
        cpu = {role: cpu_pct(snap0, snap1, pids) for role, pids in roles.items()}
        machine = (snap1.machine_busy - snap0.machine_busy) / max(1e-6, snap1.t - snap0.t) * 100.0
        result: dict[str, Any] = {
            "sites": sites,
            "phase": phase.name,
            "gateway_replicas": phase.replicas.get("gateway", 1),
            "aggregation_replicas": phase.replicas.get("aggregation", 1),
            "window_s": t1 - t0,
            "samples_generated": generated,
            "samples_acked": acked,
            # What the harness produced of the 1 Hz it owes: below ~0.99 it was starved of CPU itself.
            "generation_share": generated / (sites * len(seconds)) if sites and len(seconds) else math.nan,
            "acked_share": acked / generated if generated else math.nan,
            "ack_p50_ms": scale_report.hist_percentile(hist, 0.5),
            "ack_p99_ms": scale_report.hist_percentile(hist, 0.99),
            "ack_max_ms": float(max(hist, default=-1)) if hist else math.nan,
            "view_fresh_p50_s": scale_report.percentile(ages, 0.5),
            "view_fresh_p99_s": scale_report.percentile(ages, 0.99),
            "view_call_p99_ms": scale_report.percentile([f.call_ms for f in flex], 0.99),
            "view_calls": len(flex),
            "view_call_errors": sum(1 for t, _ in probe.flex_errors if t0 <= t <= t1),
            "sites_online_min": min((f.online for f in flex), default=0),
            "partitions_stale_max": max((f.stale for f in flex), default=0),
            "lag_max_records": max(lags, default=math.nan),
            "lag_bounded": scale_report.lag_bounded(lags),
            "lag_samples": len(lags),
            "gateway_cpu_pct": cpu["gateway"],
            "broker_cpu_pct": cpu["broker"],
            "aggregation_cpu_pct": cpu["aggregation"],
            "dispatch_cpu_pct": cpu["dispatch"],
            "market_cpu_pct": cpu["market"],
            "fleet_cpu_pct": cpu["fleet"],
            "locust_cpu_pct": cpu["locust"],
            "driver_cpu_pct": cpu["driver"],
            "harness_cpu_pct": cpu["fleet"] + cpu["locust"] + cpu["driver"],
            "machine_busy_pct": machine,
            "other_cpu_pct": machine - sum(cpu.values()),
            "fleet_blocks": len(roles["fleet"]),
            "overdue_total": fleet.total("overdue"),
            "reconnects_total": fleet.total("reconnects"),
            "dropped_total": fleet.total("dropped"),
            "commands": self._commands(stack, probe, fleet, activation),
        }
        if snap_mid is not None:
            # The two parts of the window: the 1 Hz telemetry alone, and with an activation on top.
            t_mid = snap_mid.t
            tel_hist = fleet.latency_hist(t0, t_mid)
            result["telemetry_s"] = t_mid - t0
            result["ack_p50_ms_telemetry"] = scale_report.hist_percentile(tel_hist, 0.5)
            result["ack_p99_ms_telemetry"] = scale_report.hist_percentile(tel_hist, 0.99)
            act_hist = fleet.latency_hist(t_mid, t1)
            result["ack_p50_ms_activation"] = scale_report.hist_percentile(act_hist, 0.5)
            result["ack_p99_ms_activation"] = scale_report.hist_percentile(act_hist, 0.99)
            for role, pids in roles.items():
                result[f"{role}_cpu_pct_telemetry"] = cpu_pct(snap0, snap_mid, pids)
                result[f"{role}_cpu_pct_activation"] = cpu_pct(snap_mid, snap1, pids)
            result["harness_cpu_pct_telemetry"] = sum(
                result[f"{r}_cpu_pct_telemetry"] for r in ("fleet", "locust", "driver")
            )
        result["replica_cpu_pct"] = {
            stack.replica_name(service, i): cpu_pct(snap0, snap1, [pid])
            for service in ("gateway", "aggregation")
            for i, pid in enumerate(roles[service])
        }
        if len(metrics) >= 2:
            first, last_m = metrics[0].gateway_write_buckets, metrics[-1].gateway_write_buckets
            delta = {le: last_m.get(le, 0.0) - first.get(le, 0.0) for le in last_m}
            result["gateway_write_p50_ms"] = _bucket_quantile(delta, 0.5) * 1000.0
            result["gateway_write_p99_ms"] = _bucket_quantile(delta, 0.99) * 1000.0
            # Where a portfolio query's time goes: the handler itself vs waiting for the loop.
            for key, out_key in (
                ("flex_call", "view_call_server_p99_ms"),
                ("loop_lag", "aggregation_loop_lag_p99_ms"),
                ("gc_pause", "aggregation_gc_pause_p99_ms"),
            ):
                h0, h1 = metrics[0].aggregation_hists.get(key, {}), metrics[-1].aggregation_hists.get(key, {})
                result[out_key] = _bucket_quantile({le: h1[le] - h0.get(le, 0.0) for le in h1}, 0.99) * 1000.0
        if len(snaps) > 2 and t1 - t0 >= 180:
            result["drift"] = self._drift(snaps, roles, fleet)
        if metrics:
            last = metrics[-1]
            shares: dict[str, str] = {}
            for name, connected in sorted(last.gateway_connected.items()):
                shares[name] = (
                    f"{connected:.0f} sites connected, {result['replica_cpu_pct'].get(name, math.nan):.0f} % CPU"
                )
            for name, owned in sorted(last.aggregation_partitions.items()):
                sites_owned = last.aggregation_sites_owned.get(name, math.nan)
                shares[name] = (
                    f"{owned:.0f} telemetry partitions, {sites_owned:.0f} sites, "
                    f"{result['replica_cpu_pct'].get(name, math.nan):.0f} % CPU"
                )
            result["replica_shares"] = shares
        return result

    def _drift(self, snaps: list[CpuSnapshot], roles: dict[str, list[int]], fleet: FleetStats) -> dict[str, Any]:
        """First vs last minute of a long hold: does anything get slower as the broker fills up?"""
        first = [s for s in snaps if s.t - snaps[0].t <= 61]
        last = [s for s in snaps if snaps[-1].t - s.t <= 61]
        out: dict[str, Any] = {}
        for name, (a, b) in {"first_minute": (first[0], first[-1]), "last_minute": (last[0], last[-1])}.items():
            out[name] = {role: cpu_pct(a, b, roles[role]) for role in ("gateway", "broker", "aggregation", "dispatch")}
            hist = fleet.latency_hist(a.t, b.t)
            out[name]["ack_p99_ms"] = scale_report.hist_percentile(hist, 0.99)
        return out


def _bucket_quantile(cumulative: dict[float, float], q: float) -> float:
    """Upper bound of the Prometheus bucket holding the ``q`` quantile (nan without observations)."""
    total = cumulative.get(math.inf, 0.0)
    if total <= 0:
        return math.nan
    for bound in sorted(cumulative):
        if cumulative[bound] >= q * total:
            return bound
    return math.inf


# -- raw vs our consume rate ----------------------------------------------------------------------------------


def consume_main(argv: list[str]) -> None:
    """``python -m vpp_demo.scale consume``: one timed pass over the telemetry topic; prints JSON."""
    parser = argparse.ArgumentParser(prog="vpp_demo.scale consume")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--mode", choices=("raw", "raw-decode", "aggregation"), required=True)
    parser.add_argument("--expect", type=int, default=0, help="records in the topic (stop there)")
    parser.add_argument("--timeout-s", type=float, default=300)
    args = parser.parse_args(argv)
    if args.mode == "aggregation":
        result = asyncio.run(_consume_aggregation(args.bootstrap, args.expect, args.timeout_s))
    else:
        result = _consume_raw(args.bootstrap, args.mode == "raw-decode", args.expect, args.timeout_s)
    result["cpu_s"] = time.process_time()
    print(json.dumps(result))


def _partitions(bootstrap: str) -> int:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return len(consumer.partitions_for_topic(TELEMETRY.name) or [])
    finally:
        consumer.close()


def _consume_raw(bootstrap: str, decode: bool, expect: int, timeout_s: float) -> dict[str, Any]:
    """A plain kafka-python consumer from the beginning, as fast as it goes (optionally decoding)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    partitions = _partitions(bootstrap)
    started = time.perf_counter()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        max_poll_records=10_000,
    )
    tps = [TopicPartition(TELEMETRY.name, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records = size = samples = 0
    last = started
    idle = 0
    deadline = started + timeout_s
    while time.perf_counter() < deadline and (not expect or records < expect):
        batch = consumer.poll(timeout_ms=500)
        if not batch:
            idle += 1
            if idle >= 4 and not expect:
                break  # 2 s with nothing new: the end of the topic
            continue
        idle = 0
        for recs in batch.values():
            for record in recs:
                records += 1
                size += len(record.value)
                if decode:
                    samples += len(envelope_pb2.Envelope.FromString(record.value).telemetry_batch.records)
        last = time.perf_counter()
    consumer.close()
    elapsed = max(1e-6, last - started)
    out: dict[str, Any] = {"records": records, "bytes": size, "seconds": elapsed, "records_per_s": records / elapsed}
    if decode:
        out.update({"samples": samples, "samples_per_s": samples / elapsed})
    return out


async def _consume_aggregation(bootstrap: str, expect: int, timeout_s: float) -> dict[str, Any]:
    """Aggregation's own path: its consumer runtime (poll thread, decode, metrics) and its handler,
    in a fresh process that owns every partition and reads from the beginning."""
    from kafka.structs import TopicPartition

    from aggregation.aggregator import Aggregator
    from aggregation.settings import AggregationSettings
    from vpp_common.kafka import Consumed, ConsumerSpec, EventConsumer, EventProducer

    partitions = _partitions(bootstrap)
    settings = AggregationSettings(
        kafka_bootstrap_servers=bootstrap, instance_id="consume-rate", site_partitions=partitions
    )
    producer = EventProducer(settings)
    await producer.start()
    aggregator = Aggregator(settings, producer)
    aggregator.partitions = partitions
    await aggregator.on_assigned([TopicPartition(TELEMETRY.name, p) for p in range(partitions)])
    samples = 0

    async def handle(item: Consumed) -> None:
        nonlocal samples
        samples += len(item.env.telemetry_batch.records)
        await aggregator.on_telemetry_batch(item)

    spec = ConsumerSpec(
        topics=[TELEMETRY],
        handler=handle,
        name="telemetry",
        group_id=None,
        start_at="earliest",
        partitions={TELEMETRY.name: partitions},
    )
    consumer = EventConsumer(settings, spec, producer)
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    deadline = started + timeout_s
    while consumer.records_handled < expect and time.perf_counter() < deadline and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.002)  # records_handled is a plain counter: poll it
    elapsed = max(1e-6, time.perf_counter() - started)
    records = consumer.records_handled
    consumer.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await producer.close()
    return {
        "records": records,
        "samples": samples,
        "seconds": elapsed,
        "records_per_s": records / elapsed,
        "samples_per_s": samples / elapsed,
        "sites": sum(len(o.state.sites) for o in aggregator.owned.values()),
    }


def measure_consume(args: argparse.Namespace, run_dir: Path, profile_csv: Path) -> dict[str, Any]:
    """Fill a fresh broker with ``--consume-sites`` for ``--consume-fill-s``, stop the fleet, then time three
    passes over the whole (now static) telemetry topic: raw, raw + decode, aggregation's own."""
    phase_dir = run_dir / "consume"
    shutil.rmtree(phase_dir, ignore_errors=True)
    phase_dir.mkdir(parents=True)
    progress(f"== consume rate: {args.consume_sites:,} sites for {args.consume_fill_s:.0f} s into a fresh broker")
    with Stack(phase_dir / "stack", sites=(), services=("gateway",), progress=lambda m: progress(m.strip())) as stack:
        blocks = math.ceil(args.consume_sites / args.block_sites)
        env = dict(os.environ, VPP_FLEET_SECRET=DEMO_SECRET)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vpp_demo.fleet",
                    "--targets",
                    stack.target("gateway"),
                    "--sites",
                    str(args.block_sites),
                    "--block",
                    f"c{b:03d}",
                    "--profile",
                    str(profile_csv),
                    "--duration-s",
                    str(args.consume_fill_s),
                    "--stats-file",
                    str(phase_dir / f"fleet-c{b:03d}.jsonl"),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=harness_preexec(args.harness_nice),
            )
            for b in range(blocks)
        ]
        for proc in procs:
            proc.wait(args.consume_fill_s + 60)
        time.sleep(2)
        results: dict[str, Any] = {}
        for mode in ("raw", "raw-decode", "aggregation"):
            expect = results["raw"]["records"] if mode != "raw" else 0
            out = subprocess.run(
                [
                    *(sys.executable, "-m", "vpp_demo.scale", "consume", "--bootstrap", stack.bootstrap_servers),
                    *("--mode", mode, "--expect", str(expect)),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[mode]
            progress(
                f"   {mode:<11} {r['records']:,} records in {r['seconds']:.1f} s: {r['records_per_s']:,.0f} records/s"
                + (f", {r['samples_per_s']:,.0f} samples/s" if "samples_per_s" in r else "")
            )
    raw, decoded, ours = results["raw"], results["raw-decode"], results["aggregation"]
    samples = decoded.get("samples", 0)
    raw["samples"] = samples
    raw["samples_per_s"] = samples / raw["seconds"] if raw["seconds"] else math.nan
    raw["mb"] = raw["bytes"] / 1e6
    raw["bytes_per_sample"] = raw["bytes"] / samples if samples else math.nan
    return {
        "sites": blocks * args.block_sites,
        "fill_s": args.consume_fill_s,
        "raw": raw,
        "raw_decode": decoded,
        "aggregation": ours,
        "ratio_aggregation_over_raw": ours["samples_per_s"] / raw["samples_per_s"]
        if raw["samples_per_s"]
        else math.nan,
        "method": "whole telemetry topic of a fresh broker, fleet stopped; each pass a fresh process",
    }


# -- the CLI ---------------------------------------------------------------------------------------------------


def _machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (OSError, ValueError):
        mem_gb = math.nan
    return f"{os.cpu_count()} cores ({model}), {mem_gb:.0f} GiB"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--levels", default="1000,2000,3000,4000,5000,7500,10000", help="site counts (rounded up to blocks)"
    )
    parser.add_argument("--hold-s", type=float, default=300.0, help="window of the largest level")
    parser.add_argument("--window-s", type=float, default=60.0, help="window of every other level")
    parser.add_argument("--settle-s", type=float, default=15.0)
    parser.add_argument(
        "--telemetry-s", type=float, default=30.0, help="first part of each window: telemetry alone (no activation)"
    )
    parser.add_argument("--activation-s", type=float, default=40.0, help="activation length inside each window")
    parser.add_argument("--block-sites", type=int, default=500, help="sites per fleet process (Locust user)")
    parser.add_argument("--spawn-rate", type=float, default=2.0, help="blocks started per second")
    parser.add_argument(
        "--replicas",
        choices=("auto", "always", "never"),
        default="auto",
        help="re-run the top levels with 2 gateway + 2 aggregation replicas (auto: if a level was not held)",
    )
    parser.add_argument("--restart-between-levels", action="store_true", help="a fresh stack (and broker) per level")
    parser.add_argument("--harness-nice", type=int, default=10, help="CPU niceness of Locust and the fleet (0: none)")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every service (e.g. VPP_KAFKA_FAST_FETCH_MAX_WAIT_MS=500); repeatable",
    )
    parser.add_argument("--consume-sites", type=int, default=5000)
    parser.add_argument("--consume-fill-s", type=float, default=60.0)
    parser.add_argument("--no-consume", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("out/load"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["consume"]:
        consume_main(argv[1:])
        return
    exit_on_sigterm()
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    started = time.time()
    run = ScaleRun(args)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    Profile.real().write_csv(run.profile_csv)
    progress(
        f"make load-scale: levels {', '.join(f'{n:,}' for n in levels)} sites (largest held {args.hold_s:.0f} s), "
        f"{args.block_sites} sites per fleet block; machine: {_machine()}; load average {os.getloadavg()[0]:.1f}"
    )
    single = {"gateway": 1, "aggregation": 1}
    if run.service_env:
        run.notes.append("services ran with " + ", ".join(f"{k}={v}" for k, v in run.service_env.items()))
    if args.restart_between_levels:
        phases = [
            Phase(f"r1-{n}", single, [n], args.hold_s if n == levels[-1] else args.window_s, baseline=n == levels[0])
            for n in levels
        ]
        run.notes.append("a fresh stack (broker included) for every level (--restart-between-levels)")
    else:
        phases = [Phase("r1", single, levels, args.window_s, baseline=True)]
    results: list[dict[str, Any]] = []
    for phase in phases:
        results.extend(run.run_phase(phase))
    # The largest level held in the ladder, held again for --hold-s (the next one down if it fails).
    hold: list[dict[str, Any]] = []  # every attempt, the failed ones too
    candidates = sorted((lv["sites"] for lv in results if scale_report.verdict(lv)[0]), reverse=True)
    for n in candidates[:2]:
        attempt = run.run_phase(Phase(f"hold-{n}", single, [n], args.hold_s))
        hold.extend(attempt)
        if attempt and scale_report.verdict(attempt[0])[0]:
            break
    if not candidates:
        run.notes.append("no level of the ladder was held: nothing to hold for longer")
    replicated: list[dict[str, Any]] = []
    failing = sorted(lv["sites"] for lv in results if not scale_report.verdict(lv)[0])
    if args.replicas == "always" or (args.replicas == "auto" and failing):
        # The first level one replica each could not hold, and the next one up: does a second replica help?
        if failing:
            ladder = sorted({*levels, *failing})
            above = [n for n in ladder if n > failing[0]]
            again = [failing[0], *above[:1]]
        else:
            again = [max(levels)]
        replicated = run.run_phase(Phase("r2", {"gateway": 2, "aggregation": 2}, again, args.window_s))
    elif args.replicas == "auto":
        run.notes.append("every level was held with one replica each: no run with two replicas")
    consume: dict[str, Any] = {}
    if not args.no_consume:
        consume = measure_consume(args, run.run_dir, run.profile_csv)
    harness = _harness_cost(results)
    meta = {
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration_s": time.time() - started,
        "machine": _machine(),
        "command": "make load-scale" + (f" ARGS='{' '.join(argv)}'" if argv else ""),
        "block_sites": args.block_sites,
        "activation": f"+30 % of the portfolio's up flexibility for {args.activation_s / 2:.0f} s, then -30 % of its "
        f"down flexibility for {args.activation_s / 2:.0f} s, a step every 4 s",
        "site_partitions": 48,
        "window_s": args.window_s,
        "hold_s": args.hold_s,
        "harness_cost": harness,
        "notes": run.notes,
    }
    meta["baseline"] = run.baseline
    meta["harness_nice"] = args.harness_nice
    meta["service_env"] = run.service_env
    report = scale_report.build_report(results, replicated, consume, meta, hold=hold)
    report["timeline"] = {"points": run.timeline.points, "marks": run.timeline.marks}
    (args.out / "scale.json").write_text(json.dumps(_clean(report), indent=2))
    (args.out / "scale.md").write_text(scale_report.markdown(report))
    scale_report.write_plot(run.timeline.points, run.timeline.marks, args.out / "scale.png")
    progress(f"wrote {args.out}/scale.json, scale.md, scale.png (Locust CSVs: {args.out}/scale_r*_stats.csv)")
    progress(
        f"largest N held: {report['max_sites_held']:,} sites; cost per 1,000 sites (% of a core): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["cost_per_1000_sites_pct_of_core"].items())
    )
    print(
        "\nThe same locustfile runs with Locust's web UI, against any running gateway (`make up` prints its port):\n"
        "  VPP_FLEET_TARGETS=127.0.0.1:<gateway port> .venv/bin/locust -f tests/load/locustfile_scale.py\n"
        "  then open http://localhost:8089 (each user is a block of 500 sites; VPP_FLEET_BLOCK_SITES changes it)",
        flush=True,
    )


def _harness_cost(levels: list[dict[str, Any]]) -> dict[str, Any]:
    if not levels:
        return {}
    xs = [float(lv["sites"]) for lv in levels]
    _, slope = scale_report.linear_fit(xs, [lv["harness_cpu_pct"] for lv in levels])
    _, fleet_slope = scale_report.linear_fit(xs, [lv["fleet_cpu_pct"] for lv in levels])
    top = max(levels, key=lambda lv: lv["sites"])
    return {
        "per_1000_sites_pct": slope * 1000,
        "fleet_per_1000_sites_pct": fleet_slope * 1000,
        "at_sites": top["sites"],
        "at_max_pct": top["harness_cpu_pct"],
    }


def _clean(value: Any) -> Any:
    """JSON without NaN (null instead)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


if __name__ == "__main__":
    main()
