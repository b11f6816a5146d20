"""policy.losses checked by hand on small tensors, and against torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from policy.losses import (
    clipped_policy_loss,
    diffusion_dpo_loss,
    dpo_logit,
    gaussian_kl,
    noise_prediction_error,
    weighted_denoising_loss,
)
from rollout.ddim_logprob import background_mean


def test_clipped_loss_matches_hand_computed_values() -> None:
    # ratios e^0.1 = 1.10517, e^-0.3 = 0.74082, 1; clip 0.2 -> clipped ratios 1.1052, 0.8, 1.
    log_prob = torch.tensor([0.1, -0.3, 0.0])
    old = torch.zeros(3)
    advantages = torch.tensor([2.0, 1.0, -1.0])
    out = clipped_policy_loss(log_prob, old, advantages, clip_range=0.2)
    # element 0: max(-2 * 1.10517, -2 * 1.10517) = -2.21034
    # element 1: max(-1 * 0.74082, -1 * 0.8) = -0.74082 (the pessimistic, unclipped term)
    # element 2: max(1 * 1, 1 * 1) = 1
    expected = (-2 * math.exp(0.1) - math.exp(-0.3) + 1.0) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.clipfrac.item() == pytest.approx(1 / 3)  # only |0.74 - 1| > 0.2
    assert out.ratio_mean.item() == pytest.approx((math.exp(0.1) + math.exp(-0.3) + 1) / 3, rel=1e-6)
    assert out.approx_kl.item() == pytest.approx(0.5 * (0.01 + 0.09) / 3, rel=1e-6)


def test_clipped_loss_has_no_gradient_where_the_clip_binds() -> None:
    # A positive advantage with a ratio above 1 + eps: the clipped term is the max and is flat in log_prob.
    log_prob = torch.tensor([0.5, 0.05], requires_grad=True)
    out = clipped_policy_loss(log_prob, torch.zeros(2), torch.tensor([1.0, 1.0]), clip_range=0.2)
    out.loss.backward()
    assert log_prob.grad[0].item() == 0.0
    assert log_prob.grad[1].item() == pytest.approx(-math.exp(0.05) / 2, rel=1e-6)


def test_clipped_loss_at_ratio_one_is_minus_mean_advantage() -> None:
    advantages = torch.tensor([0.3, -1.2, 2.0, 0.5])
    log_prob = torch.full((4,), -1.7)
    out = clipped_policy_loss(log_prob, log_prob.clone(), advantages, clip_range=1e-4)
    assert out.loss.item() == pytest.approx(-advantages.mean().item(), rel=1e-6)
    assert out.ratio_mean.item() == 1.0 and out.clipfrac.item() == 0.0 and out.approx_kl.item() == 0.0


@pytest.mark.parametrize(
    ("shapes", "clip", "message"),
    [
        (((3,), (2,), (3,)), 0.1, "one shape"),
        (((3,), (3,), (3, 1)), 0.1, "one shape"),
        (((3,), (3,), (3,)), 0.0, "clip_range must be > 0"),
    ],
)
def test_clipped_loss_refuses_bad_inputs(shapes: tuple, clip: float, message: str) -> None:
    a, b, c = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        clipped_policy_loss(a, b, c, clip)


def test_gaussian_kl_matches_torch_distributions_reduced_over_background() -> None:
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 4, 5, 5, generator=generator)
    ref = mean + 0.3 * torch.randn(3, 4, 5, 5, generator=generator)
    std = torch.tensor([0.5, 1.0, 0.2]).reshape(3, 1, 1, 1)
    background = torch.rand(3, 1, 5, 5, generator=generator) > 0.3
    per_dim = kl_divergence(Normal(mean, std.expand_as(mean)), Normal(ref, std.expand_as(ref)))
    expected = torch.stack(
        [per_dim[b][:, background[b, 0]].mean() for b in range(3)]  # mean over channels x background positions
    )
    got = gaussian_kl(mean, ref, std, background)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert got.shape == (3,)


def test_gaussian_kl_ignores_product_positions_and_is_zero_for_equal_means() -> None:
    mean = torch.zeros(1, 2, 2, 2)
    ref = torch.zeros(1, 2, 2, 2)
    ref[0, :, 0, 0] = 10.0  # a product position
    background = torch.ones(1, 1, 2, 2, dtype=torch.bool)
    background[0, 0, 0, 0] = False
    std = torch.ones(1, 1, 1, 1)
    assert gaussian_kl(mean, ref, std, background).item() == 0.0
    ref[0, 1, 1, 1] = 2.0  # one background dim of 2 x 3 = 6: (2^2 / 2) / 6
    assert gaussian_kl(mean, ref, std, background).item() == pytest.approx(2.0 / 6)
    with pytest.raises(ValueError, match="std must be > 0"):
        gaussian_kl(mean, ref, torch.zeros(1, 1, 1, 1), background)


def test_noise_prediction_error_is_a_background_mean() -> None:
    prediction = torch.arange(8.0).reshape(1, 2, 2, 2)
    background = torch.tensor([[[[True, False], [True, True]]]])
    expected = background_mean(prediction**2, background)
    assert noise_prediction_error(prediction, torch.zeros_like(prediction), background).item() == expected.item()
    # positions (0,0), (1,0), (1,1) of both channels: 0, 2, 3, 4, 6, 7 -> squares sum 114 over 6 dims
    assert expected.item() == pytest.approx(114 / 6)


def test_dpo_loss_is_log_two_when_model_equals_reference() -> None:
    errors = torch.tensor([0.4, 1.3, 0.9])
    logit = dpo_logit(errors, errors.flip(0), errors, errors.flip(0), beta=500.0)
    assert torch.equal(logit, torch.zeros(3))
    torch.testing.assert_close(diffusion_dpo_loss(logit), torch.full((3,), math.log(2)))


def test_dpo_loss_hand_checked_with_a_tie() -> None:
    # e_w = 1, e_l = 2, both reference errors 1.5, beta 2: z = -1 * ((1 - 1.5) - (2 - 1.5)) = 1.
    model_w, model_l = torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])
    ref = torch.tensor([1.5, 1.5])
    logit = dpo_logit(model_w, model_l, ref, ref, beta=2.0)
    torch.testing.assert_close(logit, torch.tensor([1.0, 1.0]))
    loss = diffusion_dpo_loss(logit, tie=torch.tensor([False, True]))
    sigmoid = 1 / (1 + math.exp(-1))
    assert loss[0].item() == pytest.approx(-math.log(sigmoid), rel=1e-6)  # 0.3133
    assert loss[1].item() == pytest.approx(-(math.log(sigmoid) + math.log(1 - sigmoid)) / 2, rel=1e-6)


def test_dpo_gradient_lowers_the_preferred_error() -> None:
    model_w = torch.tensor([1.0], requires_grad=True)
    model_l = torch.tensor([1.0], requires_grad=True)
    loss = diffusion_dpo_loss(dpo_logit(model_w, model_l, torch.tensor([1.0]), torch.tensor([1.0]), beta=4.0))
    loss.sum().backward()
    assert model_w.grad.item() > 0 > model_l.grad.item()  # descent lowers e_w and raises e_l


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dpo_logit(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2), 1.0), "all be \\[N\\]"),
        (lambda: dpo_logit(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.0), "beta must be > 0"),
        (lambda: diffusion_dpo_loss(torch.zeros(2), tie=torch.zeros(2)), "tie must be bool"),
        (lambda: diffusion_dpo_loss(torch.zeros(2, 1)), "logit must be \\[N\\]"),
        (lambda: weighted_denoising_loss(torch.zeros(2), torch.tensor([1.0, -1.0])), "weights must be >= 0"),
        (lambda: weighted_denoising_loss(torch.zeros(2), torch.zeros(2)), "not all zero"),
        (lambda: weighted_denoising_loss(torch.zeros(2), torch.ones(3)), "both be \\[N\\]"),
    ],
)
def test_offline_losses_refuse_bad_inputs(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_weighted_denoising_loss_hand_checked() -> None:
    errors = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    weights = torch.tensor([1.0, 0.0, 3.0])
    loss = weighted_denoising_loss(errors, weights)
    assert loss.item() == pytest.approx((1 + 12) / 4)
    loss.backward()
    torch.testing.assert_close(errors.grad, torch.tensor([0.25, 0.0, 0.75]))
