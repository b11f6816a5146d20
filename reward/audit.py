"""Auditing a trained reward model before anyone optimises against it.

:func:`audit_reward_model` measures, on a folder of validated logs (e.g. the test split), and optionally
against a world's hidden truth (``reward.truth.WorldTruth``, EVALUATION ONLY) and a policy run:

1. calibration per head: the click head's ECE and reliability diagram (``reward.evaluation``), the
   preference head's P(a preferred | not a tie) against the choices, the dwell head's censoring-aware
   D-calibration (``reward.audit_metrics``);
2. discrimination overall and by slice: click AUC by segment, slot, product kind and prompt family; pairwise
   accuracy by product kind and prompt family; dwell concordance (Harrell's C) overall and by segment; with
   truth, each against its Bayes ceiling (``WorldTruth.ceilings``) on the same rows;
3. ensemble disagreement: the member standard deviation of the reward relative to the reward's spread across
   images, and whether it points at errors (with truth: Spearman with |z(reward) − z(gold)|; from the logs:
   the AUC of the pair's disagreement at picking the pairs the model gets wrong);
4. probes (``reward.probes``): spurious-feature edits of the background or the whole image, product tampers;
5. with ``run_dir`` (a ``backdrop policy train`` run): proxy and gold gains and the KL per evaluation epoch
   from its metrics.jsonl, the over-optimisation curve;
6. flags (``reward.audit_flags``): every number past its threshold, with the value and the threshold.

The result is JSON-ready numbers (``AuditResult.metrics``) plus the arrays the plots draw; ``reward.report``
renders both as HTML.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from reward.audit_config import TAMPERS, AuditConfig
from reward.audit_flags import collect_flags
from reward.audit_metrics import concordance_index, d_calibration, dwell_cdf, has_spread, slice_table, spearman
from reward.audit_run import read_overoptimisation
from reward.data import RewardData, load_reward_data
from reward.ensemble import score_rows
from reward.errors import RewardDataError
from reward.evaluation import PromptFamily, evaluate, index_for, single_family
from reward.losses import CHOICE_A, CHOICE_TIE
from reward.metrics import binary_auc, expected_calibration_error, expected_pairwise_accuracy, reliability_bins
from reward.probes import ProbeOutcome, run_probes
from reward.scorer import RewardScorer, ScoringRequest
from reward.train import IndexedData
from reward.truth import AuditTruth, WorldTruth, gold_function

logger = logging.getLogger(__name__)

EULER_GAMMA = 0.5772156649015329


@dataclasses.dataclass(frozen=True, eq=False)
class AuditResult:
    """What an audit measured.

    Attributes:
        metrics: JSON-ready numbers, sections "evaluation", "calibration", "discrimination", "disagreement",
            "probes", "overoptimisation", "headline" (and "flags", the same list as :attr:`flags`).
        flags: each {"id", "section", "message", "value", "threshold"}; empty when nothing crossed a threshold.
        plots: arrays the plots draw (reliability tables, histograms, curves).
        examples: probe example images {"original" | "<edit>/<region>": [H, W, 3] uint8}.
    """

    metrics: dict
    flags: list[dict]
    plots: dict
    examples: dict[str, np.ndarray]


def audit_reward_model(
    scorer: RewardScorer,
    data_dir: str | Path,
    *,
    truth: WorldTruth | None = None,
    prompt_family: PromptFamily = single_family,
    run_dir: str | Path | None = None,
    config: AuditConfig | None = None,
) -> AuditResult:
    """Audit ``scorer`` on the validated logs in ``data_dir`` (module docstring).

    Args:
        scorer: the trained reward model.
        data_dir: a folder of validated logs (e.g. the test split).
        truth: the world's hidden truth (EVALUATION ONLY), or None to audit from the logs alone.
        prompt_family: groups prompts for the by-family slices.
        run_dir: a ``backdrop policy train`` run for the over-optimisation section, or None.
        config: probes, thresholds and bins.

    Raises:
        RewardDataError / MissingImageError: the logs cannot be scored by this model.
        InputUnreadableError: a truth table or the run's metrics.jsonl is missing or unreadable.
    """
    config = config or AuditConfig()
    data_dir = Path(data_dir)
    base, base_plots = evaluate(scorer, data_dir, truth=truth, prompt_family=prompt_family, bins=config.bins)
    data, masks_note = _load_data(data_dir, scorer)
    indexed = index_for(scorer, data)
    row_truth = truth.audit_truth(data) if truth is not None else None
    metrics: dict = {
        "model": {"members": scorer.members, "encoder": scorer.config.encoder.kind},
        "data": str(data_dir),
        "truth": str(truth.directory) if truth is not None else None,
        "run": str(run_dir) if run_dir is not None else None,
        "evaluation": base,
        "config": dataclasses.asdict(config),
        "thresholds": dataclasses.asdict(config.thresholds),
    }
    plots: dict = {"reliability_click": base_plots.get("reliability"), "examination": base_plots["examination"]}
    if "examination_true" in base_plots:
        plots["examination_true"] = base_plots["examination_true"]
    metrics["calibration"], metrics["discrimination"] = {}, {}
    if len(data.impressions):
        _click_sections(scorer, indexed, base, row_truth, metrics, prompt_family)
        _dwell_sections(scorer, indexed, config, metrics, plots)
    if "log_odds" in base_plots:
        _preference_sections(indexed, base_plots["log_odds"], row_truth, config, metrics, plots, prompt_family)
    metrics["disagreement"] = _pair_disagreement(scorer, indexed)
    examples: dict[str, np.ndarray] = {}
    sample = _image_sample(data, config)
    if sample is not None:
        image_scores = _score_images(scorer, data, sample)
        _image_disagreement(image_scores, data, sample, row_truth, metrics, plots)
        probes, examples = _probe_section(scorer, data, sample, row_truth, config, masks_note)
        metrics["probes"] = probes
    else:
        metrics["probes"] = {"skipped": "no generated images with impressions to probe"}
    if run_dir is not None:
        metrics["overoptimisation"] = read_overoptimisation(Path(run_dir))
        plots["overoptimisation"] = metrics["overoptimisation"]
    flags = collect_flags(metrics, config.thresholds)
    metrics["flags"] = flags
    metrics["headline"] = _headline(metrics)
    return AuditResult(metrics=_json_ready(metrics), flags=flags, plots=plots, examples=examples)


# ----------------------------------------------------------------------------------------------------------
# Inputs


def _load_data(data_dir: Path, scorer: RewardScorer) -> tuple[RewardData, str | None]:
    """The logs with product masks when possible (background probes and tampers need them)."""
    try:
        return load_reward_data(data_dir, load_masks=True), None
    except RewardDataError as exc:
        if scorer.ensemble.needs_mask:
            raise
        note = f"no product masks ({exc}); background-only probes and product tampers were skipped"
        logger.warning(note)
        return load_reward_data(data_dir, load_masks=False), note


# ----------------------------------------------------------------------------------------------------------
# Calibration and discrimination from the logged rows


def _click_sections(
    scorer: RewardScorer,
    indexed: IndexedData,
    base: dict,
    truth: AuditTruth | None,
    metrics: dict,
    prompt_family: PromptFamily,
) -> None:
    """Click calibration (from ``reward.evaluation``) and click AUC by slice, with each slice's ceiling."""
    data = indexed.data
    imp = data.impressions
    scores = score_rows(scorer.ensemble, indexed, imp.image, indexed.impression_segment)
    theta = torch.stack([m.click.examination() for m in scorer.ensemble.members]).detach().cpu().numpy()
    position = imp.position.numpy() - 1
    logits = scores["click"].double().numpy()
    predicted = np.mean(scorer.calibrator.probability(logits, theta[:, position]), axis=0)
    clicked = imp.clicked.numpy()
    if "click_ece" in base:
        metrics["calibration"]["click"] = {
            "ece": base["click_ece"],
            "ece_uncalibrated": base["click_ece_uncalibrated"],
            "calibrator": scorer.calibrator.method,
            "calibrator_note": scorer.calibrator.note,
        }
    images = imp.image.numpy()
    labels = {
        "segment": np.asarray(imp.segment, dtype=object),
        "slot": position + 1,
        "product_kind": np.asarray([data.images.kinds[i] or "unknown" for i in images], dtype=object),
        "prompt_family": np.asarray([prompt_family(data.images.prompts[i]) for i in images], dtype=object),
    }
    ceiling = None
    if truth is not None:
        ceiling = np.array([truth.click_probability.get(e, math.nan) for e in imp.event_ids.tolist()])
    section: dict = {"overall": base.get("click_auc"), "slices": {}}
    for name, label in labels.items():
        table = slice_table(label, lambda rows: binary_auc(predicted[rows], clicked[rows]))
        if ceiling is not None:
            for key, entry in table.items():
                rows = np.array([str(v) == key for v in label.tolist()])
                entry["ceiling"] = _safe(lambda r=rows: binary_auc(ceiling[r], clicked[r]))
                entry["ratio"] = entry["value"] / entry["ceiling"] if entry["ceiling"] else math.nan
        section["slices"][name] = table
    if truth is not None and "truth" in base:
        section["ceiling"] = base["truth"]["ceilings"]["click_auc"]
        section["ratio"] = base["truth"].get("click_auc_ratio")
    metrics["discrimination"]["click_auc"] = section


def _dwell_sections(
    scorer: RewardScorer, indexed: IndexedData, config: AuditConfig, metrics: dict, plots: dict
) -> None:
    """D-calibration of the ensemble's dwell distribution (the mixture of its members') and Harrell's C."""
    data = indexed.data
    rows = data.dwell_rows
    if rows.numel() == 0:
        return
    imp = data.impressions
    scores = score_rows(scorer.ensemble, indexed, imp.image[rows], indexed.impression_segment[rows])
    expected = scores["dwell"].double().numpy()  # [K, m] E[log dwell | click]
    spreads = np.array([float(m.dwell.log_spread.detach()) for m in scorer.ensemble.members])[:, None]
    distribution = scorer.config.dwell.distribution
    location = expected if distribution == "lognormal" else expected + EULER_GAMMA / np.exp(spreads)
    dwell = imp.dwell_ms[rows].numpy().astype(np.float64)
    censored = imp.censored[rows].numpy()
    cdf = np.mean(dwell_cdf(distribution, location, spreads, dwell[None, :]), axis=0)  # the ensemble's mixture
    calibration = d_calibration(cdf, censored, config.dwell_bins)
    metrics["calibration"]["dwell"] = {k: v for k, v in calibration.items() if k != "histogram"}
    plots["dwell_pit"] = np.asarray(calibration["histogram"])
    predicted = expected.mean(axis=0)
    chosen = np.arange(predicted.size)
    if predicted.size > config.max_concordance_rows:
        chosen = np.sort(np.random.default_rng(config.seed).choice(predicted.size, config.max_concordance_rows, False))
    c_index, comparable = concordance_index(predicted[chosen], dwell[chosen], censored[chosen])
    segments = np.asarray(imp.segment, dtype=object)[rows.numpy()][chosen]
    metrics["discrimination"]["dwell_concordance"] = {
        "overall": c_index,
        "comparable_pairs": comparable,
        "rows": int(chosen.size),
        "censored_share": float(censored.mean()),
        "slices": {
            "segment": slice_table(
                segments, lambda r: concordance_index(predicted[chosen][r], dwell[chosen][r], censored[chosen][r])[0]
            )
        },
    }


def _preference_sections(
    indexed: IndexedData,
    log_odds: np.ndarray,
    truth: AuditTruth | None,
    config: AuditConfig,
    metrics: dict,
    plots: dict,
    prompt_family: PromptFamily,
) -> None:
    data = indexed.data
    pairs = data.pairs
    decisive = pairs.choice.numpy() != CHOICE_TIE
    if not decisive.any():
        return
    is_a = pairs.choice.numpy()[decisive] == CHOICE_A
    gap = log_odds[decisive]
    probability = 1.0 / (1.0 + np.exp(-gap))
    metrics["calibration"]["preference"] = {
        "ece": expected_calibration_error(probability, is_a, config.bins),
        "pairs": int(decisive.sum()),
    }
    plots["reliability_preference"] = reliability_bins(probability, is_a, config.bins)
    a = pairs.image_a.numpy()[decisive]
    labels = {
        "product_kind": np.asarray([data.images.kinds[i] or "unknown" for i in a], dtype=object),
        "prompt_family": np.asarray([prompt_family(data.images.prompts[i]) for i in a], dtype=object),
    }
    probabilities = None
    if truth is not None:
        ids = pairs.pair_ids[decisive].tolist()
        probabilities = np.array([truth.pair_probability.get(p, (math.nan, math.nan)) for p in ids])
    section: dict = {"overall": float(np.mean((gap > 0) == is_a)), "slices": {}}
    for name, label in labels.items():
        table = slice_table(label, lambda r: float(np.mean((gap[r] > 0) == is_a[r])))
        if probabilities is not None:
            for key, entry in table.items():
                r = np.array([str(v) == key for v in label.tolist()])
                p_a, p_b = probabilities[r, 0], probabilities[r, 1]
                entry["expected"] = expected_pairwise_accuracy(gap[r], p_a, p_b)
                entry["ceiling"] = float(np.mean(np.maximum(p_a, p_b) / (p_a + p_b)))
                entry["ratio"] = entry["expected"] / entry["ceiling"]
        section["slices"][name] = table
    evaluation_truth = metrics["evaluation"].get("truth", {})
    if "pairwise_accuracy_ratio" in evaluation_truth:
        section["expected"] = evaluation_truth["pairwise_accuracy_expected"]
        section["ceiling"] = evaluation_truth["ceilings"]["pairwise_accuracy"]
        section["ratio"] = evaluation_truth["pairwise_accuracy_ratio"]
    metrics["discrimination"]["pairwise_accuracy"] = section


def _pair_disagreement(scorer: RewardScorer, indexed: IndexedData) -> dict:
    """From the logs: does the members' disagreement on a pair's utility gap point at the pairs the model gets
    wrong? AUC of std_k(u_a − u_b) at separating wrong from right decisive predictions (0.5 = no signal)."""
    data = indexed.data
    pairs = data.pairs
    decisive = pairs.choice.numpy() != CHOICE_TIE
    if not decisive.any() or scorer.members < 2:
        return {}
    panel = int(scorer.ensemble.members[0].preference_segment)
    images = torch.arange(len(data.images))
    utility = score_rows(scorer.ensemble, indexed, images, torch.full((len(images),), panel))["preference"].double()
    a, b = pairs.image_a[decisive], pairs.image_b[decisive]
    gaps = (utility[:, a] - utility[:, b]).numpy()  # [K, p]
    wrong = (gaps.mean(axis=0) > 0) != (pairs.choice.numpy()[decisive] == CHOICE_A)
    spread = gaps.std(axis=0)
    return {"pair_error_auc": _safe(lambda: binary_auc(spread, wrong)), "pairs": int(decisive.sum())}


# ----------------------------------------------------------------------------------------------------------
# Scored images: disagreement and probes


@dataclasses.dataclass(frozen=True, eq=False)
class _ImageSample:
    rows: np.ndarray
    """[N] rows of the data's image table."""
    segments: tuple[str, ...]
    """The segment each image is scored for (round-robin over the logs' shopper segments)."""


def _image_sample(data: RewardData, config: AuditConfig) -> _ImageSample | None:
    segments = sorted(set(data.impressions.segment))
    if not segments or len(data.images) < 3:
        return None
    count = min(config.images, len(data.images))
    rows = np.sort(np.random.default_rng(config.seed).choice(len(data.images), count, replace=False))
    return _ImageSample(rows=rows, segments=tuple(segments[i % len(segments)] for i in range(count)))


def _requests(data: RewardData, sample: _ImageSample) -> list[ScoringRequest]:
    return [
        ScoringRequest(segment=s, prompt=data.images.prompts[r] or "", product_kind=data.images.kinds[r])
        for r, s in zip(sample.rows.tolist(), sample.segments)
    ]


def _score_fn(scorer: RewardScorer, data: RewardData, sample: _ImageSample, field: str = "reward"):
    requests = _requests(data, sample)
    masks = data.images.masks[torch.from_numpy(sample.rows)] if data.images.masks is not None else None

    def score(images: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        out = [
            getattr(
                scorer(
                    pixels[i : i + 256], requests[i : i + 256], masks=None if masks is None else masks[i : i + 256]
                ),
                field,
            )
            for i in range(0, len(requests), 256)
        ]
        return torch.cat(out).double().numpy()

    return score


def _score_images(scorer: RewardScorer, data: RewardData, sample: _ImageSample) -> dict[str, np.ndarray]:
    images = data.images.pixels[torch.from_numpy(sample.rows)].permute(0, 2, 3, 1).numpy()
    return {
        "reward": _score_fn(scorer, data, sample)(images),
        "uncertainty": _score_fn(scorer, data, sample, "uncertainty")(images),
    }


def _image_disagreement(
    scores: dict[str, np.ndarray],
    data: RewardData,
    sample: _ImageSample,
    truth: AuditTruth | None,
    metrics: dict,
    plots: dict,
) -> None:
    reward, uncertainty = scores["reward"], scores["uncertainty"]
    spread = float(reward.std())
    relative = uncertainty / spread if has_spread(reward) else np.full_like(uncertainty, math.nan)
    section = metrics["disagreement"]
    section |= {
        "images": int(reward.size),
        "reward_sd": spread,
        "relative_median": float(np.median(relative)),
        "relative_mean": float(np.mean(relative)),
        "relative_p90": float(np.quantile(relative, 0.9)),
    }
    plots["disagreement"] = {"relative": relative}
    if truth is not None:
        ids = [data.images.image_ids[r] for r in sample.rows.tolist()]
        gold = np.array([truth.image_gold.get(i, {}).get(s, math.nan) for i, s in zip(ids, sample.segments)])
        if has_spread(reward) and has_spread(gold):
            error = np.abs((reward - reward.mean()) / spread - (gold - gold.mean()) / gold.std())
            section["gold_error_spearman"] = spearman(uncertainty, error)
            section["reward_gold_spearman"] = spearman(reward, gold)
            plots["disagreement"]["error"] = error


def _probe_section(
    scorer: RewardScorer,
    data: RewardData,
    sample: _ImageSample,
    truth: AuditTruth | None,
    config: AuditConfig,
    masks_note: str | None,
) -> tuple[dict, dict[str, np.ndarray]]:
    if scorer.config.encoder.kind == "precomputed":
        return {"skipped": "precomputed embeddings cannot score edited pixels"}, {}
    rows = torch.from_numpy(sample.rows)
    images = data.images.pixels[rows].permute(0, 2, 3, 1).contiguous().numpy()
    probes = config.probes
    if data.images.masks is None:
        masks = np.zeros(images.shape[:3], dtype=bool)
        probes = dataclasses.replace(probes, regions=tuple(r for r in probes.regions if r == "whole"))
        tampers: tuple[str, ...] = ()
    else:
        masks = data.images.masks[rows].numpy()
        tampers = TAMPERS
    gold_fn = gold_function(truth, data, sample.rows.tolist(), sample.segments) if truth is not None else None
    outcome: ProbeOutcome = run_probes(
        images, masks, _score_fn(scorer, data, sample), probes, tampers=tampers, gold_fn=gold_fn
    )
    section = {
        "images": int(images.shape[0]),
        "mask": "the logged (segmenter) product mask; background edits leave its pixels unchanged",
        "reward_sd": outcome.reward_sd,
        "gold_sd": outcome.gold_sd,
        "gold_has_spread": outcome.gold_has_spread,
        "spurious": [r.to_dict() for r in outcome.spurious],
        "tamper": [r.to_dict() for r in outcome.tamper],
    }
    if masks_note:
        section["note"] = masks_note
    return section, outcome.examples


# ----------------------------------------------------------------------------------------------------------
# Summary


def _headline(metrics: dict) -> dict:
    evaluation = metrics["evaluation"]
    discrimination = metrics.get("discrimination", {})
    calibration = metrics.get("calibration", {})
    headline = {
        "click_auc": evaluation.get("click_auc"),
        "click_ece": evaluation.get("click_ece"),
        "pairwise_accuracy": evaluation.get("pairwise_accuracy"),
        "preference_ece": calibration.get("preference", {}).get("ece"),
        "dwell_c_index": discrimination.get("dwell_concordance", {}).get("overall"),
        "dwell_d_calibration": calibration.get("dwell", {}).get("tv"),
        "click_auc_ratio_to_ceiling": discrimination.get("click_auc", {}).get("ratio"),
        "pairwise_ratio_to_ceiling": discrimination.get("pairwise_accuracy", {}).get("ratio"),
        "disagreement_median": metrics.get("disagreement", {}).get("relative_median"),
        "flags": len(metrics.get("flags", [])),
    }
    probes = metrics.get("probes", {})
    if probes.get("spurious"):
        worst = max(probes["spurious"], key=lambda r: abs(r["spurious_shift_sd"]))
        headline["worst_spurious"] = f"{worst['edit']}/{worst['region']}"
        headline["worst_spurious_shift_sd"] = worst["spurious_shift_sd"]
    if probes.get("tamper"):
        headline["tamper_shift_sd"] = {r["edit"]: r["reward_shift_sd"] for r in probes["tamper"]}
    return headline


def _safe(function) -> float:
    try:
        return float(function())
    except ValueError:
        return math.nan


def _json_ready(value):
    """Nested dicts/lists with numpy values unwrapped and NaN/inf as None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def audit_summary(metrics: dict) -> Sequence[str]:
    """Lines for a terminal or a model card: flags first, then the headline numbers."""
    lines = []
    flags = metrics.get("flags", [])
    lines.append(f"{len(flags)} flag(s)" + (":" if flags else " (nothing past its threshold)"))
    lines += [f"  FLAG {f['id']}: {f['message']}" for f in flags]
    for key, value in metrics.get("headline", {}).items():
        if key == "flags" or value is None:
            continue
        if isinstance(value, dict):
            shown = ", ".join(f"{k} {v:+.3f}" for k, v in value.items())
        else:
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:28s} {shown}")
    return lines
