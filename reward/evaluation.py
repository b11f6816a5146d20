"""Evaluating a trained reward on held-out logs, and against the simulator's hidden truth when given.

From the logs alone (``data_dir``, a folder of validated tables such as the test split):

- clicks: AUC of the predicted P(click | slot), log-loss, ECE and reliability bins of the calibrated
  prediction, and per shopper segment the share of (clicked, not clicked) impression pairs of one request
  that the debiased click score orders correctly;
- preferences: realised pairwise accuracy on non-tie judgements (with the learned annotator model, and from
  utilities alone), overall and by product kind and prompt family of image a;
- the estimated examination probability per slot (relative to slot 1).

With ``truth`` (a :class:`reward.truth.WorldTruth`, e.g. the studio world's over a ``backdrop simulate`` output;
EVALUATION ONLY, never read by training), also:

- the Bayes ceilings of the same judgements and impressions (:meth:`~reward.truth.WorldTruth.ceilings`), the
  expected pairwise accuracy given the true choice probabilities and its ratio to the (expected) Bayes ceiling,
  the realised accuracy's ratio to the Bayes predictor's realised accuracy on the same choices, and the click
  AUC's ratio to the AUC of the true click probabilities;
- examination estimated vs true, with relative errors;
- per segment: accuracy of the click score at ordering the judged pairs by that segment's gold, and the
  Spearman correlation of head scores with gold over the images.

Slices by prompt family use the caller's ``prompt_family`` (the studio world's groups by material); without one
every prompted image is in one family, "all".
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from reward.data import RewardData, load_reward_data
from reward.ensemble import score_rows
from reward.losses import CHOICE_A, CHOICE_TIE
from reward.metrics import (
    binary_auc,
    expected_calibration_error,
    expected_pairwise_accuracy,
    pairwise_accuracy,
    reliability_bins,
)
from reward.scorer import RewardScorer
from reward.train import IndexedData, encode_frozen, index_data
from reward.truth import WorldTruth

logger = logging.getLogger(__name__)


PromptFamily = Callable[[str | None], str]
"""A prompt's family for the by-family slices (``None`` or "" for an image without a prompt)."""


def single_family(prompt: str | None) -> str:
    """The default :data:`PromptFamily`: "none" without a prompt, "all" otherwise."""
    return "all" if prompt else "none"


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    return float(spearmanr(x, y).statistic) if len(x) > 2 else float("nan")


def index_for(scorer: RewardScorer, data: RewardData) -> IndexedData:
    """``data`` indexed with the scorer's vocabulary and annotators (frozen features computed)."""
    ensemble = scorer.ensemble
    first = ensemble.members[0]
    features = None
    if ensemble.shared_encoder is not None:
        features = encode_frozen(ensemble.shared_encoder, data)
    return index_data(data, ensemble.vocabulary, first.preference.annotators, features)


def evaluate(
    scorer: RewardScorer,
    data_dir: str | Path,
    *,
    truth: WorldTruth | None = None,
    prompt_family: PromptFamily = single_family,
    bins: int | None = None,
) -> tuple[dict, dict]:
    """Metrics of ``scorer`` on the validated logs in ``data_dir`` (module docstring).

    Args:
        scorer: the trained reward model.
        data_dir: a folder of validated logs.
        truth: the world's hidden truth (EVALUATION ONLY), or None for the logs-only metrics.
        prompt_family: groups prompts for the by-family slices.
        bins: reliability bins (default: the model's calibration bins).

    Returns:
        ``(metrics, plot_data)``: JSON-ready metrics, and the arrays the plots draw.
    """
    bins = bins or scorer.config.calibration.bins
    data = load_reward_data(data_dir, load_masks=scorer.ensemble.needs_mask)
    indexed = index_for(scorer, data)
    ensemble = scorer.ensemble
    imp, pairs = data.impressions, data.pairs
    metrics: dict = {"data": str(data_dir), "impressions": len(imp), "pairs": len(pairs), "members": scorer.members}
    metrics["out_of_vocabulary"] = indexed.oov
    plots: dict = {}
    theta = torch.stack([m.click.examination() for m in ensemble.members]).detach().cpu().numpy()  # [K, S]
    metrics["examination"] = theta.mean(axis=0).tolist()
    plots["examination"] = theta.mean(axis=0)

    scores = {}
    if len(imp):
        scores = score_rows(ensemble, indexed, imp.image, indexed.impression_segment)
        logits = scores["click"].double().numpy()  # [K, n]
        position = imp.position.numpy() - 1
        if position.max() >= theta.shape[1]:
            raise ValueError(f"impressions use slot {position.max() + 1}, the model knows {theta.shape[1]}")
        raw = np.mean(theta[:, position] / (1.0 + np.exp(-logits)), axis=0)
        calibrated = np.mean(scorer.calibrator.probability(logits, theta[:, position]), axis=0)
        clicked = imp.clicked.numpy()
        if 0 < clicked.sum() < clicked.size:
            metrics["click_auc"] = binary_auc(raw, clicked)
            p = np.clip(calibrated, 1e-7, 1 - 1e-7)
            metrics["click_log_loss"] = float(-np.mean(np.where(clicked, np.log(p), np.log1p(-p))))
            metrics["click_ece"] = expected_calibration_error(calibrated, clicked, bins)
            metrics["click_ece_uncalibrated"] = expected_calibration_error(raw, clicked, bins)
            plots["reliability"] = reliability_bins(calibrated, clicked, bins)
            plots["reliability_uncalibrated"] = reliability_bins(raw, clicked, bins)
        metrics["click_pairs_by_segment"] = _click_pairs_by_segment(data, logits.mean(axis=0))

    if len(pairs):
        _preference_metrics(scorer, indexed, metrics, plots, prompt_family)
    if truth is not None:
        _truth_metrics(scorer, indexed, truth, metrics, plots)
    return metrics, plots


def _click_pairs_by_segment(data: RewardData, score: np.ndarray) -> dict[str, dict]:
    """Per segment: share of (clicked, unclicked) impression pairs of one request that ``score`` [n] orders
    correctly (score ties count one half)."""
    imp = data.impressions
    segments = np.asarray(imp.segment, dtype=object)
    clicked = imp.clicked.numpy()
    _, request = np.unique(imp.request_ids, return_inverse=True)
    order = np.argsort(request, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(request[order]) != 0, True])
    correct, total = defaultdict(float), defaultdict(int)
    for start, end in itertools.pairwise(bounds):
        rows = order[start:end]
        yes, no = score[rows][clicked[rows]], score[rows][~clicked[rows]]
        if yes.size and no.size:
            diff = yes[:, None] - no[None, :]
            segment = segments[rows[0]]
            correct[segment] += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            total[segment] += diff.size
    return {seg: {"accuracy": correct[seg] / total[seg], "pairs": total[seg]} for seg in sorted(total)}


def _preference_metrics(
    scorer: RewardScorer, indexed: IndexedData, metrics: dict, plots: dict, prompt_family: PromptFamily
) -> None:
    data = indexed.data
    pairs = data.pairs
    ensemble = scorer.ensemble
    panel = int(ensemble.members[0].preference_segment)
    images = torch.arange(len(data.images))
    utility = score_rows(ensemble, indexed, images, torch.full((len(images),), panel))["preference"]  # [K, N]
    a, b = pairs.image_a, pairs.image_b
    log_odds = (
        torch.stack(
            [
                m.preference.log_odds(utility[k, a], utility[k, b], indexed.pair_annotator)
                for k, m in enumerate(ensemble.members)
            ]
        )
        .mean(dim=0)
        .detach()
        .numpy()
    )
    gap = (utility[:, a] - utility[:, b]).mean(dim=0).numpy()
    choice = pairs.choice.numpy()
    decisive = choice != CHOICE_TIE
    if not decisive.any():
        return
    is_a = choice[decisive] == CHOICE_A
    metrics["pairwise_accuracy"] = pairwise_accuracy(log_odds[decisive], is_a)
    metrics["pairwise_accuracy_utility_only"] = pairwise_accuracy(gap[decisive], is_a)
    metrics["pairs_decisive"] = int(decisive.sum())
    kinds = np.asarray([data.images.kinds[i] or "unknown" for i in a.tolist()], dtype=object)
    families = np.asarray([prompt_family(data.images.prompts[i]) for i in a.tolist()], dtype=object)
    for name, labels in (("by_product_kind", kinds), ("by_prompt_family", families)):
        table = {}
        for label in sorted(set(labels[decisive])):
            chosen = decisive & (labels == label)
            table[label] = {
                "accuracy": pairwise_accuracy(log_odds[chosen], choice[chosen] == CHOICE_A),
                "pairs": int(chosen.sum()),
            }
        metrics[f"pairwise_accuracy_{name}"] = table
    plots["log_odds"] = log_odds
    plots["utility"] = utility.mean(dim=0).numpy()


def _truth_metrics(scorer: RewardScorer, indexed: IndexedData, world: WorldTruth, metrics: dict, plots: dict) -> None:
    data = indexed.data
    true_theta = world.examination()
    estimated = np.asarray(metrics["examination"], dtype=np.float64)
    slots = min(len(true_theta), len(estimated))
    relative = np.abs(estimated[:slots] - true_theta[:slots]) / true_theta[:slots]
    truth: dict = {
        "examination_true": true_theta.tolist(),
        "examination_relative_error": relative.tolist(),
        "examination_max_relative_error": float(relative.max()),
    }
    plots["examination_true"] = true_theta
    ceilings = world.ceilings(
        pair_ids=list(data.pairs.pair_ids) if len(data.pairs) else None,
        event_ids=list(data.impressions.event_ids) if len(data.impressions) else None,
    )
    truth["ceilings"] = ceilings.as_dict()
    if len(data.pairs) and "log_odds" in plots:
        p_a, p_b = world.choice_probabilities(list(data.pairs.pair_ids))
        decisive = data.pairs.choice.numpy() != CHOICE_TIE
        p_a, p_b = p_a[decisive], p_b[decisive]
        expected = expected_pairwise_accuracy(plots["log_odds"][decisive], p_a, p_b)
        truth["pairwise_accuracy_expected"] = expected
        truth["pairwise_accuracy_ratio"] = expected / ceilings.pairwise_accuracy
        # Realised against realised: the Bayes predictor's own accuracy on the same drawn choices.
        truth["pairwise_accuracy_realised_ratio"] = metrics["pairwise_accuracy"] / ceilings.pairwise_accuracy_realised
    if "click_auc" in metrics:
        truth["click_auc_ratio"] = metrics["click_auc"] / ceilings.click_auc
    image_gold = world.image_gold(list(data.images.image_ids))
    by_segment = {}
    if len(data.pairs):
        a, b = data.pairs.image_a.numpy(), data.pairs.image_b.numpy()
    for segment in scorer.ensemble.vocabulary.segments.tokens:
        if segment not in image_gold:
            continue
        gold = image_gold[segment]
        segment_index = scorer.ensemble.vocabulary.segments.index([segment])[0]
        heads = score_rows(
            scorer.ensemble, indexed, torch.arange(len(data.images)), segment_index.repeat(len(data.images))
        )
        entry = {f"spearman_{h}": _spearman(v.mean(dim=0).numpy(), gold) for h, v in heads.items()}
        if len(data.pairs):
            click = heads["click"].mean(dim=0).numpy()
            differs = gold[a] != gold[b]
            entry["gold_pair_accuracy_click"] = float(
                np.mean((click[a] > click[b])[differs] == (gold[a] > gold[b])[differs])
            )
            utility = heads["preference"].mean(dim=0).numpy()
            entry["gold_pair_accuracy_preference"] = float(
                np.mean((utility[a] > utility[b])[differs] == (gold[a] > gold[b])[differs])
            )
        by_segment[segment] = entry
    truth["by_segment"] = by_segment
    plots["gold_pair_accuracy"] = {s: e.get("gold_pair_accuracy_click") for s, e in by_segment.items()}
    metrics["truth"] = truth
