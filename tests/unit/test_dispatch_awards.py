"""Dispatch delivers against awards: what it refuses, and what other awards hold at a site."""

from __future__ import annotations

import pytest
from vpp.v1 import common_pb2, market_pb2

from dispatch.awards import AwardBook, without_held
from dispatch.control import SiteNow

START = 2_000_000_000


def award(award_id: str = "a1", kw: float = 10.0, direction: int = common_pb2.DIRECTION_DOWN) -> market_pb2.Award:
    a = market_pb2.Award(award_id=award_id, awarded_kw=kw, direction=direction, portfolio_id="p", product="SR2")
    a.interval_start.FromSeconds(START)
    a.interval_end.FromSeconds(START + 1800)
    return a


def act(setpoint_kw: float, award_id: str = "a1", portfolio_id: str = "p") -> market_pb2.Activation:
    return market_pb2.Activation(
        activation_id="x", setpoint_kw=setpoint_kw, award_id=award_id, portfolio_id=portfolio_id
    )


@pytest.mark.parametrize(
    ("activation", "at_s", "reason"),
    [
        (act(-10.0), START + 60, ""),
        (act(-10.5), START + 60, "exceeds award"),
        (act(2.0), START + 60, "up setpoint"),
        (act(-1.0, award_id="nope"), START + 60, "unknown award"),
        (act(-1.0, portfolio_id="q"), START + 60, "belongs to portfolio"),
        (act(-1.0), START + 7200, "outside award"),
        (act(5.0, award_id=""), START + 60, ""),  # a test activation draws on no award
    ],
)
def test_refusals(activation: market_pb2.Activation, at_s: float, reason: str) -> None:
    book = AwardBook()
    book.on_award(award())
    got = book.refusal(activation, at_s)
    assert (reason in got) if reason else got == ""


def test_a_compressed_delivery_is_checked_at_the_block_time_it_stands_for() -> None:
    book = AwardBook()
    book.on_award(award())
    a = act(-1.0)
    a.block_time.FromSeconds(START + 900)
    assert book.refusal(a, now_s=START - 86_400) == ""  # played a day early, inside its block in block time
    a.block_time.FromSeconds(START + 5000)
    assert "outside award" in book.refusal(a, now_s=START + 900)


def reservation_set(award_id: str, site_kw: dict[str, float], direction: int) -> market_pb2.ReservationSet:
    rs = market_pb2.ReservationSet(award_id=award_id, portfolio_id="p")
    for site_id, kw in site_kw.items():
        r = rs.reservations.add(award_id=award_id, site_id=site_id, reserved_kw=kw, direction=direction)
        r.interval_start.FromSeconds(START)
        r.interval_end.FromSeconds(START + 1800)
    return rs


def test_capacity_held_by_other_awards_is_not_used_for_anything_else() -> None:
    book = AwardBook()
    book.on_reservations(reservation_set("a1", {"s1": 4.0}, common_pb2.DIRECTION_UP))
    book.on_reservations(reservation_set("a2", {"s1": 3.0, "s2": 1.0}, common_pb2.DIRECTION_UNSPECIFIED))
    held = book.held_elsewhere("a9", START + 10, active_awards=())
    assert held == {"s1": (7.0, 3.0), "s2": (1.0, 1.0)}
    # its own award, and an award whose activation runs (its offsets count already), are not held back
    assert book.held_elsewhere("a1", START + 10, active_awards=("a2",)) == {}
    assert book.held_elsewhere("a9", START + 3600, active_awards=()) == {}  # outside the blocks
    fleet = [SiteNow("s1", True, 1.0, -10.0, 10.0, 20.0, 20.0, 10.0, 0.0, 0.0)]
    (s1,) = without_held(fleet, held)
    assert s1.battery_max_kw == pytest.approx(3.0) and s1.battery_min_kw == pytest.approx(-7.0)
    (tight,) = without_held(fleet, {"s1": (50.0, 50.0)})
    assert tight.battery_max_kw == tight.battery_min_kw == pytest.approx(1.0)  # never past its baseline
