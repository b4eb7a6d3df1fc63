"""The edge agent goes on a small site computer: it must install and run with only its own
requirements (no services' packages), and keep the site working while the gateway is unreachable."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
import venv
from pathlib import Path

import pytest

from vpp_devtools.netutil import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_agent_installs_alone_and_runs_without_the_gateway(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    source = shutil.copytree(
        REPO / "edge-agent",
        tmp_path / "edge-agent",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    for heavy in ("kafka-python", "lightgbm", "pandas", "pvlib", "SQLAlchemy", "matplotlib"):
        assert heavy.lower() not in freeze.lower(), f"{heavy} leaked into the edge agent's install"

    # Only the generated protobuf code is added (it is built by make, not shipped in the sdist).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VPP_", "PYTHONPATH"))}
    env["PYTHONPATH"] = str(REPO / "gen" / "python")
    modbus_port, metrics_port, dead_gateway = free_port(), free_port(), free_port()
    sim = subprocess.Popen(
        [str(env_dir / "bin" / "vpp-devsim"), "--port", str(modbus_port), "--soc-pct", "50"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent = None
    try:
        wait_for_port("127.0.0.1", modbus_port, 30, "device simulator")
        env.update(
            {
                "VPP_EDGE_SITE_ID": "standalone-1",
                "VPP_EDGE_SITE_TOKEN": "t",
                "VPP_EDGE_GATEWAY_TARGET": f"127.0.0.1:{dead_gateway}",  # nobody listens there
                "VPP_EDGE_MODBUS_HOST": "127.0.0.1",
                "VPP_EDGE_MODBUS_PORT": str(modbus_port),
                "VPP_EDGE_METRICS_PORT": str(metrics_port),
            }
        )
        agent = subprocess.Popen(
            [str(env_dir / "bin" / "vpp-edge-agent")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        wait_for_port("127.0.0.1", metrics_port, 60, "edge agent metrics")
        deadline = time.monotonic() + 30
        values: dict[str, float] = {}
        while time.monotonic() < deadline:
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            values = {
                line.split(" ")[0]: float(line.split(" ")[-1])
                for line in body.splitlines()
                if line and not line.startswith("#")
            }
            if values.get("vpp_edge_setpoints_written_total", 0) >= 2:
                break
            time.sleep(0.5)
        assert values.get("vpp_edge_device_available") == 1.0
        assert values.get("vpp_edge_uplink_connected") == 0.0
        assert values.get("vpp_edge_setpoints_written_total", 0) >= 2  # local control keeps running
    finally:
        for proc in (agent, sim):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    assert agent is not None and agent.returncode == 0, agent.stderr.read().decode()[-2000:] if agent.stderr else ""
