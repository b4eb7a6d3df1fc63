"""Start the whole platform as real processes on loopback and stop every one of them again.

Used by ``make demo``/``make up``/``make bench``/``make load`` and by the end-to-end tests, so what
the tests check is exactly what a person runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.auth import site_token
from vpp_demo.profiles import write_profiles
from vpp_demo.sites import DEMO_SITES, SiteSpec
from vpp_devtools.broker import EmbeddedBroker
from vpp_devtools.netutil import free_port, wait_for_port
from vpp_devtools.process import die_with_parent

SERVICES = ("aggregation", "dispatch", "bidding", "market", "gateway", "forecasting")
DEMO_SECRET = "demo-secret-do-not-use-in-production"

Progress = Callable[[str], None]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class ServicePorts:
    grpc: int
    metrics: int


@dataclass
class SitePorts:
    modbus: int
    metrics: int


@dataclass
class Stack:
    workdir: Path
    sites: Sequence[SiteSpec] = DEMO_SITES
    services: Sequence[str] = SERVICES
    progress: Progress = lambda msg: print(msg, file=sys.stderr, flush=True)
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)
    # Replicas per service (default 1): replica i runs as "<service>-<i>" with its own ports and
    # VPP_INSTANCE_ID; ``ports[service]`` is replica 0's, ``replica_ports[service]`` all of them.
    replicas: dict[str, int] = field(default_factory=dict)
    broker: EmbeddedBroker | None = None
    procs: list[Proc] = field(default_factory=list)
    ports: dict[str, ServicePorts] = field(default_factory=dict)
    replica_ports: dict[str, list[ServicePorts]] = field(default_factory=dict)
    site_ports: dict[str, SitePorts] = field(default_factory=dict)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Stack:
        self.workdir = self.workdir.resolve()  # children run with it as their working directory
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        try:
            self.progress("[1/4] starting the Kafka broker (Tansu, memory storage)")
            self.broker = EmbeddedBroker(log_path=self.workdir / "logs" / "tansu.log").start()
            self._write_sites_file()
            self.progress("      replaying real PV (NREL PVDAQ 50, 2012-06-15 11:00 MDT) and load (UCI household)")
            write_profiles(self.sites, self.workdir)
            self.progress(f"[2/4] starting {len(self.services)} services: {', '.join(self.services)}")
            for name in self.services:
                self.replica_ports[name] = [
                    ServicePorts(free_port(), free_port()) for _ in range(self.replicas.get(name, 1))
                ]
                self.ports[name] = self.replica_ports[name][0]
            for name in self.services:
                for i in range(len(self.replica_ports[name])):
                    self.start_replica(name, i)
            for name in self.services:
                for i, ports in enumerate(self.replica_ports[name]):
                    self._wait_serving(self.replica_name(name, i), ports, timeout_s=90)
                    label = self.replica_name(name, i) if len(self.replica_ports[name]) > 1 else name
                    self.progress(f"      {label:<14} gRPC :{ports.grpc}  metrics :{ports.metrics}")
            if self.sites:
                self.progress(f"[3/4] starting {len(self.sites)} sites (device simulator + edge agent each)")
                for site in self.sites:
                    self._start_site(site)
                self.progress("[4/4] waiting for every site's telemetry to reach aggregation")
                self.wait_sites_online(timeout_s=60)
        except BaseException:
            self.stop()
            raise
        return self

    def replica_count(self, service: str) -> int:
        return len(self.replica_ports.get(service, [])) or 1

    def replica_name(self, service: str, index: int) -> str:
        return service if len(self.replica_ports.get(service, [])) <= 1 else f"{service}-{index}"

    def start_replica(self, service: str, index: int) -> Proc:
        """(Re)start one replica of a service on its ports (tests stop and start replicas)."""
        return self._spawn(
            self.replica_name(service, index), [sys.executable, "-m", service], self._service_env(service, index)
        )

    def start_extra_service(self, name: str, module: str, env: dict[str, str], timeout_s: float = 120) -> ServicePorts:
        """One more service process (``python -m module``) named ``name``, on ports of its own, with the
        stack's broker; returns once its health check says SERVING (benches add e.g. a fleet-sized
        forecasting instance this way)."""
        ports = ServicePorts(free_port(), free_port())
        self.replica_ports[name] = [ports]
        self.ports[name] = ports
        full = {**self._service_env(name), "VPP_INSTANCE_ID": name, **env}
        self._spawn(name, [sys.executable, "-m", module], full)
        self._wait_serving(name, ports, timeout_s)
        return ports

    def proc(self, name: str) -> Proc:
        """The newest process of that name (``gateway``, ``aggregation-1``, ``agent-site-1`` ...)."""
        return [p for p in self.procs if p.name == name][-1]

    def stop_proc(self, name: str, timeout_s: float = 15.0) -> int:
        """SIGTERM one process and wait for it; returns its exit code."""
        proc = self.proc(name)
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
        try:
            return proc.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            return proc.popen.wait(5)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(5)
        self.procs.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap_servers

    def site_partitions(self) -> int:
        """The partition count of the site topics on this stack's broker."""
        from kafka import KafkaConsumer

        from vpp_common.topics import TELEMETRY

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers)
        try:
            return len(consumer.partitions_for_topic(TELEMETRY.name) or ())
        finally:
            consumer.close()

    def target(self, service: str, replica: int = 0) -> str:
        return f"127.0.0.1:{self.replica_ports[service][replica].grpc}"

    def channel(self, service: str) -> grpc.Channel:
        return grpc.insecure_channel(self.target(service))

    def metrics_urls(self) -> dict[str, str]:
        urls = {
            self.replica_name(name, i): f"http://127.0.0.1:{p.metrics}/metrics"
            for name, ports in self.replica_ports.items()
            for i, p in enumerate(ports)
        }
        urls.update({f"edge-agent/{s}": f"http://127.0.0.1:{p.metrics}/metrics" for s, p in self.site_ports.items()})
        return urls

    def metric(self, process: str, name: str) -> float:
        """One metric of one process (``dispatch-0``, ``edge-agent/home-01`` ...), summed over its labels;
        NaN when the process does not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            with urllib.request.urlopen(self.metrics_urls()[process], timeout=3) as resp:
                body = resp.read().decode()
        except OSError:
            return float("nan")
        return sum(s.value for f in text_string_to_metric_families(body) for s in f.samples if s.name == name)

    def dispatch_leader(self) -> str | None:
        """The dispatch replica holding the lease (the one that acts), from its metrics."""
        for i in range(self.replica_count("dispatch")):
            name = self.replica_name("dispatch", i)
            if self.metric(name, "vpp_dispatch_leader") == 1:
                return name
        return None

    # -- internals ----------------------------------------------------------------------------
    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VPP_", "KAFKA_"))}
        env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
                "VPP_LOG_LEVEL": self.log_level,
                "VPP_KAFKA_SESSION_TIMEOUT_MS": "6000",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _service_env(self, name: str, index: int = 0) -> dict[str, str]:
        env = self._base_env()
        ports = self.replica_ports[name][index]
        env.update(
            {
                "VPP_GRPC_HOST": "127.0.0.1",
                "VPP_GRPC_PORT": str(ports.grpc),
                "VPP_METRICS_PORT": str(ports.metrics),
                "VPP_INSTANCE_ID": f"{name}-{index}",
            }
        )
        if name == "gateway":
            env["VPP_GATEWAY_SITE_TOKEN_SECRET"] = DEMO_SECRET
        if name in ("market", "bidding") and "aggregation" in self.ports:
            env["VPP_AGGREGATION_TARGET"] = self.target("aggregation")
        if name == "bidding":
            env["VPP_STORE_URL"] = f"sqlite:///{self.workdir / 'market-store.sqlite'}"
            if "forecasting" in self.ports:
                env["VPP_FORECASTING_TARGET"] = self.target("forecasting")
        if name == "forecasting":
            env["VPP_SITES_FILE"] = str(self.workdir / "sites.json")
            env["VPP_STORE_URL"] = f"sqlite:///{self.workdir / 'forecast-store.sqlite'}"
            # Backfill each demo site with the real series it replays: enough for the backtested
            # configuration to hold out its calibration days (fits run in a niced background process).
            env.setdefault("VPP_SEED_DAYS_IF_EMPTY", "120")
        return env

    def _write_sites_file(self) -> None:
        sites = [
            {
                "site_id": s.site_id,
                "pv": {
                    "latitude": s.latitude,
                    "longitude": s.longitude,
                    "altitude_m": s.altitude_m,
                    "tilt_deg": s.tilt_deg,
                    "azimuth_deg": s.azimuth_deg,
                    "kwp": s.pv_kwp,
                    "timezone": s.timezone,
                },
                "load_scale": s.load_scale,
            }
            for s in self.sites
        ]
        (self.workdir / "sites.json").write_text(json.dumps({"sites": sites}, indent=2))

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log_path = self.workdir / "logs" / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - handed to the child
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=self.workdir,
            preexec_fn=die_with_parent,
        )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def wait_serving(self, service: str, index: int = 0, timeout_s: float = 60) -> None:
        self._wait_serving(self.replica_name(service, index), self.replica_ports[service][index], timeout_s)

    def _wait_serving(self, name: str, ports: ServicePorts, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        proc = self.proc(name)
        with grpc.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if proc.popen.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.popen.returncode}: {_tail(proc.log_path)}")
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"{name} not SERVING after {timeout_s:.0f} s; see {proc.log_path}")

    def _start_site(self, site: SiteSpec) -> None:
        modbus_port, metrics_port = free_port(), free_port()
        profile = self.workdir / f"profile-{site.site_id}.csv"
        sim_argv = [
            sys.executable,
            "-m",
            "vpp_devsim",
            "--host",
            "127.0.0.1",
            "--port",
            str(modbus_port),
            "--capacity-kwh",
            str(site.battery_capacity_kwh),
            "--max-charge-kw",
            str(site.battery_max_kw),
            "--max-discharge-kw",
            str(site.battery_max_kw),
            "--pv-kwp",
            str(site.pv_kwp),
            "--soc-pct",
            str(site.soc_pct),
            "--derate-pct",
            str(site.derate_pct),
        ]
        if profile.exists():
            sim_argv += ["--profile", str(profile), "--start-offset-s", "0"]
        self._spawn(f"devsim-{site.site_id}", sim_argv, self._base_env())
        wait_for_port("127.0.0.1", modbus_port, 30, f"device simulator of {site.site_id}")
        env = self._base_env()
        env.update(
            {
                "VPP_EDGE_SITE_ID": site.site_id,
                "VPP_EDGE_SITE_TOKEN": site_token(DEMO_SECRET, site.site_id),
                "VPP_EDGE_GATEWAY_TARGET": self.target("gateway", len(self.site_ports) % self.replica_count("gateway")),
                "VPP_EDGE_MODBUS_HOST": "127.0.0.1",
                "VPP_EDGE_MODBUS_PORT": str(modbus_port),
                "VPP_EDGE_METRICS_PORT": str(metrics_port),
                "VPP_EDGE_LOG_LEVEL": self.log_level,
            }
        )
        self._spawn(f"agent-{site.site_id}", [sys.executable, "-m", "vpp_edge"], env)
        self.site_ports[site.site_id] = SitePorts(modbus_port, metrics_port)

    def wait_sites_online(self, timeout_s: float) -> None:
        from vpp.v1 import aggregation_pb2, aggregation_pb2_grpc

        deadline = time.monotonic() + timeout_s
        online = 0
        with self.channel("aggregation") as channel:
            stub = aggregation_pb2_grpc.AggregationServiceStub(channel)
            while time.monotonic() < deadline:
                self._check_alive()
                flex = stub.GetPortfolioFlexibility(aggregation_pb2.GetPortfolioFlexibilityRequest(), timeout=5)
                online = flex.sites_online
                if online >= len(self.sites):
                    # Every replica (and dispatch's planner) learns of the last site with the next partials.
                    time.sleep(1.5)
                    return
                time.sleep(0.5)
        raise TimeoutError(
            f"only {online}/{len(self.sites)} sites online after {timeout_s:.0f} s; see {self.workdir}/logs"
        )

    def _check_alive(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode}: {_tail(proc.log_path)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


T = TypeVar("T")


def retry_warming(call: Callable[[], T], timeout_s: float = 30.0) -> T:
    """Retry while a service is still warming up (FAILED_PRECONDITION / UNAVAILABLE / DEADLINE_EXCEEDED)."""
    deadline = time.monotonic() + timeout_s
    warming = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() not in warming or time.monotonic() > deadline:
                raise
            time.sleep(1.0)
