"""The direct lift (experiments/export/direct.py): hand-checked on 3 x 2 tables, the ensemble's spread and the
calibration error widen its interval, and no-difference candidates do not come out as lifts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from experiments.export.direct import calibration_margin, direct_lift

# Base [R=3 requests, K=2 seeds]: each request's two seeds differ by 1, so every within-request variance
# (unbiased) is 0.5 and the pooled SD is sqrt(0.5).
BASE = np.array([[0.0, 1.0], [1.0, 2.0], [3.0, 4.0]])
# Candidate - base per (request, seed): request means +0.5, +2, -0.5 -> lift 2/3 reward units.
DIFF = np.array([[1.0, 0.0], [2.0, 2.0], [-1.0, 0.0]])
SD = math.sqrt(0.5)


def one_member(table: np.ndarray) -> np.ndarray:
    return table[None]


def test_hand_checked_lift_and_interval_on_a_3x2_table() -> None:
    lift = direct_lift(one_member(BASE + DIFF), one_member(BASE), n_bootstrap=2000, seed=1)
    assert lift.base_within_sd == pytest.approx(SD, rel=1e-12)
    assert lift.lift_raw == pytest.approx(2 / 3, rel=1e-12)
    assert lift.lift_sd == pytest.approx((2 / 3) / SD, rel=1e-12)
    # The bootstrap of 3 requests has 27 equally likely resamples; "all three the worst (best) request" has
    # probability 1/27 = 3.7 % > 2.5 %, so the 95 % percentile interval is exactly [worst, best] request mean.
    assert lift.lower_sd == pytest.approx(-0.5 / SD, rel=1e-12)
    assert lift.upper_sd == pytest.approx(2.0 / SD, rel=1e-12)
    assert lift.member_lifts_sd == pytest.approx((lift.lift_sd,))
    assert lift.members_only_width_sd == 0.0 and lift.reward_model_share == 0.0  # one member: no spread
    assert lift.calibration_margin_sd is None


def test_bootstrap_matches_the_enumerated_resamples_of_three_requests() -> None:
    means = np.array([0.5, 2.0, -0.5]) / SD
    exact = sorted(np.mean(means[list(draw)]) for draw in itertools.product(range(3), repeat=3))
    lift = direct_lift(one_member(BASE + DIFF), one_member(BASE), confidence=0.5, n_bootstrap=20000, seed=2)
    # The exact quartiles are atoms: CDF(1/6) = 7/27 > 1/4 and CDF(1) = 20/27 < 3/4, ~3 Monte Carlo SDs clear.
    assert lift.lower_sd == pytest.approx(np.quantile(exact, 0.25, method="inverted_cdf"), abs=1e-9)
    assert lift.upper_sd == pytest.approx(np.quantile(exact, 0.75, method="inverted_cdf"), abs=1e-9)


def test_identical_candidate_and_base_give_exactly_zero_and_an_empty_interval() -> None:
    base = np.stack([BASE, BASE * 2.0 + 1.0])
    lift = direct_lift(base.copy(), base)
    assert lift.lift_sd == 0.0 and lift.lower_sd == 0.0 and lift.upper_sd == 0.0
    assert lift.member_lifts_sd == (0.0, 0.0)


def test_ensemble_spread_widens_the_interval() -> None:
    candidate = BASE + DIFF
    agreeing = direct_lift(np.stack([candidate, candidate]), np.stack([BASE, BASE]), seed=3)
    spread = np.stack([candidate + 1.0, candidate - 1.0])  # same ensemble mean, members disagree by +-1
    disagreeing = direct_lift(spread, np.stack([BASE, BASE]), seed=3)
    assert disagreeing.lift_sd == pytest.approx(agreeing.lift_sd, rel=1e-12)
    assert disagreeing.lower_sd < agreeing.lower_sd - 0.5 and disagreeing.upper_sd > agreeing.upper_sd + 0.5
    assert disagreeing.members_only_width_sd > 0 and disagreeing.reward_model_share > 0.3
    assert disagreeing.member_lifts_sd == pytest.approx((agreeing.lift_sd + 1 / SD, agreeing.lift_sd - 1 / SD))
    # Without member resampling the ensemble mean is taken as exact: the spread is invisible.
    fixed = direct_lift(spread, np.stack([BASE, BASE]), seed=3, resample_members=False)
    assert (fixed.lower_sd, fixed.upper_sd) == pytest.approx((agreeing.lower_sd, agreeing.upper_sd))


def test_members_that_disagree_in_sign_put_zero_inside_the_interval() -> None:
    base = np.stack([BASE, BASE])
    lift = direct_lift(np.stack([BASE + 1.0, BASE - 1.0]), base, seed=4)
    assert lift.lift_sd == 0.0 and lift.lower_sd < 0 < lift.upper_sd
    assert lift.members_above(0.0) == 1


def test_calibration_error_widens_both_ends_in_sds() -> None:
    # click weight 0.5, click SD 0.1: an ECE of 0.02 is 0.5 * 0.02 / 0.1 = 0.1 reward units.
    margin = calibration_margin(0.02, 0.5, 0.1)
    assert margin == pytest.approx(0.1)
    plain = direct_lift(one_member(BASE + DIFF), one_member(BASE), seed=5)
    widened = direct_lift(one_member(BASE + DIFF), one_member(BASE), seed=5, calibration_margin_reward=margin)
    assert widened.calibration_margin_sd == pytest.approx(0.1 / SD)
    assert widened.lower_sd == pytest.approx(plain.lower_sd - 0.1 / SD)
    assert widened.upper_sd == pytest.approx(plain.upper_sd + 0.1 / SD)
    assert widened.reward_model_share == pytest.approx(
        1 - (plain.upper_sd - plain.lower_sd) / (widened.upper_sd - widened.lower_sd)
    )


@pytest.mark.parametrize(
    ("candidate", "base", "kwargs", "message"),
    [
        (np.zeros((1, 3, 2)), np.zeros((1, 3, 3)), {}, r"candidate \[1, 3, 2\] and base \[1, 3, 3\] must both be"),
        (np.zeros((1, 3, 1)), np.zeros((1, 3, 1)), {}, r">= 2 seeds per request .* got \[M, R, K\] = \[1, 3, 1\]"),
        (np.full((1, 3, 2), np.nan), one_member(BASE), {}, "the rewards must be finite"),
        (np.zeros((1, 3, 2)), np.zeros((1, 3, 2)), {}, "the base's within-request SD is 0"),
        (one_member(BASE), one_member(BASE), {"confidence": 1.0}, r"confidence must be in \(0, 1\), got 1.0"),
        (one_member(BASE), one_member(BASE), {"n_bootstrap": 50}, "n_bootstrap must be >= 100, got 50"),
        (one_member(BASE), one_member(BASE), {"calibration_margin_reward": -1.0}, "must be >= 0, got -1.0"),
    ],
)
def test_bad_inputs_are_named(candidate, base, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        direct_lift(candidate, base, **kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [((float("nan"), 1.0, 0.1), "click_ece must be finite and >= 0, got nan"), ((0.01, 1.0, 0.0), "click_std")],
)
def test_bad_calibration_inputs_are_named(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        calibration_margin(*args)


def test_member_rewards_are_laid_out_member_request_seed() -> None:
    import torch

    from experiments.export.lift import member_rewards

    class Output:
        def __init__(self, members: torch.Tensor) -> None:
            self.members = members

    def reward_fn(images: torch.Tensor, requests: list) -> Output:
        index = images[:, 0, 0, 0].double()  # image i carries its sample index i
        return Output(torch.stack([index, 100.0 + index]))  # [M=2, B]

    images = torch.arange(6, dtype=torch.uint8)[:, None, None, None].expand(6, 3, 2, 2).contiguous()
    table = member_rewards(reward_fn, images, ["r0", "r0", "r1", "r1", "r2", "r2"], 2, batch_size=4)
    assert table.shape == (2, 3, 2)
    assert table[0].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]] and table[1, 2, 1] == 105.0
    with pytest.raises(ValueError, match="6 images for 6 requests, K = 4"):
        member_rewards(reward_fn, images, ["r"] * 6, 4)
