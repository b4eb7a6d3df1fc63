"""Day-ahead prices from the shipped SMARD CSVs and the opportunity cost of reserving battery capacity."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd
import pytest

from bidding.pricing import (
    EUR_TO_JPY,
    bid_price_per_mw_h,
    capacity_opportunity_cost_per_mw_h,
    day_ahead_prices,
    load_day_ahead_prices,
)

SUMMER_DAY = np.array(
    [35.6, 33.1, 32.4, 31.4, 30.9, 35.7, 45.8, 60.5, 63.5, 58.1, 52.0, 50.1,
     47.9, 45.9, 45.2, 46.2, 45.9, 47.5, 53.0, 59.4, 56.0, 52.9, 50.9, 44.5]
)


def cost(prices: np.ndarray | pd.Series, sustain_h: float = 4.0, direction: str = "up", eff: float = 0.9) -> float:
    return capacity_opportunity_cost_per_mw_h(prices, sustain_h=sustain_h, efficiency=eff, direction=direction)


def test_2018_prices_are_a_full_hourly_utc_year_with_a_plausible_level() -> None:
    prices = load_day_ahead_prices(2018)
    assert len(prices) in (8760, 8784)
    assert str(prices.index.tz) == "UTC"
    assert (prices.index[1:] - prices.index[:-1] == pd.Timedelta(hours=1)).all()
    assert prices.index[0] == pd.Timestamp("2017-12-31 23:00", tz="UTC")  # local midnight, CET
    assert not prices.isna().any()
    assert 40.0 < prices.mean() < 48.0  # 2018 German day-ahead mean ~44 EUR/MWh
    assert -150.0 < prices.min() < 0.0 < 100.0 < prices.max() < 300.0  # negative hours exist in 2018


def test_2015_prices_load_and_other_years_are_refused() -> None:
    assert len(load_day_ahead_prices(2015)) == 8760
    with pytest.raises(ValueError, match="2015"):
        load_day_ahead_prices(2017)


def test_jpy_prices_are_the_german_ones_at_the_assumed_rate() -> None:
    eur, jpy = day_ahead_prices(2018, "EUR"), day_ahead_prices(2018, "JPY")
    assert np.allclose(jpy.to_numpy(), eur.to_numpy() * EUR_TO_JPY)
    with pytest.raises(ValueError):
        day_ahead_prices(2018, "USD")


def test_opportunity_cost_is_zero_on_a_flat_day_and_never_negative() -> None:
    assert cost(np.full(24, 50.0)) == 0.0
    assert cost(np.full(24, 50.0), eff=1.0) == 0.0
    rng = np.random.default_rng(3)
    for _ in range(200):
        day = rng.normal(40.0, 30.0, 24)  # includes negative prices
        for direction in ("up", "down", "both"):
            assert cost(day, sustain_h=float(rng.uniform(0, 16)), direction=direction) >= 0.0


def test_opportunity_cost_grows_with_the_days_spread() -> None:
    mean = SUMMER_DAY.mean()
    costs = [cost(mean + k * (SUMMER_DAY - mean)) for k in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert costs[0] == 0.0
    assert all(b > a for a, b in pairwise(costs))


def test_opportunity_cost_is_monotone_in_sustain_time_and_capped_by_the_day() -> None:
    hours = np.linspace(0.0, 30.0, 121)
    costs = [cost(SUMMER_DAY, sustain_h=float(h)) for h in hours]
    assert costs[0] == 0.0
    assert all(b >= a - 1e-12 for a, b in pairwise(costs))
    assert costs[-1] == pytest.approx(cost(SUMMER_DAY, sustain_h=12.0))  # one cycle a day at most


def test_opportunity_cost_matches_the_documented_formula() -> None:
    # Two hours of energy, eta 0.9: best pairs 63.5/30.9 and 60.5/31.4; spread over 24 h.
    expected = (0.9 * 63.5 - 30.9 + 0.9 * 60.5 - 31.4) / 24
    assert cost(SUMMER_DAY, sustain_h=2.0) == pytest.approx(expected)
    # Symmetric reservation holds energy and room: like twice the sustain time in one direction.
    assert cost(SUMMER_DAY, sustain_h=1.0, direction="both") == pytest.approx(cost(SUMMER_DAY, sustain_h=2.0))
    assert cost(SUMMER_DAY, direction="down") == cost(SUMMER_DAY, direction="up")


def test_opportunity_cost_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        cost(SUMMER_DAY, sustain_h=-1.0)
    with pytest.raises(ValueError):
        cost(SUMMER_DAY, eff=0.0)
    with pytest.raises(ValueError):
        cost(SUMMER_DAY, direction="sideways")


def test_bid_price_adds_the_margin_and_respects_the_floor() -> None:
    assert bid_price_per_mw_h(4.0, 25.0, 0.0) == pytest.approx(5.0)
    assert bid_price_per_mw_h(0.0, 25.0, 1.5) == 1.5
    assert bid_price_per_mw_h(10.0, 0.0, 1.5) == 10.0
    with pytest.raises(ValueError):
        bid_price_per_mw_h(1.0, -5.0, 0.0)


def test_expected_clearing_price_is_the_median_at_the_same_hour() -> None:
    from bidding.pricing import expected_clearing_price

    history = [(8, 10.0), (9, 50.0), (8, 14.0), (8, 12.0), (8, float("nan"))]
    assert expected_clearing_price(history, hour=8) == 12.0
    assert expected_clearing_price(history, hour=8, window=2) == 13.0
    assert expected_clearing_price(history, hour=3) is None


def test_pay_as_bid_bids_under_the_expected_clearing_price_never_under_cost() -> None:
    from bidding.pricing import bid_price_rule

    # pay-as-cleared: the true cost (plus margin) whatever the market pays
    assert bid_price_rule(2.0, 10.0, pricing="pay_as_cleared", expected_clearing=17.0) == pytest.approx(2.2)
    # pay-as-bid: just under the expected clearing price ...
    assert bid_price_rule(2.0, 10.0, pricing="pay_as_bid", expected_clearing=17.0) == pytest.approx(0.95 * 17.0)
    # ... but never under cost plus margin, and cost plus margin without history
    assert bid_price_rule(20.0, 10.0, pricing="pay_as_bid", expected_clearing=17.0) == pytest.approx(22.0)
    assert bid_price_rule(2.0, 10.0, pricing="pay_as_bid", expected_clearing=None) == pytest.approx(2.2)
