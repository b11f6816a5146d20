"""Users: attractiveness and click probability by hand, censoring probability vs Monte Carlo, calibration."""

from __future__ import annotations

import numpy as np
import pytest

from offline_data.simulator.users import (
    attractiveness,
    calibrate_session_scale,
    censoring_probability,
    click_probability,
    sample_dwell,
)

DWELL = {"log_mean": 9.6, "gold_slope": 0.35, "log_sd": 0.6}


def test_attractiveness_and_click_probability_by_hand() -> None:
    np.testing.assert_allclose(attractiveness(np.array([0.0, 1.0]), -1.0, 2.0), [1 / (1 + np.e), 1 / (1 + np.exp(-1))])
    probability = click_probability(np.array([1.0, 0.5]), np.array([0, 1, 1]), np.array([0.4, 0.4, 0.2]))
    np.testing.assert_allclose(probability, [0.4, 0.2, 0.1])
    with pytest.raises(ValueError, match="one shape"):
        click_probability(np.array([1.0]), np.array([0, 0]), np.array([0.1]))


def test_censoring_probability_matches_monte_carlo() -> None:
    gold = np.array([-1.0, 0.0, 1.5])
    exact = censoring_probability(gold, session_scale_ms=20_000.0, **DWELL)
    rng = np.random.default_rng(0)
    n = 200_000
    for g, p in zip(gold, exact):
        dwell = np.exp(9.6 + 0.35 * g + 0.6 * rng.standard_normal(n))
        left = 20_000.0 * rng.standard_exponential(n)
        assert abs(np.mean(dwell > left) - p) < 4 * np.sqrt(p * (1 - p) / n)
    assert np.all(censoring_probability(gold, session_scale_ms=None, **DWELL) == 0)


def test_calibration_hits_the_target_in_expectation() -> None:
    gold = np.random.default_rng(1).standard_normal(3000)
    for target in (0.05, 0.15, 0.6):
        scale = calibrate_session_scale(gold, target, **DWELL)
        assert censoring_probability(gold, session_scale_ms=scale, **DWELL).mean() == pytest.approx(target, abs=1e-8)
    assert calibrate_session_scale(gold, 0.0, **DWELL) is None
    # Heavier censoring needs shorter sessions.
    assert calibrate_session_scale(gold, 0.6, **DWELL) < calibrate_session_scale(gold, 0.1, **DWELL)


def test_sample_dwell_censors_at_the_session_end() -> None:
    gold = np.zeros(20000)
    observed, censored, true_dwell, left = sample_dwell(
        gold, np.random.default_rng(2), session_scale_ms=15_000.0, **DWELL
    )
    assert observed.dtype == np.int64 and np.all(observed >= 0)
    assert np.array_equal(censored, true_dwell > left)
    np.testing.assert_array_equal(observed, np.floor(np.minimum(true_dwell, left)).astype(np.int64))
    # Uncensored dwell is log-normal with the configured mean log at gold 0.
    assert np.log(true_dwell).mean() == pytest.approx(9.6, abs=4 * 0.6 / np.sqrt(20000))
    no_end = sample_dwell(gold, np.random.default_rng(2), session_scale_ms=None, **DWELL)
    assert not no_end[1].any() and np.array_equal(no_end[2], true_dwell)
