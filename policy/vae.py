"""A mask-aware VAE decoder: the decoder also sees the product mask and the masked original, to remove edge halos.

Why. The sampler keeps every latent position that touches the product (``rollout.masks.latent_product_mask``
max-pools the pixel mask), and at the end those positions hold the latent of the *masked image*: the product on
mid-grey. A plain decoder therefore paints the background pixels inside those boundary cells (up to f - 1 = 3
pixels around the product at f = 4) from a latent that saw grey: a grey halo around the product, then a seam
where the generated background starts. The pixel composite restores the product itself, not the ring.

What. Like the conditional branch of the "asymmetric VQGAN" (Zhu et al. 2023, "Designing a Better Asymmetric
VQGAN for StableDiffusion") and SD-XL-style mask-aware decoders, a small convolutional *context branch* encodes
``cat(masked_image, mask)`` into a feature pyramid, and each level is added into the decoder's activations
(after the mid block and after every up block) through a 1x1 convolution initialised to zero. The decoder
itself is a copy of the VAE's decoder, fine-tuned with the branch on composites
(``experiments.studio.pretrain.train``).

Zero-initialised fusion convolutions make :class:`MaskAwareDecoder` compute exactly what the VAE's own decoder
computes until it is trained (tested), and the VAE inside the diffusers folder is left untouched, so a plain
``StableDiffusionInpaintPipeline`` still loads the checkpoint. Product pixels stay exact because the sampler
composites the original product after decoding (preservation place 2), whatever this decoder outputs.

Differences from the asymmetric VQGAN: no adversarial/perceptual loss (an L1 + gradient loss on the
background), the branch is injected additively at every decoder resolution rather than through its
mask-guided blending, and the encoder is not retrained.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import Decoder
from torch import nn

from offline_data.errors import AssetError
from policy.component_files import load_state, read_component, save_component
from policy.config import MaskDecoderConfig

WEIGHTS_NAME = "mask_decoder.safetensors"
FORMAT = "backdrop.mask_decoder"


@dataclass(frozen=True, kw_only=True)
class _DecoderShape:
    """Constructor arguments of the copied diffusers ``Decoder`` (read from the VAE's config)."""

    latent_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    act_fn: str
    mid_block_add_attention: bool
    use_post_quant_conv: bool
    scaling_factor: float

    @classmethod
    def of(cls, vae: AutoencoderKL) -> _DecoderShape:
        config = vae.config
        return cls(
            latent_channels=int(config.latent_channels),
            block_out_channels=tuple(int(c) for c in config.block_out_channels),
            layers_per_block=int(config.layers_per_block),
            norm_num_groups=int(config.norm_num_groups),
            act_fn=str(config.act_fn),
            mid_block_add_attention=bool(getattr(config, "mid_block_add_attention", True)),
            use_post_quant_conv=vae.post_quant_conv is not None,
            scaling_factor=float(config.scaling_factor),
        )


class MaskAwareDecoder(nn.Module):
    """VAE decoder + context branch on ``cat(masked_image, mask)`` (module docstring).

    Inputs of :meth:`forward`: scaled latents ``[B, C, h, w]`` (as the sampler holds them), the masked image
    ``[B, 3, h*f, w*f]`` in [-1, 1] with the background zeroed, and the product mask ``[B, h*f, w*f]`` bool.
    """

    def __init__(self, shape: _DecoderShape, config: MaskDecoderConfig) -> None:
        super().__init__()
        self.shape = shape
        self.config = config
        levels = len(shape.block_out_channels)
        self.decoder = Decoder(
            in_channels=shape.latent_channels,
            out_channels=3,
            up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=shape.block_out_channels,
            layers_per_block=shape.layers_per_block,
            norm_num_groups=shape.norm_num_groups,
            act_fn=shape.act_fn,
            mid_block_add_attention=shape.mid_block_add_attention,
        )
        latent = shape.latent_channels
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if shape.use_post_quant_conv else None
        # Context pyramid: level k has 1 / 2**k of the image resolution; level levels-1 is the latent's.
        widths = [config.context_channels * min(2**k, 4) for k in range(levels)]
        self.context_in = nn.Conv2d(4, widths[0], 3, padding=1)
        self.context_blocks = nn.ModuleList(
            [nn.Conv2d(widths[k - 1], widths[k], 3, stride=2, padding=1) for k in range(1, levels)]
        )
        # Fusion points: after the mid block (latent resolution) and after each up block.
        fusion_levels = self.fusion_levels()
        reversed_channels = list(reversed(shape.block_out_channels))
        fusion_channels = [reversed_channels[0], *reversed_channels]
        self.fusions = nn.ModuleList(
            [nn.Conv2d(widths[level], channels, 1) for level, channels in zip(fusion_levels, fusion_channels)]
        )
        for fusion in self.fusions:
            nn.init.zeros_(fusion.weight)
            nn.init.zeros_(fusion.bias)

    def fusion_levels(self) -> list[int]:
        """Pyramid level (0 = full resolution) of each fusion point: mid block, then every up block."""
        levels = len(self.shape.block_out_channels)
        deepest = levels - 1
        # Up block i upsamples (except the last one), so its output sits one level finer than its input.
        return [deepest, *[max(deepest - i - 1, 0) for i in range(levels)]]

    @classmethod
    def from_vae(cls, vae: AutoencoderKL, config: MaskDecoderConfig | None = None) -> MaskAwareDecoder:
        """A mask-aware decoder initialised from ``vae``'s decoder; equal to it until trained."""
        module = cls(_DecoderShape.of(vae), config or MaskDecoderConfig())
        module.decoder.load_state_dict(copy.deepcopy(vae.decoder.state_dict()))
        if vae.post_quant_conv is not None:
            module.post_quant_conv.load_state_dict(copy.deepcopy(vae.post_quant_conv.state_dict()))
        return module.to(device=vae.device, dtype=vae.dtype)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return self.decoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.decoder.conv_in.weight.device

    @property
    def scale_factor(self) -> int:
        """Pixels per latent position along each axis."""
        return 2 ** (len(self.shape.block_out_channels) - 1)

    def context(self, masked_image: torch.Tensor, product_mask: torch.Tensor) -> list[torch.Tensor]:
        """The context pyramid: ``[B, w_k, H / 2**k, W / 2**k]`` for k = 0 .. levels - 1."""
        mask = product_mask[:, None].to(masked_image.dtype) * 2.0 - 1.0  # +1 on the product, -1 to paint
        feature = F.silu(self.context_in(torch.cat([masked_image, mask], dim=1)))
        pyramid = [feature]
        for block in self.context_blocks:
            feature = F.silu(block(feature))
            pyramid.append(feature)
        return pyramid

    def forward(self, latents: torch.Tensor, masked_image: torch.Tensor, product_mask: torch.Tensor) -> torch.Tensor:
        """Decode scaled ``latents [B, C, h, w]`` to ``[B, 3, h*f, w*f]`` (unclamped), guided by the context.

        Raises:
            ValueError: shapes that do not line up (the message gives all three).
        """
        factor = self.scale_factor
        batch, channels, height, width = latents.shape
        expected = (batch, 3, height * factor, width * factor)
        if (
            channels != self.shape.latent_channels
            or tuple(masked_image.shape) != expected
            or tuple(product_mask.shape) != (batch, *expected[2:])
            or product_mask.dtype != torch.bool
        ):
            raise ValueError(
                f"expected latents [B, {self.shape.latent_channels}, h, w], masked_image [B, 3, h*{factor}, "
                f"w*{factor}] and a bool product_mask [B, h*{factor}, w*{factor}]; got {list(latents.shape)}, "
                f"{list(masked_image.shape)} and {product_mask.dtype} {list(product_mask.shape)}"
            )
        pyramid = self.context(masked_image, product_mask)
        fusion_levels = self.fusion_levels()
        z = latents / self.shape.scaling_factor
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        decoder = self.decoder
        sample = decoder.mid_block(decoder.conv_in(z), None)
        sample = sample + self.fusions[0](pyramid[fusion_levels[0]])
        for i, up_block in enumerate(decoder.up_blocks):
            sample = up_block(sample, None)
            sample = sample + self.fusions[i + 1](pyramid[fusion_levels[i + 1]])
        sample = decoder.conv_act(decoder.conv_norm_out(sample))
        return decoder.conv_out(sample)

    def set_scaling_factor(self, scaling_factor: float) -> None:
        """Follow the VAE's latent scaling (set after the VAE is trained)."""
        if not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {scaling_factor}")
        self.shape = _DecoderShape(**{**asdict(self.shape), "scaling_factor": float(scaling_factor)})

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/config.json`` and ``folder/mask_decoder.safetensors``; returns the folder."""
        payload = {"format": FORMAT, "decoder": asdict(self.shape), "context": asdict(self.config)}
        return save_component(folder, payload, self, WEIGHTS_NAME)

    @classmethod
    def load(cls, folder: str | Path) -> MaskAwareDecoder:
        """Read a decoder written by :meth:`save` (safetensors only).

        Raises:
            AssetError: missing or unreadable files, a wrong format, or tensors that do not fit the config.
        """
        payload, state = read_component(folder, WEIGHTS_NAME, FORMAT, "mask-aware decoder")
        try:
            shape_fields = dict(payload["decoder"])
            shape_fields["block_out_channels"] = tuple(shape_fields["block_out_channels"])
            module = cls(_DecoderShape(**shape_fields), MaskDecoderConfig(**payload["context"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AssetError(f"{Path(folder) / 'config.json'}: invalid mask-aware decoder config: {exc}") from None
        load_state(module, state, Path(folder) / WEIGHTS_NAME, "mask-aware decoder")
        return module


# ----------------------------------------------------------------------------------------------------------
# Seam metric


@dataclass(frozen=True, kw_only=True)
class SeamMeasures:
    """Per-image seam measures of composites (see :func:`measure_seams`); all ``[B]`` float32."""

    colour_step: torch.Tensor
    """Mean over band pixels of ‖m_band(p) - m_ring(p)‖₂, RGB in [0, 1]: a halo or a lighting step around the
    product. 0 for a background that is uniform across band and ring."""
    gradient_excess: torch.Tensor
    """Mean |∇x| over neighbour pairs touching the band minus the same over pairs inside the ring (per channel,
    [0, 1] units): the extra edge energy at the product's rim, i.e. the seam where a halo ends."""


def measure_seams(images: torch.Tensor, product_masks: torch.Tensor, *, band: int = 2, ring: int = 4,
                  radius: int = 4) -> SeamMeasures:  # fmt: skip
    """Seam measures of composites around their product masks.

    Regions (Chebyshev dilations D_r of the product mask M): band B = D_band(M) \\ M (where a halo sits), ring
    R = D_(band+ring)(M) \\ D_band(M) (the background just beyond it). m_S(p) is the mean colour of the pixels
    of S within ``radius`` px of p (a normalised box filter), so the comparison is local: a background that
    changes slowly across the image is not a seam, a band that differs from the ring right next to it is.
    Band pixels with no ring pixel within ``radius`` are skipped.

    Args:
        images: ``[B, 3, H, W]`` uint8 composites.
        product_masks: ``[B, H, W]`` bool.
        band, ring, radius: widths in pixels.

    Returns:
        :class:`SeamMeasures` (images without band pixels get 0).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {list(images.shape)}")
    if product_masks.dtype != torch.bool or product_masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"product_masks must be bool [B, H, W] matching images, got {list(product_masks.shape)}")
    if min(band, ring, radius) < 1:
        raise ValueError(f"band, ring and radius must be >= 1, got {band}, {ring}, {radius}")
    x = images.float() / 255.0
    mask = product_masks[:, None].float()
    near = _dilate(mask, band)
    band_region = near - mask
    ring_region = _dilate(mask, band + ring) - near

    band_sum, band_count = _box_sum(x * band_region, radius), _box_sum(band_region, radius)
    ring_sum, ring_count = _box_sum(x * ring_region, radius), _box_sum(ring_region, radius)
    step = band_sum / band_count.clamp_min(1e-8) - ring_sum / ring_count.clamp_min(1e-8)
    valid = band_region * (ring_count > 0.5).float()
    distance = step.pow(2).sum(dim=1, keepdim=True).sqrt()
    colour_step = (distance * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1.0)

    # Neighbour pairs outside the product: a pair "touches the band" if either pixel is in it.
    outside = 1.0 - mask
    gx, gy = (x[..., :, 1:] - x[..., :, :-1]).abs(), (x[..., 1:, :] - x[..., :-1, :]).abs()
    ox, oy = outside[..., :, 1:] * outside[..., :, :-1], outside[..., 1:, :] * outside[..., :-1, :]
    bx = ox * torch.maximum(band_region[..., :, 1:], band_region[..., :, :-1])
    by = oy * torch.maximum(band_region[..., 1:, :], band_region[..., :-1, :])
    rx, ry = ring_region[..., :, 1:] * ring_region[..., :, :-1], ring_region[..., 1:, :] * ring_region[..., :-1, :]

    def pair_mean(weight_x: torch.Tensor, weight_y: torch.Tensor) -> torch.Tensor:
        total = (gx * weight_x).flatten(1).sum(1) + (gy * weight_y).flatten(1).sum(1)
        count = 3 * (weight_x.flatten(1).sum(1) + weight_y.flatten(1).sum(1))
        return total / count.clamp_min(1.0)

    return SeamMeasures(colour_step=colour_step, gradient_excess=pair_mean(bx, by) - pair_mean(rx, ry))


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def _box_sum(values: torch.Tensor, radius: int) -> torch.Tensor:
    size = 2 * radius + 1
    return F.avg_pool2d(values, kernel_size=size, stride=1, padding=radius, count_include_pad=True) * size * size
