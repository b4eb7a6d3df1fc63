"""Markets, products and portfolios as data: the shipped files load with their key figures, bad files are
refused naming file and field, and gate closures / blocks follow the market's local clock."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from vpp_common.markets import (
    MARKETS_DIR,
    PORTFOLIOS_FILE,
    ActivationKind,
    Catalog,
    Direction,
    MarketConfigError,
    Portfolio,
    Pricing,
    load_catalog,
)

BERLIN = ZoneInfo("Europe/Berlin")
TOKYO = ZoneInfo("Asia/Tokyo")
ENTSOE = (MARKETS_DIR / "entsoe.toml").read_text(encoding="utf-8")
PORTFOLIOS = PORTFOLIOS_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


# --- shipped data --------------------------------------------------------------------------------------

EXPECTED: dict[tuple[str, str], dict[str, Any]] = {
    ("entsoe", "FCR"): dict(
        symmetric=True,
        full_activation_s=30.0,
        block_s=14400,
        mtu_s=900,
        sustain_s=900,
        min_bid_kw=1000.0,
        increment_kw=1000.0,
        capacity_pricing=Pricing.PAY_AS_CLEARED,
        energy_bids=False,
        activation=ActivationKind.FREQUENCY,
    ),
    ("entsoe", "aFRR"): dict(
        symmetric=False,
        full_activation_s=300.0,
        block_s=14400,
        mtu_s=900,
        activation_step_s=4,
        capacity_pricing=Pricing.PAY_AS_BID,
        energy_bids=True,
        energy_pricing=Pricing.PAY_AS_CLEARED,
        activation=ActivationKind.SETPOINT,
    ),
    ("entsoe", "mFRR"): dict(
        symmetric=False,
        full_activation_s=750.0,
        block_s=14400,
        mtu_s=900,
        capacity_pricing=Pricing.PAY_AS_BID,
        energy_pricing=Pricing.PAY_AS_CLEARED,
        activation=ActivationKind.SCHEDULE,
    ),
    ("jp-eprx", "PR1"): dict(
        name_local="一次調整力",
        response_time_s=10.0,
        sustain_s=300,
        block_s=1800,
        mtu_s=1800,
        activation=ActivationKind.FREQUENCY,
        energy_bids=False,
    ),
    ("jp-eprx", "SR1"): dict(
        name_local="二次調整力①",
        response_time_s=300.0,
        sustain_s=1800,
        block_s=1800,
        activation=ActivationKind.SETPOINT,
    ),
    ("jp-eprx", "SR2"): dict(
        name_local="二次調整力②",
        response_time_s=300.0,
        sustain_s=1800,
        block_s=1800,
        activation=ActivationKind.SETPOINT,
    ),
    ("jp-eprx", "TR1"): dict(
        name_local="三次調整力①",
        response_time_s=900.0,
        sustain_s=1800,
        block_s=1800,
        activation=ActivationKind.SCHEDULE,
        min_bid_kw=1000.0,
    ),
    ("jp-eprx", "TR2"): dict(
        name_local="三次調整力②",
        response_time_s=3600.0,
        sustain_s=1800,
        block_s=1800,
        activation=ActivationKind.SCHEDULE,
        activation_step_s=1800,
    ),
}


def test_shipped_catalog_has_both_markets_and_demo_portfolios(catalog: Catalog) -> None:
    assert set(catalog.markets) == {"entsoe", "jp-eprx"}
    assert [p.product_id for p in catalog.market("entsoe").products] == ["FCR", "aFRR", "mFRR"]
    assert [p.product_id for p in catalog.market("jp-eprx").products] == ["PR1", "SR1", "SR2", "TR1", "TR2"]
    assert set(catalog.portfolios) == {"eu-north", "jp-kanto"}
    assert catalog.market("entsoe").tz == BERLIN and catalog.market("jp-eprx").tz == TOKYO


@pytest.mark.parametrize(("market_id", "product_id"), sorted(EXPECTED))
def test_shipped_product_key_figures(catalog: Catalog, market_id: str, product_id: str) -> None:
    product = catalog.product(market_id, product_id)
    for field, expected in EXPECTED[(market_id, product_id)].items():
        assert getattr(product, field) == expected, field
    assert set(product.directions) == {Direction.UP, Direction.DOWN}
    assert product.sources, "every shipped product cites its sources"
    assert product.assumptions, "every shipped product lists what is assumed"


def test_shipped_gates_and_currencies(catalog: Catalog) -> None:
    entsoe, jp = catalog.market("entsoe"), catalog.market("jp-eprx")
    assert entsoe.currency == "EUR" and jp.currency == "JPY"
    assert [entsoe.product(p).gate_closure.local_time for p in ("FCR", "aFRR", "mFRR")] == ["08:00", "09:00", "10:00"]
    assert {p.gate_closure.local_time for p in jp.products} == {"14:00"}
    afrr_energy_gate = entsoe.product("aFRR").energy_gate_closure
    assert afrr_energy_gate is not None and afrr_energy_gate.lead_s == 25 * 60


def test_published_prices_convert_to_internal_units(catalog: Catalog) -> None:
    jp = catalog.market("jp-eprx")
    assert jp.capacity_price_per_mw_h(1.5) == pytest.approx(3000.0)  # 1.5 JPY/ΔkW per 30 min
    assert jp.energy_price_per_mwh(12.0) == pytest.approx(12_000.0)  # 12 JPY/kWh
    assert catalog.market("entsoe").capacity_price_per_mw_h(8.0) == pytest.approx(8.0)


def test_demo_portfolios_scale_minimum_bids(catalog: Catalog) -> None:
    eu, jp = catalog.portfolio("eu-north"), catalog.portfolio("jp-kanto")
    assert (eu.market_id, eu.currency, eu.products) == ("entsoe", "EUR", ("aFRR", "FCR", "mFRR"))
    assert eu.sites == ("home-01", "home-02", "farm-01")
    fcr = catalog.product("entsoe", "FCR")
    assert (eu.min_bid_kw(fcr), eu.increment_kw(fcr)) == (1.0, 1.0)
    tr1 = catalog.product("jp-eprx", "TR1")
    assert (jp.min_bid_kw(tr1), jp.increment_kw(tr1)) == (5.0, 1.0)
    assert [p.product_id for p in catalog.portfolio_products("jp-kanto")] == ["SR2", "TR1"]


def test_catalog_lookups_fail_with_clear_messages(catalog: Catalog) -> None:
    with pytest.raises(KeyError, match=r"no product 'XYZ'.*FCR, aFRR, mFRR"):
        catalog.product("entsoe", "XYZ")
    with pytest.raises(KeyError, match="no market 'nordpool'"):
        catalog.product("nordpool", "FCR")
    with pytest.raises(KeyError, match=r"no portfolio 'eu-south'.*eu-north"):
        catalog.portfolio("eu-south")


# --- bad files -----------------------------------------------------------------------------------------


def edit_product(text: str, index: int, old: str, new: str) -> str:
    """Replace ``old`` (exactly once) inside the ``index``-th [[products]] table."""
    head, *tables = text.split("[[products]]")
    assert tables[index].count(old) == 1, (index, old)
    tables[index] = tables[index].replace(old, new)
    return "[[products]]".join([head, *tables])


def load_with(tmp_path: Path, entsoe: str = ENTSOE, portfolios: str = PORTFOLIOS) -> Catalog:
    markets = tmp_path / "markets"
    markets.mkdir(parents=True)
    shutil.copy(MARKETS_DIR / "jp_eprx.toml", markets / "jp_eprx.toml")
    (markets / "entsoe.toml").write_text(entsoe, encoding="utf-8")
    (tmp_path / "portfolios.toml").write_text(portfolios, encoding="utf-8")
    return load_catalog(markets, tmp_path / "portfolios.toml")


def refused(tmp_path: Path, entsoe: str = ENTSOE, portfolios: str = PORTFOLIOS) -> str:
    with pytest.raises(MarketConfigError) as caught:
        load_with(tmp_path, entsoe, portfolios)
    return str(caught.value)


def test_copy_of_shipped_files_loads(tmp_path: Path) -> None:
    assert set(load_with(tmp_path).markets) == {"entsoe", "jp-eprx"}


# (product index, text in that [[products]] table, replacement, field path, message fragment)
BAD_PRODUCTS = [
    (2, "min_bid_kw = 1000.0", 'min_bid_kw = "lots"', "products[2].min_bid_kw", "Input should be a valid number"),
    (2, "min_bid_kw = 1000.0", "min_bid_kw = -1000.0", "products[2].min_bid_kw", "Input should be greater than 0"),
    (1, "symmetric = false", "symmetric = 0", "products[1].symmetric", "Input should be a valid boolean"),
    (1, 'name = "automatic', 'colour = "red"\nname = "automatic', "products[1].colour", "unknown key"),
    (0, "block_s = 14400", "block_s = 1000", "products[0].block_s", "must be a multiple of mtu_s (900 s)"),
    (0, "block_s = 14400", "block_s = 12600", "products[0].block_s", "must divide a day"),
    (0, 'directions = ["up", "down"]', 'directions = ["up"]', "products[0].symmetric", "a symmetric product needs"),
    (1, 'directions = ["up", "down"]', 'directions = ["up", "up"]', "products[1].directions", "direction twice"),
    (1, 'energy_pricing = "pay_as_cleared"', "", "products[1].energy_pricing", "required when energy_bids = true"),
    (0, "full_activation_s = 30.0", "full_activation_s = 1.0", "products[0].full_activation_s", "must be >= response"),
    (0, 'local_time = "08:00"', 'local_time = "8 am"', "products[0].gate_closure.local_time", "expected 24-hour"),
    (1, "lead_s = 1500", 'local_time = "09:00"', "products[1].energy_gate_closure", "'before_delivery' needs lead_s"),
    (0, "tolerance_pct = 10.0", "tolerance_pct = 120.0", "products[0].penalty.tolerance_pct", "or equal to 100"),
    (
        0,
        '\nactivation_step_s = "Freq',
        '\n"penalty.nope" = "x"\nactivation_step_s = "Freq',
        "products[0].assumptions",
        "key 'penalty.nope' names no field of Product",
    ),
    (0, 'increment_kw = "1 MW', 'increment_mw = "1 MW', "products[0].assumptions", "key 'increment_mw' names no field"),
]


@pytest.mark.parametrize(("index", "old", "new", "path", "fragment"), BAD_PRODUCTS)
def test_bad_market_file_is_refused_naming_file_and_field(
    tmp_path: Path, index: int, old: str, new: str, path: str, fragment: str
) -> None:
    message = refused(tmp_path, entsoe=edit_product(ENTSOE, index, old, new))
    line = next(line for line in message.splitlines() if line.startswith(f"entsoe.toml: {path}: "))
    assert fragment in line
    assert any(advice in line for advice in ("fix", "remove", "add", "use a field path", "needs"))  # what to do


def test_missing_key_is_named(tmp_path: Path) -> None:
    message = refused(tmp_path, entsoe=edit_product(ENTSOE, 2, "sustain_s = 14400\n", ""))
    assert "entsoe.toml: products[2].sustain_s: required key is missing; add it" in message


def test_market_level_errors(tmp_path: Path) -> None:
    assert "entsoe.toml: timezone: unknown IANA time zone 'Europe/Bonn'" in refused(
        tmp_path / "a", entsoe=ENTSOE.replace('timezone = "Europe/Berlin"', 'timezone = "Europe/Bonn"')
    )
    assert "entsoe.toml: products: product_id used twice: ['FCR']" in refused(
        tmp_path / "b", entsoe=edit_product(ENTSOE, 1, 'product_id = "aFRR"', 'product_id = "FCR"')
    )
    assert "entsoe.toml: currency: Input should be 'EUR' or 'JPY'" in refused(
        tmp_path / "c", entsoe=ENTSOE.replace('currency = "EUR"', 'currency = "USD"')
    )
    assert "entsoe.toml: owner: unknown key" in refused(tmp_path / "d", entsoe='owner = "x"\n' + ENTSOE)
    assert "entsoe.toml: assumptions: key 'fee' names no field of Market" in refused(
        tmp_path / "e", entsoe=ENTSOE.replace("[assumptions]\n", '[assumptions]\nfee = "x"\n')
    )
    assert "entsoe.toml: not valid TOML" in refused(tmp_path / "f", entsoe=ENTSOE + "\nbroken = \n")


def test_same_market_id_in_two_files_is_refused(tmp_path: Path) -> None:
    markets = tmp_path / "markets"
    markets.mkdir()
    for name in ("entsoe.toml", "entsoe_copy.toml"):
        (markets / name).write_text(ENTSOE, encoding="utf-8")
    with pytest.raises(MarketConfigError) as caught:
        load_catalog(markets, PORTFOLIOS_FILE)
    assert "entsoe_copy.toml: market_id: 'entsoe' is already defined in entsoe.toml" in str(caught.value)


SCHOOL_AND_FACTORY = 'sites = ["school-01", "factory-01"]'
# (text in portfolios.toml, replacement, field path, message fragment); portfolios[1] is jp-kanto
BAD_PORTFOLIOS = [
    ('"SR2", "TR1"', '"SR2", "XYZ"', "portfolios[1].products[1]", "market 'jp-eprx' has no product 'XYZ'"),
    ('currency = "JPY"', 'currency = "EUR"', "portfolios[1].currency", "'EUR' does not match market 'jp-eprx'"),
    ('"school-01"', '"home-01"', "portfolios[1].sites[0]", "site 'home-01' already belongs to portfolio 'eu-north'"),
    (SCHOOL_AND_FACTORY, 'sites = ["school-01", "school-01"]', "portfolios[1].sites", "['school-01'] more than once"),
    ('market_id = "jp-eprx"', 'market_id = "jepx"', "portfolios[1].market_id", "unknown market 'jepx'"),
    ("override = 5.0", "override = 2000.0", "portfolios[1].min_bid_kw_override", "above TR1's own minimum of 1000 kW"),
    ("36\nmin_bid_kw_override = 5.0", "49\nmin_bid_kw_override = 5.0", "portfolios[1].horizon_h", "or equal to 48"),
    ('id = "jp-kanto"', 'id = "eu-north"', "portfolios[1].portfolio_id", "'eu-north' is already used by portfolios[0]"),
    ('id = "jp-kanto"', 'id = "JP Kanto"', "portfolios[1].portfolio_id", "String should match pattern"),
    ("override = 5.0", "override = 5.0\nowner = 1", "portfolios[1].owner", "unknown key"),
]


@pytest.mark.parametrize(("old", "new", "path", "fragment"), BAD_PORTFOLIOS)
def test_bad_portfolio_is_refused_naming_file_and_field(
    tmp_path: Path, old: str, new: str, path: str, fragment: str
) -> None:
    assert PORTFOLIOS.count(old) == 1, old
    message = refused(tmp_path, portfolios=PORTFOLIOS.replace(old, new))
    assert f"portfolios.toml: {path}: " in message
    assert fragment in message


@pytest.mark.parametrize(("confidence", "ok"), [(0.5, True), (0.999, True), (1.0, False), (0.49, False)])
def test_portfolio_confidence_bounds(catalog: Catalog, confidence: float, ok: bool) -> None:
    data = catalog.portfolio("eu-north").model_dump() | {"confidence": confidence}
    if ok:
        assert Portfolio.model_validate(data).confidence == confidence
    else:
        with pytest.raises(ValidationError, match="confidence"):
            Portfolio.model_validate(data)


# --- gate closures and blocks --------------------------------------------------------------------------


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


def test_fcr_gate_closure_follows_berlin_dst(catalog: Catalog) -> None:
    fcr = catalog.product("entsoe", "FCR")
    # Spring forward on 2026-03-29: the gate for that day is still in CET, the next day's in CEST.
    assert fcr.gate_closure_at(local(BERLIN, 2026, 3, 29, 0)) == datetime(2026, 3, 28, 7, tzinfo=UTC)
    assert fcr.gate_closure_at(local(BERLIN, 2026, 3, 29, 20)) == datetime(2026, 3, 28, 7, tzinfo=UTC)
    assert fcr.gate_closure_at(local(BERLIN, 2026, 3, 30, 0)) == datetime(2026, 3, 29, 6, tzinfo=UTC)
    # Fall back on 2026-10-25: gate on the 24th at 08:00 CEST; the gate on the 25th at 08:00 CET.
    assert fcr.gate_closure_at(local(BERLIN, 2026, 10, 25, 4)) == datetime(2026, 10, 24, 6, tzinfo=UTC)
    assert fcr.gate_closure_at(local(BERLIN, 2026, 10, 26, 0)) == datetime(2026, 10, 25, 7, tzinfo=UTC)
    # The delivery day is the local one: 23:30 UTC on the 29th is already the 30th in Berlin.
    assert fcr.gate_closure_at(datetime(2026, 3, 29, 23, 30, tzinfo=UTC)) == datetime(2026, 3, 29, 6, tzinfo=UTC)


def test_afrr_capacity_and_energy_gates(catalog: Catalog) -> None:
    afrr = catalog.product("entsoe", "aFRR")
    block = local(BERLIN, 2026, 6, 15, 16)
    assert afrr.gate_closure_at(block) == datetime(2026, 6, 14, 7, tzinfo=UTC)  # 09:00 CEST
    quarter = local(BERLIN, 2026, 6, 15, 16, 45)
    assert afrr.energy_gate_closure_at(quarter) == quarter.astimezone(UTC) - timedelta(minutes=25)
    fcr = catalog.product("entsoe", "FCR")  # no separate energy gate: the capacity gate applies
    assert fcr.energy_gate_closure_at(block) == fcr.gate_closure_at(block)


def test_japan_day_ahead_gate_is_14_00_tokyo(catalog: Catalog) -> None:
    for product in catalog.market("jp-eprx").products:
        assert product.gate_closure_at(local(TOKYO, 2026, 5, 10, 0)) == datetime(2026, 5, 9, 5, tzinfo=UTC)
        assert product.gate_closure_at(local(TOKYO, 2026, 5, 10, 23, 30)) == datetime(2026, 5, 9, 5, tzinfo=UTC)
    tr1 = catalog.product("jp-eprx", "TR1")
    # 20:00 UTC on the 10th is 05:00 on the 11th in Tokyo: the gate is on the 10th at 14:00 JST.
    assert tr1.gate_closure_at(datetime(2026, 5, 10, 20, tzinfo=UTC)) == datetime(2026, 5, 10, 5, tzinfo=UTC)
    # The tz argument overrides the market's: 12:00 JST on the 10th is 05:00 on the 10th in Berlin.
    assert tr1.gate_closure_at(local(TOKYO, 2026, 5, 10, 12), BERLIN) == datetime(2026, 5, 9, 12, tzinfo=UTC)


def test_fcr_blocks_start_at_local_midnight_and_follow_dst(catalog: Catalog) -> None:
    fcr = catalog.product("entsoe", "FCR")
    day = fcr.blocks(local(BERLIN, 2026, 3, 29, 0), local(BERLIN, 2026, 3, 30, 0))
    assert [b.astimezone(BERLIN).hour for b in day] == [0, 4, 8, 12, 16, 20]
    assert day[1] - day[0] == timedelta(hours=3)  # the spring-forward block is an hour short
    autumn = fcr.blocks(local(BERLIN, 2026, 10, 25, 0), local(BERLIN, 2026, 10, 26, 0))
    assert autumn[1] - autumn[0] == timedelta(hours=5)
    assert all(b.tzinfo == UTC for b in day)
    # Half-open window: a block starting at ``end`` is excluded, one starting at ``start`` included.
    assert fcr.blocks(local(BERLIN, 2026, 7, 1, 4), local(BERLIN, 2026, 7, 1, 8)) == [local(BERLIN, 2026, 7, 1, 4)]
    assert fcr.blocks(local(BERLIN, 2026, 7, 1, 5), local(BERLIN, 2026, 7, 1, 8)) == []


def test_quarter_hour_blocks_count_dst_days(catalog: Catalog) -> None:
    quarter_hourly = catalog.product("entsoe", "aFRR").model_copy(update={"block_s": 900})

    def count(day: int, month: int) -> int:
        return len(quarter_hourly.blocks(local(BERLIN, 2026, month, day), local(BERLIN, 2026, month, day + 1), BERLIN))

    assert (count(29, 3), count(25, 10), count(1, 7)) == (92, 100, 96)


def test_japan_has_48_half_hour_blocks_a_day(catalog: Catalog) -> None:
    blocks = catalog.product("jp-eprx", "SR2").blocks(local(TOKYO, 2026, 5, 10), local(TOKYO, 2026, 5, 11))
    assert len(blocks) == 48
    assert blocks[0] == datetime(2026, 5, 9, 15, tzinfo=UTC)


def test_naive_times_and_detached_products_are_refused(catalog: Catalog) -> None:
    fcr = catalog.product("entsoe", "FCR")
    with pytest.raises(ValueError, match="timezone-aware"):
        fcr.gate_closure_at(datetime(2026, 5, 1))
    detached = type(fcr).model_validate(fcr.model_dump())
    with pytest.raises(ValueError, match="not attached to a market: pass tz"):
        detached.blocks(local(BERLIN, 2026, 5, 1), local(BERLIN, 2026, 5, 2))
    assert len(detached.blocks(local(BERLIN, 2026, 5, 1), local(BERLIN, 2026, 5, 2), BERLIN)) == 6
