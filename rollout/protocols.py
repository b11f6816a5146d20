"""What rollout needs from the outside world, as ``typing.Protocol``s: an inpainting model and a reward function.

rollout never imports ``policy`` or ``reward`` (docs/architecture.md, "Import contracts");
``policy.model.InpaintPolicy`` satisfies :class:`InpaintingModel` and ``reward``'s scorer (or any callable with the
right signature) satisfies :class:`RewardFn`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from diffusers import DDIMScheduler

if TYPE_CHECKING:
    from rollout.ddim_logprob import DDIMStepOutput
    from rollout.denoise import DenoisingConditioning
    from rollout.request import InpaintRequest


@runtime_checkable
class InpaintingModel(Protocol):
    """A latent inpainting diffusion model in Stable Diffusion's layout.

    The UNet input is ``cat([noisy_latents, mask, masked_image_latents], dim=1)`` with
    ``2 * latent_channels + 1`` channels; ``mask`` is 1 where the model paints (the background) and 0 on the
    product, as in SD-inpainting.
    """

    scheduler: DDIMScheduler
    """The noise schedule; the sampler calls ``set_timesteps`` on it."""

    @property
    def device(self) -> torch.device:
        """Where the model's tensors live; the sampler puts its inputs there."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the frozen weights (float32 or bfloat16); log-probs are float32 regardless."""
        ...

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent position along each axis (8 for SD, 4 for the tiny studio model)."""
        ...

    @property
    def latent_channels(self) -> int:
        """Channels C of a latent."""
        ...

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text conditioning ``[N, L, D]`` in :attr:`dtype`; ``""`` is the unconditional prompt."""
        ...

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float in [-1, 1] -> scaled latents ``[B, C, H/f, W/f]`` float32 (deterministic)."""
        ...

    def decode_latents(
        self,
        latents: torch.Tensor,
        *,
        masked_image: torch.Tensor | None = None,
        product_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled latents ``[B, C, h, w]`` -> images ``[B, 3, h*f, w*f]`` float32 in [-1, 1].

        ``masked_image [B, 3, h*f, w*f]`` (in [-1, 1], background zeroed) and ``product_mask [B, h*f, w*f]`` bool
        are context for a mask-aware decoder (it blends the product edge); a plain decoder ignores them.
        """
        ...

    def predict_noise(
        self, latent_input: torch.Tensor, timestep: torch.Tensor, prompt_embeds: torch.Tensor
    ) -> torch.Tensor:
        """UNet output for ``latent_input [B, 2C+1, h, w]`` at ``timestep`` (0-d or ``[B]``) given
        ``prompt_embeds [B, L, D]``; returns ``[B, C, h, w]`` float32."""
        ...


@runtime_checkable
class RewardFn(Protocol):
    """Scores composited images: one float per image, larger is better."""

    def __call__(self, images: torch.Tensor, requests: Sequence[InpaintRequest]) -> torch.Tensor:
        """``images [B, 3, H, W]`` uint8 and the B requests they answer -> rewards ``[B]`` float32."""
        ...


class DenoisingStepFn(Protocol):
    """One sampling step in place of ``rollout.denoise.denoise_step`` (``sample_trajectories(step_fn=...)``).

    It must return what ``denoise_step(model, latents, timestep, conditioning, eta=eta,
    variance_noise=variance_noise)`` returns, with detached tensors; what it does besides (a backward pass, a
    forward of the base model) is its own business. The sampler calls it under ``torch.no_grad()``.
    """

    def __call__(
        self,
        first: int,
        step: int,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: DenoisingConditioning,
        *,
        eta: float,
        variance_noise: torch.Tensor,
    ) -> DDIMStepOutput:
        """``first``: index of the chunk's first sample among the call's samples; ``step``: 0-based step index
        i (``timestep`` is t_i); ``latents [B, C, h, w]`` x_t; ``variance_noise [B, C, h, w]``."""
        ...
