"""The durable record of the market loop: bids, awards, reservations and settlements.

Storage: one code path (SQLAlchemy 2 Core) for SQLite and PostgreSQL. SQLite is the embedded default
(a file, or in-memory for tests and the demo): no server to run, and the record survives a restart of
the service. PostgreSQL is the production database: several replicas share it, it is backed up and
replicated with the rest of the platform. Only ``INSERT ... ON CONFLICT`` differs between the two, and
SQLAlchemy spells it the same way for both dialects, so statements are built by one function per dialect.

Each record is stored as the columns its queries need (portfolio, product, direction, interval,
kW) plus its serialized protobuf (``payload``); reads return the protobuf messages, so the protos stay
the single source of truth for the record's content. Times are integer UTC epoch seconds (the
``seconds`` of the protobuf ``Timestamp``, i.e. floored): portable and free of time-zone handling
differences between SQLite and PostgreSQL. Intervals are half-open, ``[start, end)``; see
``overlapping``.

Idempotence (Kafka re-delivers records, the service may retry after a crash; the first write wins
and a re-delivery changes nothing):

* ``record_bids``: keyed on ``bid_id``; returns how many bids were new.
* ``record_award``: keyed on ``award_id`` (re-delivery: ``False``). One award per bid: an award with a
  *different* ``award_id`` for a bid that already has one is refused with ``ValueError`` naming both
  award ids and the bid (enforced by a unique ``bid_id`` column, so it holds across replicas too).
* ``record_reservations``: keyed on the set's ``award_id``; the set header and all its per-site rows
  are written in one transaction, so a set is there completely or not at all (a set with two rows for
  one site is refused with ``ValueError`` and leaves nothing).
* ``record_settlement``: keyed on ``settlement_id``; its lines are rows keyed
  ``(settlement_id, award_id, mtu_start)``, written in the same transaction as the header.

Nested records inherit the ids of their container: a reservation (settlement line) with an empty
``award_id``/``portfolio_id`` (``portfolio_id``) gets the set's (settlement's); a different non-empty one
is refused with ``ValueError``. Invalid records (empty ids, ``end <= start``, negative or non-finite kW,
unknown direction) are refused with ``ValueError`` before anything is written.

Threads: the bidding service calls the store from one asyncio loop through ``asyncio.to_thread``, so
calls may run concurrently on the default executor's threads. A ``MarketStore`` holds no mutable state
after construction; concurrency is the database's job:

* SQLite file: one connection per thread from the pool, WAL journal (readers never wait for the
  writer) and a 30 s busy timeout. Write transactions start with ``BEGIN IMMEDIATE``, so a writer takes
  the database's write lock up front and concurrent writers queue on the busy timeout instead of
  failing on a read-to-write lock upgrade (sqlite3's own transaction handling, which would begin
  transactions lazily, is switched off and SQLAlchemy emits the ``BEGIN``).
* SQLite in memory: the database lives in one connection, shared by every thread (``StaticPool``);
  one connection has one transaction, so the store serialises its calls with a lock.
* PostgreSQL: the connection pool and the server's transactions (READ COMMITTED; the unique keys
  and ``ON CONFLICT`` settle concurrent writers of the same record).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    make_url,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement
from vpp.v1 import common_pb2, market_pb2

from vpp_common.logs import get_logger
from vpp_common.validation import normalise_store_url

log = get_logger(__name__)

__all__ = ["MarketStore", "StoreUnavailable", "normalise_store_url", "overlapping"]

DEFAULT_TABLE_PREFIX = "market_"
# Rows per multi-row INSERT: well under SQLite's bound-parameter limit (32766) at <= 9 columns a row.
_ROWS_PER_STATEMENT = 1000
_ID = 128  # length of id columns
_DIRECTIONS = frozenset(common_pb2.Direction.values())
_UP, _DOWN = common_pb2.DIRECTION_UP, common_pb2.DIRECTION_DOWN
_WRITE_OPTION = "market_store_write"  # execution option: begin the SQLite transaction IMMEDIATE

M = TypeVar("M", bound=Message)


class StoreUnavailable(RuntimeError):
    """The database named by the store URL cannot be reached."""


def overlapping(a_start: float, a_end: float, b_start: float, b_end: float) -> bool:
    """Whether the half-open intervals ``[a_start, a_end)`` and ``[b_start, b_end)`` share an instant.

    An empty interval (``end <= start``) contains no instant, so it overlaps nothing; intervals that
    only touch (``a_end == b_start``) do not overlap."""
    return a_start < a_end and b_start < b_end and a_start < b_end and b_start < a_end


class MarketStore:
    """Bids, awards, reservations and settlements behind one SQLAlchemy engine (see the module docstring)."""

    def __init__(self, url: str, *, echo: bool = False, table_prefix: str = DEFAULT_TABLE_PREFIX) -> None:
        self.url = normalise_store_url(url)
        backend = make_url(self.url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"store url: unsupported database {backend!r}; use sqlite or postgresql")
        self.engine, in_memory = _make_engine(self.url, echo=echo)
        self._dialect = self.engine.dialect.name
        self._writer = self.engine.execution_options(**{_WRITE_OPTION: True})
        # One in-memory SQLite connection has one transaction: calls must take turns.
        self._serial: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if in_memory else contextlib.nullcontext()
        )
        p = table_prefix
        self.metadata = MetaData()
        self.bids_table = Table(
            f"{p}bids",
            self.metadata,
            Column("bid_id", String(_ID), primary_key=True),
            Column("portfolio_id", String(_ID), nullable=False),
            Column("market_id", String(_ID), nullable=False),
            Column("product", String(64), nullable=False),
            Column("direction", Integer, nullable=False),
            Column("interval_start_s", BigInteger, nullable=False),
            Column("interval_end_s", BigInteger, nullable=False),
            Column("payload", LargeBinary, nullable=False),
            Index(f"{p}bids_portfolio_start", "portfolio_id", "interval_start_s"),
        )
        self.awards_table = Table(
            f"{p}awards",
            self.metadata,
            Column("award_id", String(_ID), primary_key=True),
            Column("bid_id", String(_ID), nullable=False, unique=True),  # one award per bid
            Column("portfolio_id", String(_ID), nullable=False),
            Column("market_id", String(_ID), nullable=False),
            Column("product", String(64), nullable=False),
            Column("direction", Integer, nullable=False),
            Column("interval_start_s", BigInteger, nullable=False),
            Column("interval_end_s", BigInteger, nullable=False),
            Column("awarded_kw", Float, nullable=False),
            Column("payload", LargeBinary, nullable=False),
            Index(f"{p}awards_portfolio_start", "portfolio_id", "interval_start_s"),
        )
        self.reservation_sets_table = Table(
            f"{p}reservation_sets",
            self.metadata,
            Column("award_id", String(_ID), primary_key=True),
            Column("portfolio_id", String(_ID), nullable=False),
            Column("unplaced_kw", Float, nullable=False),
            Column("payload", LargeBinary, nullable=False),  # the set without its reservations (rows below)
        )
        self.reservations_table = Table(
            f"{p}reservations",
            self.metadata,
            Column("award_id", String(_ID), primary_key=True),
            Column("site_id", String(_ID), primary_key=True),
            Column("portfolio_id", String(_ID), nullable=False),
            Column("product", String(64), nullable=False),
            Column("direction", Integer, nullable=False),
            Column("interval_start_s", BigInteger, nullable=False),
            Column("interval_end_s", BigInteger, nullable=False),
            Column("reserved_kw", Float, nullable=False),
            Column("payload", LargeBinary, nullable=False),
            Index(f"{p}reservations_portfolio_start", "portfolio_id", "interval_start_s"),
        )
        self.settlements_table = Table(
            f"{p}settlements",
            self.metadata,
            Column("settlement_id", String(_ID), primary_key=True),
            Column("portfolio_id", String(_ID), nullable=False),
            Column("market_id", String(_ID), nullable=False),
            Column("period_start_s", BigInteger, nullable=False),
            Column("period_end_s", BigInteger, nullable=False),
            Column("net_revenue", Float, nullable=False),
            Column("payload", LargeBinary, nullable=False),  # the settlement without its lines (rows below)
        )
        self.settlement_lines_table = Table(
            f"{p}settlement_lines",
            self.metadata,
            Column("settlement_id", String(_ID), primary_key=True),
            Column("award_id", String(_ID), primary_key=True),
            Column("mtu_start_s", BigInteger, primary_key=True),
            Column("portfolio_id", String(_ID), nullable=False),
            Column("product", String(64), nullable=False),
            Column("direction", Integer, nullable=False),
            Column("mtu_end_s", BigInteger, nullable=False),
            Column("payload", LargeBinary, nullable=False),
            Index(f"{p}settlement_lines_portfolio_start", "portfolio_id", "mtu_start_s"),
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def create_schema(self) -> None:
        """Create the tables if missing (idempotent)."""
        try:
            with self._serial:
                self.metadata.create_all(self._writer)
        except sa_exc.DBAPIError as exc:  # the driver's error names host/port; add which setting to fix
            detail = " ".join(line.strip() for line in str(getattr(exc, "orig", None) or exc).splitlines())
            raise StoreUnavailable(
                f"cannot open the market store {self.engine.url.render_as_string(hide_password=True)}: "
                f"{detail.strip()}; check the store URL and that the database is running"
            ) from exc

    def drop_schema(self) -> None:
        """Drop the store's tables (tests; never called by the service)."""
        with self._serial:
            self.metadata.drop_all(self._writer)

    def close(self) -> None:
        """Close the pooled connections (an in-memory database is gone after this)."""
        self.engine.dispose()

    # -- bids --------------------------------------------------------------------------------------

    def record_bids(self, bids: Sequence[market_pb2.Bid]) -> int:
        """Store bids in one transaction; returns how many were new (a known ``bid_id`` changes nothing)."""
        first: dict[str, market_pb2.Bid] = {}
        for bid in bids:
            _require_id("bid", "bid_id", bid.bid_id)
            _check_kw("bid", bid.bid_id, "capacity_kw", bid.capacity_kw)
            first.setdefault(bid.bid_id, bid)
        rows = []
        for bid_id in sorted(first):  # sorted: concurrent writers lock rows in the same order
            bid = first[bid_id]
            start_s, end_s = _interval("bid", bid_id, bid.interval_start, bid.interval_end)
            rows.append(
                {
                    "bid_id": bid_id,
                    "portfolio_id": bid.portfolio_id,
                    "market_id": bid.market_id,
                    "product": bid.product,
                    "direction": _direction("bid", bid_id, bid.direction),
                    "interval_start_s": start_s,
                    "interval_end_s": end_s,
                    "payload": bid.SerializeToString(),
                }
            )
        if not rows:
            return 0
        t = self.bids_table
        new = 0
        with self._write() as conn:
            for chunk in _chunks(rows):
                stmt = self._insert(t).values(chunk).on_conflict_do_nothing(index_elements=[t.c.bid_id])
                # RETURNING, not rowcount: drivers disagree on rowcount for skipped ON CONFLICT rows.
                new += len(conn.execute(stmt.returning(t.c.bid_id)).all())
        return new

    def bids(self, portfolio_id: str, *, start_s: int | None = None, end_s: int | None = None) -> list[market_pb2.Bid]:
        """The portfolio's bids whose block overlaps ``[start_s, end_s)`` (either bound optional), ordered by
        interval start, product, direction (then bid id)."""
        t = self.bids_table
        where = _overlap(t.c.interval_start_s, t.c.interval_end_s, start_s, end_s)
        if where is None:
            return []
        query = (
            select(t.c.payload)
            .where(t.c.portfolio_id == portfolio_id, *where)
            .order_by(*self._order(t.c.interval_start_s, t.c.product, t.c.direction, t.c.bid_id))
        )
        return self._messages(query, market_pb2.Bid)

    def bid(self, bid_id: str) -> market_pb2.Bid | None:
        t = self.bids_table
        found = self._messages(select(t.c.payload).where(t.c.bid_id == bid_id), market_pb2.Bid)
        return found[0] if found else None

    # -- awards ------------------------------------------------------------------------------------

    def record_award(self, award: market_pb2.Award) -> bool:
        """Store an award; False (and no change) if its ``award_id`` is known.

        Raises ``ValueError`` if the bid already has an award with another id (one award per bid)."""
        _require_id("award", "award_id", award.award_id)
        _require_id("award", "bid_id", award.bid_id)
        _check_kw("award", award.award_id, "awarded_kw", award.awarded_kw)
        start_s, end_s = _interval("award", award.award_id, award.interval_start, award.interval_end)
        row = {
            "award_id": award.award_id,
            "bid_id": award.bid_id,
            "portfolio_id": award.portfolio_id,
            "market_id": award.market_id,
            "product": award.product,
            "direction": _direction("award", award.award_id, award.direction),
            "interval_start_s": start_s,
            "interval_end_s": end_s,
            "awarded_kw": award.awarded_kw,
            "payload": award.SerializeToString(),
        }
        t = self.awards_table
        try:
            with self._write() as conn:
                if conn.execute(select(t.c.award_id).where(t.c.award_id == award.award_id)).first() is not None:
                    return False
                other = conn.execute(select(t.c.award_id).where(t.c.bid_id == award.bid_id)).scalar()
                if other is not None:
                    raise _second_award(award, str(other))
                stmt = self._insert(t).values(row).on_conflict_do_nothing(index_elements=[t.c.award_id])
                return conn.execute(stmt.returning(t.c.award_id)).first() is not None
        except sa_exc.IntegrityError as exc:
            # Another writer stored an award for this bid between our check and our insert.
            other = self._award_id_for_bid(award.bid_id)
            if other is None or other == award.award_id:
                raise
            raise _second_award(award, other) from exc

    def awards(
        self,
        portfolio_id: str,
        *,
        start_s: int | None = None,
        end_s: int | None = None,
        won_only: bool = False,
    ) -> list[market_pb2.Award]:
        """The portfolio's awards whose block overlaps ``[start_s, end_s)``, ordered by interval start,
        product, direction (then award id); ``won_only``: those with ``awarded_kw > 0``."""
        t = self.awards_table
        where = _overlap(t.c.interval_start_s, t.c.interval_end_s, start_s, end_s)
        if where is None:
            return []
        if won_only:
            where.append(t.c.awarded_kw > 0)
        query = (
            select(t.c.payload)
            .where(t.c.portfolio_id == portfolio_id, *where)
            .order_by(*self._order(t.c.interval_start_s, t.c.product, t.c.direction, t.c.award_id))
        )
        return self._messages(query, market_pb2.Award)

    def award(self, award_id: str) -> market_pb2.Award | None:
        t = self.awards_table
        found = self._messages(select(t.c.payload).where(t.c.award_id == award_id), market_pb2.Award)
        return found[0] if found else None

    def _award_id_for_bid(self, bid_id: str) -> str | None:
        t = self.awards_table
        with self._read() as conn:
            value = conn.execute(select(t.c.award_id).where(t.c.bid_id == bid_id)).scalar()
        return None if value is None else str(value)

    # -- reservations ------------------------------------------------------------------------------

    def record_reservations(self, rs: market_pb2.ReservationSet) -> bool:
        """Store an award's reservation set in one transaction; False (and no change) if the award's set is
        known. Raises ``ValueError`` (nothing stored) if the set has two reservations for one site."""
        _require_id("reservation set", "award_id", rs.award_id)
        header = market_pb2.ReservationSet()
        header.CopyFrom(rs)
        del header.reservations[:]
        rows = []
        for r in rs.reservations:
            res = market_pb2.Reservation()
            res.CopyFrom(r)
            what = f"reservation set {rs.award_id}: reservation at site {res.site_id!r}"
            _inherit(res, "award_id", rs.award_id, what)
            _inherit(res, "portfolio_id", rs.portfolio_id, what)
            _require_id(what, "site_id", res.site_id)
            _check_kw(what, rs.award_id, "reserved_kw", res.reserved_kw)
            start_s, end_s = _interval(what, rs.award_id, res.interval_start, res.interval_end)
            rows.append(
                {
                    "award_id": res.award_id,
                    "site_id": res.site_id,
                    "portfolio_id": res.portfolio_id,
                    "product": res.product,
                    "direction": _direction(what, rs.award_id, res.direction),
                    "interval_start_s": start_s,
                    "interval_end_s": end_s,
                    "reserved_kw": res.reserved_kw,
                    "payload": res.SerializeToString(),
                }
            )
        sets, t = self.reservation_sets_table, self.reservations_table
        head = {
            "award_id": rs.award_id,
            "portfolio_id": rs.portfolio_id,
            "unplaced_kw": rs.unplaced_kw,
            "payload": header.SerializeToString(),
        }
        try:
            with self._write() as conn:
                stmt = self._insert(sets).values(head).on_conflict_do_nothing(index_elements=[sets.c.award_id])
                if conn.execute(stmt.returning(sets.c.award_id)).first() is None:
                    return False
                for chunk in _chunks(rows):
                    conn.execute(t.insert().values(chunk))  # a duplicate (award, site) fails the whole set
        except sa_exc.IntegrityError as exc:
            dupes = _duplicates(row["site_id"] for row in rows)
            if not dupes:
                raise
            raise ValueError(
                f"reservation set for award {rs.award_id}: more than one reservation for site(s) "
                f"{', '.join(sorted(dupes))}; nothing stored"
            ) from exc
        return True

    def reservations(
        self,
        portfolio_id: str,
        *,
        at_s: int | None = None,
        start_s: int | None = None,
        end_s: int | None = None,
        site_id: str | None = None,
    ) -> list[market_pb2.Reservation]:
        """The portfolio's reservations in force at instant ``at_s`` (``start <= at_s < end``) and/or
        overlapping ``[start_s, end_s)``, optionally of one site; ordered by interval start, product,
        direction (then site and award)."""
        t = self.reservations_table
        where = _overlap(t.c.interval_start_s, t.c.interval_end_s, start_s, end_s)
        if where is None:
            return []
        if at_s is not None:
            where += [t.c.interval_start_s <= at_s, t.c.interval_end_s > at_s]
        if site_id is not None:
            where.append(t.c.site_id == site_id)
        query = (
            select(t.c.payload)
            .where(t.c.portfolio_id == portfolio_id, *where)
            .order_by(*self._order(t.c.interval_start_s, t.c.product, t.c.direction, t.c.site_id, t.c.award_id))
        )
        return self._messages(query, market_pb2.Reservation)

    def reservation_set(self, award_id: str) -> market_pb2.ReservationSet | None:
        """An award's set as recorded (reservations ordered by site), or None."""
        sets, t = self.reservation_sets_table, self.reservations_table
        with self._read() as conn:
            head = conn.execute(select(sets.c.payload).where(sets.c.award_id == award_id)).scalar()
            if head is None:
                return None
            rows = conn.execute(
                select(t.c.payload).where(t.c.award_id == award_id).order_by(*self._order(t.c.site_id))
            ).scalars()
            out = market_pb2.ReservationSet.FromString(bytes(head))
            out.reservations.extend(market_pb2.Reservation.FromString(bytes(p)) for p in rows)
        return out

    def reserved_kw(self, portfolio_id: str, start_s: int, end_s: int) -> dict[tuple[str, int], float]:
        """Per (site_id, direction): the most kW reserved at any instant of ``[start_s, end_s)``, summed over
        the awards whose reservations are in force at that instant.

        A symmetric reservation (direction UNSPECIFIED) holds the kW in both directions, so it counts in
        both the UP and the DOWN key; keys are only UP and DOWN. Sites with no reservation overlapping the
        window are absent; an empty window (``end_s <= start_s``) gives an empty dict."""
        if end_s <= start_s:
            return {}
        t = self.reservations_table
        where = _overlap(t.c.interval_start_s, t.c.interval_end_s, start_s, end_s) or []
        query = select(t.c.site_id, t.c.direction, t.c.interval_start_s, t.c.interval_end_s, t.c.reserved_kw).where(
            t.c.portfolio_id == portfolio_id, *where
        )
        with self._read() as conn:
            rows = conn.execute(query).tuples().all()
        spans: dict[tuple[str, int], list[tuple[int, int, float]]] = defaultdict(list)
        for site, direction, r_start, r_end, kw in rows:
            span = (max(int(r_start), start_s), min(int(r_end), end_s), float(kw))
            for d in (_UP, _DOWN) if direction == common_pb2.DIRECTION_UNSPECIFIED else (int(direction),):
                spans[(str(site), d)].append(span)
        return {key: _peak(found) for key, found in sorted(spans.items())}

    # -- settlements -------------------------------------------------------------------------------

    def record_settlement(self, s: market_pb2.Settlement) -> bool:
        """Store a settlement and its lines in one transaction; False (and no change) if its
        ``settlement_id`` is known. Raises ``ValueError`` (nothing stored) if two lines share an award and
        MTU start."""
        _require_id("settlement", "settlement_id", s.settlement_id)
        header = market_pb2.Settlement()
        header.CopyFrom(s)
        del header.lines[:]
        rows = []
        for line in s.lines:
            ln = market_pb2.SettlementLine()
            ln.CopyFrom(line)
            what = f"settlement {s.settlement_id}: line of award {ln.award_id!r}"
            _require_id(what, "award_id", ln.award_id)
            _inherit(ln, "portfolio_id", s.portfolio_id, what)
            mtu_start_s, mtu_end_s = _interval(what, s.settlement_id, ln.mtu_start, ln.mtu_end)
            rows.append(
                {
                    "settlement_id": s.settlement_id,
                    "award_id": ln.award_id,
                    "mtu_start_s": mtu_start_s,
                    "portfolio_id": ln.portfolio_id,
                    "product": ln.product,
                    "direction": _direction(what, s.settlement_id, ln.direction),
                    "mtu_end_s": mtu_end_s,
                    "payload": ln.SerializeToString(),
                }
            )
        heads, t = self.settlements_table, self.settlement_lines_table
        head = {
            "settlement_id": s.settlement_id,
            "portfolio_id": s.portfolio_id,
            "market_id": s.market_id,
            "period_start_s": int(s.period_start.seconds),
            "period_end_s": int(s.period_end.seconds),
            "net_revenue": s.net_revenue,
            "payload": header.SerializeToString(),
        }
        try:
            with self._write() as conn:
                stmt = self._insert(heads).values(head).on_conflict_do_nothing(index_elements=[heads.c.settlement_id])
                if conn.execute(stmt.returning(heads.c.settlement_id)).first() is None:
                    return False
                for chunk in _chunks(rows):
                    conn.execute(t.insert().values(chunk))  # a duplicate (award, MTU) fails the whole settlement
        except sa_exc.IntegrityError as exc:
            dupes = _duplicates(f"{row['award_id']}@{row['mtu_start_s']}" for row in rows)
            if not dupes:
                raise
            raise ValueError(
                f"settlement {s.settlement_id}: more than one line for (award@mtu_start_s) "
                f"{', '.join(sorted(dupes))}; nothing stored"
            ) from exc
        return True

    def settlement_lines(
        self, portfolio_id: str, *, start_s: int | None = None, end_s: int | None = None
    ) -> list[market_pb2.SettlementLine]:
        """The portfolio's settlement lines whose MTU overlaps ``[start_s, end_s)``, ordered by MTU start,
        product, direction (then award and settlement)."""
        t = self.settlement_lines_table
        where = _overlap(t.c.mtu_start_s, t.c.mtu_end_s, start_s, end_s)
        if where is None:
            return []
        query = (
            select(t.c.payload)
            .where(t.c.portfolio_id == portfolio_id, *where)
            .order_by(*self._order(t.c.mtu_start_s, t.c.product, t.c.direction, t.c.award_id, t.c.settlement_id))
        )
        return self._messages(query, market_pb2.SettlementLine)

    def settlement(self, settlement_id: str) -> market_pb2.Settlement | None:
        """A settlement as recorded (lines ordered by MTU start, product, direction, award), or None."""
        heads, t = self.settlements_table, self.settlement_lines_table
        with self._read() as conn:
            head = conn.execute(select(heads.c.payload).where(heads.c.settlement_id == settlement_id)).scalar()
            if head is None:
                return None
            rows = conn.execute(
                select(t.c.payload)
                .where(t.c.settlement_id == settlement_id)
                .order_by(*self._order(t.c.mtu_start_s, t.c.product, t.c.direction, t.c.award_id))
            ).scalars()
            out = market_pb2.Settlement.FromString(bytes(head))
            out.lines.extend(market_pb2.SettlementLine.FromString(bytes(p)) for p in rows)
        return out

    # -- helpers -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._serial, self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with self._serial, self._writer.begin() as conn:
            yield conn

    def _messages(self, query: Any, cls: type[M]) -> list[M]:
        with self._read() as conn:
            payloads = conn.execute(query).scalars().all()
        return [cls.FromString(bytes(p)) for p in payloads]

    def _order(self, *columns: Any) -> list[Any]:
        """ORDER BY terms in the same order on both databases: text by code point (PostgreSQL would otherwise
        sort by the database's locale, e.g. "aFRR" before "FCR"; SQLite compares bytes)."""
        if self._dialect != "postgresql":
            return list(columns)
        return [c.collate("C") if isinstance(c.type, String) else c for c in columns]

    def _insert(self, table: Table) -> Any:
        """The dialect's INSERT, which has ``on_conflict_do_*`` (same API for SQLite and PostgreSQL)."""
        return sqlite.insert(table) if self._dialect == "sqlite" else postgresql.insert(table)


def _make_engine(url: str, *, echo: bool) -> tuple[Engine, bool]:
    """The engine, and whether it is an in-memory SQLite database."""
    if not url.startswith("sqlite"):
        return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=4, max_overflow=4), False
    in_memory = url in ("sqlite://", "sqlite:///:memory:") or ":memory:" in url or "mode=memory" in url
    engine = create_engine(
        url,
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": 30},
        # In-memory SQLite lives in one connection: share it across threads (calls take turns, see above).
        poolclass=StaticPool if in_memory else None,
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # sqlite3 must not BEGIN on its own: SQLAlchemy does (below)
        if not in_memory:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the write lock up front (waiting on the busy timeout), never mid-transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "BEGIN")

    return engine, in_memory


def _overlap(start_col: Any, end_col: Any, start_s: int | None, end_s: int | None) -> list[ColumnElement[bool]] | None:
    """WHERE terms for rows whose ``[start_col, end_col)`` overlaps ``[start_s, end_s)`` (see ``overlapping``);
    None if the window is empty, so nothing can match."""
    if start_s is not None and end_s is not None and end_s <= start_s:
        return None
    where: list[ColumnElement[bool]] = []
    if end_s is not None:
        where.append(start_col < end_s)
    if start_s is not None:
        where.append(end_col > start_s)
    return where


def _peak(spans: list[tuple[int, int, float]]) -> float:
    """The largest total kW of the (clipped, half-open) spans in force at one instant.

    The total is piecewise constant and only rises where a span starts, so its maximum is at one of the
    starts; each is summed exactly (``fsum``) rather than by a running sum, so the result is never a
    rounding residue below zero. Quadratic, but a window holds few reservations per site and direction."""
    return max(math.fsum(kw for s, e, kw in spans if s <= t < e) for t, _, _ in spans)


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        yield rows[start : start + _ROWS_PER_STATEMENT]


def _duplicates(keys: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    dupes: set[str] = set()
    for key in keys:
        (dupes if key in seen else seen).add(key)
    return dupes


def _second_award(award: market_pb2.Award, other: str) -> ValueError:
    return ValueError(
        f"award {award.award_id} refused: bid {award.bid_id} already has award {other} (one award per bid)"
    )


def _require_id(what: str, field: str, value: str) -> None:
    if not value:
        raise ValueError(f"{what}: {field} is empty")
    if len(value) > _ID:
        raise ValueError(f"{what}: {field} {value[:32]!r}... is longer than {_ID} characters")


def _inherit(msg: Any, field: str, expected: str, what: str) -> None:
    """Fill an empty id from the container; refuse a different one."""
    value = getattr(msg, field)
    if not value:
        setattr(msg, field, expected)
    elif value != expected:
        raise ValueError(f"{what}: {field} {value!r} differs from its container's {expected!r}")


def _interval(what: str, record_id: str, start: Timestamp, end: Timestamp) -> tuple[int, int]:
    start_s, end_s = int(start.seconds), int(end.seconds)
    if end_s <= start_s:
        raise ValueError(f"{what} {record_id}: interval end {end_s} is not after its start {start_s} (epoch s)")
    return start_s, end_s


def _check_kw(what: str, record_id: str, field: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what} {record_id}: {field} must be a finite number >= 0, got {value!r}")


def _direction(what: str, record_id: str, value: int) -> int:
    if value not in _DIRECTIONS:
        raise ValueError(f"{what} {record_id}: unknown direction {value}")
    return int(value)
