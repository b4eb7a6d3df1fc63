"""PNG plots for people (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_tracking(
    samples: Sequence[Any],
    series: dict[str, list[tuple[float, float, float]]],
    path: Path,
    title: str,
    events: Sequence[tuple[float, str]] = (),
) -> Path:
    """Requested vs delivered per step (top) and each site's battery power from telemetry (bottom);
    ``events`` (unix time, label) are marked on both panels (a site failing, a dispatcher killed)."""
    if not samples:
        raise RuntimeError("no tracking samples to plot")
    t0 = samples[0].at.ToNanoseconds() / 1e9
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ts = [s.at.ToNanoseconds() / 1e9 - t0 for s in samples]
    ax1.step(ts, [s.requested_kw for s in samples], where="post", label="requested (TSO setpoint)", color="black")
    ax1.plot(
        [t + 4 for t in ts],
        [s.delivered_kw for s in samples],
        "o-",
        label="delivered at the meters (step end)",
        color="C1",
    )
    late = [(t + 4, s.delivered_kw) for t, s in zip(ts, samples, strict=True) if getattr(s, "late", False)]
    if late:
        ax1.plot(*zip(*late, strict=True), "s", color="red", label="step executed late (takeover)")
    for at_s, label in events:
        for ax in (ax1, ax2):
            ax.axvline(at_s - t0, color="red", ls="--", lw=1)
        ax1.annotate(label, (at_s - t0, ax1.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=8, color="red")
    ax1.set_ylabel("portfolio kW vs baseline")
    ax1.axhline(0, color="grey", lw=0.5)
    ax1.legend(loc="best")
    ax1.set_title(title)
    for site, points in sorted(series.items()):
        xs = [p[0] - t0 for p in points if -20 <= p[0] - t0 <= ts[-1] + 20]
        ys = [p[1] for p in points if -20 <= p[0] - t0 <= ts[-1] + 20]
        ax2.plot(xs, ys, label=site, lw=1.2)
    ax2.set_ylabel("battery kW (+ discharge)")
    ax2.set_xlabel("seconds since activation start")
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.legend(loc="best", fontsize=8, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def quantile_series(forecast: Any, level: float) -> list[float]:
    """The values of one quantile across a Forecast's points."""
    return [next(v.power_kw for v in p.values if abs(v.quantile - level) < 1e-9) for p in forecast.points]


def plot_forecasts(forecasts: dict[str, Any], path: Path) -> Path:
    """One panel per stream: P50 line and the P10-P90 band."""
    fig, axes = plt.subplots(len(forecasts), 1, figsize=(10, 2.8 * len(forecasts)), sharex=True, squeeze=False)
    for ax, (name, fc) in zip(axes[:, 0], forecasts.items(), strict=True):
        hours = [(p.start.ToNanoseconds() - fc.issued_at.ToNanoseconds()) / 3.6e12 for p in fc.points]
        low, mid, high = (quantile_series(fc, level) for level in (0.1, 0.5, 0.9))
        ax.fill_between(hours, low, high, alpha=0.3, label="P10-P90", step="post")
        ax.step(hours, mid, where="post", label="P50", color="C0")
        ax.set_ylabel(f"{name} kW")
        ax.set_title(f"portfolio {name} ({fc.model})", fontsize=9)
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("hours after issue")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
