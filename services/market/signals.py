"""What the simulated TSO asks of an award during delivery: seeded, deterministic signals per product.

All series hold one value per ``step_s`` (value ``k`` for ``[k * step_s, (k + 1) * step_s)``), there are
``duration_s // step_s`` of them, and power is in kW relative to the portfolio's baseline, ``> 0`` up
(discharge / less consumption), ``< 0`` down. The models give the shape of each product's request; they
are not fitted to recorded signals. Each uses its own ``random.Random(seed)`` and draws in a fixed order,
so the same arguments give the same series on every platform; for aFRR and the frequency a longer series
starts with a shorter one's values (same seed and step).

* aFRR -- ``afrr_setpoints``: the TSO's load-frequency controller passes on a share of the area control
  error (ACE). The ACE is modelled as an Ornstein-Uhlenbeck (mean-reverting) walk in units of the award
  (correlation time 10 min, stationary standard deviation 0.5), smoothed by the controller (2-min
  low-pass). The setpoint follows it at most as fast as the product's full activation time allows (FAT
  5 min: from 0 to the full award in 300 s), starting from 0, and is clipped to ``[-down, +up]``.
* FCR -- ``frequency_series`` and ``fcr_power``: proportional to the frequency deviation, full award at
  +-200 mHz, with a +-10 mHz insensitivity band.
* mFRR -- ``mfrr_schedule``: one scheduled activation: ramp to a level over the full activation time
  (12.5 min), hold, ramp back to 0 before the end.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

NOMINAL_HZ = 50.0
FCR_FULL_ACTIVATION_HZ = 0.2  # deviation at which FCR delivers the whole award
FCR_DEADBAND_HZ = 0.010  # no response within +-10 mHz (the insensitivity allowed in Continental Europe)
AFRR_FAT_S = 300.0  # aFRR full activation time
AFRR_ACE_TAU_S = 600.0  # correlation time of the modelled area control error
AFRR_ACE_SIGMA = 0.5  # its stationary standard deviation, in units of the award
AFRR_SMOOTH_S = 120.0  # low-pass of the TSO's controller output
FREQ_TAU_S = 60.0  # correlation time of the modelled frequency deviation
FREQ_SIGMA_HZ = 0.030  # its stationary standard deviation (Continental Europe: ~20-40 mHz)
MFRR_FAT_S = 750.0  # mFRR standard product: full activation time 12.5 min
MFRR_LEVELS = (0.4, 0.6, 0.8, 1.0)  # shares of the award a scheduled activation asks for


def _steps(duration_s: float, step_s: float) -> int:
    if step_s <= 0 or not math.isfinite(step_s):
        raise ValueError(f"step_s must be finite and > 0, got {step_s}")
    if duration_s < 0 or not math.isfinite(duration_s):
        raise ValueError(f"duration_s must be finite and >= 0, got {duration_s}")
    return math.floor(duration_s / step_s + 1e-9)


def afrr_setpoints(
    awarded_up_kw: float,
    awarded_down_kw: float,
    duration_s: int,
    step_s: int = 4,
    *,
    seed: int,
    full_activation_s: float = AFRR_FAT_S,
) -> list[float]:
    """An aFRR request series in kW (module docstring): within ``[-awarded_down_kw, +awarded_up_kw]``.

    The model runs in units of the award (``x`` in ``[-1, 1]``, moving at most ``step_s /
    full_activation_s`` per step) and maps ``x > 0`` to ``x * up`` and ``x < 0`` to ``x * down``: the
    kW ramp per step is at most ``award * step_s / full_activation_s`` of the direction it is in. An award
    in one direction only gives 0 while the ACE asks for the other.
    """
    if awarded_up_kw < 0 or awarded_down_kw < 0:
        raise ValueError("awarded_up_kw and awarded_down_kw are magnitudes: both must be >= 0")
    if full_activation_s <= 0:
        raise ValueError(f"full_activation_s must be > 0, got {full_activation_s}")
    n = _steps(duration_s, step_s)
    rng = random.Random(seed)
    a = math.exp(-step_s / AFRR_ACE_TAU_S)
    noise = AFRR_ACE_SIGMA * math.sqrt(1.0 - a * a)
    smooth = 1.0 - math.exp(-step_s / AFRR_SMOOTH_S)
    max_move = step_s / full_activation_s
    ace = rng.gauss(0.0, AFRR_ACE_SIGMA)  # from the stationary distribution
    controller = ace
    x = 0.0  # no activation before the first step
    out: list[float] = []
    for _ in range(n):
        ace = a * ace + noise * rng.gauss(0.0, 1.0)
        controller += (ace - controller) * smooth
        goal = min(1.0, max(-1.0, controller))
        x = min(1.0, max(-1.0, x + min(max_move, max(-max_move, goal - x))))
        out.append(x * awarded_up_kw if x > 0 else x * awarded_down_kw)
    return out


def frequency_series(duration_s: int, step_s: int, *, seed: int) -> list[float]:
    """A synthetic grid frequency in Hz around 50 Hz: an Ornstein-Uhlenbeck deviation.

    Correlation time ``FREQ_TAU_S`` (60 s), stationary standard deviation ``FREQ_SIGMA_HZ`` (30 mHz,
    Continental Europe's usual 20-40 mHz), advanced exactly over each step and started from the
    stationary distribution. Unclipped: a deviation beyond 200 mHz (where FCR saturates) is a ~6.7 sigma
    event. Deterministic hour-change ramps and real incidents are not modelled.
    """
    n = _steps(duration_s, step_s)
    rng = random.Random(seed)
    a = math.exp(-step_s / FREQ_TAU_S)
    noise = FREQ_SIGMA_HZ * math.sqrt(1.0 - a * a)
    dev = rng.gauss(0.0, FREQ_SIGMA_HZ)
    out: list[float] = []
    for _ in range(n):
        dev = a * dev + noise * rng.gauss(0.0, 1.0)
        out.append(NOMINAL_HZ + dev)
    return out


def fcr_power(awarded_kw: float, frequency_hz: Sequence[float]) -> list[float]:
    """FCR response in kW to each frequency: ``-awarded * clip((f - 50) / 0.2, -1, 1)``, 0 within +-10 mHz.

    Over-frequency (surplus in the grid) asks for down (< 0: charge), under-frequency for up. The
    deadband is a hard one: outside it the response is proportional to the whole deviation (a step of
    5% of the award at +-10 mHz), as a droop with an insensitivity band behaves.
    """
    if awarded_kw < 0:
        raise ValueError(f"awarded_kw is a magnitude (FCR is symmetric): must be >= 0, got {awarded_kw}")
    out: list[float] = []
    for f in frequency_hz:
        dev = f - NOMINAL_HZ
        if abs(dev) <= FCR_DEADBAND_HZ:
            out.append(0.0)
        else:
            out.append(-awarded_kw * min(1.0, max(-1.0, dev / FCR_FULL_ACTIVATION_HZ)))
    return out


def mfrr_schedule(
    awarded_kw: float, duration_s: int, step_s: int, *, seed: int, full_activation_s: float = MFRR_FAT_S
) -> list[float]:
    """One scheduled mFRR activation in kW: 0, a linear ramp over ``full_activation_s`` to a level, hold,
    a ramp back, 0.

    The level is one of ``MFRR_LEVELS`` of the award and takes ``awarded_kw``'s sign (pass a negative
    value for a down award). The activation starts in the first 20% of the duration and is back at 0
    within the last 20% (the last value is 0); when that window is shorter than two full activation times the ramps
    meet and the level is not reached (the ramp rate stays ``level / full_activation_s``, never faster).
    Values are sampled at the start of each step, so the first is 0 and ``|value| <= |awarded_kw|``.
    """
    if full_activation_s <= 0:
        raise ValueError(f"full_activation_s must be > 0, got {full_activation_s}")
    n = _steps(duration_s, step_s)
    rng = random.Random(seed)
    level_kw = awarded_kw * rng.choice(MFRR_LEVELS)
    last_s = max(0, n - 1) * step_s  # the last sample: the schedule is back at 0 by then
    on_s = last_s * rng.uniform(0.0, 0.2)
    off_s = last_s * (1.0 - rng.uniform(0.0, 0.2))
    out: list[float] = []
    for k in range(n):
        t = k * step_s
        share = min(1.0, (t - on_s) / full_activation_s, (off_s - t) / full_activation_s)
        out.append(level_kw * max(0.0, share))
    return out
