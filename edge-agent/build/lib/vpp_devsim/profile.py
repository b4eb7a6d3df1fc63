"""PV and load profiles: a CSV (`offset_s,pv_kw,load_kw`) or a built-in deterministic day shape."""

from __future__ import annotations

import bisect
import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

DAY_S = 86400.0


@dataclass(frozen=True)
class ProfilePoint:
    offset_s: float
    pv_kw: float
    load_kw: float


class Profile:
    """Piecewise-linear PV/load over a period that loops; `time_scale` speeds profile time up.

    Profile time = start_offset_s + elapsed_s * time_scale, taken modulo the period, so a
    day-long CSV can be replayed in minutes for a demo.
    """

    def __init__(
        self,
        points: list[ProfilePoint],
        *,
        period_s: float | None = None,
        time_scale: float = 1.0,
        start_offset_s: float = 0.0,
        noise_pct: float = 0.0,
        seed: int = 0,
    ) -> None:
        if len(points) < 2:
            raise ValueError("a profile needs at least two points")
        self.points = sorted(points, key=lambda p: p.offset_s)
        self._offsets = [p.offset_s for p in self.points]
        last = self.points[-1].offset_s
        step = last - self.points[-2].offset_s
        self.period_s = period_s if period_s is not None else last + step
        if self.period_s <= last - self.points[0].offset_s:
            raise ValueError("profile period must exceed the span of its points")
        self.time_scale = time_scale
        self.start_offset_s = start_offset_s
        self.noise_pct = noise_pct
        self._rng = random.Random(seed)

    @classmethod
    def from_csv(cls, path: Path, **kwargs: float | int) -> Profile:
        """Read `offset_s,pv_kw,load_kw` rows (header required); values are absolute kW."""
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"offset_s", "pv_kw", "load_kw"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}: missing columns {sorted(missing)}")
            points = [
                ProfilePoint(float(row["offset_s"]), float(row["pv_kw"]), float(row["load_kw"]))
                for row in reader
            ]
        return cls(points, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def default(cls, pv_kwp: float, **kwargs: float | int) -> Profile:
        """A clear-sky PV bell between 06:00 and 18:00 and a two-peak household load, every 15 min."""
        points = []
        for i in range(96):
            t = i * 900.0
            hour = t / 3600.0
            pv = pv_kwp * max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0)) ** 1.5 if 6 <= hour <= 18 else 0.0
            load = (
                0.4
                + 1.6 * math.exp(-(((hour - 7.5) / 1.2) ** 2))
                + 2.2 * math.exp(-(((hour - 19.0) / 1.8) ** 2))
                + 0.3 * math.exp(-(((hour - 12.5) / 1.0) ** 2))
            )
            points.append(ProfilePoint(t, round(pv, 4), round(load, 4)))
        return cls(points, period_s=DAY_S, **kwargs)  # type: ignore[arg-type]

    def at(self, elapsed_s: float) -> tuple[float, float]:
        """(pv_kw, load_kw) at `elapsed_s` wall seconds since start, interpolated and looped."""
        first = self._offsets[0]
        t = (self.start_offset_s + elapsed_s * self.time_scale - first) % self.period_s + first
        idx = bisect.bisect_right(self._offsets, t)
        if idx >= len(self.points):
            left, right = self.points[-1], self.points[0]
            span = self.period_s - (left.offset_s - right.offset_s)
        else:
            left, right = self.points[idx - 1], self.points[idx]
            span = right.offset_s - left.offset_s
        frac = (t - left.offset_s) / span if span > 0 else 0.0
        pv = left.pv_kw + (right.pv_kw - left.pv_kw) * frac
        load = left.load_kw + (right.load_kw - left.load_kw) * frac
        if self.noise_pct > 0:
            load *= 1.0 + self._rng.gauss(0.0, self.noise_pct / 100.0)
        return max(0.0, pv), max(0.0, load)
