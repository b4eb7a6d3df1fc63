"""Merit-order clearing (properties of one auction) and the competition file it clears against."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vpp.v1 import common_pb2, market_pb2

from market.clearing import ClearingResult, Pricing, SupplyStep, clear
from market.competition import DEFAULT_COMPETITION_PATH, CompetitionFileError, load_competition

START_S = 1_718_000_000  # a block start (Unix seconds)


def make_bid(
    bid_id: str,
    price: float,
    kw: float,
    *,
    divisible: bool = True,
    direction: common_pb2.Direction = common_pb2.DIRECTION_UP,
) -> market_pb2.Bid:
    bid = market_pb2.Bid(
        bid_id=bid_id,
        product="aFRR",
        direction=direction,
        capacity_kw=kw,
        capacity_price_per_mw_h=price,
        energy_price_per_mwh=80.0,
        portfolio_id="p1",
        market_id="entsoe",
        currency="EUR",
        divisible=divisible,
    )
    bid.interval_start.FromSeconds(START_S)
    bid.interval_end.FromSeconds(START_S + 4 * 3600)
    return bid


def run(
    bids: list[market_pb2.Bid],
    steps: list[SupplyStep],
    demand_kw: float,
    pricing: Pricing = "pay_as_bid",
    divisible: bool = True,
) -> ClearingResult:
    return clear(bids, steps, demand_kw, pricing=pricing, divisible=divisible, award_id=lambda b: f"awd-{b.bid_id}")


def awarded(result: ClearingResult) -> dict[str, float]:
    return {a.bid_id: a.awarded_kw for a in result.awards}


# Coarse prices so that ties between offers are common; kW both round and arbitrary (float sums).
prices = st.integers(min_value=0, max_value=40).map(lambda p: p / 2)
kws = st.one_of(st.integers(min_value=0, max_value=200).map(float), st.floats(min_value=0.0, max_value=200.0))
supply = st.lists(st.builds(SupplyStep, prices, kws), max_size=8)
bid_specs = st.lists(st.tuples(prices, kws, st.booleans()), min_size=1, max_size=4)
demands = st.one_of(st.floats(min_value=0.0, max_value=800.0), st.integers(min_value=0, max_value=800).map(float))
pricings = st.sampled_from(["pay_as_bid", "pay_as_cleared"])


def bids_from(specs: list[tuple[float, float, bool]]) -> list[market_pb2.Bid]:
    return [make_bid(f"b{i}", price, kw, divisible=div) for i, (price, kw, div) in enumerate(specs)]


@settings(deadline=None, max_examples=300)
@given(specs=bid_specs, steps=supply, demand_kw=demands, pricing=pricings, divisible=st.booleans())
def test_clearing_properties(
    specs: list[tuple[float, float, bool]], steps: list[SupplyStep], demand_kw: float, pricing: Pricing, divisible: bool
) -> None:
    bids = bids_from(specs)
    result = run(bids, steps, demand_kw, pricing, divisible)
    clearing = result.clearing_price_per_mw_h
    eps = 1e-9 * max(1.0, demand_kw)
    assert result.demand_kw == demand_kw
    assert 0.0 <= result.accepted_kw <= demand_kw
    assert sum(a.awarded_kw for a in result.awards) <= result.accepted_kw + (len(bids) + len(steps)) * eps
    if result.accepted_kw == 0:
        assert clearing == 0.0
    assert [a.bid_id for a in result.awards] == [b.bid_id for b in bids]
    for bid, award in zip(bids, result.awards, strict=True):
        partial_ok = divisible and bid.divisible
        price = bid.capacity_price_per_mw_h
        assert 0.0 <= award.awarded_kw <= bid.capacity_kw
        if not partial_ok:
            assert award.awarded_kw in (0.0, bid.capacity_kw)  # indivisible: all or nothing
        if award.awarded_kw > 0:
            assert price <= clearing
        if 0 < award.awarded_kw < bid.capacity_kw:
            assert price == clearing  # only the marginal offer is cut
        if award.awarded_kw == 0 and bid.capacity_kw > 0 and price < clearing:
            assert not partial_ok  # a cheaper rejected bid was skipped for overshooting, never a divisible one
        paid = clearing if pricing == "pay_as_cleared" else price
        assert award.capacity_price_per_mw_h == paid
        assert award.clearing_price_per_mw_h == clearing
        assert award.award_id == f"awd-{bid.bid_id}"
        assert (award.product, award.direction, award.portfolio_id, award.market_id, award.currency) == (
            bid.product,
            bid.direction,
            bid.portfolio_id,
            bid.market_id,
            bid.currency,
        )
        assert award.energy_price_per_mwh == bid.energy_price_per_mwh
        assert award.interval_start == bid.interval_start and award.interval_end == bid.interval_end
    if pricing == "pay_as_cleared":
        assert len({a.capacity_price_per_mw_h for a in result.awards}) == 1
    if divisible and all(b.divisible for b in bids):
        total = sum(s.kw for s in steps) + sum(b.capacity_kw for b in bids)
        assert result.accepted_kw == pytest.approx(min(demand_kw, total), rel=1e-9, abs=1e-9)


@settings(deadline=None, max_examples=300)
@given(
    specs=bid_specs,
    steps=supply,
    demand_kw=demands,
    divisible=st.booleans(),
    which=st.integers(min_value=0, max_value=3),
    raise_by=st.one_of(st.integers(min_value=0, max_value=40).map(lambda p: p / 2), st.floats(0.0, 30.0)),
)
def test_raising_our_price_never_increases_our_award(
    specs: list[tuple[float, float, bool]],
    steps: list[SupplyStep],
    demand_kw: float,
    divisible: bool,
    which: int,
    raise_by: float,
) -> None:
    i = which % len(specs)
    before = awarded(run(bids_from(specs), steps, demand_kw, divisible=divisible))
    price, kw, div = specs[i]
    dearer = [*specs[:i], (price + raise_by, kw, div), *specs[i + 1 :]]
    after = awarded(run(bids_from(dearer), steps, demand_kw, divisible=divisible))
    assert after[f"b{i}"] <= before[f"b{i}"]


@settings(deadline=None, max_examples=150)
@given(
    specs=bid_specs,
    steps=supply,
    demand_kw=demands,
    pricing=pricings,
    divisible=st.booleans(),
    data=st.data(),
)
def test_deterministic_and_independent_of_input_order(
    specs: list[tuple[float, float, bool]],
    steps: list[SupplyStep],
    demand_kw: float,
    pricing: Pricing,
    divisible: bool,
    data: st.DataObject,
) -> None:
    bids = bids_from(specs)
    result = run(bids, steps, demand_kw, pricing, divisible)
    assert run(bids, steps, demand_kw, pricing, divisible) == result
    shuffled = run(data.draw(st.permutations(bids)), data.draw(st.permutations(steps)), demand_kw, pricing, divisible)
    assert shuffled.clearing_price_per_mw_h == result.clearing_price_per_mw_h
    assert shuffled.accepted_kw == pytest.approx(result.accepted_kw, rel=1e-12, abs=1e-12)
    assert {a.bid_id: (a.awarded_kw, a.capacity_price_per_mw_h) for a in shuffled.awards} == {
        a.bid_id: (a.awarded_kw, a.capacity_price_per_mw_h) for a in result.awards
    }


COMPETITORS = [SupplyStep(5.0, 100.0), SupplyStep(10.0, 100.0), SupplyStep(20.0, 100.0)]


def test_worked_example_pay_as_bid_and_pay_as_cleared() -> None:
    # 5 EUR: 100 kW, ours at 8: 100 kW, then 50 of the 10 EUR step meets the 250 kW demand.
    bids = [make_bid("cheap", 8.0, 100.0), make_bid("dear", 25.0, 100.0)]
    by_bid = run(bids, COMPETITORS, 250.0, "pay_as_bid")
    assert by_bid.clearing_price_per_mw_h == 10.0 and by_bid.accepted_kw == 250.0
    assert awarded(by_bid) == {"cheap": 100.0, "dear": 0.0}
    assert [a.capacity_price_per_mw_h for a in by_bid.awards] == [8.0, 25.0]
    by_clearing = run(bids, COMPETITORS, 250.0, "pay_as_cleared")
    assert awarded(by_clearing) == awarded(by_bid)
    assert [a.capacity_price_per_mw_h for a in by_clearing.awards] == [10.0, 10.0]


def test_the_marginal_bid_is_cut_only_when_product_and_bid_are_divisible() -> None:
    # 100 kW at 5 EUR leaves 50 kW of the 150 kW demand for our 100 kW bid at 8 EUR.
    assert awarded(run([make_bid("b", 8.0, 100.0)], COMPETITORS, 150.0)) == {"b": 50.0}
    # Not divisible (bid or product): skipped, and the 10 EUR step is cut instead.
    for bid_divisible, product_divisible in ((False, True), (True, False)):
        result = run(
            [make_bid("b", 8.0, 100.0, divisible=bid_divisible)], COMPETITORS, 150.0, divisible=product_divisible
        )
        assert awarded(result) == {"b": 0.0}
        assert result.clearing_price_per_mw_h == (10.0 if product_divisible else 5.0)


def test_an_indivisible_overshoot_is_skipped_and_a_dearer_offer_that_fits_is_taken() -> None:
    steps = [SupplyStep(5.0, 100.0), SupplyStep(12.0, 30.0)]
    result = run([make_bid("b", 8.0, 100.0, divisible=False)], steps, 150.0)
    assert awarded(result) == {"b": 0.0}
    assert result.clearing_price_per_mw_h == 12.0 and result.accepted_kw == 130.0


def test_ties_go_to_the_competitors_first() -> None:
    steps = [SupplyStep(8.0, 100.0)]
    assert awarded(run([make_bid("b", 8.0, 100.0)], steps, 150.0)) == {"b": 50.0}
    assert awarded(run([make_bid("b", 7.99, 100.0)], steps, 150.0)) == {"b": 100.0}


def test_float_sums_that_meet_the_demand_exactly_are_not_an_overshoot() -> None:
    result = run([make_bid("b", 2.0, 0.2, divisible=False)], [SupplyStep(1.0, 0.1)], 0.3)
    assert awarded(result) == {"b": 0.2}


def test_nothing_is_accepted_without_demand_or_offers() -> None:
    result = run([make_bid("b", 8.0, 100.0)], COMPETITORS, 0.0)
    assert (result.accepted_kw, result.clearing_price_per_mw_h, awarded(result)) == (0.0, 0.0, {"b": 0.0})
    assert run([], [], 100.0).awards == []


def test_refuses_bids_of_different_auctions_and_bad_inputs() -> None:
    up, down = make_bid("u", 8.0, 10.0), make_bid("d", 8.0, 10.0, direction=common_pb2.DIRECTION_DOWN)
    with pytest.raises(ValueError, match="another auction"):
        run([up, down], [], 100.0)
    with pytest.raises(ValueError, match="pricing"):
        run([up], [], 100.0, pricing="second_price")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="demand_kw"):
        run([up], [], -1.0)
    with pytest.raises(ValueError, match="supply step"):
        SupplyStep(5.0, -1.0)


# --- the competition file ------------------------------------------------------------------------

SHIPPED = {"entsoe": {"FCR", "aFRR", "mFRR"}, "jp-eprx": {"PR1", "SR1", "SR2", "TR1", "TR2"}}


def test_the_shipped_competition_covers_the_demo_markets() -> None:
    competition = load_competition(DEFAULT_COMPETITION_PATH)
    assert {m: set(mc.products) for m, mc in competition.markets.items()} == SHIPPED
    assert competition.markets["entsoe"].currency == "EUR" and competition.markets["jp-eprx"].currency == "JPY"
    assert set(competition.markets["entsoe"].products["FCR"]) == {"both"}
    assert set(competition.markets["entsoe"].products["aFRR"]) == {"up", "down"}


def shipped_curves() -> list[tuple[str, str, str]]:
    competition = load_competition()
    return [(m, p, d) for m, mc in competition.markets.items() for p, curves in mc.products.items() for d in curves]


@pytest.mark.parametrize(("market_id", "product_id", "direction"), shipped_curves())
def test_a_moderate_demo_bid_wins_and_an_expensive_one_does_not(
    market_id: str, product_id: str, direction: str
) -> None:
    """kW scale: a 100 kW bid (a demo portfolio's size) under the usual price is accepted, at least in part."""
    competition = load_competition()
    for hour in (3, 12, 18):
        steps, demand_kw = competition.curve(market_id, product_id, direction, hour)
        assert 100.0 <= demand_kw <= 1000.0  # a few hundred kW
        alone = run([], steps, demand_kw).clearing_price_per_mw_h
        moderate = run([make_bid("m", 0.5 * alone, 100.0)], steps, demand_kw)
        assert awarded(moderate)["m"] > 0
        expensive = run([make_bid("x", 1.5 * alone, 100.0)], steps, demand_kw)
        assert awarded(expensive)["x"] == 0


def test_evening_blocks_are_dearer_and_prices_are_realistic() -> None:
    competition = load_competition()

    def price(market_id: str, product_id: str, direction: str, hour: int) -> float:
        steps, demand_kw = competition.curve(market_id, product_id, direction, hour)
        return run([], steps, demand_kw).clearing_price_per_mw_h

    for market_id, product_id, direction in shipped_curves():
        assert price(market_id, product_id, direction, 19) > price(market_id, product_id, direction, 12)
    assert 5.0 <= price("entsoe", "aFRR", "up", 12) <= 25.0  # EUR/MW/h
    assert 10.0 <= price("entsoe", "FCR", "both", 12) <= 25.0
    assert 2_000.0 <= price("jp-eprx", "TR2", "up", 12) <= 40_000.0  # JPY/MW/h: 1-20 JPY/kW per 30 min


def test_curve_lookup_by_proto_direction_with_fallback_to_a_symmetric_curve() -> None:
    competition = load_competition()
    both = competition.curve("entsoe", "FCR", "both", 10)
    assert competition.curve("entsoe", "FCR", common_pb2.DIRECTION_UNSPECIFIED, 10) == both
    assert competition.curve("entsoe", "FCR", common_pb2.DIRECTION_UP, 10) == both
    assert competition.curve("entsoe", "aFRR", common_pb2.DIRECTION_DOWN, 10) == competition.curve(
        "entsoe", "aFRR", "down", 10
    )
    with pytest.raises(LookupError, match="'both'"):
        competition.curve("entsoe", "aFRR", "both", 10)
    with pytest.raises(LookupError, match="XYZ"):
        competition.curve("entsoe", "XYZ", "up", 10)
    with pytest.raises(LookupError, match="nordpool"):
        competition.curve("nordpool", "aFRR", "up", 10)
    with pytest.raises(ValueError, match="hour"):
        competition.curve("entsoe", "aFRR", "up", 24)


def test_curve_at_reads_the_hour_in_the_market_zone() -> None:
    competition = load_competition()
    at_s = 1_705_338_000  # 2024-01-15 17:00 UTC = 18:00 in Berlin, 02:00 (next day) in Tokyo
    assert competition.curve_at("entsoe", "aFRR", "up", at_s) == competition.curve("entsoe", "aFRR", "up", 18)
    assert competition.curve_at("jp-eprx", "TR2", "up", at_s) == competition.curve("jp-eprx", "TR2", "up", 2)


GOOD = """
[markets.m]
currency = "EUR"
[markets.m.products.aFRR.up]
demand_kw = 300.0
supply = [[4.0, 60.0], [9.0, 50.0]]
"""


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD.replace("[9.0, 50.0]", "[9.0, -5.0]"), "markets.m.products.aFRR.up.supply"),
        (GOOD.replace("demand_kw", "demand_mw"), "markets.m.products.aFRR.up.demand_mw"),
        (GOOD.replace("aFRR.up", "aFRR.sideways"), "markets.m.products.aFRR.sideways"),
        (GOOD + "hour_multiplier = [1.0, 2.0]\n", "markets.m.products.aFRR.up.hour_multiplier"),
        (GOOD.replace('currency = "EUR"', 'currency = "EUR"\ntimezone = "Mars/Olympus"'), "markets.m.timezone"),
        (GOOD.replace('"EUR"', '"euro"'), "markets.m.currency"),
    ],
)
def test_load_competition_names_the_file_and_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "competition.toml"
    path.write_text(text)
    with pytest.raises(CompetitionFileError, match=str(path)) as info:
        load_competition(path)
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_load_competition_missing_or_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_competition(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[markets\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_competition(bad)
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    steps, demand_kw = load_competition(good).curve("m", "aFRR", "up", 0)
    assert steps == [SupplyStep(4.0, 60.0), SupplyStep(9.0, 50.0)] and demand_kw == 300.0
