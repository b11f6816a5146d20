"""Off-policy evaluation: a candidate policy's expected engagement from logs of another policy's serving.

Entry point: :func:`evaluate` takes an :class:`~experiments.ope.data.ImpressionLog` (what the logging policy
showed, with its propensities and the observed rewards) and a :class:`~experiments.ope.data.CandidatePolicy`
(the candidate's probability of each logged action and, optionally, a reward model's predictions), and returns
an :class:`OPEReport`: DM, IPS, SNIPS and DR estimates (formulas in :mod:`experiments.ope.estimators`) per
request, per impression and per slot, the logging policy's own on-policy value, and the paired lift of the
candidate over the logging policy (or over a second candidate), each with a request-level bootstrap interval
(:mod:`experiments.ope.bootstrap`) and the weight diagnostics of :mod:`experiments.ope.weights`.

Before any importance-weighted number is produced the overlap is checked, and the call raises
:class:`~experiments.ope.weights.OverlapError` (which diagnostic failed, its value, the threshold) rather than
report an estimate the logs cannot support; logs without propensities raise
:class:`~experiments.ope.weights.MissingPropensityError` unless only DM is asked for.

Build inputs with :func:`~experiments.ope.data.build_impression_log` and
:func:`~experiments.ope.data.build_candidate`; all of those names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Literal

import numpy as np

from experiments.config import RunConfig
from experiments.ope.abtest import ABTestConfig
from experiments.ope.bootstrap import CIMethod, Interval, MeanFunction, bootstrap_intervals
from experiments.ope.data import (
    CandidatePolicy,
    ImpressionLog,
    build_candidate,
    build_impression_log,
    expected_reward,
    unsupported_mass,
)
from experiments.ope.estimators import (
    ESTIMATORS,
    ON_POLICY,
    EstimatorName,
    RequestColumns,
    difference,
    request_columns,
)
from experiments.ope.weights import (
    MissingPropensityError,
    OverlapError,
    Weighting,
    check_overlap,
    clip_weights,
    importance_weights,
    require_propensities,
    weight_diagnostics,
)
from offline_data.errors import InputUnreadableError, LogValidationError

logger = logging.getLogger(__name__)

__all__ = [
    "CandidatePolicy",
    "ImpressionLog",
    "MissingPropensityError",
    "OPECommandConfig",
    "OPEConfig",
    "OPEReport",
    "OPEResult",
    "OverlapError",
    "build_candidate",
    "build_impression_log",
    "estimate",
    "evaluate",
    "expected_reward",
    "to_json_safe",
    "unsupported_mass",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OPEConfig:
    """Which estimators run, how weights are formed, how intervals are computed, and when to refuse."""

    estimators: tuple[EstimatorName, ...] = ESTIMATORS
    """Estimators to report: any of "dm", "ips", "snips", "dr". DM and DR need the candidate's dm_prediction
    (DR also dm_logged); IPS, SNIPS and DR need logged propensities."""
    primary: EstimatorName = "dr"
    """The estimator behind the headline lift and the A/B sample size; must be in ``estimators``."""
    weighting: Weighting = "independent"
    """How slot weights combine (experiments/ope/weights.py): "independent" (PBM; slot k's reward depends on
    slot k only), "cascade" (on slots 1..k), "slate" (no assumption; product over the page, most variance)."""
    clip: float | None = None
    """Upper clip on importance weights, min(W, clip), for IPS/SNIPS/DR; unset = no clipping. Lowers variance,
    biases non-negative rewards down; the level and the clipped share are reported. Overlap checks ignore it."""
    slot_weights: tuple[float, ...] = ()
    """λ_k for positions 1..S in the page value Σ_k λ_k V_k; empty = 1 for every slot (expected total reward
    per request). Must have one entry per slot of the logs when given."""
    confidence: float = 0.95
    """Two-sided coverage of the bootstrap intervals."""
    n_bootstrap: int = 2000
    """Bootstrap resamples of requests; 0 = point estimates only (intervals are NaN)."""
    ci_method: CIMethod = "percentile"
    """"percentile" or "bca" (bias-corrected and accelerated). On the synthetic slate world (500 logs per
    setting, experiments/bench/ope_coverage.py) nominal-90 % intervals for IPS/SNIPS/DR covered 87-90 % with
    either at weight ESS 20-30 %, but with slate weights (ESS 8 %) percentile covered 85 % and BCa 78-84 %."""
    min_ess: float = 30.0
    """Refuse weighting estimators when the Kish ESS of the raw weights is below this many impressions."""
    min_ess_fraction: float = 0.01
    """... or below this fraction of the logged impressions."""
    support_tolerance: float = 1e-6
    """Refuse when the candidate puts more than this probability, in any slot, on actions the logger never
    takes (needs the candidate's unsupported_mass; a logged π0 = 0 with π_e > 0 always refuses)."""
    weight_mean_tolerance: float = 0.1
    """Flag the raw weights' mean when it is further than this from 1 AND more than ``weight_mean_z`` standard
    errors away (undeclared mass outside the logger's support, or wrong propensities); inf disables the flag."""
    weight_mean_z: float = 4.0
    """Standard errors (clustered by request) the mean weight must be from 1 before it is flagged."""
    weight_mean_check: Literal["warn", "refuse"] = "warn"
    """What a flagged mean weight does: "warn" (listed in the report's warnings) or "refuse" (OverlapError).
    Not a refusal by default: heavy-tailed weights also pull the sample mean below 1
    (experiments.ope.weights.check_overlap)."""
    tiny_propensity: float = 0.01
    """π0 below this, with π_e > 0, counts toward the ``weights/tiny_propensity_share`` diagnostic."""

    def __post_init__(self) -> None:
        if not self.estimators:
            raise ValueError("estimators must name at least one of " + ", ".join(ESTIMATORS))
        if len(set(self.estimators)) != len(self.estimators):
            raise ValueError(f"estimators must not repeat, got {list(self.estimators)}")
        if self.primary not in self.estimators:
            raise ValueError(f"primary {self.primary!r} must be one of estimators {list(self.estimators)}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 (or unset for no clipping), got {self.clip}")
        if any(not (math.isfinite(w) and w >= 0) for w in self.slot_weights):
            raise ValueError(f"slot_weights must be finite and >= 0, got {list(self.slot_weights)}")
        if self.slot_weights and sum(self.slot_weights) == 0:
            raise ValueError("slot_weights must not all be 0")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.n_bootstrap != 0 and self.n_bootstrap < 100:
            raise ValueError(f"n_bootstrap must be 0 (no intervals) or >= 100, got {self.n_bootstrap}")
        if self.min_ess < 0 or not 0 <= self.min_ess_fraction <= 1:
            raise ValueError(
                f"min_ess must be >= 0 and min_ess_fraction in [0, 1], got {self.min_ess}, {self.min_ess_fraction}"
            )
        if not 0 <= self.support_tolerance < 1:
            raise ValueError(f"support_tolerance must be in [0, 1), got {self.support_tolerance}")
        if not self.weight_mean_tolerance > 0 or not self.weight_mean_z > 0:
            raise ValueError(
                f"weight_mean_tolerance and weight_mean_z must be > 0, got {self.weight_mean_tolerance}, "
                f"{self.weight_mean_z}"
            )
        if not 0 < self.tiny_propensity < 1:
            raise ValueError(f"tiny_propensity must be in (0, 1), got {self.tiny_propensity}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OPERunConfig(RunConfig):
    """[run] of ``backdrop ope``: RunConfig with OPE's defaults.

    A subclass rather than ``RunConfig(name="ope")`` as the field default, because the config loader builds
    a section that appears in the file or in --set from the class defaults.
    """

    name: str = "ope"
    """Run name; results go to ``<output_dir>/<name>/<timestamp>``."""
    tensorboard: bool = False
    """Also write TensorBoard event files (off: one step of scalars is all OPE logs)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OPECommandConfig:
    """Root config of ``backdrop ope``: sections [run], [ope] and [abtest]."""

    run: OPERunConfig = OPERunConfig()
    """Run directory (ope.json, config.toml, metrics.jsonl) and the bootstrap seed (run.seed)."""
    ope: OPEConfig = OPEConfig()
    """Estimators, weighting, intervals and refusal thresholds."""
    abtest: ABTestConfig = ABTestConfig()
    """The A/B test whose sample size is reported for the estimated lift."""


@dataclasses.dataclass(frozen=True)
class OPEResult:
    """One estimate with its interval.

    Intervals reflect the sampling of requests only: a DM interval says nothing about the reward model's own
    error, which is DM's bias (with a model error of s.d. 0.05 its 90 % intervals covered the truth in 28-89 % of
    synthetic logs); IPS/SNIPS/DR intervals are honest up to the weighting's assumption and clipping.

    ``estimator`` is "dm", "ips", "snips", "dr", "on_policy" (the logging policy's own value), "lift:<e>"
    (candidate - baseline) or "relative_lift:<e>" (candidate / baseline - 1); ``level`` is "request",
    "impression" or "slot<k>"; ``n`` counts requests (the resampled unit); ``ess`` is the Kish ESS of the raw
    weights in impressions (None for DM and on-policy values).
    """

    estimator: str
    level: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    ess: float | None
    diagnostics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (NaN and inf become null)."""
        return to_json_safe(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class OPEReport:
    """Every estimate of one evaluation, plus the weight diagnostics they share."""

    candidate: str
    baseline: str
    """"logging" (lifts subtract the logged on-policy value) or the second candidate's name."""
    results: tuple[OPEResult, ...]
    diagnostics: dict[str, Any]
    """Sizes, settings, ``warnings`` (list of str) and ``weights``: {policy name: weight diagnostics}."""

    def result(self, estimator: str, level: str = "request") -> OPEResult:
        """The result for ``estimator`` ("dr", "lift:dr", "on_policy", ...) at ``level``."""
        for res in self.results:
            if res.estimator == estimator and res.level == level:
                return res
        have = sorted({f"{r.estimator}@{r.level}" for r in self.results})
        raise KeyError(f"no result {estimator!r} at level {level!r}; have {', '.join(have)}")

    def to_dict(self) -> dict[str, Any]:
        return to_json_safe(
            {
                "candidate": self.candidate,
                "baseline": self.baseline,
                "diagnostics": self.diagnostics,
                "results": [r.to_dict() for r in self.results],
            }
        )


def evaluate(
    log: ImpressionLog,
    candidate: CandidatePolicy,
    config: OPEConfig = OPEConfig(),
    *,
    baseline: CandidatePolicy | None = None,
    seed: int = 0,
) -> OPEReport:
    """Estimate ``candidate``'s value on ``log`` with every configured estimator, and its lift over a baseline.

    Args:
        log: the logged impressions.
        candidate: the policy to evaluate.
        config: estimators, weighting, clipping, bootstrap and refusal thresholds.
        baseline: a second candidate to compare against (same estimator on both, resampled jointly); None
            compares against the logging policy's on-policy value.
        seed: seeds the bootstrap.

    Returns:
        Results for each estimator at levels "request", "impression" and "slot1".."slotS"; "on_policy" at
        the same levels; "lift:<e>" at "request" and "impression" and "relative_lift:<e>" at "request".

    Raises:
        InputUnreadableError: the candidate lacks the reward-model predictions DM/DR need.
        MissingPropensityError: IPS/SNIPS/DR requested on logs without propensities.
        OverlapError: the weights fail an overlap check (for the candidate or the baseline).
    """
    slot_weights = _slot_weights(config, log)
    if baseline is not None and baseline.name == candidate.name:
        raise ValueError(f"candidate and baseline need different names, both are {candidate.name!r}")
    if config.n_bootstrap > 0 and log.n_requests < 2:
        raise LogValidationError(
            f"{log.source}: {log.n_requests} request; bootstrap intervals resample requests and need at least 2 "
            "(set n_bootstrap = 0 for point estimates only)"
        )
    policies = [candidate] if baseline is None else [candidate, baseline]
    columns: list[RequestColumns] = []
    weight_diags: list[dict[str, float]] = []
    warnings: list[str] = []
    for policy in policies:
        _require_predictions(log, policy, config.estimators)
        weights = None
        if any(e != "dm" for e in config.estimators):
            require_propensities(log, config.estimators)
            raw = importance_weights(log, policy, config.weighting)
            diags = weight_diagnostics(log, policy, raw, clip=config.clip, tiny_propensity=config.tiny_propensity)
            notes = check_overlap(
                diags,
                source=f"{log.source} (candidate {policy.name!r})",
                min_ess=config.min_ess,
                min_ess_fraction=config.min_ess_fraction,
                support_tolerance=config.support_tolerance,
                weight_mean_tolerance=config.weight_mean_tolerance,
                weight_mean_z=config.weight_mean_z,
                weight_mean_check=config.weight_mean_check,
            )
            for note in notes:
                logger.warning("candidate %r: %s", policy.name, note)
                warnings.append(f"candidate {policy.name!r}: {note}")
            weights = clip_weights(raw, config.clip)
            weight_diags.append(diags)
        cols = request_columns(log, policy, weights, slot_weights)
        columns.append(dataclasses.replace(cols, offset=sum(c.width for c in columns)))
    values = np.concatenate([c.values for c in columns], axis=1)
    statistics = _statistics(columns, config.estimators, log.n_slots)

    full_means = values.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        points = {key: float(g(full_means)) for key, g in statistics.items()}
    if config.n_bootstrap > 0:
        intervals = bootstrap_intervals(
            values,
            statistics,
            n_resamples=config.n_bootstrap,
            confidence=config.confidence,
            method=config.ci_method,
            seed=seed,
        )
    else:
        intervals = {}

    shared = {
        "n_requests": log.n_requests,
        "n_impressions": log.n_impressions,
        "n_slots": log.n_slots,
        "weighting": config.weighting,
        "slot_weights": [float(w) for w in slot_weights],
        "confidence": config.confidence,
        "ci_method": config.ci_method if config.n_bootstrap else "none",
        "n_bootstrap": config.n_bootstrap,
        "seed": seed,
        "warnings": warnings,
    }
    candidate_diags = weight_diags[0] if weight_diags else {}
    results = []
    for key, value in points.items():
        estimator, level = key.split("@")
        base = estimator.split(":")[-1]
        weighted = base in ("ips", "snips", "dr")
        diagnostics: dict[str, Any] = dict(candidate_diags) if weighted else {}
        interval = intervals.get(key)
        diagnostics["bootstrap/non_finite"] = interval.non_finite if interval is not None else 0
        ess = None
        if weighted:
            ess = (
                candidate_diags["weights/ess_slot" + level[4:]]
                if level.startswith("slot")
                else candidate_diags["weights/ess"]
            )
        results.append(
            OPEResult(
                estimator=estimator,
                level=level,
                value=value,
                ci_low=_bound(interval, "low"),
                ci_high=_bound(interval, "high"),
                n=log.n_requests,
                ess=ess,
                diagnostics=diagnostics,
            )
        )
    report_diags: dict[str, Any] = dict(shared)
    report_diags["weights"] = {policy.name: diags for policy, diags in zip(policies, weight_diags)}
    return OPEReport(
        candidate=candidate.name,
        baseline="logging" if baseline is None else baseline.name,
        results=tuple(results),
        diagnostics=report_diags,
    )


def estimate(
    log: ImpressionLog,
    candidate: CandidatePolicy,
    estimator: EstimatorName,
    *,
    level: str = "request",
    config: OPEConfig = OPEConfig(),
    seed: int = 0,
) -> OPEResult:
    """One estimator at one level: :func:`evaluate` restricted to ``estimator`` (checks included)."""
    only = dataclasses.replace(config, estimators=(estimator,), primary=estimator)
    return evaluate(log, candidate, only, seed=seed).result(estimator, level)


def _statistics(columns: list[RequestColumns], estimators: tuple[str, ...], n_slots: int) -> dict[str, MeanFunction]:
    """name ("<estimator>@<level>") -> g(means) for every reported number."""
    cand = columns[0]
    levels = ["request", "impression"] + [f"slot{k + 1}" for k in range(n_slots)]
    out: dict[str, MeanFunction] = {}
    for estimator in (*estimators, ON_POLICY):
        for level in levels:
            out[f"{estimator}@{level}"] = cand.statistic(estimator, level)
    for estimator in estimators:
        base = columns[1] if len(columns) > 1 else None
        # the lift is over the base policy's estimate when one is given, else over the logged (on-policy) value
        for level in ("request", "impression"):
            baseline = base.statistic(estimator, level) if base else cand.statistic(ON_POLICY, level)
            out[f"lift:{estimator}@{level}"] = difference(cand.statistic(estimator, level), baseline)
        baseline = base.statistic(estimator, "request") if base else cand.statistic(ON_POLICY, "request")
        out[f"relative_lift:{estimator}@request"] = difference(
            cand.statistic(estimator, "request"), baseline, relative=True
        )
    return out


def _slot_weights(config: OPEConfig, log: ImpressionLog) -> np.ndarray:
    if not config.slot_weights:
        return np.ones(log.n_slots)
    if len(config.slot_weights) != log.n_slots:
        raise ValueError(
            f"slot_weights has {len(config.slot_weights)} entries but {log.source} shows {log.n_slots} slot(s)"
        )
    return np.asarray(config.slot_weights, dtype=np.float64)


def _require_predictions(log: ImpressionLog, candidate: CandidatePolicy, estimators: tuple[str, ...]) -> None:
    needs = {"dm": ("dm_prediction",), "dr": ("dm_prediction", "dm_logged")}
    missing = sorted({col for e in estimators for col in needs.get(e, ()) if getattr(candidate, col) is None})
    if missing:
        wanting = [e.upper() for e in estimators if any(c in missing for c in needs.get(e, ()))]
        verb = "needs" if len(wanting) == 1 else "need"
        raise InputUnreadableError(
            f"{log.source}: candidate {candidate.name!r} has no {' / '.join(missing)} column, which "
            f"{' and '.join(wanting)} {verb} (dm_prediction = the reward model's expected reward of the candidate "
            "in the slot, dm_logged = its prediction for the logged action); provide it or drop those estimators"
        )


def _bound(interval: Interval | None, side: str) -> float:
    return float(getattr(interval, side)) if interval is not None else math.nan


def to_json_safe(value: Any) -> Any:
    """Nested dicts/lists/scalars as strict JSON data: numpy scalars unwrapped, NaN and inf as None."""
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
