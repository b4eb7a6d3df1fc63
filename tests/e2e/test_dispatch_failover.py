"""Failover with real processes and the real broker: two dispatch replicas, simulated sites speaking the
gateway's stream protocol, the active dispatcher killed with SIGKILL mid-activation (the reduced version
of ``make bench-dispatch``'s failover section)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpp_demo.bench_dispatch import run_failover

pytestmark = pytest.mark.slow


def test_kill_9_of_the_active_dispatcher_holds_delivery(tmp_path: Path) -> None:
    r = run_failover(tmp_path, n_sites=40, steps=14, kill_at_step=6)
    assert r["killed"] and r["new_leader"] and r["new_leader"] != r["killed"]
    assert r["lost_steps"] == 0, r
    assert r["late_steps"] <= 1, r
    assert r["max_overshoot_pct"] < 2.0, r
    assert r["double_applied"] == 0, r
    assert r["measured_steps"] >= 12, r
