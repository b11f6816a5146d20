"""Flags of a reward-model audit: every measured number past its configured threshold.

Each flag is ``{"id", "section", "message", "value", "threshold"}``; ``message`` names the value and the
threshold in words, so a flag read on its own (a terminal, a model card, the export gate) says what is wrong.
:func:`collect_flags` reads the metrics dict that ``reward.audit`` builds; sections that were not measured
(no truth, no policy run, no dwell rows) raise no flag.
"""

from __future__ import annotations

import math

from reward.audit_config import AuditThresholds


def _flag(flags: list[dict], flag_id: str, section: str, message: str, value: float, threshold: float) -> None:
    flags.append({"id": flag_id, "section": section, "message": message, "value": value, "threshold": threshold})


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def collect_flags(metrics: dict, thresholds: AuditThresholds) -> list[dict]:
    """All flags of an audit's ``metrics`` (see ``reward.audit.AuditResult.metrics``), in report order."""
    flags: list[dict] = []
    _calibration_flags(metrics.get("calibration", {}), thresholds, flags)
    _discrimination_flags(metrics.get("discrimination", {}), thresholds, flags)
    disagreement = metrics.get("disagreement", {}).get("relative_median")
    if _finite(disagreement) and disagreement > thresholds.max_disagreement:
        _flag(
            flags,
            "ensemble_disagreement",
            "disagreement",
            f"median ensemble disagreement {disagreement:.3f} reward SDs is above {thresholds.max_disagreement}",
            disagreement,
            thresholds.max_disagreement,
        )
    _probe_flags(metrics.get("probes", {}), thresholds, flags)
    _overoptimisation_flags(metrics.get("overoptimisation"), thresholds, flags)
    return flags


def _calibration_flags(calibration: dict, thresholds: AuditThresholds, flags: list[dict]) -> None:
    checks = (
        ("click", "ece", thresholds.max_click_ece, "click head ECE"),
        ("preference", "ece", thresholds.max_preference_ece, "preference head ECE of P(a | not a tie)"),
        ("dwell", "tv", thresholds.max_dwell_calibration, "dwell head D-calibration distance"),
    )
    for head, key, threshold, what in checks:
        value = calibration.get(head, {}).get(key)
        if _finite(value) and value > threshold:
            _flag(
                flags,
                f"{head}_calibration",
                "calibration",
                f"{what} {value:.4f} is above {threshold}",
                value,
                threshold,
            )


def _discrimination_flags(discrimination: dict, thresholds: AuditThresholds, flags: list[dict]) -> None:
    for metric, what in (("click_auc", "click AUC"), ("pairwise_accuracy", "pairwise accuracy")):
        section = discrimination.get(metric)
        if not section:
            continue
        ratio = section.get("ratio")
        if _finite(ratio) and ratio < thresholds.min_ceiling_ratio:
            _flag(
                flags,
                f"{metric}_ceiling",
                "discrimination",
                f"{what} is {ratio:.1%} of its Bayes ceiling, below {thresholds.min_ceiling_ratio:.0%}",
                ratio,
                thresholds.min_ceiling_ratio,
            )
        overall = section.get("overall")
        for dimension, table in section.get("slices", {}).items():
            for label, entry in table.items():
                if entry["rows"] < thresholds.min_slice_size:
                    continue
                slice_ratio = entry.get("ratio")
                if _finite(slice_ratio):
                    if slice_ratio < thresholds.min_slice_ceiling_ratio:
                        _flag(
                            flags,
                            f"{metric}_slice",
                            "discrimination",
                            f"{what} on {dimension}={label} ({entry['rows']} rows) is {slice_ratio:.1%} of the "
                            f"slice's ceiling, below {thresholds.min_slice_ceiling_ratio:.0%}",
                            slice_ratio,
                            thresholds.min_slice_ceiling_ratio,
                        )
                elif (
                    _finite(entry["value"])
                    and _finite(overall)
                    and overall - entry["value"] > thresholds.max_slice_gap
                ):
                    _flag(
                        flags,
                        f"{metric}_slice",
                        "discrimination",
                        f"{what} on {dimension}={label} ({entry['rows']} rows) is {entry['value']:.4f}, more than "
                        f"{thresholds.max_slice_gap} below the overall {overall:.4f}",
                        overall - entry["value"],
                        thresholds.max_slice_gap,
                    )


def _probe_flags(probes: dict, thresholds: AuditThresholds, flags: list[dict]) -> None:
    for result in probes.get("spurious", []):
        name = f"{result['edit']} ({result['region']})"
        shift = result["spurious_shift_sd"]
        gold = result.get("gold_shift_sd")
        if _finite(shift) and abs(shift) > thresholds.max_spurious_shift_sd:
            if _finite(gold):
                what = f"the reward moves {shift:+.3f} SD more than gold does (reward "
                what += f"{result['reward_shift_sd']:+.3f} SD, gold {gold:+.3f} SD)"
            else:  # no truth (or gold without spread): the whole reward shift is the spurious part
                what = f"the reward moves {shift:+.3f} SD"
            _flag(
                flags,
                "spurious_shift",
                "probes",
                f"{name}: {what}; |shift| above {thresholds.max_spurious_shift_sd}",
                shift,
                thresholds.max_spurious_shift_sd,
            )
        rank = result["reward_rank_correlation"]
        if _finite(rank) and rank < thresholds.min_spurious_rank_correlation:
            _flag(
                flags,
                "spurious_rank",
                "probes",
                f"{name}: rank correlation of rewards before/after is {rank:.3f}, below "
                f"{thresholds.min_spurious_rank_correlation}",
                rank,
                thresholds.min_spurious_rank_correlation,
            )
    for result in probes.get("tamper", []):
        shift = result["reward_shift_sd"]
        if _finite(shift) and shift > -thresholds.min_tamper_drop_sd:
            _flag(
                flags,
                "tamper_not_noticed",
                "probes",
                f"product {result['edit']} tamper: the reward moved {shift:+.3f} SD; it should drop by at least "
                f"{thresholds.min_tamper_drop_sd} SD (the export gate relies on the pixel verifier)",
                shift,
                -thresholds.min_tamper_drop_sd,
            )


def _overoptimisation_flags(section: dict | None, thresholds: AuditThresholds, flags: list[dict]) -> None:
    if not section:
        return
    points = [p for p in section["evaluations"] if _finite(p.get("gold_gain_sd"))]
    if not points:
        return
    peak = max(points, key=lambda p: p["gold_gain_sd"])
    last = points[-1]
    drop = peak["gold_gain_sd"] - last["gold_gain_sd"]
    if drop > thresholds.max_overoptimisation_drop_sd and last["proxy_gain_sd"] >= peak["proxy_gain_sd"]:
        _flag(
            flags,
            "overoptimisation",
            "overoptimisation",
            f"gold gain fell {drop:.3f} SD from its peak at epoch {peak['epoch']} ({peak['gold_gain_sd']:+.3f}) to "
            f"{last['gold_gain_sd']:+.3f} at epoch {last['epoch']} while the proxy did not fall "
            f"({peak['proxy_gain_sd']:+.3f} -> {last['proxy_gain_sd']:+.3f}); drop above "
            f"{thresholds.max_overoptimisation_drop_sd}",
            drop,
            thresholds.max_overoptimisation_drop_sd,
        )
    gap = last["proxy_gain_sd"] - last["gold_gain_sd"]
    if gap > thresholds.max_proxy_gold_gap_sd:
        _flag(
            flags,
            "proxy_gold_gap",
            "overoptimisation",
            f"at epoch {last['epoch']} the proxy gain ({last['proxy_gain_sd']:+.3f} SD) exceeds the gold gain "
            f"({last['gold_gain_sd']:+.3f} SD) by {gap:.3f}, above {thresholds.max_proxy_gold_gap_sd}",
            gap,
            thresholds.max_proxy_gold_gap_sd,
        )
