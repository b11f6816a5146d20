"""The export's lift gate, measured: the base's samples of the evaluation requests, every member's reward of the
candidate's and the base's samples, the direct lift with its interval and gate, and its manifest entry.

The export gate (``experiments/export.py``) and its validation (``experiments/bench/gate_truth.py``) both need,
for a candidate and the base (the same policy with its adapters disabled, ``policy.as_base()``), each reward
member's combined reward of the samples of R requests x K seeds, laid out [M, R, K] for
``experiments.export.direct.direct_lift``. Samples are request-major (sample i = r K + k, seed ``first_seed + i``,
``rollout.request.expand_requests``), so the candidate's and the base's sample i share their noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.export.direct import DirectLift, calibration_margin, direct_lift
from experiments.export.gates import GateResult, lift_gate
from experiments.export.logged_correction import LoggedCorrection, measure_correction
from experiments.export.manifest import gate_validation
from experiments.policy_runs.train import StudioRewardFn
from rollout.sampler import sample_trajectories


def sample_base(policy: Any, expanded: Sequence[Any], seeds: Sequence[int], sampler: Any) -> torch.Tensor:
    """[R K, 3, H, W] uint8 images of the base model (``policy`` with its adapters disabled) for the same
    ``expanded`` requests and ``seeds`` the candidate was sampled with."""
    with policy.as_base(), torch.no_grad():
        return sample_trajectories(policy, list(expanded), list(seeds), sampler).images


def member_rewards(
    reward_fn: Any, images: torch.Tensor, expanded: Sequence[Any], seeds_per_request: int, batch_size: int = 32
) -> np.ndarray:
    """[M, R, K] float64 each member's combined reward (reward units) of the request-major ``images``.

    Args:
        reward_fn: ``experiments.policy_runs.train.StudioRewardFn`` (or any callable returning a
            ``reward.scorer.RewardOutput`` with ``members``).
        images: [R K, 3, H, W] uint8.
        expanded: the R K requests the images answer (request-major).
        seeds_per_request: K.
        batch_size: images scored per call.

    Raises:
        ValueError: the count is not a multiple of K, or the scorer does not return per-member rewards.
    """
    total = images.shape[0]
    if total != len(expanded) or total % seeds_per_request:
        raise ValueError(f"{total} images for {len(expanded)} requests, K = {seeds_per_request}")
    chunks = []
    for start in range(0, total, batch_size):
        output = reward_fn(images[start : start + batch_size], list(expanded[start : start + batch_size]))
        if getattr(output, "members", None) is None:
            raise ValueError("the reward function returned no per-member rewards (RewardOutput.members)")
        chunks.append(output.members.double().cpu().numpy())
    members = np.concatenate(chunks, axis=1)  # [M, R K]
    return members.reshape(members.shape[0], total // seeds_per_request, seeds_per_request)


@dataclasses.dataclass(frozen=True, eq=False)
class MeasuredLift:
    """What the lift gate was decided on."""

    lift: DirectLift
    calibration: dict
    """{"click_ece", "margin_sd", "applied"}: the held-out click calibration error and whether it widened the
    interval."""
    correction: LoggedCorrection
    """The logs' correction (``experiments/export/logged_correction.py``): applied, abstained, or not applied."""


def measure_lift(
    candidate: Any,
    scorer: Any,
    world: Any,
    samples: tuple,
    sampler: Any,
    config: Any,
    audit: dict | None,
    logs_dir: Path | None = None,
) -> tuple[MeasuredLift | None, GateResult]:
    """The export's direct lift over the base, the logs' correction of it, and its gate
    (``experiments/export/direct.py``, ``experiments/export/logged_correction.py``).

    Args:
        candidate: the policy with the candidate's adapter (``policy.model.InpaintPolicy``).
        scorer: the run's ``reward.scorer.RewardScorer``.
        world: the studio world (product kinds), None for a catalogue run.
        samples: (expanded requests, seeds, [R K, 3, H, W] uint8 images): the candidate's evaluation samples, the
            ones the preservation and KL gates checked; the base is sampled with the same requests and seeds.
        sampler: the run's sampler settings.
        config: ``experiments.export.config.ExportConfig``.
        audit: the export's audit ({"result": ...} or {"metrics": ...}) for the held-out click ECE, or None.
        logs_dir: the logs the correction reads (the OPE's), None when there are none.

    Returns:
        (the measured lift, or None when not measured; the lift gate's result).
    """
    threshold, settings = config.gates.min_direct_lift_sd, config.lift
    expanded, seeds, images = samples
    per_request = config.evaluation.seeds_per_request
    if per_request < 2:
        refusal = "[export.evaluation] seeds_per_request must be >= 2 (the unit is the base's within-request SD)"
        return None, lift_gate(None, threshold, refusal=refusal)
    reward = StudioRewardFn(scorer, {p.product_id: p.kind for p in world.products} if world is not None else {})
    batch = sampler.batch_size
    candidate_rewards = member_rewards(reward, images, expanded, per_request, batch)
    base_images = sample_base(candidate, expanded, seeds, sampler)
    base_rewards = member_rewards(reward, base_images, expanded, per_request, batch)
    margin = None
    ece = audit_number(audit, "click_ece")
    if ece is not None:
        weight = float(scorer.config.combination.weights.get("click", 0.0))
        margin = calibration_margin(ece, weight, scorer.normalisation["click"][1])
    try:
        lift = direct_lift(
            candidate_rewards, base_rewards, confidence=settings.confidence, n_bootstrap=settings.n_bootstrap,
            resample_members=settings.resample_members, seed=settings.seed,
            calibration_margin_reward=margin if settings.calibration else None,
        )  # fmt: skip
    except ValueError as exc:
        return None, lift_gate(None, threshold, refusal=str(exc))
    calibration = {
        "click_ece": ece,
        "margin_sd": None if margin is None else margin / lift.base_within_sd,
        "applied": lift.calibration_margin_sd is not None,
    }
    masks = torch.stack([r.product_mask for r in expanded])
    correction = measure_correction(
        scorer, logs_dir, images, base_images, masks, seeds_per_request=per_request, lift=lift,
        config=settings.logged_correction,
    )  # fmt: skip
    gate = lift_gate(lift, threshold, min_member_share=settings.min_member_share, correction=correction)
    return MeasuredLift(lift, calibration, correction), gate


def audit_number(audit: dict | None, key: str) -> float | None:
    """A finite headline number of the audit (run now or read from a report), else None."""
    if audit is None:
        return None
    metrics = audit["result"].metrics if "result" in audit else audit["metrics"]
    value = (metrics.get("headline") or {}).get(key)
    return float(value) if isinstance(value, int | float) and np.isfinite(value) else None


def lift_summary(measured_lift: MeasuredLift | None, config: Any) -> dict | None:
    """The manifest's direct lift: estimate, interval, the reward model's part of its width, the held-out click
    calibration error (applied to the interval or not), the logs' correction (applied, abstained or not applied,
    with its numbers), and the gate's measured agreement with gold."""
    if measured_lift is None:
        return None
    return {
        **measured_lift.lift.to_dict(),
        "calibration": measured_lift.calibration,
        "logged_correction": measured_lift.correction.to_dict(),
        "unit": "within-request SDs of the base's combined reward (same requests and seeds)",
        "threshold": config.gates.min_direct_lift_sd,
        "validation": gate_validation(),
    }
