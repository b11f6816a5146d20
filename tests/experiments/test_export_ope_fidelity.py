"""The pure functions of the export OPE fidelity study (experiments/bench/export_ope_fidelity.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from experiments.bench.export_ope_fidelity import (
    centre_within,
    oracle_lift,
    repeat_noise,
    spearman,
    temperature_for_ess,
)
from experiments.export.logged_ope import LoggedImpressions, candidate_propensities


def test_centre_within_subtracts_each_groups_mean() -> None:
    centred = centre_within(np.array([1.0, 3.0, 10.0, 20.0, 30.0]), np.array(["a", "a", "b", "b", "b"]))
    np.testing.assert_allclose(centred, [-1.0, 1.0, -10.0, 0.0, 10.0])


def test_repeat_noise_recovers_the_signal_share_of_a_known_mixture() -> None:
    """Signal sd 3 (plus a product shift sd 10) and per-draw noise sd 6: with n draws the noise variance is 36 / n,
    so the reliability and the repeat correlation are 9 / (9 + 36 / n) within product."""
    rng = np.random.default_rng(0)
    products = np.repeat(np.arange(400), 8)
    signal = rng.normal(0.0, 3.0, products.size) + rng.normal(0.0, 10.0, 400)[products]
    per_draw = signal[:, None] + rng.normal(0.0, 6.0, (products.size, 16))
    for n in (1, 2, 4):
        stats = repeat_noise(per_draw, n, products)
        expected = 9.0 / (9.0 + 36.0 / n)
        assert stats["mc_sd_median"] == pytest.approx(6.0 / np.sqrt(n), rel=0.05)
        assert stats["reliability_within"] == pytest.approx(expected, abs=0.05)
        assert stats["repeat_corr_within"] == pytest.approx(expected, abs=0.05)
        # The product shift is signal to the raw spread but cancels within product.
        assert stats["reliability"] > stats["reliability_within"]
        assert stats["within_sd"] == pytest.approx(np.sqrt((9.0 + 36.0 / n) * 7 / 8), rel=0.05)


def test_repeat_noise_refuses_too_few_draws() -> None:
    with pytest.raises(ValueError, match="D >= 2 \\* draws = 4"):
        repeat_noise(np.zeros((5, 3)), 2, np.zeros(5))
    with pytest.raises(ValueError, match="groups must have 5 labels"):
        repeat_noise(np.zeros((5, 4)), 2, np.zeros(4))


def logged(cells: int = 30, per_cell: int = 6) -> tuple[LoggedImpressions, np.ndarray]:
    rng = np.random.default_rng(1)
    n = cells * per_cell
    impressions = LoggedImpressions(
        image_row=np.arange(n),
        product=np.repeat([f"p{c}" for c in range(cells)], per_cell).astype(object),
        segment=np.array(["warm"] * n, dtype=object),
        slot=np.zeros(n, dtype=np.int64),
        propensity=np.full(n, 0.1),
    )
    return impressions, rng.normal(0.0, 20.0, n)


def test_temperature_for_ess_hits_the_target_and_flattens_with_the_target() -> None:
    impressions, log_ratio = logged()
    ones = {"warm": np.ones(log_ratio.size)}
    taus = []
    for target in (0.2, 0.5, 0.8):
        tau = temperature_for_ess(impressions, log_ratio, target)
        _, diagnostics = candidate_propensities(impressions, log_ratio, ones, np.ones(1), temperature=tau)
        assert diagnostics["weight_ess_fraction"] == pytest.approx(target, abs=1e-6)
        taus.append(tau)
    assert taus[0] < taus[1] < taus[2]
    with pytest.raises(ValueError, match="target ESS fraction must be in"):
        temperature_for_ess(impressions, log_ratio, 1.0)
    with pytest.raises(ValueError, match="not reached"):
        temperature_for_ess(impressions, log_ratio, 0.5, low=1e4)


def test_oracle_lift_by_hand() -> None:
    # Request r1: impressions with w 2 and 0 (p .3, .1); request r2: w 1 (p .5). Σ (w − 1) p = .3 − .1 + 0 = .2.
    value = oracle_lift(np.array([2.0, 0.0, 1.0]), np.array([0.3, 0.1, 0.5]), np.array(["r1", "r1", "r2"]))
    assert value == pytest.approx(0.1)
    with pytest.raises(ValueError, match="must be \\[n\\] alike"):
        oracle_lift(np.ones(2), np.ones(3), np.array(["a", "b", "c"]))


def test_spearman_matches_scipy_with_ties_and_nan_when_constant() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 4, 12).astype(float)
    y = rng.normal(size=12)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones(3), np.arange(3.0)))
