"""Product masks in pixel and latent space, and the optional soft edge band around them.

Conventions: a product mask is True on product pixels (never repainted). SD-inpainting's mask channel is the
opposite (1 = paint), see :func:`inpaint_mask_channel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rollout.config import EdgeBandConfig


def latent_product_mask(product_mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel product mask -> latent product mask by max-pooling: any product pixel makes the position product.

    A latent position whose receptive cell touches the product is then replaced (never sampled), so the
    policy's action covers only latent positions that are entirely background.

    Args:
        product_mask: ``[B, H, W]`` or ``[B, 1, H, W]`` bool.
        factor: pixels per latent position (the VAE's downsampling factor); must divide H and W.

    Returns:
        ``[B, 1, H / factor, W / factor]`` bool.
    """
    mask = _as_b1hw(product_mask, "product_mask")
    height, width = mask.shape[2:]
    if factor < 1 or height % factor or width % factor:
        raise ValueError(f"factor {factor} must be >= 1 and divide the mask size {height}x{width}")
    return F.max_pool2d(mask.float(), kernel_size=factor, stride=factor) > 0


def inpaint_mask_channel(latent_product: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """SD-inpainting's mask input ``[B, 1, h, w]``: 1 where the model paints (background), 0 on the product."""
    return (~_as_b1hw(latent_product, "latent_product")).to(dtype)


def edge_band(product_mask: torch.Tensor, confidence: torch.Tensor | None, config: EdgeBandConfig) -> torch.Tensor:
    """Blend weights of the soft edge band (see :class:`~rollout.config.EdgeBandConfig`).

    Args:
        product_mask: ``[B, H, W]`` bool hard mask.
        confidence: ``[B, H, W]`` float in [0, 1], the segmenter's probability of "product", or None.
        config: band width and confidence threshold.

    Returns:
        ``[B, H, W]`` float32: the weight of the ORIGINAL pixel, in (0, 1] inside the band and exactly 0
        elsewhere, in particular on every pixel of the hard mask.
    """
    mask = _as_b1hw(product_mask, "product_mask")[:, 0]
    if confidence is None or config.width == 0:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    if confidence.shape != mask.shape:
        raise ValueError(f"confidence must be {list(mask.shape)} like the mask, got {list(confidence.shape)}")
    size = 2 * config.width + 1
    near = F.max_pool2d(mask[:, None].float(), kernel_size=size, stride=1, padding=config.width)[:, 0] > 0
    weight = confidence.float().clamp(0.0, 1.0)
    band = near & ~mask & (weight >= config.min_confidence)
    return torch.where(band, weight, torch.zeros_like(weight))


def _as_b1hw(mask: torch.Tensor, name: str) -> torch.Tensor:
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be bool, got {mask.dtype}")
    if mask.ndim == 3:
        return mask[:, None]
    if mask.ndim == 4 and mask.shape[1] == 1:
        return mask
    raise ValueError(f"{name} must be [B, H, W] or [B, 1, H, W], got {list(mask.shape)}")
