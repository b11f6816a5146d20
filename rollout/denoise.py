"""One denoising step of the inpainting policy: guided noise prediction + DDIM step with log-prob.

Sampling and training both call :func:`denoise_step` (sampling with fresh noise, training with the stored next
latent), so the policy that generated a trajectory and the policy that is scored on it cannot drift apart.

Classifier-free guidance is batched into one UNet forward: the unconditional half comes first, as in diffusers,
eps = eps_uncond + w (eps_cond - eps_uncond).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout.ddim_logprob import DDIMStepOutput, ddim_step_with_logprob
from rollout.masks import inpaint_mask_channel
from rollout.protocols import InpaintingModel
from rollout.trajectory import Trajectory


@dataclass(frozen=True, kw_only=True, eq=False)
class DenoisingConditioning:
    """Everything one UNet call needs besides the noisy latents and the timestep, CFG-doubled once per batch."""

    encoder_hidden_states: torch.Tensor
    """``[2B, L, D]`` (unconditional half first) with guidance, ``[B, L, D]`` without; model dtype."""
    image_channels: torch.Tensor
    """``[2B or B, 1 + C, h, w]``: SD-inpainting's mask channel (1 = paint) and the masked-image latents."""
    background: torch.Tensor
    """``[B, 1, h, w]`` bool: latent positions the policy paints (where log-probs are taken)."""
    guidance_scale: float
    """w; guidance is on when w > 1."""

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the unconditional branch is evaluated."""
        return self.guidance_scale > 1.0

    @property
    def batch_size(self) -> int:
        """B, the number of samples (not the UNet batch)."""
        return int(self.background.shape[0])


def prepare_conditioning(
    *,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    latent_product: torch.Tensor,
    masked_image_latents: torch.Tensor,
    guidance_scale: float,
    dtype: torch.dtype,
) -> DenoisingConditioning:
    """Assemble the UNet's conditioning for a batch.

    Args:
        prompt_embeds: ``[B, L, D]``.
        negative_prompt_embeds: ``[B, L, D]`` (the empty prompt's embedding for plain CFG).
        latent_product: ``[B, 1, h, w]`` bool, True on product latent positions.
        masked_image_latents: ``[B, C, h, w]``: latents of the product image with the background zeroed.
        guidance_scale: w.
        dtype: the model's compute dtype.
    """
    batch = prompt_embeds.shape[0]
    if prompt_embeds.ndim != 3 or negative_prompt_embeds.shape != prompt_embeds.shape:
        raise ValueError(
            f"prompt_embeds and negative_prompt_embeds must both be [B, L, D], got {list(prompt_embeds.shape)} "
            f"and {list(negative_prompt_embeds.shape)}"
        )
    if masked_image_latents.ndim != 4 or masked_image_latents.shape[0] != batch:
        raise ValueError(f"masked_image_latents must be [{batch}, C, h, w], got {list(masked_image_latents.shape)}")
    if latent_product.shape != (batch, 1, *masked_image_latents.shape[2:]):
        raise ValueError(
            f"latent_product must be [{batch}, 1, {masked_image_latents.shape[2]}, {masked_image_latents.shape[3]}],"
            f" got {list(latent_product.shape)}"
        )
    image_channels = torch.cat([inpaint_mask_channel(latent_product, dtype), masked_image_latents.to(dtype)], dim=1)
    hidden = prompt_embeds.to(dtype)
    if guidance_scale > 1.0:
        image_channels = torch.cat([image_channels, image_channels])
        hidden = torch.cat([negative_prompt_embeds.to(dtype), hidden])
    return DenoisingConditioning(
        encoder_hidden_states=hidden,
        image_channels=image_channels,
        background=~latent_product,
        guidance_scale=float(guidance_scale),
    )


def conditioning_from_trajectory(
    trajectory: Trajectory, *, dtype: torch.dtype, device: torch.device | None = None
) -> DenoisingConditioning:
    """The conditioning a trajectory was sampled with (same guidance scale), for recomputing its log-probs."""
    device = device or trajectory.latents.device
    return prepare_conditioning(
        prompt_embeds=trajectory.prompt_embeds.to(device),
        negative_prompt_embeds=trajectory.negative_prompt_embeds.to(device),
        latent_product=trajectory.latent_product.to(device),
        masked_image_latents=trajectory.masked_image_latents.to(device),
        guidance_scale=trajectory.guidance_scale,
        dtype=dtype,
    )


def predict_guided_noise(
    model: InpaintingModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: DenoisingConditioning,
) -> torch.Tensor:
    """The guided UNet output for ``latents [B, C, h, w]`` at ``timestep`` (0-d or ``[B]``): ``[B, C, h, w]`` f32."""
    if latents.ndim != 4 or latents.shape[0] != conditioning.batch_size:
        raise ValueError(f"latents must be [{conditioning.batch_size}, C, h, w], got {list(latents.shape)}")
    model_input = latents.to(conditioning.image_channels.dtype)
    if conditioning.do_classifier_free_guidance:
        model_input = torch.cat([model_input, model_input])
        if timestep.ndim == 1:
            timestep = torch.cat([timestep, timestep])
    model_input = torch.cat([model_input, conditioning.image_channels], dim=1)
    noise_pred = model.predict_noise(model_input, timestep, conditioning.encoder_hidden_states)
    if not conditioning.do_classifier_free_guidance:
        return noise_pred
    uncond, cond = noise_pred.chunk(2)
    return uncond + conditioning.guidance_scale * (cond - uncond)


def denoise_step(
    model: InpaintingModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: DenoisingConditioning,
    *,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    variance_noise: torch.Tensor | None = None,
) -> DDIMStepOutput:
    """Guided noise prediction followed by :func:`~rollout.ddim_logprob.ddim_step_with_logprob`.

    Pass ``variance_noise`` to sample (rollout) or the stored ``prev_sample`` to score it (training); the
    log-prob is averaged over ``conditioning.background``. ``model.scheduler`` must have had
    ``set_timesteps(T)`` with the trajectory's T.
    """
    noise_pred = predict_guided_noise(model, latents, timestep, conditioning)
    return ddim_step_with_logprob(
        model.scheduler,
        noise_pred,
        timestep,
        latents,
        eta=eta,
        background=conditioning.background,
        prev_sample=prev_sample,
        variance_noise=variance_noise,
    )
