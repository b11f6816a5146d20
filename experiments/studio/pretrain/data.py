"""Training data of base-model pretraining: rendered scene and product pools, inpainting masks, composites.

Everything is rendered up front from the data seed with the studio world's own renderers
(``offline_data.simulator``): a scene takes ~1.3 ms, a product ~0.8 ms, so 8k scenes cost seconds, and every
step then only indexes the pools. Batches are drawn with an explicit ``torch.Generator`` (its state is part of
a checkpoint, so a resumed run draws the same batches).

Mask convention: masks here are *known-region* masks, True where the pixels are given (the product, or the
part of a scene that stays), exactly like ``InpaintRequest.product_mask``; the UNet's mask channel is derived
from them with ``rollout.masks`` as the sampler derives it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from offline_data.simulator import PRODUCT_KINDS, prompt_family, render_background, render_product, sample_prompt

SCENE_STREAM, PRODUCT_STREAM, VALIDATION_STREAM = 1, 2, 3
"""Sub-streams of the data seed (``np.random.default_rng([seed, stream])``)."""


@dataclass(frozen=True, eq=False)
class ScenePool:
    """Rendered backgrounds with their prompts."""

    images: torch.Tensor
    """``[N, 3, H, W]`` uint8."""
    prompts: tuple[str, ...]
    """N canonical prompt strings."""
    families: tuple[str, ...]
    """N prompt families (material keys)."""

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or len(self.prompts) != n:
            raise ValueError(f"images must be uint8 [N, 3, H, W] with N prompts, got {list(self.images.shape)}")
        by_prompt: dict[str, list[int]] = defaultdict(list)
        by_family: dict[str, list[int]] = defaultdict(list)
        for i, (prompt, family) in enumerate(zip(self.prompts, self.families)):
            by_prompt[prompt].append(i)
            by_family[family].append(i)
        object.__setattr__(self, "_by_prompt", {k: torch.tensor(v) for k, v in by_prompt.items()})
        object.__setattr__(self, "_by_family", {k: torch.tensor(v) for k, v in by_family.items()})

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def style_partners(self, indices: torch.Tensor, same_prompt: float, generator: torch.Generator) -> torch.Tensor:
        """For each scene index, another scene of the same prompt (probability ``same_prompt``, when the pool
        holds one) or else of the same family: the style image of joint style training. ``[B]`` int64."""
        partners = []
        draws = torch.rand(len(indices), generator=generator).tolist()
        for index, draw in zip(indices.tolist(), draws):
            group = self._by_prompt[self.prompts[index]] if draw < same_prompt else None
            if group is None or len(group) < 2:
                group = self._by_family[self.families[index]]
            pick = int(torch.randint(len(group) - 1, (1,), generator=generator)) if len(group) > 1 else 0
            candidate = int(group[pick])
            # Skip the scene itself (drawing among the others): the style image is a different render.
            partners.append(int(group[pick + 1]) if candidate == index and len(group) > 1 else candidate)
        return torch.tensor(partners, dtype=torch.long)


@dataclass(frozen=True, eq=False)
class ProductPool:
    """Rendered products: colours and exact masks."""

    rgb: torch.Tensor
    """``[M, 3, H, W]`` uint8, 0 outside the mask."""
    masks: torch.Tensor
    """``[M, H, W]`` bool exact product masks."""

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


def render_scene_pool(
    count: int, size: int, seed: int, *, stream: int = SCENE_STREAM, colour_probability: float = 0.6,
    progress: bool = False,
) -> ScenePool:  # fmt: skip
    """``count`` backgrounds for prompts drawn with ``sample_prompt``, all from ``default_rng([seed, stream])``."""
    rng = np.random.default_rng([seed, stream])
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    prompts = []
    for i in tqdm(range(count), desc="rendering scenes", unit="scene", disable=not progress, leave=False):
        prompt = sample_prompt(rng, colour_probability=colour_probability)
        images[i] = render_background(prompt, rng, size)
        prompts.append(prompt)
    families = tuple(prompt_family(p) for p in prompts)
    return ScenePool(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), tuple(prompts), families)


def render_product_pool(count: int, size: int, seed: int, *, stream: int = PRODUCT_STREAM) -> ProductPool:
    """``count`` procedural products, cycling through every kind, from ``default_rng([seed, stream])``."""
    rng = np.random.default_rng([seed, stream])
    rgb = np.empty((count, size, size, 3), dtype=np.uint8)
    masks = np.empty((count, size, size), dtype=bool)
    for i in range(count):
        product = render_product(PRODUCT_KINDS[i % len(PRODUCT_KINDS)], rng, size, product_id=f"p{i}")
        rgb[i], masks[i] = product.rgb, product.mask
    return ProductPool(torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks))


def composite(scenes: torch.Tensor, products: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Products over scenes: ``[B, 3, H, W]`` uint8, product pixels copied exactly under ``masks [B, H, W]``."""
    return torch.where(masks[:, None], products, scenes)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float32 in [-1, 1] (the VAE's input range)."""
    return images.float() / 127.5 - 1.0


def masked_images(images: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """SD-inpainting's masked image: float ``[B, 3, H, W]`` in [-1, 1] with the painted region set to 0."""
    return to_unit_range(images) * known[:, None]


# ----------------------------------------------------------------------------------------------------------
# Random inpainting masks (stage 1)

MASK_KINDS = ("boxes", "blobs", "strokes", "full")
"""Shapes of the random paint regions: rectangles, thresholded smooth noise, thick polylines, everything."""


def random_known_masks(
    count: int, size: int, generator: torch.Generator, *, full_probability: float = 0.1
) -> torch.Tensor:
    """Random known-region masks ``[count, size, size]`` bool (True = kept, False = painted).

    The painted region is one of boxes (1-3 rectangles), blobs (smooth noise above a random quantile) or
    strokes (1-4 polylines 3-10 px thick), covering from a few percent (one thin stroke) to most of the image
    (about 40 % on average), or, with
    ``full_probability``, the whole image (text-to-image on the scene). Every non-full mask keeps at least
    one pixel and paints at least one. Drawn in numpy (tiny torch ops are slow with several threads) from a
    seed taken from ``generator``.
    """
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator)))
    masks = np.ones((count, size, size), dtype=bool)
    for i in range(count):
        if rng.uniform() < full_probability:
            masks[i] = False
            continue
        shape = (_boxes, _blobs, _strokes)[int(rng.integers(3))]
        for _ in range(10):
            paint = shape(size, rng)
            if paint.any() and not paint.all():
                break
        else:  # practically unreachable; a fixed central box keeps the mask valid
            paint = np.zeros((size, size), dtype=bool)
            paint[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
        masks[i] = ~paint
    return torch.from_numpy(masks)


def _boxes(size: int, rng: np.random.Generator) -> np.ndarray:
    paint = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        h, w = (round(rng.uniform(0.25, 0.75) * size) for _ in range(2))
        top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        paint[top : top + h, left : left + w] = True
    return paint


def _blobs(size: int, rng: np.random.Generator) -> np.ndarray:
    cells = int(rng.integers(3, 7))
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()
    return field > np.quantile(field, rng.uniform(0.2, 0.8))


def _strokes(size: int, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    paint = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 5))):
        radius = rng.uniform(1.5, 5.0)
        point = rng.uniform(0, size, 2)
        for _ in range(int(rng.integers(2, 6))):
            angle = rng.uniform(0.0, 2.0 * np.pi)
            length = rng.uniform(0.15, 0.5) * size
            end = np.clip(point + length * np.array([np.sin(angle), np.cos(angle)]), 0, size - 1)
            paint |= _segment_distance(ys, xs, point, end) <= radius
            point = end
    return paint


def _segment_distance(ys: np.ndarray, xs: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance of every pixel centre to the segment start-end (points as (y, x))."""
    direction = end - start
    length2 = max(float(direction @ direction), 1e-9)
    t = np.clip(((ys - start[0]) * direction[0] + (xs - start[1]) * direction[1]) / length2, 0.0, 1.0)
    return np.hypot(ys - start[0] - t * direction[0], xs - start[1] - t * direction[1])
