"""What ``backdrop ope`` shows: the A/B sample size for an estimated lift, and the report as a text table.

The A/B plan turns the off-policy lift into the traffic a confirming A/B test needs (experiments/ope/abtest.py):

- per impression (``impressions``): the two-proportion test on the CTR, baseline = the logged on-policy CTR,
  treatment = the candidate's estimated CTR. Impressions of one request are correlated, so with request-level
  randomisation this count is optimistic;
- per request (``requests``): the test on the mean reward per request, baseline = the on-policy mean, standard
  deviation = that of the logged per-request rewards Σ_k λ_k r_ik (assumed the same under the candidate);
- each also for the lift's interval bound nearest to zero (``*_conservative``): if the truth is at that end of
  the interval, this is the traffic needed.

An entry that cannot be computed (a zero lift, an interval that includes 0, a rate outside (0, 1)) holds
``{"skipped": reason}`` instead of a size, so the JSON says why.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from experiments.ope.abtest import ABTestConfig, mean_sample_size, proportion_sample_size
from experiments.ope.data import ImpressionLog
from experiments.ope.evaluate import OPEReport


def plan_ab_test(report: OPEReport, log: ImpressionLog, *, estimator: str, design: ABTestConfig) -> dict[str, Any]:
    """Sample sizes for confirming ``estimator``'s lift in an A/B test (module docstring)."""
    slot_weights = np.asarray(report.diagnostics["slot_weights"], dtype=np.float64)
    per_request = (np.where(log.present, log.reward, 0.0) * slot_weights).sum(axis=1)
    binary = bool(np.all(np.isin(log.reward[log.present], (0.0, 1.0))))
    plan: dict[str, Any] = {"estimator": estimator, "design": dataclasses.asdict(design)}
    lift_imp = report.result(f"lift:{estimator}", "impression")
    lift_req = report.result(f"lift:{estimator}", "request")
    base_imp = report.result("on_policy", "impression").value
    base_req = report.result("on_policy", "request").value
    std = float(per_request.std(ddof=1)) if log.n_requests > 1 else math.nan
    for suffix, pick in (("", lambda r: r.value), ("_conservative", _bound_nearest_zero)):
        if binary:
            plan["impressions" + suffix] = _attempt(proportion_sample_size, base_imp, pick(lift_imp), design=design)
        else:
            plan["impressions" + suffix] = {
                "skipped": "rewards are not 0/1, so the two-proportion test does not apply"
            }
        plan["requests" + suffix] = _attempt(mean_sample_size, base_req, std, pick(lift_req), design=design)
    plan["request_reward_std"] = std
    return plan


def format_report(report: OPEReport, plan: dict[str, Any] | None = None, *, per_slot: bool = False) -> str:
    """The report as an aligned text table, with the weight diagnostics and the A/B plan underneath."""
    d = report.diagnostics
    versus = "the logging policy" if report.baseline == "logging" else f"candidate {report.baseline!r}"
    ci = f"{d['confidence']:.0%} {d['ci_method']} CI, {d['n_bootstrap']} resamples of requests"
    lines = [
        f"candidate {report.candidate!r} vs {versus}: {d['n_requests']:,} requests, {d['n_impressions']:,} "
        f"impressions, {d['n_slots']} slot(s), {d['weighting']} slot weighting ({ci})",
        "",
        f"{'estimator':<22}{'level':<12}{'value':>11}{'ci_low':>11}{'ci_high':>11}{'ESS':>11}",
    ]
    for res in report.results:
        if res.level.startswith("slot") and not per_slot:
            continue
        ess = f"{res.ess:,.0f}" if res.ess is not None else "-"
        lines.append(
            f"{res.estimator:<22}{res.level:<12}{res.value:>11.5f}{res.ci_low:>11.5f}{res.ci_high:>11.5f}{ess:>11}"
        )
    weights = d["weights"].get(report.candidate)
    if weights:
        w = {key.removeprefix("weights/"): value for key, value in weights.items()}
        clip = "none" if math.isnan(w["clip"]) else f"{w['clip']:g}"
        lines += [
            "",
            f"weights: ESS {w['ess']:,.0f} ({w['ess_fraction']:.1%} of impressions), mean {w['mean']:.3f} ± "
            f"{w['mean_se']:.3f}, max {w['max']:.3g}, q99 {w['q99']:.3g}, π0 < tiny with π_e > 0: "
            f"{w['tiny_propensity_share']:.2%}, π_e = 0: {w['zero_share']:.1%}, clip {clip} "
            f"({w['clipped_share']:.2%} clipped)",
        ]
    for warning in d.get("warnings", []):
        lines.append(f"warning: {warning}")
    if plan is not None:
        lines += ["", f"A/B sample size to confirm the {plan['estimator']} lift (per arm):"]
        for key in ("impressions", "impressions_conservative", "requests", "requests_conservative"):
            entry = plan[key]
            label = key.replace("_", " (") + (")" if "_" in key else "")
            if "skipped" in entry:
                lines.append(f"  {label:<28} skipped: {entry['skipped']}")
            else:
                lines.append(
                    f"  {label:<28} {entry['n_control']:>12,} (baseline {entry['baseline']:.5g} -> "
                    f"{entry['treatment']:.5g}, lift {entry['effect']:+.5g})"
                )
    return "\n".join(lines)


def _bound_nearest_zero(result) -> float:
    """The CI end closest to 0 when the interval excludes 0; NaN otherwise (no conservative size)."""
    if not (math.isfinite(result.ci_low) and math.isfinite(result.ci_high)):
        return math.nan
    if result.ci_low > 0:
        return result.ci_low
    if result.ci_high < 0:
        return result.ci_high
    return math.nan


def _attempt(size_function: Any, *args: Any, design: ABTestConfig) -> dict[str, Any]:
    """``size_function(*args, design=design).to_dict()``, or ``{"skipped": reason}`` when it cannot be computed."""
    try:
        return size_function(*args, design=design).to_dict()
    except ValueError as exc:
        reason = str(exc)
        if "lift must be a finite non-zero number, got nan" in reason:
            reason = "the lift's interval includes 0 (or there is no interval), so no effect is established"
        return {"skipped": reason}
