"""Product preservation, enforced in three places (docs/architecture.md, "The pipeline").

1. Latent space (:func:`replacement_alphas`, :func:`replace_product_latents`): before the first step and after
   every DDIM step, the product latent positions are overwritten with the original's latent forward-noised to
   the noise level of that point of the chain, sqrt(a) x0 + sqrt(1 - a) noise (with a = 1, i.e. the clean
   latent, after the last step), using the sample's own seeded noise, as diffusers' 4-channel inpainting
   pipeline does. The policy therefore acts on background latents only.
2. Pixel space (:func:`composite_product`): the decoded image is composited with the original product pixels
   under the hard mask, copied as uint8, so they are bit-identical whatever the VAE did.
3. Verification (:func:`verify_preservation`): the maximum absolute difference inside the mask is measured
   and must be exactly 0; ``enforce=True`` raises :class:`~offline_data.errors.PreservationError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from offline_data.errors import PreservationError
from rollout.ddim_logprob import alphas_cumprod_on, previous_timestep


def replacement_alphas(scheduler: DDIMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Noise levels a of the latents x_T, x_{t_1'}, ..., x_{t_T'} along the chain: ``[T+1]`` float32.

    Entry 0 is alphas_cumprod[t_1] (the starting latent), entry i >= 1 is alphas_cumprod[t_i'] for the
    previous timestep t_i' of step i, or 1 (clean) when t_i' < 0 (after the last step).
    """
    alphas = alphas_cumprod_on(scheduler, timesteps.device)
    prev = previous_timestep(scheduler, timesteps)
    after = torch.where(prev >= 0, alphas.take(prev.clamp_min(0)), torch.ones_like(prev, dtype=alphas.dtype))
    return torch.cat([alphas.take(timesteps[:1]), after])


def noise_product_latents(original: torch.Tensor, noise: torch.Tensor, alpha_prod: torch.Tensor) -> torch.Tensor:
    """Forward process q(x_t | x_0): sqrt(a) x0 + sqrt(1 - a) noise (diffusers' ``add_noise``), float32.

    Args:
        original: ``[B, C, h, w]`` clean latents x0.
        noise: ``[B, C, h, w]`` standard normal.
        alpha_prod: 0-d (one level for the batch) or ``[B]``.
    """
    alpha = alpha_prod.float().reshape(-1, 1, 1, 1)
    return alpha.sqrt() * original.float() + (1 - alpha).sqrt() * noise.float()


def replace_product_latents(
    latents: torch.Tensor, latent_product: torch.Tensor, replacement: torch.Tensor
) -> torch.Tensor:
    """``latents`` with the product positions (``latent_product [B, 1, h, w]`` True) taken from ``replacement``."""
    if latents.shape != replacement.shape or latent_product.shape != (latents.shape[0], 1, *latents.shape[2:]):
        raise ValueError(
            f"latents {list(latents.shape)}, replacement {list(replacement.shape)} and latent_product "
            f"{list(latent_product.shape)} do not match"
        )
    return torch.where(latent_product, replacement, latents)


def composite_product(
    generated: torch.Tensor,
    original: torch.Tensor,
    product_mask: torch.Tensor,
    band_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final image: original pixels under the hard mask (exact copy), a blend in the band, generated elsewhere.

    Args:
        generated: ``[B, 3, H, W]`` uint8 decoded images.
        original: ``[B, 3, H, W]`` uint8 product images.
        product_mask: ``[B, H, W]`` bool hard mask.
        band_weight: ``[B, H, W]`` float weight of the original in the band (0 outside it, see
            ``rollout.masks.edge_band``); None for no band.

    Returns:
        ``[B, 3, H, W]`` uint8.
    """
    _check_images(generated, original, product_mask)
    out = generated
    if band_weight is not None:
        if band_weight.shape != product_mask.shape:
            raise ValueError(f"band_weight must be {list(product_mask.shape)}, got {list(band_weight.shape)}")
        weight = band_weight[:, None].float()
        blended = (weight * original.float() + (1 - weight) * generated.float()).round().clamp(0, 255)
        out = torch.where(weight > 0, blended.to(torch.uint8), generated)
    return torch.where(product_mask[:, None], original, out)


@dataclass(frozen=True, kw_only=True)
class PreservationReport:
    """How far outputs strayed from the product pixels (all counts over the whole batch)."""

    samples: int
    """Images checked."""
    mask_pixels: int
    """Product pixels checked (hard mask, summed over images)."""
    max_abs_diff: int
    """Largest |output - original| over product pixels and channels; must be 0."""
    differing_pixels: int
    """Product pixels where any channel differs; must be 0."""
    violating_samples: tuple[int, ...]
    """0-based batch indices of images with a differing product pixel."""
    band_pixels: int = 0
    """Pixels in the soft edge band (outside the mask, blended), reported so that the band is never silent."""
    band_pixels_in_mask: int = 0
    """Band pixels inside the hard mask; must be 0 (the band never reaches into the product)."""

    @property
    def ok(self) -> bool:
        """Whether every product pixel is bit-identical and the band stays outside the mask."""
        return self.max_abs_diff == 0 and self.differing_pixels == 0 and self.band_pixels_in_mask == 0

    def describe(self) -> str:
        """One line for logs and error messages."""
        text = (
            f"{self.samples} image(s), {self.mask_pixels} product pixel(s): max |diff| {self.max_abs_diff}, "
            f"{self.differing_pixels} differing pixel(s)"
        )
        if self.violating_samples:
            text += f" in image(s) {list(self.violating_samples[:10])}"
        return text + f"; edge band {self.band_pixels} pixel(s), {self.band_pixels_in_mask} inside the mask"

    def metrics(self) -> dict[str, float]:
        """Namespaced metrics for ``log_metrics``."""
        return {
            "preservation/max_abs_diff": float(self.max_abs_diff),
            "preservation/differing_pixels": float(self.differing_pixels),
            "preservation/band_pixels": float(self.band_pixels),
        }


def verify_preservation(
    original: torch.Tensor,
    output: torch.Tensor,
    mask: torch.Tensor,
    *,
    band_weight: torch.Tensor | None = None,
    enforce: bool = False,
) -> PreservationReport:
    """Compare product pixels of ``output`` with ``original`` under ``mask``.

    Args:
        original: ``[B, 3, H, W]`` or ``[3, H, W]`` uint8.
        output: same shape, uint8.
        mask: ``[B, H, W]`` or ``[H, W]`` bool, True on product pixels.
        band_weight: the band's blend weights (``[B, H, W]`` or ``[H, W]``), to report its size.
        enforce: raise instead of returning a failing report.

    Raises:
        PreservationError: ``enforce`` and a product pixel differs or the band reaches into the mask.
        ValueError: shapes or dtypes are wrong.
    """
    if original.ndim == 3:
        original, output, mask = original[None], output[None], mask[None]
        band_weight = None if band_weight is None else band_weight[None]
    _check_images(output, original, mask)
    diff = (output.to(torch.int16) - original.to(torch.int16)).abs().amax(dim=1)  # [B, H, W]
    inside = torch.where(mask, diff, torch.zeros_like(diff))
    per_sample = inside.flatten(1).amax(dim=1)
    band = torch.zeros_like(mask) if band_weight is None else band_weight > 0
    report = PreservationReport(
        samples=int(mask.shape[0]),
        mask_pixels=int(mask.sum()),
        max_abs_diff=int(per_sample.max()) if per_sample.numel() else 0,
        differing_pixels=int((inside > 0).sum()),
        violating_samples=tuple(int(i) for i in torch.nonzero(per_sample > 0).flatten()),
        band_pixels=int((band & ~mask).sum()),
        band_pixels_in_mask=int((band & mask).sum()),
    )
    if enforce and not report.ok:
        raise PreservationError(f"product pixels changed: {report.describe()}")
    return report


def _check_images(output: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> None:
    if output.dtype != torch.uint8 or original.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {output.dtype} and {original.dtype}")
    if output.ndim != 4 or output.shape[1] != 3 or output.shape != original.shape:
        raise ValueError(f"images must both be [B, 3, H, W], got {list(output.shape)} and {list(original.shape)}")
    if mask.dtype != torch.bool or mask.shape != (output.shape[0], *output.shape[2:]):
        raise ValueError(
            f"mask must be bool [{output.shape[0]}, {output.shape[2]}, {output.shape[3]}], got {mask.dtype} "
            f"{list(mask.shape)}"
        )
