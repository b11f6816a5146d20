"""The panel: Davidson probabilities by hand, tie calibration, pair design."""

from __future__ import annotations

import numpy as np
import pytest

from offline_data.simulator.annotators import (
    calibrate_tie_strength,
    davidson_probabilities,
    sample_choices,
    sample_pairs,
    sample_panel,
)


def test_without_ties_davidson_is_bradley_terry() -> None:
    p_a, p_b, p_tie = davidson_probabilities(
        np.array([1.0, 0.0]), np.array([0.0, 0.0]), np.array([0.5, 1.0]), np.zeros(2), 0.0
    )
    np.testing.assert_allclose(p_a, [1 / (1 + np.exp(-2.0)), 0.5])
    np.testing.assert_allclose(p_b, 1 - p_a)
    assert np.all(p_tie == 0)


def test_davidson_by_hand_with_ties_and_side_bias() -> None:
    # d = (g_a - g_b) / T + beta = (0.3 - 0.1) / 0.5 + 0.2 = 0.6; x = e^0.3
    p_a, p_b, p_tie = davidson_probabilities(np.array([0.3]), np.array([0.1]), np.array([0.5]), np.array([0.2]), 0.8)
    x = np.exp(0.3)
    total = x + 1 / x + 0.8
    np.testing.assert_allclose([p_a[0], p_b[0], p_tie[0]], [x / total, 1 / x / total, 0.8 / total])
    # Equal images, no bias: a and b are equally likely and pi_a = pi_b, so P(tie) = nu / (2 + nu).
    p_a, p_b, p_tie = davidson_probabilities(np.zeros(1), np.zeros(1), np.ones(1), np.zeros(1), 1.0)
    np.testing.assert_allclose([p_a[0], p_b[0], p_tie[0]], [1 / 3, 1 / 3, 1 / 3])


def test_extreme_differences_stay_finite() -> None:
    p_a, p_b, p_tie = davidson_probabilities(np.array([1e4]), np.array([-1e4]), np.array([0.01]), np.zeros(1), 0.5)
    assert np.isfinite([p_a, p_b, p_tie]).all() and p_a[0] == pytest.approx(1.0)


def test_tie_strength_calibration_hits_the_target() -> None:
    d = np.random.default_rng(0).normal(0, 1.5, 5000)
    for target in (0.02, 0.1, 0.4):
        nu = calibrate_tie_strength(d, target)
        _, _, p_tie = davidson_probabilities(d, np.zeros_like(d), np.ones_like(d), np.zeros_like(d), nu)
        assert p_tie.mean() == pytest.approx(target, abs=1e-9)
    assert calibrate_tie_strength(d, 0.0) == 0.0


def test_pairs_compare_distinct_images_of_the_right_products() -> None:
    design = sample_pairs(20000, 10, 4, 5, np.random.default_rng(1), cross_product_fraction=0.2)
    assert np.all(design.image_a != design.image_b)
    same = design.image_a // 4 == design.image_b // 4
    assert np.array_equal(same, ~design.cross_product)
    assert design.cross_product.mean() == pytest.approx(0.2, abs=4 * np.sqrt(0.16 / 20000))
    assert set(np.unique(design.annotator)) == set(range(5))
    assert design.image_a.max() < 40 and design.image_b.max() < 40


def test_panel_parameters_and_choices() -> None:
    panel = sample_panel(
        200, np.random.default_rng(0), temperature=0.7, temperature_spread=2.0, side_bias_mean=0.1, side_bias_sd=0.1
    )
    assert len(panel.annotator_ids) == 200 == len(set(panel.annotator_ids))
    assert panel.temperatures.min() >= 0.35 - 1e-12 and panel.temperatures.max() <= 1.4 + 1e-12
    assert panel.side_biases.mean() == pytest.approx(0.1, abs=0.03)
    p_a, p_b = np.full(30000, 0.5), np.full(30000, 0.3)
    choices = sample_choices(p_a, p_b, np.random.default_rng(4))
    for label, p in (("a", 0.5), ("b", 0.3), ("tie", 0.2)):
        assert np.mean(choices == label) == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / 30000))
