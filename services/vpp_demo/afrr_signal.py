"""A seeded model of one portfolio's aFRR setpoint signal, for benchmarking dispatch.

What dispatch has to follow in the aFRR market is a setpoint the TSO sends every few seconds, a share of
its load-frequency controller's output. It is persistent (an imbalance lasts minutes), it wanders within
an hour from one sign to the other, it moves in steps of new regimes (a schedule change at the quarter
hour, a tripped unit) and the product's full activation time (FAT, 5 min) bounds how fast a provider must
follow, so the TSO does not ask for faster. This module models that signal; it is **not** fitted to a
recorded one: the numbers below are chosen to give the shape described, and ``signal_stats`` says what
came out, so a benchmark can quote it next to its results.

The model, normalised to the awarded capacity (``+1`` = the full positive award, the portfolio
discharges / reduces import; ``-1`` = the full negative award), in model time ``t`` (seconds):

* a regime level ``mu`` that jumps at the times of a Poisson process (mean ``JUMP_EVERY_S`` = 15 min
  between jumps). On a jump the new level is drawn uniformly from ``[0.15, 0.9]`` in magnitude, with the
  opposite sign to the old level with probability ``FLIP_P`` = 0.6;
* a demand ``u``: an Ornstein-Uhlenbeck process around ``mu`` with correlation time ``TAU_S`` = 5 min and
  stationary standard deviation ``SIGMA`` = 0.25, advanced exactly over each step (``a = exp(-dt/TAU_S)``,
  ``u <- mu + a (u - mu) + SIGMA sqrt(1 - a^2) N(0, 1)``), starting from its stationary distribution;
* a smoothed demand ``y``: ``u`` through a first-order low-pass with time constant ``SMOOTH_S`` = 60 s
  (the TSO's controller output is smooth; without it the setpoint chatters around zero);
* the setpoint ``x``: follows ``clip(y, -1, 1)`` but moves at most ``dt / FAT_S`` per step (FAT 5 min:
  from 0 to the full award takes 300 s, so at 4 s steps ``|x[k+1] - x[k]| <= 4/300``). It starts at 0
  (no activation) and stays within ``[-1, 1]``.

Sign changes come from regime jumps that flip the sign and from the OU demand crossing zero near a small
regime level; with these numbers a typical hour has a few (``signal_stats`` counts them; over 800
seed-hours: mean 3.2 per hour, 10th/50th/90th percentile 1/3/7, one hour in eleven without any).

``compress`` plays the modelled signal faster: each output step advances the model by
``step_s * compress`` seconds, so an hour of model time takes ``1/compress`` hours and every ramp (and the
rate limit) is ``compress`` times steeper per second of output: ``|x[k+1] - x[k]| <= step_s * compress /
FAT_S``. Sign changes per hour of output grow by the same factor. ``compress = 1`` is real time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FAT_S = 300.0  # aFRR full activation time: 0 -> full award in 5 min
JUMP_EVERY_S = 900.0  # mean time between regime jumps
FLIP_P = 0.6  # a regime jump reverses the sign of the level with this probability
LEVEL_MIN, LEVEL_MAX = 0.15, 0.9  # magnitude of a regime level
TAU_S = 300.0  # correlation time of the demand around its level
SIGMA = 0.25  # stationary standard deviation of the demand around its level
SMOOTH_S = 60.0  # low-pass of the demand


def afrr_signal(duration_s: float, step_s: float = 4.0, seed: int = 0, compress: float = 1.0) -> np.ndarray:
    """``floor(duration_s / step_s)`` setpoints in ``[-1, 1]``, one per ``step_s`` (see the module docstring).

    ``x[k]`` holds for output time ``[k * step_s, (k + 1) * step_s)``; ``x[0]`` is one rate-limited step
    from 0. Deterministic for a given ``(duration_s, step_s, seed, compress)``, and a longer duration
    extends a shorter one with the same arguments (the first values are the same).
    """
    if step_s <= 0 or compress <= 0:
        raise ValueError("step_s and compress must be > 0")
    n = max(0, math.floor(duration_s / step_s + 1e-9))
    # Separate streams for the start, the jumps and the demand noise: a longer signal starts with the
    # same values as a shorter one.
    start_rng, jump_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    dt = step_s * compress  # model seconds per step
    max_step = min(2.0, dt / FAT_S)
    a = math.exp(-dt / TAU_S)
    noise_sd = SIGMA * math.sqrt(1.0 - a * a)
    jump_p = 1.0 - math.exp(-dt / JUMP_EVERY_S)
    smooth = 1.0 - math.exp(-dt / SMOOTH_S)
    sign = 1.0 if start_rng.random() < 0.5 else -1.0
    mu = sign * start_rng.uniform(LEVEL_MIN, LEVEL_MAX)
    u = mu + SIGMA * start_rng.standard_normal()
    y = u
    x = 0.0
    out = np.empty(n)
    draws = jump_rng.random((n, 3))
    normals = noise_rng.standard_normal(n)
    for k in range(n):
        jump, flip, level = draws[k]
        if jump < jump_p:
            keep = -1.0 if flip < FLIP_P else 1.0
            mu = math.copysign(LEVEL_MIN + (LEVEL_MAX - LEVEL_MIN) * level, mu * keep)
        u = mu + a * (u - mu) + noise_sd * normals[k]
        y += (u - y) * smooth
        goal = min(1.0, max(-1.0, y))
        x += min(max_step, max(-max_step, goal - x))
        out[k] = x
    return np.clip(out, -1.0, 1.0)


def sign_changes(x: np.ndarray) -> int:
    """How often the signal changes sign (exact zeros are skipped: 0.2, 0, -0.1 is one change)."""
    s = np.sign(np.asarray(x, dtype=float))
    s = s[s != 0]
    return int(np.count_nonzero(s[1:] != s[:-1]))


def signal_stats(x: np.ndarray, step_s: float = 4.0, compress: float = 1.0) -> dict[str, Any]:
    """Summary of a signal (as returned by ``afrr_signal`` with the same ``step_s`` and ``compress``).

    ``sign_changes_per_hour`` is per hour of output (wall clock); ``..._per_model_hour`` divides that by
    ``compress``. ``max_ramp`` is the largest ``|x[k+1] - x[k]|`` (share of the award per step) and
    ``max_ramp_limit`` the model's bound ``step_s * compress / FAT_S``; ``full_activation_s`` is how long
    the steepest allowed ramp takes from 0 to the full award in output seconds.
    """
    x = np.asarray(x, dtype=float)
    duration_s = len(x) * step_s
    hours = duration_s / 3600.0
    changes = sign_changes(x)
    diffs = np.abs(np.diff(x)) if len(x) > 1 else np.zeros(0)
    limit = min(2.0, step_s * compress / FAT_S)
    return {
        "steps": len(x),
        "step_s": step_s,
        "compress": compress,
        "duration_s": duration_s,
        "sign_changes": changes,
        "sign_changes_per_hour": changes / hours if hours else 0.0,
        "sign_changes_per_model_hour": changes / hours / compress if hours else 0.0,
        "max_ramp": float(diffs.max()) if len(diffs) else 0.0,
        "max_ramp_limit": limit,
        "full_activation_s": step_s / limit,
        "mean_abs": float(np.abs(x).mean()) if len(x) else 0.0,
        "max_abs": float(np.abs(x).max()) if len(x) else 0.0,
        "mean": float(x.mean()) if len(x) else 0.0,
        "std": float(x.std()) if len(x) else 0.0,
        "share_saturated": float(np.mean(np.abs(x) >= 0.99)) if len(x) else 0.0,
    }
