"""Calibration (temperature, isotonic), ECE and reliability bins, AUC and pairwise accuracies by hand."""

from __future__ import annotations

import numpy as np
import pytest

from reward.calibration import Calibrator, fit_calibrator, fit_temperature
from reward.metrics import (
    binary_auc,
    expected_calibration_error,
    expected_pairwise_accuracy,
    pairwise_accuracy,
    reliability_bins,
)
from reward.vocabulary import OOV, PAD, ContextVocabulary, Vocabulary, prompt_words


def _clicks(seed: int = 0, n: int = 40_000):
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(-1.0, 1.2, n)
    theta = rng.choice([1.0, 0.6, 0.3], n)
    clicked = rng.uniform(size=n) < theta / (1 + np.exp(-true_logits))
    return true_logits, theta, clicked


def test_temperature_scaling_undoes_an_overconfident_logit():
    true_logits, theta, clicked = _clicks()
    # A model whose logits are twice the truth's: the fitted temperature is about 2.
    assert fit_temperature(2.0 * true_logits, theta, clicked) == pytest.approx(2.0, rel=0.05)
    calibrator = fit_calibrator("temperature", 2.0 * true_logits, theta, clicked)
    assert Calibrator.from_dict(calibrator.to_dict()) == calibrator
    assert calibrator.probability(np.array([0.0]), 0.5)[0] == pytest.approx(0.25)


def test_isotonic_calibration_is_monotone_and_reduces_ece():
    true_logits, theta, clicked = _clicks(1)
    distorted = 3.0 * true_logits + 1.0
    calibrator = fit_calibrator("isotonic", distorted, theta, clicked)
    grid = np.linspace(-8, 8, 200)
    values = calibrator.probability(grid, 1.0)
    assert np.all(np.diff(values) >= 0) and values.min() >= 0 and values.max() <= 1
    raw = theta / (1 + np.exp(-distorted))
    calibrated = calibrator.probability(distorted, theta)
    assert expected_calibration_error(calibrated, clicked) < 0.2 * expected_calibration_error(raw, clicked)
    with pytest.raises(ValueError, match="with and without clicks"):
        fit_calibrator("isotonic", np.zeros(3), np.ones(3), np.zeros(3, dtype=bool))


def test_ece_and_reliability_by_hand():
    p = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 1, 1, 1], dtype=bool)
    table = reliability_bins(p, y, bins=2)
    assert table["count"].tolist() == [2, 2]
    assert table["observed"].tolist() == [0.5, 1.0]
    # ECE = ½ |0.1 − 0.5| + ½ |0.9 − 1.0| = 0.25.
    assert expected_calibration_error(p, y, bins=2) == pytest.approx(0.25)


def test_auc_and_pairwise_accuracies_by_hand():
    assert binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], dtype=bool)) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both positive and negative"):
        binary_auc(np.array([0.1, 0.2]), np.array([1, 1], dtype=bool))
    gap = np.array([1.0, -2.0, 0.5])
    assert pairwise_accuracy(gap, np.array([True, True, True])) == pytest.approx(2 / 3)
    p_a, p_b = np.array([0.6, 0.3, 0.45]), np.array([0.3, 0.6, 0.45])
    # Picks: a (0.6 / 0.9), b (0.6 / 0.9), a (0.5).
    assert expected_pairwise_accuracy(gap, p_a, p_b) == pytest.approx((2 / 3 + 2 / 3 + 0.5) / 3)


def test_vocabulary_maps_unknown_values_to_oov_and_counts_them():
    assert prompt_words("Navy marble tabletop, golden hour light") == [
        "navy", "marble", "tabletop", "golden", "hour", "light"
    ]  # fmt: skip
    vocabulary = ContextVocabulary(
        segments=Vocabulary.build(["warm", "cool", "warm"]),
        words=Vocabulary.build(["navy", "marble", "navy"], min_count=2),
        kinds=Vocabulary.build(["can", None]),
    )
    batch, oov = vocabulary.encode(["warm", "martian"], ["navy marble", None], ["can", "boat"])
    assert batch.segment.tolist() == [vocabulary.segments.tokens.index("warm") + 2, OOV]
    assert batch.words.tolist() == [[2, OOV], [PAD, PAD]]  # marble seen once < min_count
    assert oov == {"segment": 1, "word": 1, "kind": 1}
    assert ContextVocabulary.from_dict(vocabulary.to_dict()) == vocabulary
