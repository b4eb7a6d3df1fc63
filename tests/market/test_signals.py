"""Activation signals: never beyond the award, ramp-limited by the product's full activation time, seeded."""

from __future__ import annotations

import itertools
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.signals import (
    AFRR_FAT_S,
    MFRR_FAT_S,
    MFRR_LEVELS,
    afrr_setpoints,
    fcr_power,
    frequency_series,
    mfrr_schedule,
)

awards = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=500.0))
durations = st.integers(min_value=0, max_value=3600)
step_sizes = st.sampled_from([1, 2, 4, 10, 30])
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@settings(deadline=None, max_examples=80)
@given(up=awards, down=awards, duration_s=durations, step_s=step_sizes, seed=seeds)
def test_afrr_bounded_ramp_limited_and_deterministic(
    up: float, down: float, duration_s: int, step_s: int, seed: int
) -> None:
    x = afrr_setpoints(up, down, duration_s, step_s, seed=seed)
    assert len(x) == duration_s // step_s
    assert all(-down <= v <= up for v in x)
    # Full activation in 300 s: each step moves at most award * step / 300 in the direction it is in.
    for before, after in zip([0.0, *x], x, strict=False):
        if before >= 0 and after >= 0:
            limit = up * step_s / AFRR_FAT_S
        elif before <= 0 and after <= 0:
            limit = down * step_s / AFRR_FAT_S
        else:
            limit = max(up, down) * step_s / AFRR_FAT_S
        assert abs(after - before) <= limit * (1 + 1e-9) + 1e-12
    assert afrr_setpoints(up, down, duration_s, step_s, seed=seed) == x
    assert afrr_setpoints(up, down, duration_s // 2, step_s, seed=seed) == x[: (duration_s // 2) // step_s]


def test_afrr_looks_like_a_request_series() -> None:
    """Over an hour it uses a good part of the award, in both directions, without chattering."""
    hours = [afrr_setpoints(100.0, 60.0, 3600, 4, seed=seed) for seed in range(20)]
    assert all(len(h) == 900 for h in hours)
    assert any(max(h) > 50.0 for h in hours) and any(min(h) < -30.0 for h in hours)
    mean_abs = statistics.mean(statistics.mean(abs(v) for v in h) for h in hours)
    assert 10.0 <= mean_abs <= 70.0
    changes = [sum(1 for a, b in itertools.pairwise(h) if a * b < 0) for h in hours]
    assert sum(c > 0 for c in changes) >= 10  # most hours change sign
    assert statistics.mean(changes) <= 12  # a few times per hour, not every step
    assert afrr_setpoints(100.0, 60.0, 3600, seed=1) != afrr_setpoints(100.0, 60.0, 3600, seed=2)


def test_afrr_one_sided_award_requests_only_that_side() -> None:
    x = afrr_setpoints(80.0, 0.0, 3600, seed=3)
    assert all(0.0 <= v <= 80.0 for v in x)
    with pytest.raises(ValueError):
        afrr_setpoints(-1.0, 10.0, 60, seed=0)
    with pytest.raises(ValueError):
        afrr_setpoints(1.0, 10.0, 60, 0, seed=0)


def test_frequency_series_is_a_realistic_deviation_around_50_hz() -> None:
    day = frequency_series(86_400, 4, seed=7)
    assert len(day) == 21_600
    assert statistics.mean(day) == pytest.approx(50.0, abs=0.01)
    assert 0.020 <= statistics.pstdev(day) <= 0.040
    assert max(abs(f - 50.0) for f in day) < 0.2  # FCR rarely saturates
    assert frequency_series(86_400, 4, seed=7) == day
    assert frequency_series(3600, 4, seed=7) == day[:900]
    assert frequency_series(3600, 4, seed=8) != day[:900]


def test_fcr_power_sign_deadband_and_saturation() -> None:
    award = 100.0
    assert fcr_power(award, [49.9]) == pytest.approx([50.0])  # under-frequency: up, half the award at -100 mHz
    assert fcr_power(award, [50.1]) == pytest.approx([-50.0])  # over-frequency: down (charge)
    assert fcr_power(award, [49.8, 49.5, 50.2, 51.0]) == pytest.approx([100.0, 100.0, -100.0, -100.0])
    assert fcr_power(award, [50.0, 50.009, 49.991, 50.01]) == [0.0, 0.0, 0.0, 0.0]  # +-10 mHz deadband
    assert fcr_power(award, [50.011])[0] == pytest.approx(-5.5)  # outside: the whole deviation counts
    with pytest.raises(ValueError):
        fcr_power(-1.0, [50.0])


@settings(deadline=None, max_examples=80)
@given(award=awards, freqs=st.lists(st.floats(min_value=49.0, max_value=51.0), max_size=50))
def test_fcr_power_bounded_and_opposed_to_the_deviation(award: float, freqs: list[float]) -> None:
    power = fcr_power(award, freqs)
    assert len(power) == len(freqs)
    for f, p in zip(freqs, power, strict=True):
        assert -award <= p <= award
        assert p * (f - 50.0) <= 0.0
    ordered = fcr_power(award, sorted(freqs))
    assert all(a >= b for a, b in itertools.pairwise(ordered))  # higher frequency, less power


@settings(deadline=None, max_examples=80)
@given(
    award=st.one_of(awards, awards.map(lambda a: -a)),
    duration_s=st.integers(min_value=0, max_value=4 * 3600),
    step_s=step_sizes,
    seed=seeds,
)
def test_mfrr_schedule_bounded_ramped_and_back_to_zero(award: float, duration_s: int, step_s: int, seed: int) -> None:
    x = mfrr_schedule(award, duration_s, step_s, seed=seed)
    assert len(x) == duration_s // step_s
    assert all(abs(v) <= abs(award) and v * award >= 0 for v in x)  # the award's direction, never beyond it
    for before, after in itertools.pairwise(x):
        assert abs(after - before) <= abs(award) * step_s / MFRR_FAT_S * (1 + 1e-9) + 1e-12
    if x:
        assert x[0] == 0.0 and x[-1] == 0.0
    assert mfrr_schedule(award, duration_s, step_s, seed=seed) == x


def test_mfrr_schedule_reaches_and_holds_a_level_within_an_hour() -> None:
    for seed in range(10):
        x = mfrr_schedule(-80.0, 3600, 4, seed=seed)
        peak = min(x)
        assert -peak / 80.0 in MFRR_LEVELS
        assert sum(v == peak for v in x) * 4 >= 300  # held for minutes, not a spike
    assert mfrr_schedule(80.0, 3600, 4, seed=1) != mfrr_schedule(80.0, 3600, 4, seed=2)
