"""The dispatch lease, replayed from its log: one holder at a time, takeover after one term, the first
claim of an epoch wins, a deposed holder's late renewal changes nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from vpp.v1 import dispatch_pb2

from dispatch.lease import LeaseState


def rec(holder: str, epoch: int, released: bool = False) -> dispatch_pb2.DispatchLease:
    return dispatch_pb2.DispatchLease(holder=holder, epoch=epoch, released=released)


def test_standby_claims_after_one_term_and_acts_only_once_its_claim_is_read_back() -> None:
    a, b = LeaseState("a", 2.0), LeaseState("b", 2.0)
    assert a.should_claim(0.0)
    claim = a.claim(0.0)
    assert not a.leading  # not before the log says so
    for s in (a, b):
        s.apply(claim, 0.1)
    assert a.leading and not b.leading
    for t in (0.5, 1.0, 1.5):  # renewals keep b waiting
        b.apply(a.renewal(), t)
        assert not b.should_claim(t + 0.1)
    assert not b.should_claim(3.4)  # 1.9 s of silence: still within the term
    assert b.should_claim(3.6)  # a died after its 1.5 s renewal
    claim_b = b.claim(3.6)
    assert claim_b.epoch == 2
    b.apply(claim_b, 3.7)
    a.apply(claim_b, 3.7)
    assert b.leading and not a.leading  # a (if only paused) stops at once


def test_first_claim_of_an_epoch_wins_and_a_late_renewal_of_the_old_holder_is_ignored() -> None:
    a, b, c = LeaseState("a", 2.0), LeaseState("b", 2.0), LeaseState("c", 2.0)
    log = [rec("a", 1), rec("b", 2), rec("c", 2), rec("a", 1), rec("c", 2)]
    for s in (a, b, c):
        for i, r in enumerate(log):
            s.apply(r, float(i))
    assert b.leading and not a.leading and not c.leading
    assert {s.holder for s in (a, b, c)} == {"b"} and {s.epoch for s in (a, b, c)} == {2}


def test_release_lets_a_standby_claim_at_once() -> None:
    a, b = LeaseState("a", 2.0), LeaseState("b", 2.0)
    for s in (a, b):
        s.apply(rec("a", 1), 0.0)
    assert not b.should_claim(0.1)
    for s in (a, b):
        s.apply(a.release(), 0.2)
    assert not a.leading
    assert b.should_claim(0.3)


def test_a_lost_claim_is_retried_after_a_term() -> None:
    b = LeaseState("b", 2.0)
    b.claim(0.0)
    assert not b.should_claim(1.0)  # in flight
    assert b.should_claim(2.5)  # never read back: the record was lost with its producer


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 6), st.booleans()), max_size=40))
def test_every_reader_of_the_same_log_agrees_on_the_holder(log: list[tuple[str, int, bool]]) -> None:
    readers = [LeaseState(name, 2.0) for name in "abc"]
    for i, (holder, epoch, released) in enumerate(log):
        for r in readers:
            r.apply(rec(holder, epoch, released), float(i))
    assert len({(r.holder, r.epoch, r.released) for r in readers}) == 1
    assert sum(r.leading for r in readers) <= 1
