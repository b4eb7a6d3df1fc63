"""Awards and the reservations that bind them, as dispatch needs them: an activation drawing on an
award may not ask for more than was awarded, nor the other way, nor outside its block; capacity other
awards hold at a site is not used for anything else. Pure: the service feeds it the awards and
reservations topics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from vpp.v1 import common_pb2, market_pb2

from dispatch.control import SiteNow

# Activations are issued a little before a block starts and run a little past its end (a step's
# valid_until): tolerate that much at the block's edges.
EDGE_S = 30.0
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Hold:
    award_id: str
    start_s: float
    end_s: float
    up_kw: float
    down_kw: float


class AwardBook:
    def __init__(self, keep: int = 10_000) -> None:
        self._keep = keep
        self.awards: dict[str, market_pb2.Award] = {}
        self.holds: dict[str, dict[str, Hold]] = {}  # award -> site -> hold

    def on_award(self, award: market_pb2.Award) -> None:
        if award.award_id and award.awarded_kw > 0:
            self.awards[award.award_id] = award
            while len(self.awards) > self._keep:
                self.awards.pop(next(iter(self.awards)))

    def on_reservations(self, rs: market_pb2.ReservationSet) -> None:
        holds: dict[str, Hold] = {}
        for r in rs.reservations:
            up = r.reserved_kw if r.direction != common_pb2.DIRECTION_DOWN else 0.0
            down = r.reserved_kw if r.direction != common_pb2.DIRECTION_UP else 0.0
            holds[r.site_id] = Hold(rs.award_id, r.interval_start.seconds, r.interval_end.seconds, up, down)
        self.holds[rs.award_id] = holds
        while len(self.holds) > self._keep:
            self.holds.pop(next(iter(self.holds)))

    def refusal(self, act: market_pb2.Activation, now_s: float) -> str:
        """Why dispatch must not execute this step of an activation drawing on an award ("" when it may)."""
        if not act.award_id:
            return ""
        award = self.awards.get(act.award_id)
        if award is None:
            return f"unknown award {act.award_id!r} (not awarded, or not received yet)"
        if act.portfolio_id and act.portfolio_id != award.portfolio_id:
            return f"award {award.award_id} belongs to portfolio {award.portfolio_id!r}, not {act.portfolio_id!r}"
        at_s = act.block_time.seconds + act.block_time.nanos / 1e9 if act.HasField("block_time") else now_s
        if not award.interval_start.seconds - EDGE_S <= at_s <= award.interval_end.seconds + EDGE_S:
            return (
                f"outside award {award.award_id}'s block ({award.interval_start.seconds}..{award.interval_end.seconds})"
            )
        if act.setpoint_kw > TOLERANCE and award.direction == common_pb2.DIRECTION_DOWN:
            return f"up setpoint {act.setpoint_kw:.3f} kW on down award {award.award_id}"
        if act.setpoint_kw < -TOLERANCE and award.direction == common_pb2.DIRECTION_UP:
            return f"down setpoint {act.setpoint_kw:.3f} kW on up award {award.award_id}"
        if abs(act.setpoint_kw) > award.awarded_kw * (1 + TOLERANCE) + TOLERANCE:
            return f"setpoint {abs(act.setpoint_kw):.3f} kW exceeds award {award.award_id} of {award.awarded_kw:.3f} kW"
        return ""

    def held_elsewhere(
        self, award_id: str, now_s: float, active_awards: Iterable[str]
    ) -> dict[str, tuple[float, float]]:
        """kW (up, down) per site that other awards hold now and are not using through a running
        activation (a running one's offsets are already counted as another activation's)."""
        skip = {award_id, *active_awards}
        out: dict[str, tuple[float, float]] = {}
        for other, holds in self.holds.items():
            if other in skip:
                continue
            for site_id, h in holds.items():
                if h.start_s <= now_s < h.end_s:
                    up, down = out.get(site_id, (0.0, 0.0))
                    out[site_id] = (up + h.up_kw, down + h.down_kw)
        return out


def without_held(fleet: list[SiteNow], held: dict[str, tuple[float, float]]) -> list[SiteNow]:
    """Each site's battery range shrunk by what other awards hold there (never past its baseline)."""
    out = []
    for s in fleet:
        up, down = held.get(s.site_id, (0.0, 0.0))
        if up or down:
            s = replace(
                s,
                battery_max_kw=max(s.baseline_battery_kw, s.battery_max_kw - up),
                battery_min_kw=min(s.baseline_battery_kw, s.battery_min_kw + down),
            )
        out.append(s)
    return out
