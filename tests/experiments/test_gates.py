"""Each export gate: passes at its threshold, fails past it, and names the value and the threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.export.gates import (
    GateRefusedError,
    audit_gate,
    check_gates,
    kl_gate,
    lift_gate,
    ope_gate,
    preservation_gate,
    recorded_override,
)


def products(batch: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8)
    masks = torch.zeros(batch, size, size, dtype=torch.bool)
    masks[:, 4:12, 5:11] = True
    return images, masks


def test_preservation_passes_when_only_the_background_changed() -> None:
    originals, masks = products()
    outputs = torch.where(masks[:, None], originals, torch.zeros_like(originals))
    gate = preservation_gate(originals, outputs, masks, ["r0", "r1", "r2"], [1, 2, 3])
    assert gate.passed and gate.value == 0.0 and gate.threshold == 0.0
    assert gate.details["product_pixels_checked"] == int(masks.sum())
    assert "0 product pixels changed in 3 outputs" in gate.message


def test_preservation_names_the_request_and_the_pixel_count_of_one_planted_change() -> None:
    originals, masks = products()
    outputs = originals.clone()
    outputs[1, 2, 6, 7] ^= 1  # one channel of one product pixel of the second output, off by one
    gate = preservation_gate(originals, outputs, masks, ["r0", "p0007|oak|warm", "r2"], [10, 11, 12])
    assert not gate.passed and gate.value == 1.0 and gate.threshold == 0.0
    assert "request 'p0007|oak|warm' (seed 11): 1 product pixel(s) changed, max |diff| 1" in gate.message
    assert gate.details["violations"] == [
        {"request_id": "p0007|oak|warm", "seed": 11, "changed_pixels": 1, "max_abs_diff": 1}
    ]


def test_preservation_ignores_background_changes_next_to_a_product_change() -> None:
    originals, masks = products(batch=1)
    outputs = originals.clone()
    outputs[0, :, 0, 0] = outputs[0, :, 0, 0] + 50  # background
    outputs[0, 0, 4, 5] = outputs[0, 0, 4, 5] + 3  # product corner
    gate = preservation_gate(originals, outputs, masks, ["only"], [0])
    assert gate.value == 1.0 and "max |diff| 3" in gate.message


def test_kl_gate_boundary_and_message() -> None:
    at = kl_gate(np.array([100.0, 300.0]), 200.0, run_kl_nats=180.0)
    assert at.passed and at.value == 200.0 and at.threshold == 200.0
    assert (
        "200.0 nats per sample over 2 samples, within the budget 200 (the run's last evaluation: 180.0)" in at.message
    )
    above = kl_gate(np.array([100.0, 301.0]), 200.0)
    assert not above.passed and "200.5 nats per sample over 2 samples, above the budget 200" in above.message
    with pytest.raises(ValueError, match="non-empty"):
        kl_gate(np.array([]), 1.0)


def test_ope_gate_messages() -> None:
    passed = ope_gate(0.02, -0.005, 0.04, -0.01, estimator="dr")
    assert passed.passed and passed.value == -0.005 and passed.threshold == -0.01
    assert passed.name == "logged_noninferiority" and passed.message.startswith("among logged images")
    assert "interval [-0.0050, +0.0400]: lower bound at or above the non-inferiority margin -0.01" in passed.message
    below = ope_gate(0.0, -0.03, 0.03, -0.01, estimator="dr")
    assert not below.passed and "lower bound below the non-inferiority margin -0.01" in below.message
    refused = ope_gate(None, None, None, 0.0, estimator="dr", refusal="weight ESS 12.0 below 30")
    assert not refused.passed and refused.value is None
    assert refused.message == "off-policy evaluation on the logs impossible: weight ESS 12.0 below 30"
    no_interval = ope_gate(0.01, float("nan"), float("nan"), 0.0, estimator="dr")
    assert not no_interval.passed and "no finite lower bound" in no_interval.message


def test_lift_gate_names_the_value_the_threshold_and_the_members() -> None:
    from experiments.export.direct import direct_lift

    base = np.array([[[0.0, 1.0], [1.0, 2.0], [3.0, 4.0]]] * 2)  # [M=2, R=3, K=2]
    up = direct_lift(base + np.array([1.0, 1.2])[:, None, None], base, n_bootstrap=200)
    passed = lift_gate(up, 0.0)
    assert passed.passed and passed.name == "lift" and passed.value == up.lower_sd and passed.threshold == 0.0
    assert f"direct lift over the base {up.lift_sd:+.3f} within-request SD of the reward" in passed.message
    assert f"interval [{up.lower_sd:+.3f}, {up.upper_sd:+.3f}]" in passed.message
    assert "lower bound above the threshold +0; 2 of 2 member(s) see a lift above it (need 2)" in passed.message
    assert "calibration error not included" in passed.message
    high = lift_gate(up, 5.0)
    assert not high.passed and "lower bound not above the threshold +5; 0 of 2 member(s)" in high.message
    refused = lift_gate(None, 0.0, refusal="seeds_per_request must be >= 2")
    assert not refused.passed and refused.value is None
    assert refused.message == "direct lift not measured: seeds_per_request must be >= 2"


def test_lift_gate_refuses_when_a_member_disagrees_even_with_a_positive_lower_bound() -> None:
    from experiments.export.direct import direct_lift

    base = np.array([[[0.0, 1.0], [1.0, 2.0], [3.0, 4.0]]] * 3)
    shifts = np.array([3.0, 3.0, -0.2])[:, None, None]  # two members see +3 reward, the third -0.2
    lift = direct_lift(base + shifts, base, n_bootstrap=400, resample_members=False)
    assert lift.lower_sd > 0  # the ensemble mean alone would pass
    gate = lift_gate(lift, 0.0)
    assert not gate.passed and "2 of 3 member(s) see a lift above it (need 3)" in gate.message
    assert lift_gate(lift, 0.0, min_member_share=0.6).passed


def test_audit_gate_with_tolerated_flags() -> None:
    flags = [
        {"id": "tamper_not_noticed", "message": "hue tamper: +0.03 SD", "value": 0.03, "threshold": -0.1},
        {
            "id": "click_calibration",
            "message": "click head ECE 0.0300 is above 0.02",
            "value": 0.03,
            "threshold": 0.02,
        },
    ]
    failing = audit_gate(flags)
    assert not failing.passed and failing.value == 2.0 and failing.threshold == 0.0
    assert "click head ECE 0.0300 is above 0.02" in failing.message
    one = audit_gate(flags, tolerated=["tamper_not_noticed"])
    assert not one.passed and one.value == 1.0 and "tamper" not in one.message
    clean = audit_gate(flags, tolerated=["tamper_not_noticed", "click_calibration"])
    assert clean.passed and "(2 tolerated)" in clean.message
    assert audit_gate([]).passed


def test_check_gates_refuses_or_records_the_override() -> None:
    gates = [kl_gate(np.array([10.0]), 5.0), audit_gate([])]
    with pytest.raises(GateRefusedError, match="1 of 2 gate\\(s\\) failed:\n  kl: KL to the base 10.0 nats") as info:
        check_gates(gates, None)
    assert info.value.exit_code == 4 and "--override" in str(info.value)
    assert [g.name for g in check_gates(gates, "accepted by the A/B owner")] == ["kl"]
    assert check_gates([audit_gate([])], None) == []
    with pytest.raises(ValueError, match="needs a reason"):
        check_gates(gates, "  ")


def test_an_override_is_recorded_only_when_it_let_a_failed_gate_through() -> None:
    failing = [kl_gate(np.array([10.0]), 5.0), audit_gate([])]
    passing = [kl_gate(np.array([1.0]), 5.0), audit_gate([])]
    reason = "accepted by the A/B owner"
    assert recorded_override(check_gates(failing, reason), reason) == reason
    assert recorded_override(check_gates(passing, reason), reason) is None
    assert recorded_override(check_gates(passing, None), None) is None
