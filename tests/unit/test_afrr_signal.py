"""The modelled aFRR setpoint signal: bounded, rate-limited as the product's FAT, seeded, and it changes sign."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpp_demo.afrr_signal import FAT_S, afrr_signal, sign_changes, signal_stats

durations = st.floats(min_value=0.0, max_value=3 * 3600.0, allow_nan=False)
steps = st.sampled_from([1.0, 2.0, 3.5, 4.0, 10.0])
seeds = st.integers(min_value=0, max_value=2**32 - 1)
compressions = st.floats(min_value=0.1, max_value=50.0, allow_nan=False)


@settings(deadline=None, max_examples=60)
@given(duration_s=durations, step_s=steps, seed=seeds, compress=compressions)
def test_bounded_rate_limited_and_one_value_per_step(
    duration_s: float, step_s: float, seed: int, compress: float
) -> None:
    x = afrr_signal(duration_s, step_s=step_s, seed=seed, compress=compress)
    assert len(x) == math.floor(duration_s / step_s + 1e-9)
    assert np.all(np.isfinite(x)) and np.all(np.abs(x) <= 1.0)
    # FAT 5 min: at most step_s * compress / 300 of the award per step (from 0 at the start, too).
    limit = min(2.0, step_s * compress / FAT_S)
    assert np.all(np.abs(np.diff(np.concatenate([[0.0], x]))) <= limit + 1e-9)
    stats = signal_stats(x, step_s=step_s, compress=compress)
    assert stats["max_ramp"] <= stats["max_ramp_limit"] + 1e-9 and stats["max_ramp_limit"] == pytest.approx(limit)
    assert stats["steps"] == len(x) and 0.0 <= stats["mean_abs"] <= stats["max_abs"] <= 1.0


@settings(deadline=None, max_examples=30)
@given(seed=seeds, compress=compressions, cut=st.floats(min_value=0.0, max_value=1.0))
def test_deterministic_for_a_seed_and_a_longer_signal_extends_a_shorter_one(
    seed: int, compress: float, cut: float
) -> None:
    x = afrr_signal(3600.0, seed=seed, compress=compress)
    assert np.array_equal(x, afrr_signal(3600.0, seed=seed, compress=compress))
    head = afrr_signal(3600.0 * cut, seed=seed, compress=compress)
    assert np.array_equal(head, x[: len(head)])


def test_seeds_differ() -> None:
    assert not np.array_equal(afrr_signal(3600.0, seed=1), afrr_signal(3600.0, seed=2))


def test_most_hours_have_a_few_sign_changes_and_use_the_award() -> None:
    hours = [signal_stats(afrr_signal(3600.0, seed=seed)) for seed in range(100)]
    changes = np.array([h["sign_changes"] for h in hours])
    assert np.mean(changes > 0) >= 0.8  # most seeds change sign within an hour
    assert 1.0 <= changes.mean() <= 8.0  # "a few times per hour", not chatter
    assert 0.2 <= np.mean([h["mean_abs"] for h in hours]) <= 0.7
    day = signal_stats(afrr_signal(86400.0, seed=0))
    assert 1.0 <= day["sign_changes_per_hour"] <= 8.0
    assert day["max_abs"] == 1.0 and day["max_ramp"] == pytest.approx(4.0 / FAT_S)  # full award, full ramps


def test_compress_plays_the_model_faster_with_steeper_ramps() -> None:
    x = afrr_signal(3600.0, seed=5, compress=10.0)
    stats = signal_stats(x, compress=10.0)
    assert stats["max_ramp"] == pytest.approx(40.0 / FAT_S)
    assert stats["full_activation_s"] == pytest.approx(30.0)
    assert stats["sign_changes_per_model_hour"] == pytest.approx(stats["sign_changes_per_hour"] / 10.0)
    # Ten model hours in one: about ten times the sign changes of a real-time hour, over seeds.
    fast = np.mean([sign_changes(afrr_signal(3600.0, seed=s, compress=10.0)) for s in range(20)])
    slow = np.mean([sign_changes(afrr_signal(36000.0, seed=s)) for s in range(20)])
    assert fast == pytest.approx(slow, rel=0.35)


def test_sign_changes_skip_zeros_and_bad_arguments_are_refused() -> None:
    assert sign_changes(np.array([0.2, 0.0, -0.1, 0.0, -0.3, 0.4])) == 2
    assert len(afrr_signal(0.0)) == 0 and signal_stats(np.zeros(0))["sign_changes_per_hour"] == 0.0
    with pytest.raises(ValueError):
        afrr_signal(60.0, step_s=0.0)
    with pytest.raises(ValueError):
        afrr_signal(60.0, compress=0.0)
