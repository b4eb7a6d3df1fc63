"""The fan-out cost probe runs the gateway's real command path and skips every command it does not hold."""

from __future__ import annotations

from gateway.servicer import COMMANDS
from vpp_demo import fanout_cost


def test_fanout_probe_reads_every_command_and_delivers_none() -> None:
    not_held = COMMANDS.labels("not_held")
    before = not_held._value.get()
    result = fanout_cost.measure(fleet_sites=480, partitions=48, rounds=3)
    assert result["commands_per_record"] == 10
    # 10 warm-up rounds + 3 measured, 10 commands each, none of them held by this replica
    assert not_held._value.get() - before == 130
    assert result["us_per_command_not_held"] > 0
    assert result["pct_of_core_per_replica"] > 0
