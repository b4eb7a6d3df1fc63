"""Backfill the history store with REAL measured series so the demo's sites have something to learn from.

For each site: load = UCI household (one real household, Sceaux) times the site's ``load_scale``;
PV = NREL PVDAQ system 50 (Golden, CO) divided by its effective kWp, times the site's ``kwp``.
Each series is moved forward in time by a whole number of weeks, so weekdays stay aligned, choosing
the source year whose same calendar dates are covered (the season is off by at most 3.5 days).

Time of day is kept on the *local wall clock*: the UCI file's clock is the household's local time and
the PVDAQ series is read on America/Denver wall-clock time; both are re-read as the site's local wall
clock and converted to UTC. A household's evening peak stays in the site's evening and PV stays around
local noon, wherever the site is (PV shape still comes from Colorado: latitude and orientation differ).

    python -m forecasting.seed --sites sites.json --store sqlite:///history.sqlite --days 60
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import pandas as pd

from forecasting.sites import SiteConfig, SitesFileError, load_sites
from forecasting.store import SLOT, HistoryStore, StoreUnavailable
from vpp_common.logs import configure_logging, get_logger
from vpp_common.validation import normalise_store_url

log = get_logger(__name__)

WEEK = pd.Timedelta(days=7)
PVDAQ_TIMEZONE = "America/Denver"


def week_shift(data_index: pd.DatetimeIndex, end: pd.Timestamp, days: int) -> pd.Timedelta:
    """Whole-week shift that maps a covered source window ``[end - days, end) - shift`` onto the target.

    Prefers the latest source year whose same calendar dates are fully inside the data."""
    first, last = data_index.min(), data_index.max() + SLOT
    span = pd.Timedelta(days=days)
    for year in range(last.year, first.year - 1, -1):
        try:
            anchor = end.replace(year=year)
        except ValueError:  # 29 February
            anchor = end.replace(year=year, day=28)
        weeks = round((end - anchor) / WEEK)
        for k in (weeks, weeks + 1):
            src_end = end - k * WEEK
            if src_end <= last and src_end - span >= first:
                return k * WEEK
    raise ValueError(f"the real series ({first} .. {last}) is shorter than the {days} days asked for")


def _rewall(series: pd.Series, source_tz: str | None, site_tz: str) -> pd.Series:
    """Re-read the series' local wall-clock times as the site's wall clock (DST gaps/overlaps dropped)."""
    wall = series.index.tz_convert(source_tz).tz_localize(None) if source_tz else series.index.tz_localize(None)
    local = wall.tz_localize(site_tz, ambiguous="NaT", nonexistent="NaT")
    keep = ~local.isna()
    out = pd.Series(series.to_numpy()[keep], index=local[keep].tz_convert("UTC"))
    out = out[~out.index.duplicated(keep="first")].sort_index()
    return out


def shifted_window(series: pd.Series, end: pd.Timestamp, days: int) -> pd.Series:
    """The source window moved by whole weeks to cover ``[end - days, end)`` on a full 15-min grid."""
    shift = week_shift(pd.DatetimeIndex(series.index), end, days)
    start = end - pd.Timedelta(days=days)
    part = series[(series.index >= start - shift) & (series.index < end - shift)].copy()
    part.index = part.index + shift
    grid = pd.date_range(start, end, freq=SLOT, inclusive="left")
    return part.reindex(grid)


def site_frames(
    sites: Sequence[SiteConfig], load_kw: pd.Series, pv_kw_per_kwp: pd.Series, end: pd.Timestamp, days: int
) -> dict[str, pd.DataFrame]:
    """Per site: slot-mean ``pv_kw`` and ``load_kw`` for ``[end - days, end)``; the pure core of the seed."""
    out: dict[str, pd.DataFrame] = {}
    for site in sites:
        tz = site.pv.timezone
        load = shifted_window(_rewall(load_kw, None, tz), end, days) * site.load_scale
        pv = shifted_window(_rewall(pv_kw_per_kwp, PVDAQ_TIMEZONE, tz), end, days) * site.pv.kwp
        out[site.site_id] = pd.DataFrame({"pv_kw": pv.clip(lower=0.0), "load_kw": load.clip(lower=0.0)})
    return out


def real_series() -> tuple[pd.Series, pd.Series]:
    """(UCI household load kW, PVDAQ system 50 kW per kWp), both 15-min UTC slot-start series."""
    from forecasting.data.pvdaq import load_pvdaq_system50
    from forecasting.data.uci import load_uci_household

    load = load_uci_household()
    pv, pv_site = load_pvdaq_system50()
    return load, pv / pv_site.kwp


def seed(store: HistoryStore, sites: Sequence[SiteConfig], days: int, now: datetime | None = None) -> dict[str, int]:
    """Write ``days`` of real history ending at the last complete slot before ``now``; returns slots per site."""
    end = pd.Timestamp(now or datetime.now(UTC)).floor(SLOT)
    load, pv_per_kwp = real_series()
    written: dict[str, int] = {}
    for site_id, frame in site_frames(sites, load, pv_per_kwp, end, days).items():
        written[site_id] = store.put_slot_means(site_id, frame)
        log.info("site_seeded", site_id=site_id, slots=written[site_id], days=days, end=end.isoformat())
    return written


def seed_missing(store: HistoryStore, sites: Sequence[SiteConfig], days: int, now: datetime) -> list[str]:
    """Backfill ``days`` of the real series for the sites with no history at all (the demo's start)."""
    if days <= 0:
        return []
    empty = [s for s in sites if store.last_slot(s.site_id) is None]
    if not empty:
        return []
    seed(store, empty, days, now)
    return [s.site_id for s in empty]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forecasting.seed", description=__doc__.splitlines()[0])
    parser.add_argument("--sites", required=True, help="sites JSON file (see forecasting.sites)")
    parser.add_argument("--store", required=True, help="SQLAlchemy URL, SQLite file path or :memory:")
    parser.add_argument("--days", type=int, default=60, help="days of history to write (default 60)")
    args = parser.parse_args(argv)
    configure_logging("INFO")
    if not 1 <= args.days <= 365:
        parser.error("--days must be between 1 and 365")
    url = normalise_store_url(args.store)
    try:
        sites = load_sites(args.sites)
        store = HistoryStore(url)
        store.create_schema()
    except (SitesFileError, StoreUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        seed(store, sites, args.days)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
