"""Who acts for dispatch: a lease kept in a one-partition Kafka topic, so a standby takes over within
one 4 s step after the active replica dies (kill -9 included), without waiting for a consumer group's
session timeout.

Every replica reads the lease topic from near its end and replays it through ``LeaseState``:

* a *claim* is a record with an epoch above the current one; the first claim of an epoch in the log
  wins (the log orders claims made at the same moment, so every replica agrees on the winner);
* a *renewal* is a record of the current holder at the current epoch; anything else is ignored;
* a replica acts only once it has read its own claim back as the winner, and stops the moment it reads
  a higher epoch; the holder renews every ``renew_s`` and a standby claims when it has seen no renewal
  for ``term_s`` (measured on its own monotonic clock at receipt, so clock skew does not matter).

A deposed replica may still have commands in flight: each command carries the epoch, and agents refuse
an epoch below the highest they have applied (see ``vpp_edge.coordinator``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vpp.v1 import dispatch_pb2


@dataclass
class LeaseState:
    """The lease as read from the log so far. Pure: ``now_s`` is the reader's monotonic clock."""

    me: str
    term_s: float
    holder: str = ""
    epoch: int = 0
    renewed_at_s: float = float("-inf")  # reader's clock when the holder was last heard
    released: bool = False
    claimed_epoch: int = 0  # the epoch of our own pending claim (0: none)
    claimed_at_s: float = float("-inf")

    @property
    def leading(self) -> bool:
        return bool(self.holder) and self.holder == self.me and not self.released

    def apply(self, lease: dispatch_pb2.DispatchLease, now_s: float) -> bool:
        """Replay one record; True if the leader or epoch changed."""
        if lease.epoch > self.epoch:
            self.holder, self.epoch, self.released = lease.holder, lease.epoch, lease.released
            self.renewed_at_s = now_s
            if self.claimed_epoch and self.claimed_epoch <= lease.epoch:
                self.claimed_epoch = 0  # our claim was read back (won) or overtaken (lost)
            return True
        if lease.epoch == self.epoch and lease.holder == self.holder:
            changed = lease.released != self.released
            self.released = lease.released
            self.renewed_at_s = now_s
            return changed
        return False  # a losing claim or a deposed holder's late renewal

    def expired(self, now_s: float) -> bool:
        return self.released or not self.holder or now_s - self.renewed_at_s > self.term_s

    def should_claim(self, now_s: float) -> bool:
        """Claim when the lease has lapsed and we have no claim of our own in flight (a claim that is
        not read back within a term is retried: the record may have been lost with its producer)."""
        if self.leading or not self.expired(now_s):
            return False
        return not (self.claimed_epoch and now_s - self.claimed_at_s <= self.term_s)

    def claim(self, now_s: float) -> dispatch_pb2.DispatchLease:
        self.claimed_epoch = self.epoch + 1
        self.claimed_at_s = now_s
        return self.record(self.claimed_epoch)

    def renewal(self) -> dispatch_pb2.DispatchLease:
        return self.record(self.epoch)

    def release(self) -> dispatch_pb2.DispatchLease:
        out = self.record(self.epoch)
        out.released = True
        return out

    def record(self, epoch: int) -> dispatch_pb2.DispatchLease:
        out = dispatch_pb2.DispatchLease(holder=self.me, epoch=epoch, term_s=self.term_s)
        out.renewed_at.GetCurrentTime()
        return out
