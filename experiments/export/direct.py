"""The direct method for a generated candidate: its lift over the base, measured on fresh samples of both.

A generator does not choose among logged images, so re-weighting logged variants by likelihood ratios sees only
what the base already paints (``experiments/export_ope.py``; on the studio world it did not rank candidates by
gold). The direct method (Dudík, Langford & Li 2011, "Doubly Robust Policy Evaluation and Learning", §2: the
"direct method" plugs a reward model into the new policy's actions) instead samples the candidate and the base on
the same held-out requests with the same seeds (common random numbers) and scores both with the reward ensemble:

    d[m, r]  = mean_k (c[m, r, k] − b[m, r, k]) / s          member m, request r, seed k
    lift     = mean_m mean_r d[m, r]                        (= the ensemble-mean reward's paired gain, in SDs)
    s        = sqrt(mean_r var_k mean_m b[m, r, k])          the base's pooled within-request SD (unbiased var_k)

``c`` and ``b`` are the members' calibrated combined rewards (``reward/scorer.py``: the click head calibrated,
the heads normalised and weighted; reward units), so ``lift`` is in within-request SDs of the base's reward, the
unit of ``eval/proxy_gain_sd`` and ``gold/gain_sd`` (``policy/evaluation.py``). ``s`` is treated as a fixed unit,
not re-estimated per bootstrap replicate.

Its interval has three parts:

(a) **request sampling**: a bootstrap over requests (the held-out products are a sample of the catalogue; seeds are
    averaged within a request, so the paired seed noise is inside the request's mean);
(b) **the reward model's own uncertainty, its ensemble spread**: each replicate also resamples the M members with
    replacement (the members as draws from the reward model's posterior: Lakshminarayanan et al. 2017, "Simple
    and Scalable Predictive Uncertainty Estimation using Deep Ensembles"; an ensemble's disagreement is where
    over-optimisation finds its gains: Coste et al. 2024, "Reward Model Ensembles Help Mitigate
    Overoptimization"). The percentile interval of ``mean_{m in M*} mean_{r in R*} d[m, r]`` covers both at once;
(c) **calibration on held-out logs**, when measured and asked for (``[export.lift] calibration``): the click
    head's expected calibration error on the reward model's held-out logs (the audit's ``click_ece``,
    probability units) converted to reward units by the click head's weight and normalising SD
    (:func:`calibration_margin`), then to SDs of ``s``, subtracted from the lower end and added to the upper.
    A heuristic widening, not a bound, and off by default in the export: ECE is mostly a level error, which
    cancels in the paired difference, yet in the unit ``s`` it is large (±4.1 SD on the export test's tiny
    world) and would refuse every candidate; what a paired lift needs from calibration is the sign of the
    slope, which a monotone calibrator keeps. When not applied the result says so (``calibration_margin_sd``
    None) and the export still records the ECE and its size in SDs.

A pass also needs ``min_member_share`` of the members to see, on their own, a lift above the threshold: a gain
that only some members believe in is the signature of a candidate exploiting one member's error.

How much of the width is the reward model's: ``reward_model_share`` = 1 − (width of the request-only bootstrap,
members fixed at the ensemble mean) / (full width, calibration included), clipped to [0, 1].

The logs' correction (OffCEM, Saito et al. 2023, "Off-Policy Evaluation for Large Action Spaces via Conjunct
Effect Modeling"; MIPS, Saito & Joachims 2022, "Off-Policy Evaluation for Large Action Spaces via Embeddings") is
applied after this, in ``experiments/export/logged_correction.py``, when the run's logs are there: the reward
model's click residual on logged impressions per embedding cluster of the logged variants, weighted by the
candidate's minus the base's share of fresh samples in each cluster, plus the overlapping logged variant's own
residual where a sample nearly repeats one (the doubly robust term), converted to this unit by
:func:`click_to_reward` and ``s``; its bootstrap widens the interval. When too few of the candidate's samples fall
inside well-logged clusters it abstains, and the gate decides on this plain direct lift, whose bias is the reward
model's error on the candidate's images, which (b) and (c) only partly measure; the gate's message says which.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class DirectLift:
    """The candidate's direct lift over the base (module docstring). Every ``*_sd`` is in within-request SDs of
    the base's combined reward (``base_within_sd`` reward units each)."""

    lift_sd: float
    """Point estimate: the ensemble-mean reward's mean paired gain over requests."""
    lower_sd: float
    """Lower end of the interval: bootstrap (requests + members) minus the calibration margin."""
    upper_sd: float
    """Upper end: bootstrap plus the calibration margin."""
    bootstrap_lower_sd: float
    bootstrap_upper_sd: float
    requests_only_width_sd: float
    """Width of the request-only bootstrap (members fixed at the ensemble mean): sampling noise alone."""
    members_only_width_sd: float
    """Width of the member-only bootstrap (all requests): the ensemble spread alone."""
    calibration_margin_sd: float | None
    """Added on each side; None = not measured (the calibration error is not in the interval)."""
    reward_model_share: float
    """Share of the interval's width that request sampling alone does not explain (members + calibration)."""
    member_lifts_sd: tuple[float, ...]
    """Each member's own lift (its reward alone, same unit)."""
    base_within_sd: float
    """The unit: the base's pooled within-request SD of the ensemble-mean reward (reward units)."""
    lift_raw: float
    """The lift in reward units."""
    requests: int
    seeds: int
    members: int
    confidence: float
    n_bootstrap: int
    resample_members: bool

    def members_above(self, threshold: float) -> int:
        """Members whose own lift is above ``threshold`` (SDs)."""
        return sum(1 for lift in self.member_lifts_sd if lift > threshold)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def click_to_reward(click_change: float, click_weight: float, click_std: float) -> float:
    """A change of the click head's calibrated P(click | slot 1) (probability) in combined-reward units.

    The combined reward adds ``click_weight * (p_click - mean) / click_std`` (``reward/scorer.py``), so a change of
    ``click_change`` in the calibrated probability moves it by ``click_weight * click_change / click_std``; the
    sign follows the change and the weight.
    """
    if not math.isfinite(click_change):
        raise ValueError(f"the click probability change must be finite, got {click_change}")
    if not click_std > 0:
        raise ValueError(f"click_std must be > 0, got {click_std}")
    return click_weight * click_change / click_std


def calibration_margin(click_ece: float, click_weight: float, click_std: float) -> float:
    """The click head's expected calibration error (probability) in combined-reward units: the size of
    :func:`click_to_reward` of an error of ``click_ece``, ``|click_weight| * click_ece / click_std``."""
    if not (math.isfinite(click_ece) and click_ece >= 0):
        raise ValueError(f"click_ece must be finite and >= 0, got {click_ece}")
    return abs(click_to_reward(click_ece, click_weight, click_std))


def direct_lift(
    candidate: np.ndarray,
    base: np.ndarray,
    *,
    confidence: float = 0.95,
    n_bootstrap: int = 2000,
    resample_members: bool = True,
    calibration_margin_reward: float | None = None,
    seed: int = 0,
) -> DirectLift:
    """The direct lift of ``candidate`` over ``base`` with its interval (module docstring).

    Args:
        candidate: [M, R, K] each member's combined reward (reward units) of the candidate's sample of request r
            with seed k.
        base: [M, R, K] the same for the base model, same requests and seeds (paired).
        confidence: two-sided level of the percentile interval (its lower end is a one-sided (1 + level) / 2 bound).
        n_bootstrap: bootstrap replicates (>= 100).
        resample_members: resample the members in each replicate (b); False = requests only (the ensemble mean
            taken as exact).
        calibration_margin_reward: the calibration error in reward units (:func:`calibration_margin`), None when
            not measured.
        seed: seeds the bootstrap.

    Raises:
        ValueError: shapes that differ or are not [M, R, K] with K >= 2, non-finite rewards, a base whose
            within-request SD is 0, or bad settings.
    """
    candidate = np.asarray(candidate, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    if candidate.shape != base.shape or candidate.ndim != 3:
        raise ValueError(f"candidate {list(candidate.shape)} and base {list(base.shape)} must both be [M, R, K]")
    members, requests, seeds = candidate.shape
    if members < 1 or requests < 1 or seeds < 2:
        raise ValueError(
            f"need >= 1 member, >= 1 request and >= 2 seeds per request (the unit is the base's within-request "
            f"SD), got [M, R, K] = {list(candidate.shape)}"
        )
    if not (np.isfinite(candidate).all() and np.isfinite(base).all()):
        raise ValueError("the rewards must be finite")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 100:
        raise ValueError(f"n_bootstrap must be >= 100, got {n_bootstrap}")
    if calibration_margin_reward is not None and not calibration_margin_reward >= 0:
        raise ValueError(f"calibration_margin_reward must be >= 0, got {calibration_margin_reward}")
    scale = float(np.sqrt(base.mean(axis=0).var(axis=1, ddof=1).mean()))
    if not scale > 0:
        raise ValueError("the base's within-request SD is 0: every seed of every request scored the same")
    per_member = (candidate - base).mean(axis=2) / scale  # [M, R]
    lift = float(per_member.mean())

    rng = np.random.default_rng(seed)
    request_counts = rng.multinomial(requests, np.full(requests, 1.0 / requests), size=n_bootstrap)  # [B, R]
    member_counts = rng.multinomial(members, np.full(members, 1.0 / members), size=n_bootstrap)  # [B, M]
    ensemble = per_member.mean(axis=0)  # [R]
    requests_only = request_counts @ ensemble / requests
    members_only = member_counts @ per_member.mean(axis=1) / members
    if resample_members:
        replicates = np.einsum("bm,mr,br->b", member_counts, per_member, request_counts) / (members * requests)
    else:
        replicates = requests_only
    tail = (1.0 - confidence) / 2.0

    def interval(values: np.ndarray) -> tuple[float, float]:
        low, high = np.quantile(values, [tail, 1.0 - tail])
        return float(low), float(high)

    low, high = interval(replicates)
    margin = None if calibration_margin_reward is None else calibration_margin_reward / scale
    widened = (low - (margin or 0.0), high + (margin or 0.0))
    requests_width = float(np.subtract(*interval(requests_only)[::-1]))
    total_width = widened[1] - widened[0]
    share = 0.0 if total_width <= 0 else min(1.0, max(0.0, 1.0 - requests_width / total_width))
    return DirectLift(
        lift_sd=lift,
        lower_sd=widened[0],
        upper_sd=widened[1],
        bootstrap_lower_sd=low,
        bootstrap_upper_sd=high,
        requests_only_width_sd=requests_width,
        members_only_width_sd=float(np.subtract(*interval(members_only)[::-1])),
        calibration_margin_sd=margin,
        reward_model_share=share,
        member_lifts_sd=tuple(float(v) for v in per_member.mean(axis=1)),
        base_within_sd=scale,
        lift_raw=lift * scale,
        requests=requests,
        seeds=seeds,
        members=members,
        confidence=confidence,
        n_bootstrap=n_bootstrap,
        resample_members=resample_members,
    )
