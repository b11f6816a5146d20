"""Classifier-free guidance batched into one UNet call, and the conditioning it is built from."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from rollout.ddim_logprob import ddim_step_with_logprob
from rollout.denoise import denoise_step, predict_guided_noise, prepare_conditioning


class RecordingModel:
    """Stands in for the UNet: eps = latents + mean of the text embedding (so cond and uncond differ)."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=False)
        self.scheduler.set_timesteps(5)

    def predict_noise(self, latent_input: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        self.calls.append((latent_input, timestep, embeds))
        return latent_input[:, :4] + embeds.mean(dim=(1, 2))[:, None, None, None]


def conditioning(guidance_scale: float, batch: int = 2):
    cond = torch.full((batch, 3, 6), 2.0)
    uncond = torch.full((batch, 3, 6), -1.0)
    product = torch.zeros(batch, 1, 4, 4, dtype=torch.bool)
    product[:, :, 0, 0] = True
    masked = torch.arange(batch * 4 * 16, dtype=torch.float32).reshape(batch, 4, 4, 4)
    return prepare_conditioning(
        prompt_embeds=cond,
        negative_prompt_embeds=uncond,
        latent_product=product,
        masked_image_latents=masked,
        guidance_scale=guidance_scale,
        dtype=torch.float32,
    )


def test_guidance_is_one_batched_call_with_uncond_first() -> None:
    model = RecordingModel()
    latents = torch.randn(2, 4, 4, 4)
    out = predict_guided_noise(model, latents, torch.tensor(801), conditioning(7.5))
    assert len(model.calls) == 1
    latent_input, _, embeds = model.calls[0]
    assert latent_input.shape == (4, 9, 4, 4) and embeds.shape == (4, 3, 6)
    assert torch.equal(embeds[:2], torch.full((2, 3, 6), -1.0))  # unconditional half first
    assert torch.equal(latent_input[:2, :4], latents) and torch.equal(latent_input[2:, :4], latents)
    assert latent_input[0, 4, 0, 0] == 0 and latent_input[0, 4, 1, 1] == 1  # mask channel: 1 = paint
    assert torch.equal(latent_input[1, 5:], torch.arange(64, 128, dtype=torch.float32).reshape(4, 4, 4))
    # eps_u = latents - 1, eps_c = latents + 2: guided = eps_u + 7.5 * 3
    torch.testing.assert_close(out, latents - 1 + 7.5 * 3)


def test_without_guidance_only_the_conditional_branch_runs() -> None:
    model = RecordingModel()
    latents = torch.randn(2, 4, 4, 4)
    cond = conditioning(1.0)
    assert not cond.do_classifier_free_guidance
    out = predict_guided_noise(model, latents, torch.tensor(801), cond)
    assert model.calls[0][0].shape == (2, 9, 4, 4)
    torch.testing.assert_close(out, latents + 2)


def test_per_sample_timesteps_are_doubled_with_guidance() -> None:
    model = RecordingModel()
    predict_guided_noise(model, torch.randn(2, 4, 4, 4), torch.tensor([801, 201]), conditioning(3.0))
    assert model.calls[0][1].tolist() == [801, 201, 801, 201]


def test_denoise_step_is_guidance_then_ddim() -> None:
    model = RecordingModel()
    latents, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    cond = conditioning(2.0)
    t = model.scheduler.timesteps[1]
    out = denoise_step(model, latents, t, cond, eta=0.7, variance_noise=noise)
    eps = predict_guided_noise(model, latents, t, cond)
    expected = ddim_step_with_logprob(
        model.scheduler, eps, t, latents, eta=0.7, background=cond.background, variance_noise=noise
    )
    assert torch.equal(out.prev_sample, expected.prev_sample) and torch.equal(out.log_prob, expected.log_prob)
    assert cond.background[:, :, 0, 0].logical_not().all() and cond.background.sum() == 2 * 15


def test_prepare_conditioning_errors() -> None:
    good = {
        "prompt_embeds": torch.zeros(2, 3, 6),
        "negative_prompt_embeds": torch.zeros(2, 3, 6),
        "latent_product": torch.zeros(2, 1, 4, 4, dtype=torch.bool),
        "masked_image_latents": torch.zeros(2, 4, 4, 4),
        "guidance_scale": 5.0,
        "dtype": torch.float32,
    }
    cases = [
        ({"negative_prompt_embeds": torch.zeros(1, 3, 6)}, "must both be"),
        ({"masked_image_latents": torch.zeros(3, 4, 4, 4)}, r"masked_image_latents must be \[2, C, h, w\]"),
        ({"latent_product": torch.zeros(2, 1, 2, 2, dtype=torch.bool)}, r"latent_product must be \[2, 1, 4, 4\]"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            prepare_conditioning(**{**good, **overrides})
    with pytest.raises(ValueError, match=r"latents must be \[2, C, h, w\]"):
        predict_guided_noise(RecordingModel(), torch.zeros(3, 4, 4, 4), torch.tensor(1), prepare_conditioning(**good))
