"""Calibration (temperature, isotonic), ECE and reliability bins, AUC and pairwise accuracies by hand."""

from __future__ import annotations

import numpy as np
import pytest

from reward.calibration import Calibrator, choose_calibrator, fit_calibrator, fit_temperature
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


def _head_clicks(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits of a head and clicks drawn from σ(logit / temperature): temperature 1 = already calibrated."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(-1.0, 1.5, n)
    clicked = rng.random(n) < 1.0 / (1.0 + np.exp(-logits / temperature))
    return logits, np.ones(n), clicked


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_that_helps_on_held_out_rows_is_kept(method: str) -> None:
    choice = choose_calibrator(method, *_head_clicks(2000, temperature=3.0))
    assert choice.kept and choice.calibrator.method == method
    assert choice.ece_calibrated < choice.ece_uncalibrated
    assert choice.reason.startswith(f"{method} kept: held-out ECE")
    assert choice.calibrator.note == choice.reason  # saved with the model, shown by the audit
    assert Calibrator.from_dict(choice.calibrator.to_dict()) == choice.calibrator


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_that_does_not_help_is_dropped_with_its_numbers(method: str) -> None:
    """An already calibrated head: the cross-fitted calibrator only adds noise (ECE rises), so it is dropped."""
    choice = choose_calibrator(method, *_head_clicks(2000, temperature=1.0))
    assert not choice.kept and choice.calibrator.method == "none"
    assert choice.ece_calibrated >= choice.ece_uncalibrated
    assert f"{method} dropped" in choice.reason and f"{choice.ece_uncalibrated:.4f}" in choice.reason
    assert choice.to_dict()["method"] == "none" and choice.to_dict()["requested"] == method


def test_calibration_choice_edge_cases() -> None:
    logits, theta, _ = _head_clicks(50, 1.0)
    unassessable = choose_calibrator("temperature", logits, theta, np.zeros(50, dtype=bool))
    assert not unassessable.kept and "could not be assessed" in unassessable.reason
    assert choose_calibrator("none", logits, theta, np.zeros(50, dtype=bool)).calibrator.method == "none"
    with pytest.raises(ValueError, match="folds must be >= 2, got 1"):
        choose_calibrator("temperature", logits, theta, np.zeros(50, dtype=bool), folds=1)
