"""Evaluation metrics of the heads: click AUC, calibration error and reliability bins, pairwise accuracy.

Pure numpy functions on arrays. Pairwise accuracy comes in two forms: *realised* (agreement with the drawn
choices of non-tie judgements) and *expected* (given each judgement's true probabilities from a world's hidden
truth: mean of P(the model's pick) / (P(a) + P(b))), which is what the Bayes ceiling (``reward.truth.Ceilings``)
is an expectation of, and has no sampling noise from the choices.
"""

from __future__ import annotations

import numpy as np


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` [n] for bool ``labels`` [n] (ties in scores count one half).

    Raises:
        ValueError: shapes differ, or the labels are all equal (AUC undefined).
    """
    from sklearn.metrics import roc_auc_score  # heavy: scikit-learn (~0.5 s); scoring-only importers never need it

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be [n] of one shape, got {scores.shape}, {labels.shape}")
    if labels.all() or not labels.any():
        raise ValueError("AUC needs both positive and negative labels")
    return float(roc_auc_score(labels, scores))


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width bins of predicted probability with their mean prediction, observed rate and count.

    Returns:
        {"edges": [bins + 1], "predicted": [bins], "observed": [bins], "count": [bins] int64}; empty bins hold NaN.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"probabilities and labels must be [n] of one shape, got {p.shape}, {y.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(which, weights=p, minlength=bins) / count
        observed = np.bincount(which, weights=y, minlength=bins) / count
    return {"edges": edges, "predicted": predicted, "observed": observed, "count": count.astype(np.int64)}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE = Σ_bins (n_b / n) |mean prediction_b − observed rate_b| (Naeini et al. 2015), equal-width bins."""
    table = reliability_bins(probabilities, labels, bins)
    filled = table["count"] > 0
    weights = table["count"][filled] / table["count"].sum()
    return float(np.sum(weights * np.abs(table["predicted"][filled] - table["observed"][filled])))


def pairwise_accuracy(score_gap: np.ndarray, choice_is_a: np.ndarray) -> float:
    """Share of decisive judgements where the model's pick (a when score_a − score_b > 0, ties of the score go
    to b) matches the choice. Both [n] over non-tie judgements."""
    gap, is_a = np.asarray(score_gap, dtype=np.float64), np.asarray(choice_is_a, dtype=bool)
    if gap.shape != is_a.shape or gap.size == 0:
        raise ValueError(
            f"score_gap and choice_is_a must be non-empty [n] of one shape, got {gap.shape}, {is_a.shape}"
        )
    return float(np.mean((gap > 0) == is_a))


def expected_pairwise_accuracy(score_gap: np.ndarray, p_a: np.ndarray, p_b: np.ndarray) -> float:
    """E[accuracy] on decisive judgements given their true probabilities: mean of P(pick) / (P(a) + P(b)).

    Args:
        score_gap: [n] score_a − score_b (pick a when > 0).
        p_a, p_b: [n] true P(a), P(b) of the judgements (decisive ones: the tie mass is conditioned away).
    """
    gap = np.asarray(score_gap, dtype=np.float64)
    p_a, p_b = np.asarray(p_a, dtype=np.float64), np.asarray(p_b, dtype=np.float64)
    if not gap.shape == p_a.shape == p_b.shape or gap.size == 0:
        raise ValueError(f"need non-empty [n] arrays of one shape, got {gap.shape}, {p_a.shape}, {p_b.shape}")
    return float(np.mean(np.where(gap > 0, p_a, p_b) / (p_a + p_b)))
