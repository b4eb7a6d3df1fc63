"""The history the models learn from: 15-minute slot means of PV and load power per site.

One code path (SQLAlchemy 2 Core) for SQLite (embedded default; a file or in-memory) and PostgreSQL
(production). Only ``INSERT ... ON CONFLICT`` differs between the two, and both dialects spell it the same
way in SQLAlchemy, so the statements are built by one function per dialect name.

Idempotence: each slot row keeps *sums and a sample count* (``pv_sum_kw``, ``load_sum_kw``, ``n_samples``),
and the mean is computed on read. A telemetry sample is added only if its ``message_id`` (the per-sample
id of ``TelemetryRecord``) is new: the ids are inserted into ``seen_messages`` with ``ON CONFLICT DO
NOTHING`` in the same transaction as the slot increments, so a re-delivered Kafka record (consumer
restart before commit) changes nothing. ``add_measurements`` writes one Kafka record's samples in one
transaction: all or nothing, whatever the database does meanwhile. The seen
ids are a bounded window: ids older than ``dedupe_window_s`` are pruned (``prune_seen``), since Kafka
re-delivers uncommitted records within minutes, not days. Backfilled slot means (``put_slot_means``) replace
the slot outright, so re-running the seed is idempotent too.

Times are stored as integer UTC epoch seconds of the slot start: portable and free of time-zone handling
differences between SQLite and PostgreSQL.

Threads: a ``HistoryStore`` holds no mutable state of its own after construction; concurrent calls are
isolated by the database (SQLAlchemy's connection pool, SQLite's busy timeout and WAL, PostgreSQL's
transactions). The service writes from one thread only (its store writer, see ``forecasting.service``),
so SQLite never has two writers to arbitrate; in-memory SQLite (one connection shared by every thread)
must be written from one thread at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import StaticPool

from vpp_common.logs import get_logger

log = get_logger(__name__)

SLOT_S = 15 * 60
SLOT = pd.Timedelta(seconds=SLOT_S)
# Rows per multi-row INSERT: well under SQLite's bound-parameter limit, big enough for one Kafka record.
_ROWS_PER_STATEMENT = 1000


class StoreUnavailable(RuntimeError):
    """The database named by the store URL cannot be reached."""


@dataclass(frozen=True)
class Measurement:
    """One telemetry snapshot; ``None`` power means the quantity was not measured."""

    message_id: str
    site_id: str
    measured_at: datetime
    pv_power_kw: float | None
    load_power_kw: float | None


def slot_start_s(when: datetime | pd.Timestamp) -> int:
    """Epoch seconds of the start of the 15-minute slot containing ``when`` (must be tz-aware)."""
    if when.tzinfo is None:
        raise ValueError("measured_at must be timezone-aware")
    epoch_s = when.timestamp()
    return int(math.floor(epoch_s / SLOT_S) * SLOT_S)


class HistoryStore:
    """Slot aggregates behind one SQLAlchemy engine (see the module docstring for threads)."""

    def __init__(self, url: str, *, table_prefix: str = "forecast_") -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._dialect = self.engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"store_url: unsupported database {self._dialect!r}; use sqlite or postgresql")
        self.metadata = MetaData()
        self.slots = Table(
            f"{table_prefix}slots",
            self.metadata,
            Column("site_id", String(128), primary_key=True),
            Column("slot_start_s", BigInteger, primary_key=True),
            Column("pv_sum_kw", Float, nullable=True),
            Column("pv_n", Integer, nullable=False, default=0),
            Column("load_sum_kw", Float, nullable=True),
            Column("load_n", Integer, nullable=False, default=0),
        )
        self.seen = Table(
            f"{table_prefix}seen_messages",
            self.metadata,
            Column("message_id", String(128), primary_key=True),
            Column("seen_at_s", Float, nullable=False, index=True),
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the tables if missing (idempotent)."""
        try:
            self.metadata.create_all(self.engine)
        except Exception as exc:  # the driver's error names host/port; add which setting to fix
            # One line: the driver's own message (not SQLAlchemy's wrapper with its help link), joined.
            detail = " ".join(line.strip() for line in str(getattr(exc, "orig", None) or exc).splitlines())
            raise StoreUnavailable(
                f"cannot open the history store {self.engine.url.render_as_string(hide_password=True)}: "
                f"{detail.strip()}; check VPP_STORE_URL and that the database is running"
            ) from exc

    def drop_schema(self) -> None:
        self.metadata.drop_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- writes ------------------------------------------------------------------------------------

    def add_measurement(self, m: Measurement, *, now_s: float | None = None) -> bool:
        """Add one snapshot to its slot's sums; False (and no change) if its message id was seen before."""
        return self.add_measurements([m], now_s=now_s) == 1

    def add_measurements(self, measurements: Sequence[Measurement], *, now_s: float | None = None) -> int:
        """Add snapshots to their slots' sums in one transaction; returns how many were new.

        A snapshot whose message id was seen before (stored earlier, or earlier in ``measurements``)
        changes nothing. Ids and slots are written in sorted order, so two transactions touching the same
        rows (a record re-delivered to another replica) lock them in the same order and cannot deadlock.
        """
        first: dict[str, Measurement] = {}
        for m in measurements:
            first.setdefault(m.message_id, m)
        if not first:
            return 0
        seen_at_s = time.time() if now_s is None else now_s
        with self.engine.begin() as conn:
            new_ids: set[str] = set()
            ids = sorted(first)
            for start in range(0, len(ids), _ROWS_PER_STATEMENT):
                rows = [{"message_id": mid, "seen_at_s": seen_at_s} for mid in ids[start : start + _ROWS_PER_STATEMENT]]
                mark_seen = self._insert(self.seen).values(rows)
                # RETURNING, not rowcount: drivers disagree on rowcount for skipped ON CONFLICT rows.
                mark_seen = mark_seen.on_conflict_do_nothing(index_elements=["message_id"]).returning(
                    self.seen.c.message_id
                )
                new_ids.update(str(mid) for mid in conn.execute(mark_seen).scalars())
            if not new_ids:
                return 0
            slots = _slot_sums(first[mid] for mid in ids if mid in new_ids)
            for start in range(0, len(slots), _ROWS_PER_STATEMENT):
                conn.execute(self._slot_increment(slots[start : start + _ROWS_PER_STATEMENT]))
        return len(new_ids)

    def _slot_increment(self, rows: list[dict[str, Any]]) -> Any:
        """INSERT the slot rows, or add their sums and counts to the existing ones."""
        ins = self._insert(self.slots).values(rows)
        c = self.slots.c
        return ins.on_conflict_do_update(
            index_elements=[c.site_id, c.slot_start_s],
            set_={
                # NULL + x is NULL in SQL: coalesce keeps a slot's sum when one quantity was missing.
                "pv_sum_kw": func.coalesce(c.pv_sum_kw, 0.0) + func.coalesce(ins.excluded.pv_sum_kw, 0.0),
                "pv_n": c.pv_n + ins.excluded.pv_n,
                "load_sum_kw": func.coalesce(c.load_sum_kw, 0.0) + func.coalesce(ins.excluded.load_sum_kw, 0.0),
                "load_n": c.load_n + ins.excluded.load_n,
            },
        )

    def put_slot_means(self, site_id: str, frame: pd.DataFrame) -> int:
        """Write slot means (columns ``pv_kw``, ``load_kw``; tz-aware slot-start index), replacing those slots.

        Used by the seed backfill; NaN means "not measured". Returns the number of slots written."""
        rows: list[dict[str, Any]] = []
        for ts, pv, load in zip(frame.index, frame["pv_kw"], frame["load_kw"], strict=True):
            pv_v, load_v = _finite_or_none(pv), _finite_or_none(load)
            if pv_v is None and load_v is None:
                continue
            rows.append(
                {
                    "site_id": site_id,
                    "slot_start_s": slot_start_s(ts),
                    "pv_sum_kw": pv_v,
                    "pv_n": 0 if pv_v is None else 1,
                    "load_sum_kw": load_v,
                    "load_n": 0 if load_v is None else 1,
                }
            )
        if not rows:
            return 0
        ins = self._insert(self.slots)
        upsert = ins.on_conflict_do_update(
            index_elements=[self.slots.c.site_id, self.slots.c.slot_start_s],
            set_={name: ins.excluded[name] for name in ("pv_sum_kw", "pv_n", "load_sum_kw", "load_n")},
        )
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 2000):
                conn.execute(upsert, rows[start : start + 2000])
        return len(rows)

    def prune_seen(self, older_than_s: float) -> int:
        """Forget message ids seen before ``older_than_s`` (epoch seconds); returns how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(delete(self.seen).where(self.seen.c.seen_at_s < older_than_s)).rowcount)

    # -- reads -------------------------------------------------------------------------------------

    def history(self, site_id: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Slot means in [start, end): columns ``pv_kw``, ``load_kw``, a complete UTC 15-min index, NaN gaps."""
        return self.history_many([site_id], start, end)[site_id]

    def history_many(self, site_ids: Sequence[str], start: pd.Timestamp, end: pd.Timestamp) -> dict[str, pd.DataFrame]:
        """``history`` for several sites in one query."""
        start_s, end_s = slot_start_s(start), slot_start_s(end)
        index = pd.date_range(
            pd.Timestamp(start_s, unit="s", tz="UTC"), periods=max((end_s - start_s) // SLOT_S, 0), freq=SLOT
        )
        c = self.slots.c
        query = (
            select(c.site_id, c.slot_start_s, c.pv_sum_kw, c.pv_n, c.load_sum_kw, c.load_n)
            .where(c.site_id.in_(list(site_ids)), c.slot_start_s >= start_s, c.slot_start_s < end_s)
            .order_by(c.site_id, c.slot_start_s)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).tuples().all()
        # Straight into numpy (a DataFrame of Row objects costs ~50 ms per site-month, measured).
        columns = list(zip(*rows, strict=True)) if rows else [(), (), (), (), (), ()]
        sites = np.asarray(columns[0], dtype=object)
        position = (np.asarray(columns[1], dtype=np.int64) - start_s) // SLOT_S
        pv = _mean(columns[2], columns[3])
        load = _mean(columns[4], columns[5])
        codes, found = pd.factorize(sites)
        by_site = {str(site): np.flatnonzero(codes == k) for k, site in enumerate(found)}
        out: dict[str, pd.DataFrame] = {}
        for site_id in site_ids:
            values = np.full((len(index), 2), np.nan)
            at = by_site.get(site_id)
            if at is not None and len(at):
                values[position[at], 0] = pv[at]
                values[position[at], 1] = load[at]
            frame = pd.DataFrame(values, index=index, columns=["pv_kw", "load_kw"])
            frame.index.name = "slot_start"
            out[site_id] = frame
        return out

    def last_slot(self, site_id: str) -> pd.Timestamp | None:
        """Start of the latest slot holding any measurement for the site."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.max(self.slots.c.slot_start_s)).where(self.slots.c.site_id == site_id)
            ).scalar()
        return None if value is None else pd.Timestamp(int(value), unit="s", tz="UTC")

    def slot_count(self, site_id: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.count()).select_from(self.slots).where(self.slots.c.site_id == site_id)
            ).scalar()
        return int(value or 0)

    # -- helpers -----------------------------------------------------------------------------------

    def _insert(self, table: Table) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_*`` (same API for SQLite and PostgreSQL)."""
        return sqlite.insert(table) if self._dialect == "sqlite" else postgresql.insert(table)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        in_memory = url in ("sqlite://", "sqlite:///:memory:") or ":memory:" in url
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            # In-memory SQLite lives in one connection: share it across threads.
            poolclass=StaticPool if in_memory else None,
        )
        if not in_memory:

            @event.listens_for(engine, "connect")
            def _wal(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


def _slot_sums(measurements: Iterable[Measurement]) -> list[dict[str, Any]]:
    """One row per (site, slot): the sums and counts of the given snapshots, sorted by site and slot.

    PostgreSQL refuses an upsert that touches one row twice, so samples of a slot are summed here."""
    sums: dict[tuple[str, int], dict[str, Any]] = {}
    for m in measurements:
        key = (m.site_id, slot_start_s(m.measured_at))
        row = sums.get(key)
        if row is None:
            row = sums[key] = {
                "site_id": key[0],
                "slot_start_s": key[1],
                "pv_sum_kw": None,
                "pv_n": 0,
                "load_sum_kw": None,
                "load_n": 0,
            }
        for name, value in (("pv", m.pv_power_kw), ("load", m.load_power_kw)):
            number = _finite_or_none(value)
            if number is not None:
                row[f"{name}_sum_kw"] = (row[f"{name}_sum_kw"] or 0.0) + number
                row[f"{name}_n"] += 1
    return [sums[key] for key in sorted(sums)]


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _mean(sums: Sequence[Any], counts: Sequence[Any]) -> np.ndarray:
    s = np.asarray(sums, dtype=float)  # None (no sample of that stream) becomes NaN
    n = np.asarray(counts, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.where(n > 0, n, 1.0), np.nan)
