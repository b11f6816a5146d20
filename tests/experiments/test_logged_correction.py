"""The logs' correction of the direct lift (``experiments/export/logged_correction.py``): residuals per cluster and
their weighting checked by hand on three clusters, abstention with its numbers, no change when the cluster shares
agree, the DR term, the interval widening, the gate on the corrected bound, and bad config values by key."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from experiments.config import ConfigError, load_config
from experiments.export.config import ExportCommandConfig, LoggedCorrectionConfig
from experiments.export.direct import direct_lift
from experiments.export.gates import lift_gate
from experiments.export.logged_correction import (
    LoggedClicks,
    logged_correction,
    measure_correction,
    not_applied,
    sibling_distances,
)

# Six logged images in three well-separated clusters (two products, A and B, each logged once per cluster).
EMBEDDINGS = np.array([[0, 0], [0, 1], [10, 0], [10, 1], [0, 10], [1, 10]], dtype=np.float64)
PRODUCTS = np.array(["A", "B", "A", "B", "A", "B"], dtype=object)
# Impressions: image, θ of the slot (1 or 0.5), P̂(click | slot 1), clicked.
IMPRESSIONS = [
    (0, 1.0, 0.5, 1),
    (0, 0.5, 0.5, 0),
    (1, 1.0, 0.2, 0),
    (1, 0.5, 0.2, 1),
    (2, 1.0, 0.4, 0),
    (3, 1.0, 0.1, 0),
    (3, 0.5, 0.1, 0),
    (4, 1.0, 0.3, 1),
    (5, 0.5, 0.6, 1),
]
LOGGED = LoggedClicks(
    embeddings=EMBEDDINGS,
    products=PRODUCTS,
    image_row=np.array([i[0] for i in IMPRESSIONS]),
    clicked=np.array([float(i[3]) for i in IMPRESSIONS]),
    predicted=np.array([i[1] * i[2] for i in IMPRESSIONS]),
    examination=np.array([i[1] for i in IMPRESSIONS]),
)
# Fresh samples, 2 requests x 2 seeds, request-major; each lies inside its cluster's extent (0.5 from the centre).
CANDIDATE = np.array([[0.2, 0.3], [10.1, 0.2], [0.3, 10.2], [0.1, 0.4]])  # clusters 0, 1, 2, 0
BASE = np.array([[0.1, 0.2], [10.2, 0.6], [9.9, 0.5], [0.2, 0.7]])  # clusters 0, 1, 1, 0
CONFIG = LoggedCorrectionConfig(clusters=3, min_impressions_per_cluster=2, overlap_distance=0.0, n_bootstrap=400)
CLICK_WEIGHT, CLICK_STD = 0.5, 0.1
# The direct lift: base rewards 0 and 1 within each request (within-request SD sqrt(0.5)), candidate 0.3 higher.
LIFT = direct_lift(np.array([[[0.3, 1.3], [0.2, 1.4]]]), np.array([[[0.0, 1.0], [0.0, 1.0]]]), n_bootstrap=200, seed=0)


def correct(candidate=CANDIDATE, base=BASE, config=CONFIG, logged=LOGGED):
    return logged_correction(
        logged, candidate, base, seeds_per_request=2, lift=LIFT, click_weight=CLICK_WEIGHT, click_std=CLICK_STD,
        config=config,
    )  # fmt: skip


def test_residuals_and_correction_by_hand_on_three_clusters() -> None:
    result = correct()
    # δ_c = Σ (y − θ p̂) / Σ θ over the cluster's impressions.
    delta = [
        ((1 - 0.5) + (0 - 0.25) + (0 - 0.2) + (1 - 0.1)) / (1 + 0.5 + 1 + 0.5),
        ((0 - 0.4) + (0 - 0.1) + (0 - 0.05)) / (1 + 1 + 0.5),
        ((1 - 0.3) + (1 - 0.3)) / (1 + 0.5),
    ]
    by_images = {tuple(sorted(r["images"] for r in result.cluster_table))}
    assert by_images == {(2, 2, 2)} and result.clusters == 3 and result.eligible_clusters == 3
    table = sorted(result.cluster_table, key=lambda r: r["impressions"], reverse=True)  # clusters 0, 1, 2
    for row, expected in zip(table, delta):
        assert row["residual"] == pytest.approx(expected, abs=1e-12)
    # Shares: candidate (1/2, 1/4, 1/4), base (1/2, 1/2, 0).
    assert [(r["candidate_share"], r["base_share"]) for r in table] == [(0.5, 0.5), (0.25, 0.5), (0.25, 0.0)]
    clicks = (0.5 - 0.5) * delta[0] + (0.25 - 0.5) * delta[1] + (0.25 - 0.0) * delta[2]
    assert clicks == pytest.approx(0.055 + 0.2333333333333, abs=1e-9)
    unit = math.sqrt(0.5)
    assert LIFT.base_within_sd == pytest.approx(unit, abs=1e-12)
    assert result.correction_clicks == pytest.approx(clicks, abs=1e-12)
    assert result.correction_sd == pytest.approx(clicks * CLICK_WEIGHT / CLICK_STD / unit, abs=1e-12)
    assert result.dr_term_sd == 0.0 and result.overlap_share == 0.0  # nothing within distance 0 of a logged image
    assert result.applied and result.status == "applied" and result.coverage == 1.0
    assert result.lift_sd == pytest.approx(LIFT.lift_sd + result.correction_sd, abs=1e-12)
    # The interval widens: half-widths add in quadrature.
    low_half = math.hypot(LIFT.lift_sd - LIFT.lower_sd, result.correction_sd - result.correction_lower_sd)
    assert result.lower_sd == pytest.approx(result.lift_sd - low_half, abs=1e-12)
    assert result.correction_lower_sd <= result.correction_sd <= result.correction_upper_sd
    assert result.upper_sd - result.lower_sd >= LIFT.upper_sd - LIFT.lower_sd
    assert result.member_lifts_sd == pytest.approx([LIFT.member_lifts_sd[0] + result.correction_sd])


def test_a_negative_click_weight_flips_the_correction_and_keeps_its_interval_ordered() -> None:
    flipped = logged_correction(
        LOGGED, CANDIDATE, BASE, seeds_per_request=2, lift=LIFT, click_weight=-CLICK_WEIGHT, click_std=CLICK_STD,
        config=CONFIG,
    )  # fmt: skip
    assert flipped.correction_sd == pytest.approx(-correct().correction_sd, abs=1e-12)
    assert flipped.correction_lower_sd <= flipped.correction_sd <= flipped.correction_upper_sd


def test_poor_coverage_abstains_and_names_the_numbers() -> None:
    far = CANDIDATE.copy()
    far[1:] = [50.0, 50.0]  # three of four samples outside every cluster's extent
    result = correct(candidate=far)
    assert not result.applied and result.coverage == 0.25
    assert result.status.startswith("abstained: coverage 0.250 < 0.5 (share of the candidate's 4 samples")
    assert ">= 2 impressions" in result.status
    assert result.lift_sd is None and result.lower_sd is None and result.member_lifts_sd is None
    assert result.correction_sd is not None  # what it would have been is still recorded
    # Inside = within the cluster's extent (0.5) plus h, the median nearest-sibling distance (10 here).
    assert result.reach == 10.0
    near, beyond = CANDIDATE.copy(), CANDIDATE.copy()
    near[1:], beyond[1:] = [0.0, -9.9], [0.0, -10.1]  # 10.4 and 10.6 from cluster 0's centre (0, 0.5)
    assert correct(candidate=near).coverage == 1.0 and correct(candidate=beyond).coverage == 0.25
    # A cluster below min_impressions_per_cluster covers nothing: cluster 2 holds 2 impressions.
    thin = correct(config=dataclasses.replace(CONFIG, min_impressions_per_cluster=3, min_coverage=0.8))
    assert (
        thin.eligible_clusters == 2 and thin.coverage == 0.75 and thin.status.startswith("abstained: coverage 0.750")
    )


def test_same_cluster_shares_change_nothing() -> None:
    # Different points, same cluster per request and seed position: shares agree in every bootstrap replicate too.
    base = CANDIDATE + np.array([[0.1, -0.1], [-0.1, 0.1], [0.1, -0.1], [0.0, 0.05]])
    result = correct(base=base)
    assert result.correction_sd == 0.0 and result.correction_lower_sd == 0.0 and result.correction_upper_sd == 0.0
    assert (result.lift_sd, result.lower_sd, result.upper_sd) == (LIFT.lift_sd, LIFT.lower_sd, LIFT.upper_sd)


def test_the_dr_term_uses_the_overlapping_variants_own_residual() -> None:
    # The candidate's second sample sits on logged image 2 (cluster 1, δ_image = −0.4 / 1, δ_cluster = −0.22).
    candidate = CANDIDATE.copy()
    candidate[1] = EMBEDDINGS[2]
    config = dataclasses.replace(CONFIG, overlap_distance=0.05, min_impressions_per_variant=1)
    result = correct(candidate=candidate, config=config)
    assert result.overlap_share == 0.25 and result.base_overlap_share == 0.0
    dr_clicks = (-0.4 - (-0.55 / 2.5)) / 4
    assert result.dr_term_sd == pytest.approx(dr_clicks * CLICK_WEIGHT / CLICK_STD / LIFT.base_within_sd, abs=1e-12)
    # A variant with fewer impressions than min_impressions_per_variant is not used.
    strict = correct(candidate=candidate, config=dataclasses.replace(config, min_impressions_per_variant=2))
    assert strict.overlap_share == 0.0 and strict.dr_term_sd == 0.0


def test_default_overlap_distance_is_a_quantile_of_sibling_distances() -> None:
    siblings = sibling_distances(EMBEDDINGS, PRODUCTS)
    # A: (0,0), (10,0), (0,10) -> 10 each; B: (0,1), (10,1), (1,10) -> sqrt(82), 10, sqrt(82).
    assert sorted(siblings) == pytest.approx(sorted([10, 10, 10, math.sqrt(82), 10, math.sqrt(82)]))
    result = correct(config=dataclasses.replace(CONFIG, overlap_distance=None, overlap_quantile=0.0))
    assert result.overlap_distance == pytest.approx(math.sqrt(82))
    assert "0 quantile of 6 logged images' distances to their nearest sibling" in result.overlap_distance_source
    alone = dataclasses.replace(LOGGED, products=np.array(list("ABCDEF"), dtype=object))
    lonely = correct(config=dataclasses.replace(CONFIG, overlap_distance=None), logged=alone)
    assert lonely.overlap_distance == 0.0 and "no product has two logged images" in lonely.overlap_distance_source


def test_the_gate_decides_on_the_corrected_bound_or_says_it_abstained() -> None:
    applied = correct()
    gate = lift_gate(LIFT, 0.0, correction=applied)
    assert gate.value == applied.lower_sd and gate.details["logged_correction"]["status"] == "applied"
    assert f"logged correction {applied.correction_sd:+.3f} SD applied" in gate.message
    assert gate.passed == (applied.lower_sd > 0)
    far = CANDIDATE.copy()
    far[1:] = [50.0, 50.0]
    abstained = lift_gate(LIFT, 0.0, correction=correct(candidate=far))
    plain = lift_gate(LIFT, 0.0)
    assert abstained.value == plain.value == LIFT.lower_sd and abstained.passed == plain.passed
    assert "logged correction abstained: coverage 0.250 < 0.5" in abstained.message
    assert "the plain direct lift decides" in abstained.message
    missing = lift_gate(LIFT, 0.0, correction=not_applied("no logs at /x"))
    assert "logged correction not applied: no logs at /x" in missing.message and missing.value == LIFT.lower_sd


def test_without_logs_or_when_disabled_the_correction_says_why_it_was_not_applied(tmp_path) -> None:
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    scorer = SimpleNamespace(config=SimpleNamespace(combination=SimpleNamespace(weights={"click": 0.0})))

    def measure(logs_dir, config=CONFIG):
        return measure_correction(
            scorer, logs_dir, images, images, masks, seeds_per_request=2, lift=LIFT, config=config
        )

    disabled = measure(tmp_path, dataclasses.replace(CONFIG, enabled=False))
    assert disabled.status == "not applied: disabled ([export.lift.logged_correction] enabled = false)"
    missing = measure(tmp_path / "nope")
    assert not missing.applied and missing.status.startswith(f"not applied: no logs ({tmp_path / 'nope'})")
    assert missing.correction_sd is None and missing.coverage is None
    assert "click head weight 0" in measure(tmp_path).status


def test_a_click_head_that_barely_varies_gets_no_correction() -> None:
    """A residual is divided by the click head's SD: below min_click_std the correction is not applied."""
    result = logged_correction(
        LOGGED, CANDIDATE, BASE, seeds_per_request=2, lift=LIFT, click_weight=CLICK_WEIGHT, click_std=5.5e-5,
        config=CONFIG,
    )  # fmt: skip
    assert not result.applied
    assert result.status == (
        "not applied: the click head barely varies (normalising SD 5.5e-05 < min_click_std 0.001 clicks): its "
        "residuals would be divided by that SD"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("clusters=0", "export.lift.logged_correction: clusters must be >= 1, got 0"),
        ("min_impressions_per_cluster=0", "export.lift.logged_correction: min_impressions_per_cluster must be >= 1"),
        ("min_coverage=1.5", "export.lift.logged_correction: min_coverage must be in \\[0, 1\\], got 1.5"),
        ("overlap_distance=-1.0", "export.lift.logged_correction: overlap_distance must be >= 0 \\(or unset\\)"),
        ("overlap_quantile=2.0", "export.lift.logged_correction: overlap_quantile must be in \\[0, 1\\], got 2.0"),
        ("min_impressions_per_variant=0", "export.lift.logged_correction: min_impressions_per_variant must be >= 1"),
        ("n_bootstrap=10", "export.lift.logged_correction: n_bootstrap must be >= 100, got 10"),
        ("seed=-1", "export.lift.logged_correction: seed must be >= 0, got -1"),
        ("min_click_std=-1.0", "export.lift.logged_correction: min_click_std must be >= 0, got -1.0"),
        ("cluster=3", "unknown key 'export.lift.logged_correction.cluster' \\(did you mean 'clusters'\\?\\)"),
    ],
)
def test_bad_config_values_are_refused_by_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(ExportCommandConfig, None, [f"export.lift.logged_correction.{override}"])


@pytest.mark.parametrize(
    ("candidate", "base", "k", "message"),
    [
        (CANDIDATE[:, :1], BASE[:, :1], 2, "must both be \\[N, 2\\]"),
        (CANDIDATE, BASE[:2], 2, "must both be \\[N, 2\\]"),
        (CANDIDATE[:3], BASE[:3], 2, "3 samples are not R x K with K = 2"),
    ],
)
def test_bad_shapes_are_named(candidate, base, k, message) -> None:
    with pytest.raises(ValueError, match=message):
        logged_correction(
            LOGGED, candidate, base, seeds_per_request=k, lift=LIFT, click_weight=1.0, click_std=1.0, config=CONFIG
        )
