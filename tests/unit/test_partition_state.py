"""Aggregation's maintained totals equal a scan over the sites, whatever the order of samples, replays
and expiries; multi-interval flexibility equals the single-interval maths; the merged view counts a
partition once, from its newest owner."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vpp.v1 import envelope_pb2, telemetry_pb2

from aggregation.partition_state import PartitionState, battery_state
from vpp_common.batching import entry
from vpp_common.envelope import length_delimited, wrap_serialized
from vpp_common.flexibility import BatteryState, battery_flexibility, battery_flexibility_intervals
from vpp_common.partials import MILLI, PartitionTotals, PortfolioView, maintained_interval

INTERVALS = (1, 5, 15, 60, 240)
STALE_S = 10.0
EFF = 0.95

battery = st.builds(
    BatteryState,
    site_id=st.just("s"),
    online=st.booleans(),
    battery_power_kw=st.floats(-50, 50),
    soc_pct=st.floats(-5, 105),
    capacity_kwh=st.floats(0, 500),
    max_charge_kw=st.floats(0, 100),
    max_discharge_kw=st.floats(0, 100),
    soc_min_pct=st.floats(0, 50),
    soc_max_pct=st.floats(50, 100),
)


@settings(deadline=None)
@given(battery)
def test_multi_interval_flexibility_is_the_single_interval_maths(state: BatteryState) -> None:
    e_up, e_down, per_interval = battery_flexibility_intervals(state, tuple(m / 60 for m in INTERVALS), EFF)
    for minutes, (up, down) in zip(INTERVALS, per_interval, strict=True):
        single = battery_flexibility(state, minutes / 60, EFF)
        assert up == pytest.approx(single.up_kw, abs=1e-12)
        assert down == pytest.approx(single.down_kw, abs=1e-12)
        assert e_up == pytest.approx(single.energy_up_kwh, abs=1e-12)
        assert e_down == pytest.approx(single.energy_down_kwh, abs=1e-12)


@settings(deadline=None)
@given(battery, st.integers(1, 240))
def test_the_maintained_interval_never_offers_more_than_asked(state: BatteryState, asked: int) -> None:
    used = maintained_interval(INTERVALS, asked)
    assert used >= asked
    longer = battery_flexibility(state, used / 60, EFF)
    exact = battery_flexibility(state, asked / 60, EFF)
    assert longer.up_kw <= exact.up_kw + 1e-9 and longer.down_kw <= exact.down_kw + 1e-9


def sample(site: int, measured_s: float, available: bool, power_kw: float, soc: float) -> telemetry_pb2.Telemetry:
    t = telemetry_pb2.Telemetry(
        site_id=f"site-{site}",
        available=available,
        battery_power_kw=power_kw,
        soc_pct=soc,
        battery_capacity_kwh=20.0 + site,
        max_charge_kw=5.0,
        max_discharge_kw=6.0,
        soc_min_pct=10.0,
        soc_max_pct=90.0,
    )
    t.measured_at.FromNanoseconds(int(measured_s * 1e9))
    return t


# An op is either a sample (site, age in s, available, power, soc) or time moving on (seconds).
ops = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 7), st.integers(0, 14), st.booleans(), st.floats(-6, 6), st.floats(0, 100)),
        st.integers(1, 6),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_maintained_totals_equal_a_scan_over_sites(sequence: list[object]) -> None:
    state = PartitionState(0, INTERVALS, EFF, STALE_S)
    now = 1_000_000  # whole seconds; samples at .5, so "stale" is never a tie
    newest: dict[str, tuple[float, telemetry_pb2.Telemetry]] = {}
    for op in sequence:
        if isinstance(op, int):
            now += op
        else:
            site, age_s, available, power_kw, soc = op  # type: ignore[misc]
            t = sample(site, now - age_s - 0.5, available, power_kw, soc)
            applied = state.apply(t, float(now))
            measured = now - age_s - 0.5
            previous = newest.get(t.site_id)
            assert applied == (previous is None or measured > previous[0])
            if applied:
                newest[t.site_id] = (measured, t)
        state.expire(float(now))
        up = [0] * len(INTERVALS)
        down = [0] * len(INTERVALS)
        online = 0
        for measured, t in newest.values():
            if not (t.available and now - measured <= STALE_S):
                continue
            online += 1
            _, _, per_interval = battery_flexibility_intervals(
                battery_state(t, True), tuple(m / 60 for m in INTERVALS), EFF
            )
            for i, (u, d) in enumerate(per_interval):
                up[i] += round(u * MILLI)
                down[i] += round(d * MILLI)
        assert state.sites_online == online
        assert state.up_mw == up and state.down_mw == down
        assert len(state.sites) == len(newest)


def totals(partition: int, generation: int, published_s: float, up_kw: float, online: int = 1) -> PartitionTotals:
    return PartitionTotals(
        partition=partition,
        owner=f"r{generation}",
        owner_target="",
        generation=generation,
        published_at_s=published_s,
        as_of_s=published_s - 0.2,
        sites_total=online,
        sites_online=online,
        energy_up_mwh=0,
        energy_down_mwh=0,
        up_mw={15: round(up_kw * MILLI)},
        down_mw={15: 0},
    )


def test_the_merged_view_counts_each_partition_once_from_its_newest_owner() -> None:
    view = PortfolioView(partial_stale_after_s=3.0, site_stale_after_s=10.0)
    now = 1000.0
    assert view.offer(totals(0, generation=1, published_s=now - 1, up_kw=5))
    assert view.offer(totals(1, generation=1, published_s=now - 1, up_kw=7))
    # partition 0 moved: the new owner (generation 2) replaces the old one, even if an old partial
    # published later arrives after it
    assert view.offer(totals(0, generation=2, published_s=now - 0.5, up_kw=6))
    assert not view.offer(totals(0, generation=1, published_s=now - 0.1, up_kw=5))
    merged = view.merged(15, "p", now_s=now)
    assert merged.up_kw == pytest.approx(13.0) and merged.sites_online == 2 and merged.partitions == 2
    assert merged.as_of.ToNanoseconds() / 1e9 == pytest.approx(now - 1.2)
    # live local totals win over what this replica published
    merged = view.merged(15, "p", local={1: totals(1, 1, now, up_kw=8)}, now_s=now)
    assert merged.up_kw == pytest.approx(14.0)


def test_a_partition_whose_owner_went_quiet_is_flagged_then_counted_offline() -> None:
    view = PortfolioView(partial_stale_after_s=3.0, site_stale_after_s=10.0)
    view.offer(totals(0, 1, published_s=100.0, up_kw=5, online=3))
    view.offer(totals(1, 1, published_s=105.0, up_kw=2, online=1))
    at_106 = view.merged(15, "p", now_s=106.0)  # partition 0's partial is 6 s old: stale, still counted
    assert at_106.partitions_stale == 1 and at_106.sites_online == 4 and at_106.up_kw == pytest.approx(7.0)
    at_111 = view.merged(15, "p", now_s=111.0)  # older than a site may stay online: its sites are offline
    assert at_111.partitions_stale == 2 and at_111.sites_online == 1 and at_111.sites_total == 4
    assert at_111.up_kw == pytest.approx(2.0)


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.text(max_size=20), st.floats(allow_nan=False), st.booleans()), max_size=30),
    st.text(max_size=30),
)
def test_a_batch_built_from_bytes_parses_as_the_batch_built_from_messages(
    samples: list[tuple[str, float, bool]], source: str
) -> None:
    """The gateway assembles batch records from each sample's bytes (no message copies)."""
    records = [
        telemetry_pb2.TelemetryRecord(
            message_id=f"s:{i}", telemetry=telemetry_pb2.Telemetry(site_id=site, soc_pct=soc, available=avail)
        )
        for i, (site, soc, avail) in enumerate(samples)
    ]
    items = [
        entry(1, length_delimited(1, r.message_id.encode()) + length_delimited(2, r.telemetry.SerializeToString()))
        for r in records
    ]
    env = envelope_pb2.Envelope.FromString(wrap_serialized("telemetry_batch", b"".join(items), source=source))
    assert env.WhichOneof("payload") == "telemetry_batch" and env.source == source and env.message_id
    assert list(env.telemetry_batch.records) == records
