"""The processes a launcher starts: the simulator and the agent as subprocesses, their PORT lines,
/metrics, and a graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def read_port_line(proc: subprocess.Popen[str], key: str) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith(f"{key}="), f"expected {key}=<n>, got {line!r}"
    return int(line.split("=", 1)[1])


@pytest.fixture()
def devsim() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vpp_devsim", "--port", "0", "--capacity-kwh", "10", "--max-charge-kw", "5",
         "--max-discharge-kw", "5", "--pv-kwp", "6", "--soc-pct", "60", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        yield read_port_line(proc, "MODBUS_PORT")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


@pytest.mark.timeout(30)
def test_agent_runs_locally_without_gateway_and_stops_on_sigterm(devsim: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPP_")}
    env.update(
        VPP_EDGE_SITE_ID="site-cli",
        VPP_EDGE_SITE_TOKEN="t",
        VPP_EDGE_GATEWAY_TARGET="127.0.0.1:1",  # nothing listens: the site must keep working
        VPP_EDGE_MODBUS_HOST="127.0.0.1",
        VPP_EDGE_MODBUS_PORT=str(devsim),
        VPP_EDGE_METRICS_PORT="0",
        VPP_EDGE_METRICS_HOST="127.0.0.1",
        VPP_EDGE_SETUP_TIMEOUT_S="10",
    )
    proc = subprocess.Popen([sys.executable, "-m", "vpp_edge"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        port = read_port_line(proc, "METRICS_PORT")
        text = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            if "vpp_edge_setpoints_written_total" in text and metric(text, "vpp_edge_setpoints_written_total") >= 2:
                break
            time.sleep(0.3)
        assert metric(text, "vpp_edge_setpoints_written_total") >= 2
        assert metric(text, "vpp_edge_device_available") == 1
        assert metric(text, "vpp_edge_uplink_connected") == 0
        assert metric(text, "vpp_edge_uplink_outbox_size") >= 1
        for name in ("vpp_edge_modbus_rtt_seconds_count", "vpp_edge_cycle_duration_seconds_count"):
            assert metric(text, name) >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "level=INFO logger=vpp_edge.agent event=agent_stopped" in err


@pytest.mark.timeout(30)
def test_agent_setup_timeout_says_what_to_check() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPP_")}
    env.update(VPP_EDGE_SITE_ID="s", VPP_EDGE_MODBUS_PORT="1", VPP_EDGE_METRICS_PORT="0",
               VPP_EDGE_METRICS_HOST="127.0.0.1", VPP_EDGE_SETUP_TIMEOUT_S="1", VPP_EDGE_MODBUS_TIMEOUT_S="0.2")
    proc = subprocess.run([sys.executable, "-m", "vpp_edge"], env=env, capture_output=True, text=True, timeout=25)
    assert proc.returncode == 2
    assert proc.stdout.startswith("METRICS_PORT=")
    assert "VPP_EDGE_MODBUS_HOST" in proc.stderr and "level=ERROR logger=vpp_edge event=setup_failed" in proc.stderr
