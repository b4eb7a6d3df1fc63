"""Sites file validation, the seed backfill from the real data sets, and the quantile combination."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SITE_A, SITE_B, write_sites
from forecasting.seed import main as seed_main
from forecasting.seed import shifted_window, site_frames, week_shift
from forecasting.sites import SitesFileError, load_sites
from forecasting.store import SLOT, HistoryStore
from vpp_common.copula import Marginal, combine, correlation_matrix

# -- sites file ---------------------------------------------------------------------------------------


def test_sites_file_is_read(sites_file: Path) -> None:
    sites = load_sites(sites_file)
    assert [s.site_id for s in sites] == ["site-a", "site-b"]
    assert sites[1].pv.kwp == 5.0 and sites[1].load_scale == 2.0


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("pv", "kwp"), -1, "sites.0.pv.kwp"),
        (("pv", "latitude"), 91, "sites.0.pv.latitude"),
        (("pv", "timezone"), "Mars/Olympus", "sites.0.pv.timezone"),
        (("load_scale",), 0, "sites.0.load_scale"),
        (("site_id",), "bad id!", "sites.0.site_id"),
        (("pv", "tilt"), 30, "sites.0.pv.tilt"),  # a typo must not silently fall back to a default
    ],
)
def test_bad_field_is_named(tmp_path: Path, path: tuple[str, ...], value: Any, field: str) -> None:
    site = copy.deepcopy(SITE_A)
    target = site
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(SitesFileError, match=field.replace(".", r"\.")):
        load_sites(write_sites(tmp_path / "s.json", site))


def test_duplicate_ids_missing_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(SitesFileError, match="duplicate site_id 'site-a'"):
        load_sites(write_sites(tmp_path / "dup.json", SITE_A, SITE_A))
    with pytest.raises(SitesFileError, match="VPP_SITES_FILE"):
        load_sites(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SitesFileError, match="not valid JSON"):
        load_sites(tmp_path / "bad.json")


# -- seed -----------------------------------------------------------------------------------------------


def test_week_shift_keeps_weekday_and_season(real: tuple[pd.Series, pd.Series]) -> None:
    load, pv = real
    end = pd.Timestamp("2025-11-23 12:00", tz="UTC")
    for series in (load, pv):
        shift = week_shift(pd.DatetimeIndex(series.index), end, 60)
        assert shift % pd.Timedelta(days=7) == pd.Timedelta(0)
        src_end = end - shift
        assert src_end <= series.index.max() + SLOT and src_end - pd.Timedelta(days=60) >= series.index.min()
        same_date = src_end.replace(year=end.year)
        assert abs(same_date - end) <= pd.Timedelta(days=4)  # season kept within half a week
    with pytest.raises(ValueError, match="shorter than"):
        week_shift(pd.DatetimeIndex(load.index), end, 3000)


def test_seeded_series_are_the_real_ones_scaled(real: tuple[pd.Series, pd.Series], sites_file: Path) -> None:
    load, pv_per_kwp = real
    sites = load_sites(sites_file)
    end = pd.Timestamp("2025-06-02 00:00", tz="UTC")
    frames = site_frames(sites, load, pv_per_kwp, end, 14)
    a, b = frames["site-a"], frames["site-b"]
    assert a.index[-1] == end - SLOT and len(a) == 14 * 96
    # load_scale 2 vs 1 and kWp 5 vs 8: the same real series, scaled.
    np.testing.assert_allclose(b["load_kw"].to_numpy(), 2.0 * a["load_kw"].to_numpy(), equal_nan=True)
    np.testing.assert_allclose(b["pv_kw"].to_numpy(), 5.0 / 8.0 * a["pv_kw"].to_numpy(), equal_nan=True)
    assert a["load_kw"].notna().mean() > 0.9 and a["pv_kw"].notna().mean() > 0.9
    # PV on the site's wall clock: no production at local midnight, some at local noon.
    local_hour = a.index.tz_convert("America/Denver").hour
    assert a["pv_kw"][local_hour == 0].max() == pytest.approx(0.0, abs=1e-6)
    assert a["pv_kw"][local_hour == 12].mean() > 1.0
    # The values are the real UCI ones moved by whole weeks (spot check one slot).
    shifted = shifted_window(load, end, 14)
    assert shifted.dropna().isin(load.to_numpy()).all()


def test_seed_cli_is_idempotent(tmp_path: Path, sites_file: Path) -> None:
    db = tmp_path / "seed.sqlite"
    args = ["--sites", str(sites_file), "--store", str(db), "--days", "10"]
    done = subprocess.run(
        [sys.executable, "-m", "forecasting.seed", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert seed_main(args) == 0  # the rerun, in process (cheaper)
    store = HistoryStore(f"sqlite:///{db}")
    slots = store.slot_count("site-a")
    assert 9 * 96 <= slots <= 10 * 96  # rerun replaced, did not add
    last = store.last_slot("site-a")
    assert last is not None and pd.Timestamp.now(tz="UTC") - last < pd.Timedelta(hours=2)


def test_seed_cli_names_the_bad_field(tmp_path: Path) -> None:
    site = copy.deepcopy(SITE_B)
    site["pv"]["azimuth_deg"] = 400
    bad = write_sites(tmp_path / "bad.json", site)
    done = subprocess.run(
        [sys.executable, "-m", "forecasting.seed", "--sites", str(bad), "--store", ":memory:"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "sites.0.pv.azimuth_deg" in done.stderr


# -- combining quantile sets ---------------------------------------------------------------------------

LEVELS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]


def normal_quantiles(mean: float, sd: float, index: pd.DatetimeIndex) -> pd.DataFrame:
    from scipy.stats import norm

    row = norm.ppf(LEVELS, loc=mean, scale=sd)
    return pd.DataFrame(np.tile(row, (len(index), 1)), index=index, columns=LEVELS)


INDEX = pd.date_range("2025-01-01", periods=3, freq=SLOT, tz="UTC")


def test_independent_difference_matches_the_normal_answer() -> None:
    load = Marginal(normal_quantiles(5.0, 1.0, INDEX), +1.0, "load")
    pv = Marginal(normal_quantiles(2.0, 1.0, INDEX), -1.0, "pv")
    corr = correlation_matrix(["load", "pv"], ["s", "s"], pv_load=0.0, pv_pv=0.8, load_load=0.1)
    out = combine([load, pv], corr, [0.1, 0.5, 0.9], n_samples=20_000)
    # load - pv ~ N(3, sqrt(2)): P10/P90 = 3 -+ 1.8124 (tails clipped at the 2%/98% levels barely matter here).
    np.testing.assert_allclose(out[0.5], 3.0, atol=0.05)
    np.testing.assert_allclose(out[0.9] - out[0.1], 2 * 1.2816 * np.sqrt(2), rtol=0.05)
    # Summing quantiles (P90(load) - P10(pv)) would claim a wider band than independence gives.
    naive_width = (5 + 1.2816) - (2 - 1.2816) - ((5 - 1.2816) - (2 + 1.2816))
    assert (out[0.9] - out[0.1]).iloc[0] < 0.8 * naive_width


def test_comonotone_sum_equals_sum_of_quantiles() -> None:
    a = Marginal(normal_quantiles(1.0, 0.5, INDEX), 1.0, "pv")
    b = Marginal(normal_quantiles(3.0, 1.5, INDEX), 1.0, "pv")
    corr = correlation_matrix(["pv", "pv"], ["s1", "s2"], pv_load=0.0, pv_pv=0.99, load_load=0.0)
    out = combine([a, b], corr, [0.1, 0.5, 0.9], n_samples=20_000)
    np.testing.assert_allclose(out[0.9], 4.0 + 1.2816 * 2.0, rtol=0.03)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(0.01, 0.99), min_size=1, max_size=6, unique=True),
    st.floats(-0.9, 0.9),
    st.floats(0.0, 10.0),
)
def test_combined_quantiles_never_cross(qs: list[float], rho: float, spread: float) -> None:
    a = Marginal(normal_quantiles(1.0, 0.1 + spread, INDEX), 1.0, "load")
    b = Marginal(normal_quantiles(2.0, 0.1, INDEX), -1.0, "pv")
    corr = correlation_matrix(["load", "pv"], ["s", "s"], pv_load=rho, pv_pv=0.0, load_load=0.0)
    qs = sorted(qs)
    out = combine([a, b], corr, qs, n_samples=500)
    assert list(out.columns) == qs
    assert (np.diff(out.to_numpy(), axis=1) >= -1e-12).all()


def test_sites_example_file_is_valid() -> None:
    from forecasting.settings import DEFAULT_SITES_FILE

    sites = load_sites(DEFAULT_SITES_FILE)
    assert len(sites) >= 2
    assert json.loads(DEFAULT_SITES_FILE.read_text())["sites"][0]["site_id"] == sites[0].site_id
