"""The market store on SQLite (a file) and on a real PostgreSQL server: one test body, both databases."""

from __future__ import annotations

import asyncio
import itertools
import math
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vpp.v1 import common_pb2, market_pb2

from bidding.store import MarketStore, StoreUnavailable, overlapping

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_URL = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test"

UP, DOWN, SYM = common_pb2.DIRECTION_UP, common_pb2.DIRECTION_DOWN, common_pb2.DIRECTION_UNSPECIFIED
H = 3600
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
P = "portfolio-1"


def postgres_reachable() -> str | None:
    """None if the server answers, else why not (the tests are then skipped with that reason)."""
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2.0):
            return None
    except OSError as exc:
        return (
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} ({exc}); start it with "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )


@dataclass(frozen=True)
class StoreSpec:
    """Where a test's store lives: reopening the same spec is a restart of the service."""

    url: str
    table_prefix: str

    def open(self) -> MarketStore:
        return MarketStore(self.url, table_prefix=self.table_prefix)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreSpec]:
    """SQLite in a file of its own, or PostgreSQL in tables of their own (unique prefix, dropped after)."""
    if request.param == "sqlite":
        yield StoreSpec(f"sqlite:///{tmp_path / 'market.sqlite'}", "market_")
        return
    reason = postgres_reachable()
    if reason is not None:
        pytest.skip(reason)
    s = StoreSpec(PG_URL, f"t{uuid.uuid4().hex[:10]}_")
    try:
        yield s
    finally:
        cleanup = s.open()
        cleanup.drop_schema()
        cleanup.close()


@pytest.fixture()
def store(spec: StoreSpec) -> Iterator[MarketStore]:
    s = spec.open()
    s.create_schema()
    try:
        yield s
    finally:
        s.close()


# -- builders ----------------------------------------------------------------------------------------


def _ts(msg: object, field: str, seconds: int) -> None:
    getattr(msg, field).seconds = seconds


def bid(
    bid_id: str,
    start: int,
    end: int,
    *,
    product: str = "aFRR",
    direction: int = UP,
    kw: float = 10.0,
    portfolio: str = P,
) -> market_pb2.Bid:
    b = market_pb2.Bid(
        bid_id=bid_id,
        product=product,
        direction=direction,  # type: ignore[arg-type]
        capacity_kw=kw,
        capacity_price_per_mw_h=12.5,
        portfolio_id=portfolio,
        market_id="de-tso",
        currency="EUR",
        confidence=0.95,
        divisible=True,
    )
    _ts(b, "interval_start", start)
    _ts(b, "interval_end", end)
    _ts(b, "gate_closure", start - H)
    return b


def award(
    award_id: str,
    bid_id: str,
    start: int,
    end: int,
    *,
    kw: float = 10.0,
    product: str = "aFRR",
    direction: int = UP,
    portfolio: str = P,
) -> market_pb2.Award:
    a = market_pb2.Award(
        award_id=award_id,
        bid_id=bid_id,
        product=product,
        direction=direction,  # type: ignore[arg-type]
        awarded_kw=kw,
        capacity_price_per_mw_h=11.0,
        clearing_price_per_mw_h=11.0,
        portfolio_id=portfolio,
        market_id="de-tso",
        currency="EUR",
    )
    _ts(a, "interval_start", start)
    _ts(a, "interval_end", end)
    return a


def reservation(
    site: str,
    kw: float,
    start: int,
    end: int,
    *,
    direction: int = UP,
    product: str = "aFRR",
    award_id: str = "",
    portfolio: str = "",
) -> market_pb2.Reservation:
    r = market_pb2.Reservation(
        award_id=award_id,
        portfolio_id=portfolio,
        product=product,
        direction=direction,  # type: ignore[arg-type]
        site_id=site,
        reserved_kw=kw,
        energy_kwh=kw / 4,
    )
    _ts(r, "interval_start", start)
    _ts(r, "interval_end", end)
    return r


def rset(award_id: str, *reservations: market_pb2.Reservation, portfolio: str = P) -> market_pb2.ReservationSet:
    return market_pb2.ReservationSet(award_id=award_id, portfolio_id=portfolio, reservations=list(reservations))


def line(
    award_id: str, mtu_start: int, *, product: str = "aFRR", direction: int = UP, net: float = 1.0, portfolio: str = ""
) -> market_pb2.SettlementLine:
    ln = market_pb2.SettlementLine(
        portfolio_id=portfolio,
        market_id="de-tso",
        product=product,
        direction=direction,  # type: ignore[arg-type]
        award_id=award_id,
        currency="EUR",
        awarded_kw=10.0,
        delivered_kwh=2.4,
        capacity_revenue=net,
        net_revenue=net,
        site_shares=[market_pb2.SettlementShare(site_id="s1", reserved_kw=10.0, revenue=net)],
    )
    _ts(ln, "mtu_start", mtu_start)
    _ts(ln, "mtu_end", mtu_start + 15 * 60)
    return ln


def settlement(settlement_id: str, *lines: market_pb2.SettlementLine, portfolio: str = P) -> market_pb2.Settlement:
    s = market_pb2.Settlement(
        settlement_id=settlement_id,
        portfolio_id=portfolio,
        market_id="de-tso",
        currency="EUR",
        lines=list(lines),
        net_revenue=math.fsum(ln.net_revenue for ln in lines),
    )
    _ts(s, "period_start", T0)
    _ts(s, "period_end", T0 + 24 * H)
    return s


def ids(messages: list[market_pb2.Bid] | list[market_pb2.Award]) -> list[str]:
    return [m.bid_id if isinstance(m, market_pb2.Bid) else m.award_id for m in messages]


# -- the pure helper ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 10), (5, 15), True),
        ((5, 15), (0, 10), True),
        ((0, 10), (2, 3), True),  # containment
        ((0, 10), (10, 20), False),  # touching half-open intervals share no instant
        ((10, 20), (0, 10), False),
        ((0, 10), (11, 20), False),
        ((0, 10), (5, 5), False),  # an empty interval holds no instant
        ((5, 5), (5, 5), False),
        ((0, 10), (0, 10), True),
    ],
)
def test_overlapping(a: tuple[int, int], b: tuple[int, int], expected: bool) -> None:
    assert overlapping(*a, *b) is expected


# -- bids --------------------------------------------------------------------------------------------


def test_bids_round_trip_in_order(store: MarketStore) -> None:
    given_bids = [
        bid("b3", T0 + H, T0 + 2 * H, product="aFRR", direction=DOWN),
        bid("b2", T0 + H, T0 + 2 * H, product="aFRR", direction=UP),
        bid("b1", T0, T0 + H, product="mFRR", direction=UP),
        bid("b4", T0 + H, T0 + 2 * H, product="FCR", direction=SYM),
        bid("other", T0, T0 + H, portfolio="portfolio-2"),
    ]
    assert store.record_bids(given_bids) == 5
    got = store.bids(P)
    assert ids(got) == ["b1", "b4", "b2", "b3"]  # interval start, product, direction
    assert got[0] == given_bids[2]  # the whole message survives, gate closure and all
    assert store.bid("b4") == given_bids[3]
    assert store.bid("nope") is None
    assert ids(store.bids("portfolio-2")) == ["other"]
    assert store.record_bids([]) == 0


def test_redelivered_bid_changes_nothing(store: MarketStore) -> None:
    assert store.record_bids([bid("b1", T0, T0 + H), bid("b2", T0, T0 + H)]) == 2
    before = store.bids(P)
    assert store.record_bids([bid("b1", T0, T0 + H)]) == 0
    # Same id, different content (a buggy producer): the first delivery wins.
    assert store.record_bids([bid("b1", T0 + 5 * H, T0 + 6 * H, kw=99.0), bid("b3", T0, T0 + H)]) == 1
    # Duplicates within one call count once.
    assert store.record_bids([bid("b4", T0, T0 + H), bid("b4", T0, T0 + H)]) == 1
    after = store.bids(P)
    assert [b for b in after if b.bid_id in ("b1", "b2")] == before
    assert store.bid("b1") == bid("b1", T0, T0 + H)


def test_bid_interval_filters(store: MarketStore) -> None:
    store.record_bids([bid(f"h{k}", T0 + k * H, T0 + (k + 1) * H) for k in range(4)])  # hours 0..3
    assert ids(store.bids(P, start_s=T0 + H, end_s=T0 + 3 * H)) == ["h1", "h2"]  # touching h0, h3: out
    assert ids(store.bids(P, start_s=T0 + H + 1, end_s=T0 + H + 2)) == ["h1"]  # inside one block
    assert ids(store.bids(P, start_s=T0 + 2 * H)) == ["h2", "h3"]
    assert ids(store.bids(P, end_s=T0 + H + 1)) == ["h0", "h1"]
    assert store.bids(P, start_s=T0 + H, end_s=T0 + H) == []  # an empty window holds nothing
    assert store.bids(P, start_s=T0 + 9 * H) == []


# -- awards ------------------------------------------------------------------------------------------


def test_awards_round_trip_and_filters(store: MarketStore) -> None:
    a1 = award("a1", "b1", T0, T0 + H, kw=10.0)
    a2 = award("a2", "b2", T0 + H, T0 + 2 * H, kw=0.0)  # rejected
    a3 = award("a3", "b3", T0 + H, T0 + 2 * H, kw=5.0, product="FCR", direction=SYM)
    for a in (a2, a3, a1):
        assert store.record_award(a)
    assert store.award("a1") == a1
    assert store.award("a2") == a2
    assert store.award("missing") is None
    assert ids(store.awards(P)) == ["a1", "a3", "a2"]
    assert ids(store.awards(P, won_only=True)) == ["a1", "a3"]
    assert ids(store.awards(P, start_s=T0 + H)) == ["a3", "a2"]
    assert ids(store.awards(P, start_s=T0 + H, won_only=True)) == ["a3"]
    assert ids(store.awards(P, end_s=T0 + H)) == ["a1"]
    assert store.awards("portfolio-2") == []


def test_redelivered_award_changes_nothing(store: MarketStore) -> None:
    assert store.record_award(award("a1", "b1", T0, T0 + H, kw=10.0))
    assert not store.record_award(award("a1", "b1", T0, T0 + H, kw=10.0))
    assert not store.record_award(award("a1", "b1", T0, T0 + H, kw=77.0))  # first delivery wins
    assert [a.awarded_kw for a in store.awards(P)] == [10.0]


def test_second_award_for_one_bid_is_refused(store: MarketStore) -> None:
    assert store.record_award(award("a1", "b1", T0, T0 + H))
    with pytest.raises(ValueError, match=r"award a2 .*bid b1 .*award a1") as info:
        store.record_award(award("a2", "b1", T0, T0 + H, kw=3.0))
    assert "a1" in str(info.value) and "a2" in str(info.value)
    assert ids(store.awards(P)) == ["a1"]
    assert store.award("a2") is None
    assert not store.record_award(award("a1", "b1", T0, T0 + H))  # the original is still idempotent


def test_concurrent_awards_for_one_bid_store_exactly_one(store: MarketStore) -> None:
    """Replicas (threads here) racing to record different awards for one bid: one wins, the rest are told."""
    outcomes: list[object] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def record(k: int) -> None:
        barrier.wait()
        try:
            result: object = store.record_award(award(f"a{k}", "b1", T0, T0 + H))
        except ValueError as exc:
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=record, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes.count(True) == 1
    assert sum(isinstance(o, ValueError) for o in outcomes) == 3
    assert len(store.awards(P)) == 1


# -- reservations ------------------------------------------------------------------------------------


def test_reservation_set_round_trip_and_filters(store: MarketStore) -> None:
    s1 = rset("a1", reservation("site-b", 4.0, T0, T0 + H), reservation("site-a", 6.0, T0, T0 + H))
    s1.unplaced_kw = 0.5
    s2 = rset("a2", reservation("site-a", 3.0, T0 + H, T0 + 2 * H, direction=DOWN, product="mFRR"))
    assert store.record_reservations(s1)
    assert store.record_reservations(s2)
    got = store.reservation_set("a1")
    assert got is not None
    assert got.unplaced_kw == 0.5
    # Each reservation inherits its set's award and portfolio ids.
    assert [(r.site_id, r.award_id, r.portfolio_id, r.reserved_kw) for r in got.reservations] == [
        ("site-a", "a1", P, 6.0),
        ("site-b", "a1", P, 4.0),
    ]
    assert store.reservation_set("missing") is None

    def key(rs: list[market_pb2.Reservation]) -> list[tuple[str, str]]:
        return [(r.award_id, r.site_id) for r in rs]

    assert key(store.reservations(P)) == [("a1", "site-a"), ("a1", "site-b"), ("a2", "site-a")]
    assert key(store.reservations(P, at_s=T0)) == [("a1", "site-a"), ("a1", "site-b")]
    assert key(store.reservations(P, at_s=T0 + H - 1)) == [("a1", "site-a"), ("a1", "site-b")]
    assert key(store.reservations(P, at_s=T0 + H)) == [("a2", "site-a")]  # end is exclusive
    assert key(store.reservations(P, site_id="site-a")) == [("a1", "site-a"), ("a2", "site-a")]
    assert key(store.reservations(P, start_s=T0 + H, end_s=T0 + 3 * H)) == [("a2", "site-a")]
    assert key(store.reservations(P, end_s=T0 + 1, site_id="site-b")) == [("a1", "site-b")]
    assert store.reservations(P, at_s=T0 - 1) == []
    assert store.reservations("portfolio-2") == []


def test_redelivered_reservation_set_changes_nothing(store: MarketStore) -> None:
    assert store.record_reservations(rset("a1", reservation("s1", 4.0, T0, T0 + H)))
    assert not store.record_reservations(rset("a1", reservation("s1", 4.0, T0, T0 + H)))
    assert not store.record_reservations(
        rset("a1", reservation("s1", 9.0, T0, T0 + H), reservation("s2", 1.0, T0, T0 + H))
    )
    assert [(r.site_id, r.reserved_kw) for r in store.reservations(P)] == [("s1", 4.0)]


def test_reservation_set_is_all_or_nothing(store: MarketStore) -> None:
    """Two rows for one site of one award: the database refuses the second row, and the header and the
    first row written before it in the same transaction are rolled back with it."""
    bad = rset("a1", reservation("s1", 4.0, T0, T0 + H), reservation("s2", 2.0, T0, T0 + H))
    bad.reservations.append(reservation("s1", 1.0, T0, T0 + H))
    with pytest.raises(ValueError, match=r"award a1: more than one reservation for site\(s\) s1; nothing stored"):
        store.record_reservations(bad)
    assert store.reservation_set("a1") is None
    assert store.reservations(P) == []
    assert store.reserved_kw(P, T0, T0 + H) == {}
    # Nothing half-written blocks the corrected set.
    assert store.record_reservations(rset("a1", reservation("s1", 5.0, T0, T0 + H)))
    assert store.reserved_kw(P, T0, T0 + H) == {("s1", UP): 5.0}


def test_reserved_kw_sums_overlaps_and_counts_symmetric_both_ways(store: MarketStore) -> None:
    store.record_reservations(rset("up1", reservation("s1", 4.0, T0, T0 + 2 * H)))
    store.record_reservations(rset("up2", reservation("s1", 3.0, T0 + H, T0 + 3 * H)))  # overlaps up1 in hour 1
    store.record_reservations(rset("up3", reservation("s1", 5.0, T0 + 3 * H, T0 + 4 * H)))  # after both
    store.record_reservations(rset("fcr", reservation("s1", 2.0, T0, T0 + 4 * H, direction=SYM, product="FCR")))
    store.record_reservations(
        rset(
            "dn", reservation("s1", 1.5, T0, T0 + H, direction=DOWN), reservation("s2", 2.5, T0, T0 + H, direction=DOWN)
        )
    )
    store.record_reservations(rset("x", reservation("s1", 100.0, T0, T0 + 4 * H), portfolio="portfolio-2"))

    whole = store.reserved_kw(P, T0, T0 + 4 * H)
    # UP at s1: hour 1 holds up1 + up2 + fcr = 9; hour 3 holds up3 + fcr = 7; the peak is 9, not 4+3+5+2.
    assert whole == {("s1", UP): pytest.approx(9.0), ("s1", DOWN): pytest.approx(3.5), ("s2", DOWN): 2.5}
    assert common_pb2.DIRECTION_UNSPECIFIED not in {d for _, d in whole}
    # Windows clip the reservations: before up2 starts only up1 + fcr are in force.
    assert store.reserved_kw(P, T0, T0 + H) == {
        ("s1", UP): pytest.approx(6.0),
        ("s1", DOWN): pytest.approx(3.5),
        ("s2", DOWN): 2.5,
    }
    assert store.reserved_kw(P, T0 + 3 * H, T0 + 4 * H) == {("s1", UP): 7.0, ("s1", DOWN): 2.0}
    assert store.reserved_kw(P, T0 + 4 * H, T0 + 5 * H) == {}  # all ended (end exclusive)
    assert store.reserved_kw(P, T0 + H, T0 + H) == {}
    assert store.reserved_kw("portfolio-2", T0, T0 + H) == {("s1", UP): 100.0}


# -- settlements -------------------------------------------------------------------------------------


def test_settlement_round_trip_order_and_filters(store: MarketStore) -> None:
    q = 15 * 60
    s = settlement(
        "set-1",
        line("a2", T0 + q, product="aFRR", direction=DOWN, net=2.0),
        line("a1", T0 + q, product="aFRR", direction=UP, net=1.0),
        line("a3", T0, product="FCR", direction=SYM, net=3.0),
        line("a1", T0, product="aFRR", direction=UP, net=4.0),
    )
    assert store.record_settlement(s)
    got = store.settlement_lines(P)
    # MTU start, then product by code point ("FCR" < "aFRR" on both databases), then direction.
    assert [(ln.award_id, ln.mtu_start.seconds) for ln in got] == [
        ("a3", T0),
        ("a1", T0),
        ("a1", T0 + q),
        ("a2", T0 + q),
    ]
    assert all(ln.portfolio_id == P for ln in got)  # inherited from the settlement
    assert got[0].site_shares[0].site_id == "s1"
    assert [ln.award_id for ln in store.settlement_lines(P, start_s=T0 + q)] == ["a1", "a2"]
    assert [ln.award_id for ln in store.settlement_lines(P, end_s=T0 + q)] == ["a3", "a1"]
    assert [ln.net_revenue for ln in store.settlement_lines(P, start_s=T0, end_s=T0 + 1)] == [3.0, 4.0]
    assert store.settlement_lines("portfolio-2") == []

    whole = store.settlement("set-1")
    assert whole is not None
    assert whole.net_revenue == pytest.approx(10.0)
    assert whole.period_end.seconds == T0 + 24 * H
    assert sorted(ln.SerializeToString() for ln in whole.lines) == sorted(ln.SerializeToString() for ln in got)
    assert store.settlement("missing") is None


def test_redelivered_settlement_changes_nothing(store: MarketStore) -> None:
    assert store.record_settlement(settlement("set-1", line("a1", T0)))
    assert not store.record_settlement(settlement("set-1", line("a1", T0)))
    assert not store.record_settlement(settlement("set-1", line("a1", T0, net=50.0), line("a2", T0)))
    assert [(ln.award_id, ln.net_revenue) for ln in store.settlement_lines(P)] == [("a1", 1.0)]


def test_settlement_is_all_or_nothing(store: MarketStore) -> None:
    bad = settlement("set-1", line("a1", T0), line("a2", T0), line("a1", T0, net=9.0))
    with pytest.raises(ValueError, match=r"settlement set-1: more than one line .* a1@"):
        store.record_settlement(bad)
    assert store.settlement("set-1") is None
    assert store.settlement_lines(P) == []
    assert store.record_settlement(settlement("set-1", line("a1", T0), line("a2", T0)))
    assert len(store.settlement_lines(P)) == 2


# -- durability, validation, lifecycle ---------------------------------------------------------------


def test_everything_survives_a_restart(spec: StoreSpec, store: MarketStore) -> None:
    store.create_schema()  # idempotent
    store.record_bids([bid("b1", T0, T0 + H), bid("b2", T0 + H, T0 + 2 * H, direction=DOWN)])
    store.record_award(award("a1", "b1", T0, T0 + H))
    store.record_reservations(rset("a1", reservation("s1", 6.0, T0, T0 + H), reservation("s2", 4.0, T0, T0 + H)))
    store.record_settlement(settlement("set-1", line("a1", T0), line("a1", T0 + 900)))
    before = (
        store.bids(P),
        store.awards(P),
        store.reservation_set("a1"),
        store.reserved_kw(P, T0, T0 + H),
        store.settlement("set-1"),
    )
    store.close()

    again = spec.open()
    try:
        again.create_schema()  # what the service does at start: must not disturb the data
        after = (
            again.bids(P),
            again.awards(P),
            again.reservation_set("a1"),
            again.reserved_kw(P, T0, T0 + H),
            again.settlement("set-1"),
        )
        assert after == before
        assert ids(after[0]) == ["b1", "b2"] and ids(after[1]) == ["a1"]
        # ... and the idempotence keys survived too.
        assert again.record_bids([bid("b1", T0, T0 + H)]) == 0
        assert not again.record_award(award("a1", "b1", T0, T0 + H))
        with pytest.raises(ValueError, match="already has award a1"):
            again.record_award(award("a9", "b1", T0, T0 + H))
        assert not again.record_reservations(rset("a1", reservation("s1", 1.0, T0, T0 + H)))
        assert not again.record_settlement(settlement("set-1"))
    finally:
        again.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.record_bids([bid("", T0, T0 + H)]), "bid_id is empty"),
        (lambda s: s.record_bids([bid("b1", T0, T0)]), "interval end"),
        (lambda s: s.record_bids([bid("b1", T0, T0 + H, kw=-1.0)]), "capacity_kw"),
        (lambda s: s.record_bids([bid("b1", T0, T0 + H, kw=math.nan)]), "capacity_kw"),
        (lambda s: s.record_bids([bid("b1", T0, T0 + H, direction=7)]), "unknown direction"),
        (lambda s: s.record_award(award("a1", "", T0, T0 + H)), "bid_id is empty"),
        (lambda s: s.record_award(award("a1", "b1", T0 + H, T0)), "interval end"),
        (lambda s: s.record_reservations(rset("a1", reservation("s1", -2.0, T0, T0 + H))), "reserved_kw"),
        (lambda s: s.record_reservations(rset("a1", reservation("", 2.0, T0, T0 + H))), "site_id is empty"),
        (lambda s: s.record_reservations(rset("a1", reservation("s1", 2.0, T0, T0 + H, award_id="a2"))), "differs"),
        (lambda s: s.record_reservations(rset("a1", reservation("s1", 2.0, T0, T0 + H, portfolio="x"))), "differs"),
        (lambda s: s.record_settlement(settlement("set-1", line("a1", T0, portfolio="x"))), "differs"),
        (lambda s: s.record_settlement(settlement("")), "settlement_id is empty"),
    ],
    ids=[
        "bid-no-id",
        "bid-empty-interval",
        "bid-negative-kw",
        "bid-nan-kw",
        "bid-bad-direction",
        "award-no-bid",
        "award-reversed-interval",
        "reservation-negative-kw",
        "reservation-no-site",
        "reservation-other-award",
        "reservation-other-portfolio",
        "line-other-portfolio",
        "settlement-no-id",
    ],
)
def test_invalid_records_are_refused_before_writing(tmp_path: Path, call: object, message: str) -> None:
    """Validation runs before the database is touched, so SQLite alone covers it."""
    s = MarketStore(str(tmp_path / "market.sqlite"))  # a plain path is a SQLite file
    s.create_schema()
    try:
        with pytest.raises(ValueError, match=message):
            call(s)  # type: ignore[operator]
        assert s.bids(P) == [] and s.awards(P) == [] and s.reservations(P) == [] and s.settlement_lines(P) == []
        # A batch with one bad bid writes none of its good ones.
        with pytest.raises(ValueError):
            s.record_bids([bid("good", T0, T0 + H), bid("bad", T0, T0 - 1)])
        assert s.bids(P) == []
    finally:
        s.close()


def test_in_memory_store_shared_by_threads() -> None:
    """The embedded default for tests and the demo: one connection, calls from asyncio.to_thread take turns."""
    s = MarketStore("sqlite://")
    s.create_schema()

    async def main() -> list[int]:
        return await asyncio.gather(
            *(asyncio.to_thread(s.record_bids, [bid(f"b{k}-{j}", T0, T0 + H) for j in range(20)]) for k in range(6)),
            *(asyncio.to_thread(lambda: len(s.bids(P))) for _ in range(6)),
        )

    try:
        counts = asyncio.run(main())
        assert counts[:6] == [20] * 6
        assert len(s.bids(P)) == 120
    finally:
        s.close()


def test_unreachable_database_is_reported_with_the_url() -> None:
    s = MarketStore("postgresql+psycopg://postgres@127.0.0.1:1/test")
    try:
        with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1/test.*check the store URL"):
            s.create_schema()
    finally:
        s.close()


def test_unsupported_database_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        MarketStore("mysql+pymysql://u@127.0.0.1/x")


# -- property: reserved_kw against brute force -------------------------------------------------------

_unique = itertools.count()
SPAN = st.tuples(
    st.sampled_from(["s1", "s2"]),
    st.sampled_from([UP, DOWN, SYM]),
    st.integers(0, 20),
    st.integers(1, 10),
    st.floats(0, 500, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spans=st.lists(SPAN, max_size=8),
    window=st.tuples(st.integers(0, 30), st.integers(0, 30)),
    per_award=st.integers(1, 3),
)
def test_reserved_kw_equals_brute_force(
    store: MarketStore,
    spans: list[tuple[str, int, int, int, float]],
    window: tuple[int, int],
    per_award: int,
) -> None:
    portfolio = f"prop-{next(_unique)}"  # each example in a portfolio of its own (the store is shared)
    sets: dict[str, market_pb2.ReservationSet] = {}
    for k, (site, direction, start, length, kw) in enumerate(spans):
        award_id = f"{portfolio}-a{k // per_award}-{site}-{k}"  # unique (award, site)
        rs = sets.setdefault(award_id, rset(award_id, portfolio=portfolio))
        rs.reservations.append(reservation(site, kw, T0 + start, T0 + start + length, direction=direction))
    for rs in sets.values():
        assert store.record_reservations(rs)
    lo, hi = T0 + window[0], T0 + window[1]

    got = store.reserved_kw(portfolio, lo, hi)

    expected: dict[tuple[str, int], float] = {}
    for site, direction, start, length, _ in spans:
        if overlapping(T0 + start, T0 + start + length, lo, hi):
            for d in (UP, DOWN) if direction == SYM else (direction,):
                expected[(site, d)] = max(
                    math.fsum(
                        kw2
                        for site2, dir2, s2, len2, kw2 in spans
                        if site2 == site and dir2 in (d, SYM) and T0 + s2 <= t < T0 + s2 + len2
                    )
                    for t in range(lo, hi)
                )
    assert got.keys() == expected.keys()
    for key, value in got.items():
        assert value >= 0
        assert value == pytest.approx(expected[key], rel=1e-12, abs=1e-9)
