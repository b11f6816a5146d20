"""The gates a candidate must pass before it is exported for an A/B test.

Each gate is a pure function of what was measured and returns a :class:`GateResult` whose message names the
value and the threshold:

- :func:`preservation_gate`: every evaluation output's product pixels equal the input's (the PIXEL verifier,
  ``rollout.preservation.verify_preservation``, not the reward); a failure names each violating request, its
  seed and the number of changed product pixels;
- :func:`kl_gate`: the mean KL(candidate ‖ base) per sample, recomputed on the evaluation samples, within budget;
- :func:`lift_gate`: the direct method (``experiments/export/direct.py``): the lower end of the interval of the
  candidate's lift over the base, measured on fresh samples of both scored by the reward ensemble (request
  sampling, ensemble spread and, when measured, calibration error inside the interval), above a threshold, and
  enough members seeing the lift on their own; when the logs' correction (``experiments/export/
  logged_correction.py``) is applied, the corrected lower end and members' lifts, else the plain lift, saying why;
- :func:`ope_gate` ("logged_noninferiority"): the lower end of the off-policy interval of the candidate's lift,
  re-weighting LOGGED base-model images by ELBO likelihood ratios, at or above a (non-inferiority) margin; an
  OPE the logs cannot support (no propensities, poor overlap) fails with the refusal's reason. It cannot see
  gains off the logged images, so it is a non-inferiority check among logged images, not the candidate's lift;
- :func:`audit_gate`: the reward model's audit raised no flag (apart from explicitly tolerated ones).

:func:`check_gates` refuses (``GateRefusedError``, non-zero exit) unless an override reason is given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from experiments.export.direct import DirectLift
from experiments.export.logged_correction import LoggedCorrection
from offline_data.errors import BackdropError
from rollout.preservation import verify_preservation

LOGGED_NONINFERIORITY = "logged_noninferiority"
"""The name of :func:`ope_gate`'s result (it was "ope")."""


class GateRefusedError(BackdropError):
    """At least one gate failed and no override was given; nothing was exported."""

    exit_code = 4


@dataclasses.dataclass(frozen=True)
class GateResult:
    """The outcome of one gate."""

    name: str
    """"preservation", "kl", "lift", "logged_noninferiority" or "audit"."""
    passed: bool
    value: float | None
    """The measured number the threshold applies to (None when it could not be measured)."""
    threshold: float | None
    message: str
    """One line naming the value and the threshold (and, for preservation, the violating requests)."""
    details: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def preservation_gate(
    originals: torch.Tensor,
    outputs: torch.Tensor,
    masks: torch.Tensor,
    request_ids: Sequence[str],
    seeds: Sequence[int],
) -> GateResult:
    """Zero product-pixel changes over the evaluation outputs.

    Args:
        originals: [B, 3, H, W] uint8 product images (the requests' inputs).
        outputs: [B, 3, H, W] uint8 what the candidate returned for them.
        masks: [B, H, W] bool hard product masks.
        request_ids, seeds: B request ids and seeds, to name violations.
    """
    if len(request_ids) != originals.shape[0] or len(seeds) != originals.shape[0]:
        raise ValueError(f"got {originals.shape[0]} images, {len(request_ids)} request ids and {len(seeds)} seeds")
    violations = []
    checked = 0
    for i in range(originals.shape[0]):
        report = verify_preservation(originals[i], outputs[i], masks[i])
        checked += report.mask_pixels
        if not report.ok:
            violations.append(
                {
                    "request_id": request_ids[i],
                    "seed": int(seeds[i]),
                    "changed_pixels": report.differing_pixels,
                    "max_abs_diff": report.max_abs_diff,
                }
            )
    changed = sum(v["changed_pixels"] for v in violations)
    details = {"samples": int(originals.shape[0]), "product_pixels_checked": checked, "violations": violations}
    if not violations:
        message = f"0 product pixels changed in {originals.shape[0]} outputs ({checked:,} product pixels checked)"
        return GateResult("preservation", True, 0.0, 0.0, message, details)
    named = "; ".join(
        f"request {v['request_id']!r} (seed {v['seed']}): {v['changed_pixels']} product pixel(s) changed, "
        f"max |diff| {v['max_abs_diff']}"
        for v in violations[:5]
    )
    more = f" and {len(violations) - 5} more" if len(violations) > 5 else ""
    message = f"{changed} product pixel(s) changed in {len(violations)} output(s), threshold 0: {named}{more}"
    return GateResult("preservation", False, float(changed), 0.0, message, details)


def kl_gate(kl_nats: np.ndarray, max_kl_nats: float, *, run_kl_nats: float | None = None) -> GateResult:
    """Mean KL(candidate ‖ base) per sample (nats, recomputed on the evaluation samples) within the budget."""
    kl_nats = np.asarray(kl_nats, dtype=np.float64)
    if kl_nats.ndim != 1 or kl_nats.size == 0:
        raise ValueError(f"kl_nats must be a non-empty [n] array, got shape {kl_nats.shape}")
    mean = float(kl_nats.mean())
    details = {"samples": int(kl_nats.size), "max_sample": float(kl_nats.max()), "run_last_eval": run_kl_nats}
    passed = math.isfinite(mean) and mean <= max_kl_nats
    relation = "within" if passed else "above"
    run = f" (the run's last evaluation: {run_kl_nats:.1f})" if run_kl_nats is not None else ""
    message = (
        f"KL to the base {mean:.1f} nats per sample over {kl_nats.size} samples, {relation} the budget "
        f"{max_kl_nats:g}{run}"
    )
    return GateResult("kl", passed, mean, float(max_kl_nats), message, details)


def ope_gate(
    lift: float | None,
    lower: float | None,
    upper: float | None,
    threshold: float,
    *,
    estimator: str,
    refusal: str | None = None,
    details: dict | None = None,
) -> GateResult:
    """Logged non-inferiority: the lower end of the OPE interval of the lift among logged images (ELBO
    re-weighting) at or above ``threshold``; ``refusal`` = why OPE was impossible."""
    details = dict(details or {})
    name = LOGGED_NONINFERIORITY
    if refusal is not None:
        return GateResult(
            name, False, None, float(threshold), f"off-policy evaluation on the logs impossible: {refusal}", details
        )
    if lower is None or not math.isfinite(lower):
        message = f"{estimator} lift {lift} has no finite lower bound (no bootstrap interval); threshold {threshold:g}"
        return GateResult(name, False, lower, float(threshold), message, details)
    passed = lower >= threshold
    message = (
        f"among logged images (ELBO re-weighting), {estimator} lift over the logging policy {lift:+.4f} clicks per "
        f"request, interval [{lower:+.4f}, {upper:+.4f}]: lower bound {'at or above' if passed else 'below'} the "
        f"non-inferiority margin {threshold:+g}"
    )
    return GateResult(name, passed, float(lower), float(threshold), message, details)


def lift_gate(
    lift: DirectLift | None,
    threshold: float,
    *,
    min_member_share: float = 1.0,
    refusal: str | None = None,
    correction: LoggedCorrection | None = None,
) -> GateResult:
    """The direct lift's lower end above ``threshold`` (within-request SDs of the base's reward) and at least
    ``min_member_share`` of the members' own lifts above it; ``refusal`` = why the lift could not be measured.

    With the logs' ``correction`` applied (``experiments/export/logged_correction.py``) the corrected lower end
    and the members' corrected lifts decide; an abstained or unavailable correction leaves the plain direct lift
    deciding, and the message says which."""
    if refusal is not None or lift is None:
        return GateResult("lift", False, None, float(threshold), f"direct lift not measured: {refusal}")
    needed = math.ceil(min_member_share * lift.members - 1e-9)
    applied = correction is not None and correction.applied
    lower = correction.lower_sd if applied else lift.lower_sd
    members = correction.member_lifts_sd if applied else lift.member_lifts_sd
    above = sum(1 for value in members if value > threshold)
    passed = lower > threshold and above >= needed
    calibration = (
        "calibration error not included"
        if lift.calibration_margin_sd is None
        else f"±{lift.calibration_margin_sd:.3f} calibration"
    )
    resampled = f"requests + {lift.members} members resampled" if lift.resample_members else "requests resampled"
    verdict = "above" if lower > threshold else "not above"
    direct = (
        f"direct lift over the base {lift.lift_sd:+.3f} within-request SD of the reward, "
        f"{lift.confidence:.0%} interval [{lift.lower_sd:+.3f}, {lift.upper_sd:+.3f}] ({resampled}, {calibration}; "
        f"{lift.reward_model_share:.0%} of its width is the reward model's)"
    )
    if applied:
        logs = (
            f"; logged correction {correction.correction_sd:+.3f} SD applied (coverage {correction.coverage:.2f}, "
            f"overlap {correction.overlap_share:.2f}, {correction.clusters} clusters): corrected lift "
            f"{correction.lift_sd:+.3f}, interval [{correction.lower_sd:+.3f}, {correction.upper_sd:+.3f}]"
        )
    elif correction is not None:
        logs = f"; logged correction {correction.status}: the plain direct lift decides"
    else:
        logs = ""
    message = (
        f"{direct}{logs}: lower bound {verdict} the threshold {threshold:+g}; {above} of {lift.members} member(s) "
        f"see a lift above it (need {needed})"
    )
    details = lift.to_dict()
    if correction is not None:
        details["logged_correction"] = correction.to_dict()
    return GateResult("lift", passed, lower, float(threshold), message, details)


def audit_gate(flags: Sequence[dict], tolerated: Sequence[str] = ()) -> GateResult:
    """No audit flag, apart from the ids in ``tolerated`` (which are still listed)."""
    blocking = [f for f in flags if f["id"] not in tolerated]
    details = {"flags": list(flags), "tolerated": list(tolerated)}
    if not blocking:
        extra = f" ({len(flags)} tolerated)" if flags else ""
        return GateResult("audit", True, 0.0, 0.0, f"the reward-model audit raised no flag{extra}", details)
    named = "; ".join(f"{f['id']}: {f['message']}" for f in blocking[:4])
    more = f" and {len(blocking) - 4} more" if len(blocking) > 4 else ""
    message = f"the reward-model audit raised {len(blocking)} flag(s), threshold 0: {named}{more}"
    return GateResult("audit", False, float(len(blocking)), 0.0, message, details)


def check_gates(results: Sequence[GateResult], override: str | None) -> list[GateResult]:
    """The failed gates; raises :class:`GateRefusedError` naming each (value and threshold) unless ``override``.

    Raises:
        ValueError: an empty override reason (an override must say why).
    """
    if override is not None and not override.strip():
        raise ValueError("--override needs a reason, e.g. --override 'A/B owner accepts the tamper flag'")
    failed = [r for r in results if not r.passed]
    if failed and override is None:
        lines = "\n".join(f"  {r.name}: {r.message}" for r in failed)
        raise GateRefusedError(
            f"export refused: {len(failed)} of {len(results)} gate(s) failed:\n{lines}\n"
            'nothing was written; fix the candidate, or export anyway with --override "REASON" (recorded in the '
            "manifest and the model card)"
        )
    return failed


def recorded_override(failed: Sequence[GateResult], override: str | None) -> str | None:
    """The override a bundle records: its reason when it let failed gates through, None when every gate passed
    (nothing was overridden, so the manifest and card must not say "exported with an override")."""
    return override if failed else None
