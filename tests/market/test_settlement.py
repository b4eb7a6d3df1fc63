"""Settlement of an award per MTU: capacity for availability, energy for useful delivery, penalties for
shortfall beyond the tolerance, and site shares that add up to the net revenue."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vpp.v1 import common_pb2, market_pb2

from market.settlement import DeliveryStep, PenaltyRule, settle_award, settlement

START_S = 1_718_000_000
RULE = PenaltyRule(tolerance_pct=10.0, capacity_clawback_factor=1.0, undelivered_energy_price_per_mwh=200.0)


def make_award(
    *,
    awarded_kw: float = 100.0,
    price: float = 10.0,
    energy_price: float = 50.0,
    block_s: int = 3600,
    direction: common_pb2.Direction = common_pb2.DIRECTION_UP,
) -> market_pb2.Award:
    award = market_pb2.Award(
        award_id="awd-1",
        bid_id="bid-1",
        product="aFRR",
        direction=direction,
        awarded_kw=awarded_kw,
        capacity_price_per_mw_h=price,
        portfolio_id="p1",
        market_id="entsoe",
        currency="EUR",
        energy_price_per_mwh=energy_price,
    )
    award.interval_start.FromSeconds(START_S)
    award.interval_end.FromSeconds(START_S + block_s)
    return award


def constant(
    requested_kw: float, delivered_kw: float, duration_s: float = 3600, step_s: float = 4
) -> list[DeliveryStep]:
    n = round(duration_s / step_s)
    return [DeliveryStep(k * step_s, requested_kw, delivered_kw, step_s) for k in range(n)]


def settle(award: market_pb2.Award, steps: list[DeliveryStep], **kwargs: object) -> list[market_pb2.SettlementLine]:
    options: dict = {"mtu_s": 900, "penalty": RULE, "reservations": {"a": 60.0, "b": 40.0}} | kwargs
    return settle_award(award, steps, **options)


def test_full_delivery_earns_capacity_and_energy() -> None:
    lines = settle(make_award(), constant(50.0, 50.0))
    assert len(lines) == 4
    for k, line in enumerate(lines):
        assert line.mtu_start.ToSeconds() == START_S + 900 * k and line.mtu_end.ToSeconds() == START_S + 900 * (k + 1)
        assert line.capacity_revenue == pytest.approx(0.1 * 10.0 * 0.25)  # 0.1 MW x 10 EUR/MW/h x 0.25 h
        assert line.requested_kwh == pytest.approx(12.5) and line.delivered_kwh == pytest.approx(12.5)
        assert line.energy_revenue == pytest.approx(0.0125 * 50.0)
        assert line.penalty == 0.0 and not line.under_delivered
        assert line.net_revenue == pytest.approx(0.25 + 0.625)
        assert (line.award_id, line.product, line.currency, line.awarded_kw) == ("awd-1", "aFRR", "EUR", 100.0)
        assert (line.portfolio_id, line.market_id, line.direction) == ("p1", "entsoe", common_pb2.DIRECTION_UP)


def test_capacity_is_paid_without_activation() -> None:
    lines = settle(make_award(), [])
    assert [line.capacity_revenue for line in lines] == pytest.approx([0.25] * 4)
    assert all(line.energy_revenue == line.penalty == line.requested_kwh == 0.0 for line in lines)
    assert not any(line.under_delivered for line in lines)


def test_under_delivery_beyond_the_tolerance_is_penalised() -> None:
    line = settle(make_award(), constant(50.0, 25.0))[0]
    assert line.under_delivered
    assert line.energy_revenue == pytest.approx(0.00625 * 50.0)
    # Half the requested energy missing: half the capacity revenue back, plus 6.25 kWh at 200 EUR/MWh.
    assert line.penalty == pytest.approx(1.0 * 0.25 * 0.5 + 0.00625 * 200.0)
    assert line.net_revenue == pytest.approx(line.capacity_revenue + line.energy_revenue - line.penalty)


def test_within_the_tolerance_no_penalty_and_over_delivery_is_not_paid() -> None:
    within = settle(make_award(), constant(50.0, 46.0))[0]  # 8% short, 10% tolerated
    assert not within.under_delivered and within.penalty == 0.0
    assert within.energy_revenue == pytest.approx(46.0 * 0.25 / 1000 * 50.0)
    over = settle(make_award(), constant(50.0, 70.0))[0]
    assert over.energy_revenue == pytest.approx(0.0125 * 50.0) and over.penalty == 0.0
    assert over.delivered_kwh == pytest.approx(17.5)


def test_down_energy_is_paid_and_the_wrong_direction_counts_as_nothing() -> None:
    down = make_award(direction=common_pb2.DIRECTION_DOWN)
    absorbed = settle(down, constant(-40.0, -40.0))[0]
    assert absorbed.requested_kwh == pytest.approx(-10.0) and absorbed.delivered_kwh == pytest.approx(-10.0)
    assert absorbed.energy_revenue == pytest.approx(0.010 * 50.0) and absorbed.penalty == 0.0
    wrong_way = settle(down, constant(-40.0, 40.0))[0]
    assert wrong_way.energy_revenue == 0.0 and wrong_way.under_delivered
    assert wrong_way.penalty == pytest.approx(0.25 + 0.010 * 200.0)


def test_time_compressed_delivery_stands_for_the_block() -> None:
    real = settle(make_award(), constant(50.0, 40.0))
    # 360 wall seconds at 0.4 s steps, 10 block seconds each: the same energy per MTU.
    fast = settle(make_award(), constant(50.0, 40.0, duration_s=360, step_s=0.4), time_scale=10.0)
    for a, b in zip(real, fast, strict=True):
        for field in ("requested_kwh", "delivered_kwh", "capacity_revenue", "energy_revenue", "penalty"):
            assert getattr(b, field) == pytest.approx(getattr(a, field))


def test_steps_across_an_mtu_boundary_are_split_and_steps_outside_the_block_ignored() -> None:
    steps = [DeliveryStep(800.0, 36.0, 36.0, 200.0), DeliveryStep(3590.0, 36.0, 36.0, 100.0)]
    steps.append(DeliveryStep(-100.0, 36.0, 36.0, 50.0))
    lines = settle(make_award(), steps)
    assert [line.requested_kwh for line in lines] == pytest.approx([1.0, 1.0, 0.0, 0.1])


def test_a_block_that_is_not_a_whole_number_of_mtus_ends_with_a_short_one() -> None:
    lines = settle(make_award(block_s=1000), [])
    assert [line.mtu_end.ToSeconds() - line.mtu_start.ToSeconds() for line in lines] == [900, 100]
    assert sum(line.capacity_revenue for line in lines) == pytest.approx(0.1 * 10.0 * 1000 / 3600)


def test_site_shares_capacity_by_reservation_energy_and_penalty_by_delivery() -> None:
    line = settle(make_award(), constant(50.0, 25.0), site_delivered_kwh={"a": 10.0, "b": 30.0})[0]
    shares = {s.site_id: s for s in line.site_shares}
    assert set(shares) == {"a", "b"}
    assert shares["a"].reserved_kw == 60.0 and shares["b"].reserved_kw == 40.0
    energy_net = line.energy_revenue - line.penalty
    assert shares["a"].revenue == pytest.approx(0.6 * line.capacity_revenue + 0.25 * energy_net)
    assert shares["b"].revenue == pytest.approx(0.4 * line.capacity_revenue + 0.75 * energy_net)
    assert shares["a"].delivered_kwh == pytest.approx(0.25 * line.delivered_kwh)
    # Without a delivery record the energy follows the reservations too.
    fallback = settle(make_award(), constant(50.0, 25.0))[0]
    assert [s.revenue for s in fallback.site_shares] == pytest.approx(
        [0.6 * fallback.net_revenue, 0.4 * fallback.net_revenue]
    )
    assert settle(make_award(), [], reservations={})[0].site_shares == []


def test_settlement_totals_the_lines_and_refuses_other_currencies() -> None:
    lines = settle(make_award(), constant(50.0, 25.0)) + settle(make_award(price=20.0), [])
    run = settlement(
        lines,
        settlement_id="s-1",
        portfolio_id="p1",
        market_id="entsoe",
        currency="EUR",
        period_start_s=START_S,
        period_end_s=START_S + 3600,
    )
    assert run.net_revenue == pytest.approx(sum(line.net_revenue for line in lines))
    assert len(run.lines) == 8 and run.period_end.ToSeconds() == START_S + 3600
    with pytest.raises(ValueError, match="JPY"):
        settlement(
            lines,
            settlement_id="s-2",
            portfolio_id="p1",
            market_id="entsoe",
            currency="JPY",
            period_start_s=START_S,
            period_end_s=START_S + 3600,
        )


def test_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError):
        PenaltyRule(tolerance_pct=-1.0, capacity_clawback_factor=1.0, undelivered_energy_price_per_mwh=0.0)
    with pytest.raises(ValueError, match="mtu_s"):
        settle(make_award(), [], mtu_s=0)
    with pytest.raises(ValueError, match="time_scale"):
        settle(make_award(), [], time_scale=0.0)
    with pytest.raises(ValueError, match="interval_end"):
        settle(make_award(block_s=0), [])
    with pytest.raises(ValueError, match="delivery step"):
        settle(make_award(), [DeliveryStep(0.0, math.nan, 0.0, 4.0)])


# --- properties ----------------------------------------------------------------------------------

powers = st.one_of(st.just(0.0), st.floats(min_value=-150.0, max_value=150.0))
step_records = st.lists(st.tuples(powers, powers), max_size=60)
rules = st.builds(
    PenaltyRule,
    tolerance_pct=st.floats(min_value=0.0, max_value=50.0),
    capacity_clawback_factor=st.floats(min_value=0.0, max_value=3.0),
    undelivered_energy_price_per_mwh=st.floats(min_value=0.0, max_value=1000.0),
)
site_kw = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.floats(min_value=0.0, max_value=100.0), max_size=3)
site_kwh = st.one_of(
    st.none(), st.dictionaries(st.sampled_from(["a", "b", "d"]), st.floats(min_value=-50.0, max_value=50.0), max_size=3)
)
case = st.fixed_dictionaries(
    {
        "records": step_records,
        "step_s": st.sampled_from([4.0, 30.0, 60.0, 97.0]),
        "time_scale": st.sampled_from([0.5, 1.0, 10.0]),
        "mtu_s": st.sampled_from([60, 300, 900]),
        "block_s": st.sampled_from([900, 1800, 3600, 1000]),
        "awarded_kw": st.floats(min_value=0.0, max_value=200.0),
        "price": st.floats(min_value=0.0, max_value=50.0),
        "energy_price": st.floats(min_value=0.0, max_value=300.0),
        "rule": rules,
        "reservations": site_kw,
        "delivered_by_site": site_kwh,
    }
)


def settle_case(c: dict, records: list[tuple[float, float]] | None = None) -> list[market_pb2.SettlementLine]:
    records = c["records"] if records is None else records
    steps = [DeliveryStep(k * c["step_s"], req, dlv, c["step_s"]) for k, (req, dlv) in enumerate(records)]
    award = make_award(
        awarded_kw=c["awarded_kw"], price=c["price"], energy_price=c["energy_price"], block_s=c["block_s"]
    )
    return settle_award(
        award,
        steps,
        mtu_s=c["mtu_s"],
        penalty=c["rule"],
        reservations=c["reservations"],
        site_delivered_kwh=c["delivered_by_site"],
        time_scale=c["time_scale"],
    )


@settings(deadline=None, max_examples=200)
@given(c=case)
def test_settlement_line_properties(c: dict) -> None:
    lines = settle_case(c)
    assert len(lines) == math.ceil(c["block_s"] / c["mtu_s"])
    block_h = c["block_s"] / 3600
    assert math.fsum(line.capacity_revenue for line in lines) == pytest.approx(
        c["awarded_kw"] / 1000 * c["price"] * block_h, rel=1e-9, abs=1e-12
    )
    for line in lines:
        assert line.penalty >= 0.0 and line.energy_revenue >= 0.0 and line.capacity_revenue >= 0.0
        assert line.net_revenue == pytest.approx(line.capacity_revenue + line.energy_revenue - line.penalty)
        assert line.net_revenue <= line.capacity_revenue + line.energy_revenue
        if not line.under_delivered:
            assert line.penalty == 0.0
        if line.site_shares:
            scale = line.capacity_revenue + line.energy_revenue + line.penalty
            total = math.fsum(s.revenue for s in line.site_shares)
            assert total == pytest.approx(line.net_revenue, rel=1e-9, abs=1e-9 * scale + 1e-15)
        else:
            assert not c["reservations"] and not c["delivered_by_site"]


@settings(deadline=None, max_examples=200)
@given(c=case)
def test_exact_delivery_is_never_penalised(c: dict) -> None:
    exact = [(req, req) for req, _ in c["records"]]
    for line in settle_case(c, exact):
        assert line.penalty == 0.0 and not line.under_delivered
        assert line.delivered_kwh == line.requested_kwh
        assert line.net_revenue == pytest.approx(line.capacity_revenue + line.energy_revenue)


@settings(deadline=None, max_examples=200)
@given(c=case, which=st.integers(min_value=0, max_value=59), extra_kw=st.floats(min_value=0.0, max_value=100.0))
def test_more_delivery_never_increases_the_penalty(c: dict, which: int, extra_kw: float) -> None:
    """Delivering more in the requested direction at one step: no more penalty, no less energy revenue."""
    records = list(c["records"])
    if not records:
        return
    i = which % len(records)
    req, dlv = records[i]
    records[i] = (req, dlv + math.copysign(extra_kw, req))
    before, after = settle_case(c), settle_case(c, records)
    for b, a in zip(before, after, strict=True):
        assert a.penalty <= b.penalty
        assert a.energy_revenue >= b.energy_revenue
        assert not (a.under_delivered and not b.under_delivered)
