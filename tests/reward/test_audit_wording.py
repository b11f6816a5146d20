"""Honest audit pictures and words: axes reach every value, "gold" only with truth, shifts only in real units."""

from __future__ import annotations

import pytest

from reward.audit_config import AuditThresholds
from reward.audit_flags import collect_flags
from reward.plots import score_limits
from reward.report import _calibration_section, _overoptimisation_section, _probes_section


@pytest.mark.parametrize(
    ("values", "limits"),
    [
        ([0.6, 0.9], (0.4, 1.0)),  # inside the usual range: unchanged
        ([0.2, 0.7], (0.15, 1.0)),  # a bad slice below the usual floor is shown, with a margin
        ([0.5, None, float("nan")], (0.4, 1.0)),  # missing values are ignored
        ([], (0.4, 1.0)),
        ([0.5, 1.2], (0.4, 1.25)),  # ratios above 1 too
    ],
)
def test_score_limits_reach_every_value(values: list, limits: tuple[float, float]) -> None:
    assert score_limits(values) == pytest.approx(limits)


def _probe(edit: str, reward_shift: float, gold_shift: float | None) -> dict:
    spurious = reward_shift - (gold_shift or 0.0)
    return {
        "edit": edit,
        "region": "background",
        "reward_shift_sd": reward_shift,
        "reward_abs_shift_sd": abs(reward_shift),
        "reward_rank_correlation": 0.9,
        "share_up": 1.0,
        "gold_shift_sd": gold_shift,
        "spurious_shift_sd": spurious,
    }


def _metrics(probes: dict) -> dict:
    return {"thresholds": {"max_spurious_shift_sd": 0.25, "min_tamper_drop_sd": 0.1}, "probes": probes}


def test_without_truth_the_probes_never_mention_gold() -> None:
    probes = {
        "images": 8,
        "mask": "the product mask",
        "reward_sd": 0.4,
        "gold_sd": None,
        "spurious": [_probe("blur", 0.5, None)],
    }
    page = _probes_section(_metrics(probes), {})
    assert "gold" not in page.lower()
    assert "every reward shift counts as spurious" in page
    (flag,) = collect_flags({"probes": probes}, AuditThresholds())
    assert "gold" not in flag["message"] and "moves +0.500 SD" in flag["message"]


def test_with_truth_gold_is_named_and_a_constant_gold_says_no_spread() -> None:
    probes = {
        "images": 8,
        "mask": "the product mask",
        "reward_sd": 0.4,
        "gold_sd": 3e-12,
        "gold_has_spread": False,
        "spurious": [_probe("blur", 0.5, None)],
    }
    page = _probes_section(_metrics(probes), {})
    assert "gold shift" in page and "no spread" in page
    assert "895" not in page
    with_gold = dict(probes, gold_sd=0.2, gold_has_spread=True, spurious=[_probe("blur", 0.5, 0.4)])
    (flag,) = collect_flags({"probes": with_gold}, AuditThresholds(max_spurious_shift_sd=0.05))
    assert "more than gold does" in flag["message"] and "gold +0.400 SD" in flag["message"]


def test_overoptimisation_without_gold_shows_the_proxy_only() -> None:
    section = {"run": "runs/policy_train/x", "evaluations": [{"epoch": 1, "kl_nats": 2.0, "proxy_gain_sd": 0.3}]}
    page = _overoptimisation_section({"overoptimisation": section}, {})
    assert "gold" not in page.replace("logged no gold", "") and "KL per sample (nats)" in page


def test_the_calibration_section_says_which_calibrator_was_kept_and_why() -> None:
    note = "isotonic dropped, it did not improve calibration: held-out ECE 0.0180 uncalibrated vs 0.0416 isotonic"
    metrics = {
        "thresholds": {"max_click_ece": 0.02},
        "calibration": {
            "click": {"ece": 0.018, "ece_uncalibrated": 0.018, "calibrator": "none", "calibrator_note": note}
        },
    }
    page = _calibration_section(metrics, {})
    assert "Click calibrator: none (isotonic dropped, it did not improve calibration" in page
