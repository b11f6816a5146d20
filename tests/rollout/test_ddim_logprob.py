"""ddim_step_with_logprob: parity with diffusers' DDIMScheduler.step, the log-prob and its reduction."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from torch.distributions import Normal

from rollout.ddim_logprob import background_mean, ddim_step_std, ddim_step_with_logprob

SD = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def scheduler(steps: int = 10, **overrides: object) -> DDIMScheduler:
    sched = DDIMScheduler(**{**SD, **overrides})
    sched.set_timesteps(steps)
    return sched


def tensors(seed: int, batch: int = 3) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 4, 8, 8)
    model_output, sample, noise = (torch.randn(shape, generator=generator) for _ in range(3))
    background = torch.rand((batch, 1, 8, 8), generator=generator) > 0.3
    return model_output, sample, noise, background


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"prediction_type": "v_prediction"},
        {"prediction_type": "sample", "clip_sample": True},
        {"timestep_spacing": "trailing", "steps_offset": 0},
        {"timestep_spacing": "linspace", "steps_offset": 0},
    ],
)
@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_same_noise_same_sample_as_diffusers(overrides: dict, eta: float) -> None:
    sched = scheduler(**overrides)
    for i, t in enumerate(sched.timesteps):  # includes the last step, where t' < 0 uses final_alpha_cumprod
        model_output, sample, noise, background = tensors(i)
        ours = ddim_step_with_logprob(
            sched, model_output, t, sample, eta=eta, background=background, variance_noise=noise
        )
        theirs = sched.step(model_output, t, sample, eta=eta, variance_noise=noise)
        torch.testing.assert_close(ours.prev_sample, theirs.prev_sample, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ours.pred_original_sample, theirs.pred_original_sample, atol=1e-6, rtol=1e-6)
        # std is eta x the DDPM posterior std of the (t, t') pair
        prev = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
        expected_std = eta * sched._get_variance(int(t), prev).sqrt()
        torch.testing.assert_close(ours.std, expected_std.expand(3, 1, 1, 1), atol=1e-7, rtol=1e-6)


def test_per_sample_timesteps_match_one_call_per_timestep() -> None:
    sched = scheduler()
    model_output, sample, noise, background = tensors(5)
    t = sched.timesteps[torch.tensor([0, 4, 9])]
    batched = ddim_step_with_logprob(
        sched, model_output, t, sample, eta=1.0, background=background, variance_noise=noise
    )
    for b in range(3):
        alone = ddim_step_with_logprob(
            sched,
            model_output[b : b + 1],
            int(t[b]),
            sample[b : b + 1],
            eta=1.0,
            background=background[b : b + 1],
            variance_noise=noise[b : b + 1],
        )
        torch.testing.assert_close(batched.prev_sample[b : b + 1], alone.prev_sample, atol=0, rtol=0)
        torch.testing.assert_close(batched.log_prob[b : b + 1], alone.log_prob, atol=0, rtol=0)
    assert batched.std[0] != batched.std[2]


def test_log_prob_is_the_normal_density_averaged_over_background() -> None:
    sched = scheduler()
    model_output, sample, noise, background = tensors(1)
    out = ddim_step_with_logprob(
        sched, model_output, sched.timesteps[3], sample, eta=1.0, background=background, variance_noise=noise
    )
    density = Normal(out.mean, out.std).log_prob(out.prev_sample)  # [B, C, h, w]
    for b in range(3):
        keep = background[b, 0]
        expected = density[b][:, keep].mean()  # mean over channels x background positions
        torch.testing.assert_close(out.log_prob[b], expected, atol=1e-5, rtol=1e-6)
    # scoring the sample it just drew gives the same log-prob (what the trainer does before any update)
    again = ddim_step_with_logprob(
        sched, model_output, sched.timesteps[3], sample, eta=1.0, background=background, prev_sample=out.prev_sample
    )
    assert torch.equal(again.log_prob, out.log_prob)


def test_product_positions_do_not_enter_the_log_prob() -> None:
    sched = scheduler()
    model_output, sample, noise, background = tensors(2)
    out = ddim_step_with_logprob(
        sched, model_output, sched.timesteps[0], sample, eta=1.0, background=background, variance_noise=noise
    )
    replaced = torch.where(background, out.prev_sample, torch.full_like(sample, 1e3))  # as latent replacement does
    scored = ddim_step_with_logprob(
        sched, model_output, sched.timesteps[0], sample, eta=1.0, background=background, prev_sample=replaced
    )
    assert torch.equal(scored.log_prob, out.log_prob)


def test_background_mean_by_hand() -> None:
    values = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]], [[[5.0, 6.0]], [[7.0, 8.0]]], [[[9.0, 9.0]], [[9.0, 9.0]]]])
    background = torch.tensor([[[[True, False]]], [[[True, True]]], [[[False, False]]]])
    # sample 0: channels x position 0 -> (1 + 3) / 2; sample 1: everything -> 26 / 4; sample 2: nothing -> 0
    assert background_mean(values, background).tolist() == [2.0, 6.5, 0.0]
    channels_last = values.contiguous(memory_format=torch.channels_last)
    assert torch.equal(background_mean(channels_last, background), background_mean(values, background))
    with pytest.raises(ValueError, match="background must be bool"):
        background_mean(values, background.float())
    with pytest.raises(ValueError, match=r"does not match values"):
        background_mean(values, background[:2])


def test_gradient_flows_through_the_mean_only() -> None:
    sched = scheduler()
    model_output, sample, _, background = tensors(3)
    model_output.requires_grad_(True)
    prev_sample = torch.randn_like(sample).requires_grad_(True)
    out = ddim_step_with_logprob(
        sched, model_output, sched.timesteps[2], sample, eta=1.0, background=background, prev_sample=prev_sample
    )
    out.log_prob.sum().backward()
    assert model_output.grad is not None and model_output.grad.abs().sum() > 0
    assert prev_sample.grad is None


def test_std_is_positive_on_sd_schedule_and_zero_with_alpha_to_one() -> None:
    assert bool((ddim_step_std(scheduler(), scheduler().timesteps, 1.0) > 0).all())
    with_one = scheduler(set_alpha_to_one=True)
    assert ddim_step_std(with_one, with_one.timesteps, 1.0)[-1] == 0  # the sampler refuses this schedule


def test_bad_arguments() -> None:
    sched = scheduler()
    model_output, sample, noise, background = tensors(4)
    t = sched.timesteps[0]
    cases = [
        ({"eta": 0.0, "background": background, "variance_noise": noise}, r"eta must be in \(0, 1\]"),
        ({"eta": 1.0, "background": background}, "exactly one of prev_sample"),
        ({"eta": 1.0, "background": background, "variance_noise": noise, "prev_sample": noise}, "exactly one"),
        ({"eta": 1.0, "background": background.float(), "variance_noise": noise}, "background must be bool"),
        ({"eta": 1.0, "background": background, "variance_noise": noise[:, :2]}, "must be \\[3, 4, 8, 8\\]"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            ddim_step_with_logprob(sched, model_output, t, sample, **kwargs)
    with pytest.raises(ValueError, match="timestep must be a scalar or \\[3\\]"):
        ddim_step_with_logprob(
            sched, model_output, sched.timesteps[:2], sample, eta=1.0, background=background, variance_noise=noise
        )
    with pytest.raises(ValueError, match="model_output and sample must both be"):
        ddim_step_with_logprob(
            sched, model_output[:1], t, sample, eta=1.0, background=background, variance_noise=noise
        )
    fresh = DDIMScheduler(**SD)
    with pytest.raises(ValueError, match="call scheduler.set_timesteps"):
        ddim_step_with_logprob(fresh, model_output, 500, sample, eta=1.0, background=background, variance_noise=noise)
