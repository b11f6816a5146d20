"""Pretraining stages of the autoencoder: the VAE, its latent scaling, and the mask-aware decoder.

VAE loss per crop x (all terms means over elements), with x̂ = D(z), z ~ q(z | x):

    L = |x - x̂| + λ_∇ (|∂_x x - ∂_x x̂| + |∂_y x - ∂_y x̂|) + λ_c (P₄x - P₄x̂)² + β KL(q(z | x) || N(0, I)) / dim(z)

with P₄ a 4x4 average pool. The gradient term penalises lost edges and texture directly (an L1 on pixels alone
is satisfied by a blur); it stands in for the perceptual and adversarial losses of SD's autoencoder, which need
pretrained networks. The pooled MSE weighs large errors in the colour of a region quadratically (rare saturated
colours were otherwise reconstructed desaturated).

Mask-aware decoder loss: the same L1 + gradient terms over background pixels only (the product is
composited back anyway), weighted 1 + band_weight in the ring of ``band`` pixels around the product.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from experiments.studio.pretrain.checkpoint import Checkpointer, load_checkpoint
from experiments.studio.pretrain.config import MaskDecoderTrainConfig, VAETrainConfig
from experiments.studio.pretrain.data import ProductPool, ScenePool, composite, masked_images, to_unit_range
from experiments.studio.pretrain.optim import set_learning_rates
from policy.vae import MaskAwareDecoder
from rollout.masks import latent_product_mask

logger = logging.getLogger(__name__)

LogMetrics = Callable[[Mapping[str, float], int], None]


def gradient_l1(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |∂x̂ - ∂x| over horizontal and vertical neighbour differences of ``[B, C, H, W]`` images.

    With ``weight [B, 1, H, W]`` (>= 0) a difference counts with the product of its two pixels' weights, so a
    pair that crosses into a zero-weight region (the product) is ignored.
    """
    dx_p, dx_t = prediction.diff(dim=3), target.diff(dim=3)
    dy_p, dy_t = prediction.diff(dim=2), target.diff(dim=2)
    if weight is None:
        return (dx_p - dx_t).abs().mean() + (dy_p - dy_t).abs().mean()
    wx = weight[..., :, 1:] * weight[..., :, :-1]
    wy = weight[..., 1:, :] * weight[..., :-1, :]
    channels = prediction.shape[1]
    x_term = (wx * (dx_p - dx_t).abs()).sum() / (wx.sum() * channels).clamp_min(1e-8)
    y_term = (wy * (dy_p - dy_t).abs()).sum() / (wy.sum() * channels).clamp_min(1e-8)
    return x_term + y_term


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), averaged over the batch's MSE."""
    mse = (reconstruction.clamp(-1, 1) - target).pow(2).mean()
    return float(10.0 * torch.log10(4.0 / mse.clamp_min(1e-12)))


def _random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    batch, _, height, width = images.shape
    tops = torch.randint(0, height - size + 1, (batch,), generator=generator).tolist()
    lefts = torch.randint(0, width - size + 1, (batch,), generator=generator).tolist()
    return torch.stack([img[:, t : t + size, s : s + size] for img, t, s in zip(images, tops, lefts)])


def _stage_optimizer(
    module: torch.nn.Module,
    learning_rate: float,
    checkpointer: Checkpointer,
    resume: Path | None,
    generator: torch.Generator,
) -> torch.optim.Optimizer:
    """Put ``module`` in training mode; AdamW over it (restored with the generator from ``resume`` if given)."""
    module.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(module.parameters(), lr=learning_rate, weight_decay=0.0)
    for group in optimizer.param_groups:
        group["peak_lr"] = learning_rate
    if resume is not None:
        load_checkpoint(resume, checkpointer.modules, optimizer=optimizer, generator=generator)
    return optimizer


def vae_training_images(
    scenes: ScenePool, products: ProductPool, batch_size: int, composite_fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """A batch of uint8 ``[B, 3, H, W]`` images: scenes, a ``composite_fraction`` of them with a product on."""
    picks = torch.randint(0, len(scenes), (batch_size,), generator=generator)
    images = scenes.images[picks]
    with_product = torch.rand(batch_size, generator=generator) < composite_fraction
    product_picks = torch.randint(0, len(products), (batch_size,), generator=generator)
    masks = products.masks[product_picks] & with_product[:, None, None]
    return composite(images, products.rgb[product_picks], masks)


def vae_loss(vae: AutoencoderKL, images: torch.Tensor, config: VAETrainConfig, generator: torch.Generator) -> dict:
    """The VAE loss (module docstring) of float ``images [B, 3, H, W]`` in [-1, 1]: its terms and ``loss``."""
    posterior = vae.encode(images).latent_dist
    latents = posterior.sample(generator=generator)
    reconstruction = vae.decode(latents).sample
    l1 = (reconstruction - images).abs().mean()
    grad = gradient_l1(reconstruction, images)
    colour = (F.avg_pool2d(reconstruction, 4) - F.avg_pool2d(images, 4)).pow(2).mean()
    kl = posterior.kl().mean() / latents[0].numel()
    loss = l1 + config.gradient_weight * grad + config.colour_weight * colour + config.kl_weight * kl
    return {"loss": loss, "l1": l1, "gradient": grad, "colour": colour, "kl": kl}


def train_vae(
    vae: AutoencoderKL,
    scenes: ScenePool,
    products: ProductPool,
    config: VAETrainConfig,
    *,
    generator: torch.Generator,
    checkpointer: Checkpointer,
    log_metrics: LogMetrics,
    resume: Path | None = None,
    start_step: int = 0,
    progress: bool = False,
) -> None:
    """Stage "vae": train ``vae`` in place on random crops (module docstring)."""
    optimizer = _stage_optimizer(vae, config.learning_rate, checkpointer, resume, generator)
    bar = tqdm(range(start_step, config.steps), desc="vae", unit="step", disable=not progress)
    for step in bar:
        set_learning_rates(optimizer, step, warmup_steps=config.warmup_steps, total_steps=config.steps)
        batch = vae_training_images(scenes, products, config.batch_size, config.composite_fraction, generator)
        crops = to_unit_range(_random_crops(batch, config.crop, generator)).contiguous(
            memory_format=torch.channels_last
        )
        terms = vae_loss(vae, crops, config, generator)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if step % 10 == 0 or step == config.steps - 1:
            values = {f"vae/{k}": float(v.detach()) for k, v in terms.items()}
            log_metrics(values | {"vae/lr": optimizer.param_groups[0]["lr"]}, step)
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}")
        checkpointer.maybe_save("vae", step + 1, optimizer=optimizer, generator=generator)
    vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Unscaled posterior modes of float ``images [N, 3, H, W]`` in [-1, 1]: ``[N, C, h, w]`` float32."""
    parts = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size].contiguous(memory_format=torch.channels_last)
        parts.append(vae.encode(chunk).latent_dist.mode().float())
    return torch.cat(parts)


@torch.no_grad()
def fit_scaling_factor(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """1 / std of the latents of ``images`` (SD's recipe), written into the VAE's config and returned."""
    factor = float(1.0 / encode_latents(vae, to_unit_range(images)).std())
    vae.register_to_config(scaling_factor=factor)
    return factor


@torch.no_grad()
def sampler_latents(
    vae: AutoencoderKL, images: torch.Tensor, masked_latents: torch.Tensor, product_masks: torch.Tensor
) -> torch.Tensor:
    """The latents the sampler ends with for composites ``images``: scaled, product cells from the masked image.

    Args:
        images: uint8 ``[B, 3, H, W]`` composites (their own latent fills the background cells).
        masked_latents: scaled ``[B, C, h, w]`` latents of the masked images (product on grey).
        product_masks: ``[B, H, W]`` bool.
    """
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = encode_latents(vae, to_unit_range(images)) * vae.config.scaling_factor
    known = latent_product_mask(product_masks, factor)
    return torch.where(known, masked_latents, latents)


def background_weights(product_masks: torch.Tensor, band: int, band_weight: float) -> torch.Tensor:
    """``[B, 1, H, W]`` float: 0 on the product, 1 + band_weight within ``band`` px (Chebyshev) of it, else 1."""
    mask = product_masks[:, None].float()
    near = F.max_pool2d(mask, kernel_size=2 * band + 1, stride=1, padding=band)
    return (1.0 - mask) * (1.0 + band_weight * near)


def mask_decoder_loss(
    decoder: MaskAwareDecoder,
    latents: torch.Tensor,
    images: torch.Tensor,
    product_masks: torch.Tensor,
    config: MaskDecoderTrainConfig,
) -> dict:
    """Weighted background L1 + gradient loss of the mask-aware decoder on composites (module docstring)."""
    target = to_unit_range(images)
    context = masked_images(images, product_masks)
    reconstruction = decoder(latents, context, product_masks)
    weight = background_weights(product_masks, config.band, config.band_weight)
    l1 = (weight * (reconstruction - target).abs()).sum() / (weight.sum() * 3).clamp_min(1e-8)
    grad = gradient_l1(reconstruction, target, weight)
    return {"loss": l1 + config.gradient_weight * grad, "l1": l1, "gradient": grad}


def train_mask_decoder(
    decoder: MaskAwareDecoder,
    vae: AutoencoderKL,
    scenes: ScenePool,
    products: ProductPool,
    product_latents: torch.Tensor,
    config: MaskDecoderTrainConfig,
    *,
    generator: torch.Generator,
    checkpointer: Checkpointer,
    log_metrics: LogMetrics,
    resume: Path | None = None,
    start_step: int = 0,
    progress: bool = False,
) -> None:
    """Stage "mask_decoder": train ``decoder`` in place to decode the sampler's final latents of composites.

    Args:
        product_latents: scaled latents of every product's masked image ``[M, C, h, w]`` (product on grey).
    """
    optimizer = _stage_optimizer(decoder, config.learning_rate, checkpointer, resume, generator)
    bar = tqdm(range(start_step, config.steps), desc="mask decoder", unit="step", disable=not progress)
    for step in bar:
        set_learning_rates(optimizer, step, warmup_steps=config.warmup_steps, total_steps=config.steps)
        scene_picks = torch.randint(0, len(scenes), (config.batch_size,), generator=generator)
        product_picks = torch.randint(0, len(products), (config.batch_size,), generator=generator)
        masks = products.masks[product_picks]
        images = composite(scenes.images[scene_picks], products.rgb[product_picks], masks)
        latents = sampler_latents(vae, images, product_latents[product_picks], masks)
        terms = mask_decoder_loss(decoder, latents, images, masks, config)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if step % 10 == 0 or step == config.steps - 1:
            log_metrics({f"mask_decoder/{k}": float(v.detach()) for k, v in terms.items()}, step)
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.4f}")
        checkpointer.maybe_save("mask_decoder", step + 1, optimizer=optimizer, generator=generator)
    decoder.eval().requires_grad_(False)
