"""Locust at fleet scale: each Locust user is one block of simulated sites (a ``vpp_demo.fleet`` process).

Locust runs on gevent and the fleet on asyncio + grpc.aio, so a user does not speak gRPC itself: it
starts one fleet process for ``VPP_FLEET_BLOCK_SITES`` sites (default 500) and turns what the fleet
measures into Locust request events, so ramping users ramps the number of sites N and Locust's CSV
stats and web UI show the platform's latencies:

* ``telemetry message: stream write -> gateway ack`` — one event per acked stream message (a Batch of
  ~5 samples; response length = its samples), response time = the stream write to the gateway's ack
  covering it (the sample is durable in Kafka then). Samples not acked 15 s after they were taken are
  failures on the same line (one per block and second; its response length says how many samples).
  One event per message rather than per sample: a Locust event costs ~20 us, and 10,000 sites take
  10,000 samples/s.
* ``command: dispatch issue -> agent receipt`` — one event per DispatchCommand received.

By hand, against any running gateway (``make up`` prints its address; the token secret defaults to the
demo's)::

    VPP_FLEET_TARGETS=127.0.0.1:GATEWAY_PORT .venv/bin/locust -f tests/load/locustfile_scale.py
    # open http://localhost:8089, users = blocks of 500 sites, then start an activation (market API)

Environment: ``VPP_FLEET_TARGETS`` (gateway host:port, comma-separated for replicas; required),
``VPP_FLEET_BLOCK_SITES``, ``VPP_FLEET_SECRET`` (default: the demo's), ``VPP_FLEET_PROFILE`` (CSV of the
real PV/load series; else this process writes one), ``VPP_FLEET_STATS_DIR`` (where the blocks' JSON-lines
stats go; default a temp dir), ``VPP_FLEET_BLOCK_PREFIX`` (site ids are ``fleet-<prefix><n>-<i>``).
``VPP_FLEET_CONTROL`` names a JSON file ``{"users": n, "spawn_rate": r, "stop": false}`` that the load
shape follows (``make load-scale`` writes it); without it the user count is Locust's own (-u, web UI).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import gevent
from locust import LoadTestShape, User, constant, task
from locust.env import Environment
from locust.exception import StopUser

from vpp_devtools.process import die_with_parent

ACK_NAME = "telemetry message: stream write -> gateway ack"
COMMAND_NAME = "command: dispatch issue -> agent receipt"
REQUEST_TYPE = "fleet"
RELAY_INTERVAL_S = 1.0

_blocks = itertools.count()


class UnackedSamples(Exception):
    """Samples the gateway had not acked 15 s after they were taken (or when the block stopped)."""


class FleetExited(Exception):
    """The block's fleet process ended on its own."""


def block_name(index: int) -> str:
    return f"{os.environ.get('VPP_FLEET_BLOCK_PREFIX', 'b')}{index:04d}"


def fleet_argv(block: str, sites: int, stats_file: Path) -> list[str]:
    """The fleet process one user runs."""
    targets = os.environ.get("VPP_FLEET_TARGETS", "")
    argv = [sys.executable, "-m", "vpp_demo.fleet", "--targets", targets, "--sites", str(sites), "--block", block]
    argv += ["--stats-file", str(stats_file), "--profile", str(profile_csv(stats_file.parent))]
    return argv


def profile_csv(directory: Path) -> Path:
    """The real PV/load series as a CSV, loaded once here rather than in every block (pandas: seconds)."""
    if not os.environ.get("VPP_FLEET_PROFILE"):
        from vpp_demo.fleet import Profile

        os.environ["VPP_FLEET_PROFILE"] = str(Profile.real().write_csv(directory / "profile.csv"))
    return Path(os.environ["VPP_FLEET_PROFILE"])


def fleet_env() -> dict[str, str]:
    """The fleet's environment: the demo's token secret unless one is given."""
    env = dict(os.environ)
    if not env.get("VPP_FLEET_SECRET"):
        from vpp_demo.stack import DEMO_SECRET

        env["VPP_FLEET_SECRET"] = DEMO_SECRET
    return env


def fire_line(environment: Environment, line: dict[str, Any], last: dict[str, int]) -> None:
    """Turn one fleet stats line into Locust request events (``last`` carries cumulative counters)."""
    request = environment.events.request
    t = float(line["t"])
    for ms, samples, count in line.get("msg_lat_ms", []):
        for _ in range(int(count)):
            request.fire(
                request_type=REQUEST_TYPE,
                name=ACK_NAME,
                response_time=float(ms),
                response_length=int(samples),
                exception=None,
                context={},
                start_time=t - ms / 1000.0,
            )
    for _site, _activation, _step, received, issued in line.get("cmds", []):
        latency_ms = max(0.0, (received - issued) * 1000.0) if issued else 0.0
        request.fire(
            request_type=REQUEST_TYPE,
            name=COMMAND_NAME,
            response_time=latency_ms,
            response_length=0,
            exception=None,
            context={},
            start_time=issued or received,
        )
    overdue = int(line.get("overdue", 0)) - last.get("overdue", 0)
    if line.get("final"):
        overdue += int(line.get("outbox", 0))  # still unacked when the block stopped
    last["overdue"] = int(line.get("overdue", 0))
    if overdue > 0:
        # One failure per block and second, its length the number of samples: one event per sample would
        # cost Locust more than the platform when a gateway falls far behind.
        request.fire(
            request_type=REQUEST_TYPE,
            name=ACK_NAME,
            response_time=15000.0,
            response_length=overdue,
            exception=UnackedSamples("samples not acked within 15 s (response length = how many)"),
            context={},
            start_time=t,
        )


class FleetBlockUser(User):
    """One block of ``VPP_FLEET_BLOCK_SITES`` simulated sites; relays its measurements to Locust."""

    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.sites = int(os.environ.get("VPP_FLEET_BLOCK_SITES", "500"))
        self.block = block_name(next(_blocks))
        stats_dir = Path(os.environ.get("VPP_FLEET_STATS_DIR") or tempfile.mkdtemp(prefix="vpp-fleet-"))
        stats_dir.mkdir(parents=True, exist_ok=True)
        self.stats_file = stats_dir / f"fleet-{self.block}.jsonl"
        self.log_file = stats_dir / f"fleet-{self.block}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: IO[str] | None = None
        self._partial = ""
        self._last: dict[str, int] = {}

    def on_start(self) -> None:
        if not os.environ.get("VPP_FLEET_TARGETS"):
            raise StopUser("set VPP_FLEET_TARGETS to the gateway's host:port")
        self.stats_file.touch()
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                fleet_argv(self.block, self.sites, self.stats_file),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=fleet_env(),
                start_new_session=True,
                preexec_fn=die_with_parent,  # never outlives Locust
            )
        self._reader = self.stats_file.open()

    @task
    def relay(self) -> None:
        """Every second: fire the events for what the block measured since the last call."""
        gevent.sleep(RELAY_INTERVAL_S)
        self._relay()
        if self.proc is not None and self.proc.poll() is not None:
            self.environment.events.request.fire(
                request_type=REQUEST_TYPE,
                name="fleet block",
                response_time=0.0,
                response_length=0,
                exception=FleetExited(f"fleet {self.block} exited with code {self.proc.returncode}"),
                context={},
            )
            raise StopUser()

    def _relay(self) -> None:
        if self._reader is None:
            return
        chunk = self._reader.read()
        if not chunk:
            return
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next read
        for raw in lines:
            if raw.strip():
                fire_line(self.environment, json.loads(raw), self._last)

    def on_stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the fleet drains: unsent samples go, acks are awaited
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                gevent.sleep(0.2)
            if proc.poll() is None:
                proc.kill()
        self._relay()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


if os.environ.get("VPP_FLEET_CONTROL"):

    class ControlFileShape(LoadTestShape):
        """Follows the user count the scale driver writes (``{"users", "spawn_rate", "stop"}``)."""

        def tick(self) -> tuple[int, float] | None:
            try:
                control = json.loads(Path(os.environ["VPP_FLEET_CONTROL"]).read_text())
            except (OSError, ValueError):
                return (0, 1.0)
            if control.get("stop"):
                return None
            return (int(control.get("users", 0)), float(control.get("spawn_rate", 2.0)))
