"""Bayes ceilings: the best scores any reward model could reach on the simulator's logs.

Pairwise. The Bayes predictor knows each judgement's true probabilities (P(a), P(b), P(tie)) and predicts
the likelier of 'a' and 'b'. On the non-tie judgements, its expected accuracy is

    A* = mean over non-tie pairs of  max(P(a), P(b)) / (P(a) + P(b))

No model can do better in expectation: given the pair, annotator and side, the choice is a coin with those
odds. We also report the realised accuracy of that predictor on the drawn choices, and the *gold-oracle*
accuracy of predicting the image with the higher panel gold (what a perfect reward model that does not
model annotator side bias reaches in expectation).

Clicks. The best AUC is the AUC of the true click probability (θ_k · attractiveness) against the realised
clicks (Mann-Whitney, ties counted one half): clicks are Bernoulli draws, so even the truth ranks them
imperfectly.

Both are computable for any subset of ``pair_id`` / ``event_id`` (e.g. a test split) by
:func:`bayes_ceilings`, which reads a simulation directory's logs and its ``truth/`` sidecar.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from pathlib import Path

import numpy as np

from offline_data.simulator.truth import read_truth_table


def pairwise_bayes_accuracy(p_a: np.ndarray, p_b: np.ndarray) -> float:
    """Expected accuracy of predicting argmax(P(a), P(b)) on judgements that are not ties.

    Args:
        p_a, p_b: [n] float64 true probabilities of the *non-tie* judgements to average over.
    """
    p_a, p_b = np.asarray(p_a, dtype=np.float64), np.asarray(p_b, dtype=np.float64)
    if p_a.shape != p_b.shape or p_a.size == 0:
        raise ValueError(f"p_a and p_b must be non-empty and of one shape, got {p_a.shape}, {p_b.shape}")
    return float(np.mean(np.maximum(p_a, p_b) / (p_a + p_b)))


def click_auc(scores: np.ndarray, clicked: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the binary ``clicked`` labels (Mann-Whitney U / (n+ n−), ties count ½).

    Raises:
        ValueError: when all labels are equal (AUC undefined).
    """
    scores = np.asarray(scores, dtype=np.float64)
    clicked = np.asarray(clicked, dtype=bool)
    if scores.shape != clicked.shape or scores.ndim != 1:
        raise ValueError(f"scores and clicked must be [n] of one shape, got {scores.shape}, {clicked.shape}")
    positives = int(clicked.sum())
    negatives = clicked.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(f"AUC needs both clicked and unclicked rows, got {positives} and {negatives}")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average ranks over runs of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    average = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average, ends - starts)
    u_statistic = ranks[clicked].sum() - positives * (positives + 1) / 2.0
    return float(u_statistic / (positives * negatives))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ceilings:
    """Best achievable scores on a set of judgements and impressions (module docstring)."""

    pairwise_accuracy: float
    """Expected accuracy of the Bayes predictor on the non-tie judgements (the headline ceiling)."""
    pairwise_accuracy_realised: float
    """Its accuracy on the drawn choices of those judgements."""
    pairwise_gold_oracle: float
    """Expected accuracy of predicting the higher panel gold, on the same judgements."""
    pairs: int
    """Non-tie judgements averaged over."""
    click_auc: float
    """AUC of the true click probability against the realised clicks."""
    impressions: int
    """Impressions the AUC is over."""

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def _subset(table: dict[str, np.ndarray], key: str, ids: Collection[str] | None, what: str) -> np.ndarray:
    if ids is None:
        return np.ones(len(next(iter(table.values()))), dtype=bool)
    wanted = set(ids)
    selected = np.isin(table[key], list(wanted))
    missing = len(wanted) - int(selected.sum())
    if missing:
        raise ValueError(f"{missing} of the {len(wanted)} requested {what} are not in the simulation")
    return selected


def bayes_ceilings(
    sim_dir: str | Path, *, pair_ids: Collection[str] | None = None, event_ids: Collection[str] | None = None
) -> Ceilings:
    """Both ceilings for a simulation directory, over all rows or the given ``pair_ids`` / ``event_ids``.

    Raises:
        ValueError: an id is not in the simulation, or a subset has no non-tie pair / no click variety.
    """
    sim_dir = Path(sim_dir)
    # Read only the columns needed (a large world has millions of impressions; ids are the costly part).
    pair_columns = ["p_a", "p_b", "gold_a", "gold_b", "choice"] + (["pair_id"] if pair_ids is not None else [])
    pairs = read_truth_table(sim_dir, "preferences", pair_columns)
    selected = _subset(pairs, "pair_id", pair_ids, "pair_ids") & (pairs["choice"] != "tie")
    if not selected.any():
        raise ValueError(f"{sim_dir}: the selected pairs hold no non-tie judgement")
    p_a, p_b = pairs["p_a"][selected], pairs["p_b"][selected]
    bayes_says_a = p_a >= p_b
    realised = float(np.mean(bayes_says_a == (pairs["choice"][selected] == "a")))
    gold_says_a = pairs["gold_a"][selected] >= pairs["gold_b"][selected]
    oracle = float(np.mean(np.where(gold_says_a, p_a, p_b) / (p_a + p_b)))

    event_columns = ["click_probability", "clicked"] + (["event_id"] if event_ids is not None else [])
    impressions = read_truth_table(sim_dir, "impressions", event_columns)
    chosen = _subset(impressions, "event_id", event_ids, "event_ids")
    auc = click_auc(impressions["click_probability"][chosen], impressions["clicked"][chosen])
    return Ceilings(
        pairwise_accuracy=pairwise_bayes_accuracy(p_a, p_b),
        pairwise_accuracy_realised=realised,
        pairwise_gold_oracle=oracle,
        pairs=int(selected.sum()),
        click_auc=auc,
        impressions=int(chosen.sum()),
    )
