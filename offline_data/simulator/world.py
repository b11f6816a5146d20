"""``StudioWorld``: the deterministic in-memory world (products, masks, prompts, variants, gold).

The demo and the RL evaluation use it directly, without writing files; ``simulate()`` writes it to disk
together with the traffic it generates. Every random quantity comes from its own named stream derived from
the root seed and the item's index (:func:`stream`), so adding products never changes the earlier ones and
the world is identical for a seed on every machine.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from offline_data.simulator.config import SimulatorConfig
from offline_data.simulator.engagement import SEGMENTS, gold_engagement, gold_for_segments, measure_features
from offline_data.simulator.generator import generate_composite
from offline_data.simulator.products import Product, load_product_photo, render_product
from offline_data.simulator.prompts import sample_prompt
from offline_data.simulator.segmenter import mask_iou, segment_mask

STREAMS: dict[str, int] = {
    "products": 1,
    "segmenter": 2,
    "prompts": 3,
    "variants": 4,
    "logging_scores": 5,
    "traffic": 6,
    "dwell_pilot": 7,
    "annotators": 8,
    "pairs": 9,
}
"""Named random streams; the number is mixed into the seed so streams never overlap."""

SAMPLE_PHOTO = "Minduka_Present_Blue_Pack.png"
"""matplotlib's sample RGBA product photo (``world.real_photos``)."""


def stream(seed: int, name: str, *keys: int) -> np.random.Generator:
    """The generator of stream ``name`` for item ``keys`` under root ``seed``."""
    return np.random.default_rng([seed, STREAMS[name], *keys])


def variant_seed(seed: int, product_index: int, variant_index: int) -> int:
    """The recorded generation seed (assets.seed) of one variant: ``generate_composite`` is reproducible
    from it with ``np.random.default_rng(seed)``."""
    state = np.random.SeedSequence([seed, STREAMS["variants"], product_index, variant_index]).generate_state(2)
    return int(state[0]) << 31 | int(state[1]) >> 1


@dataclasses.dataclass(frozen=True, eq=False)
class VariantSet:
    """The K generated composites of every product, flattened product-major (index = p * K + k).

    Attributes:
        image_ids: N ids, ``"<product_id>-v<k>"``.
        product_index: [N] int64 index into ``StudioWorld.products``.
        variant_index: [N] int64 k in [0, K).
        prompts: N background prompts.
        seeds: [N] int64 generation seeds.
        images: [N, H, W, 3] uint8 composites.
    """

    image_ids: tuple[str, ...]
    product_index: np.ndarray
    variant_index: np.ndarray
    prompts: tuple[str, ...]
    seeds: np.ndarray
    images: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)


class StudioWorld:
    """Products, their noisy masks, prompts and generated variants, and the hidden gold of any image.

    Args:
        config: the world's configuration (only ``seed``, ``world``, ``segmenter`` and ``generator`` matter
            here; traffic and panels are drawn by ``simulate``).
        progress: show a progress bar while rendering variants.
    """

    def __init__(self, config: SimulatorConfig | None = None, *, progress: bool = False) -> None:
        self.config = config or SimulatorConfig()
        self.progress = progress
        world, seed = self.config.world, self.config.seed
        products = [
            render_product(
                world.product_kinds[int(stream(seed, "products", i).integers(len(world.product_kinds)))],
                stream(seed, "products", i, 1),
                world.image_size,
                product_id=f"p{i:04d}",
                height_range=world.product_height,
            )
            for i in range(world.products)
        ]
        photo_paths = list(world.photo_paths)
        if world.real_photos:
            import matplotlib.cbook  # heavy: matplotlib only to locate its bundled sample photo

            photo_paths.insert(0, str(matplotlib.cbook.get_sample_data(SAMPLE_PHOTO, asfileobj=False)))
        products += [
            load_product_photo(path, world.image_size, product_id=f"photo{j:02d}")
            for j, path in enumerate(photo_paths)
        ]
        self.products: tuple[Product, ...] = tuple(products)
        """All products, procedural first, then photos."""

        seg = self.config.segmenter
        levels, noisy, confidence = [], [], []
        for i, product in enumerate(self.products):
            rng = stream(seed, "segmenter", i)
            level = float(rng.uniform(seg.error_level_min, seg.error_level_max))
            mask, conf = segment_mask(product.mask, rng, level)
            levels.append(level)
            noisy.append(mask)
            confidence.append(conf)
        size = world.image_size
        self.segmenter_error_levels = np.array(levels, dtype=np.float64)
        """[P] float64 error level each product's mask was made with."""
        self.noisy_masks = np.array(noisy, dtype=bool).reshape(len(self.products), size, size)
        """[P, H, W] bool: the segmenter's masks (what a user of the logs has)."""
        self.confidences = np.array(confidence, dtype=np.float32).reshape(len(self.products), size, size)
        """[P, H, W] float32 segmenter confidence in [0, 1]."""
        self.exact_masks = np.array([p.mask for p in self.products], dtype=bool).reshape(
            len(self.products), size, size
        )
        """[P, H, W] bool exact masks (truth)."""
        self.segmenter_iou = np.asarray(mask_iou(self.noisy_masks, self.exact_masks), dtype=np.float64).reshape(-1)
        """[P] float64 IoU of each noisy mask against the truth."""
        self.product_prompts: tuple[tuple[str, ...], ...] = tuple(
            tuple(
                sample_prompt(stream(seed, "prompts", i, j), colour_probability=world.colour_probability)
                for j in range(world.prompts_per_product)
            )
            for i in range(len(self.products))
        )
        """Per product, its ``prompts_per_product`` background prompts."""

    # ------------------------------------------------------------------------------------------------------
    @property
    def product_ids(self) -> tuple[str, ...]:
        return tuple(p.product_id for p in self.products)

    @functools.cached_property
    def variants(self) -> VariantSet:
        """Every product's K composites from the simulated production generator (rendered on first use)."""
        world, gen, seed = self.config.world, self.config.generator, self.config.seed
        k_count = world.variants_per_product
        ids, product_index, variant_index, prompts, seeds = [], [], [], [], []
        images = np.empty((len(self.products) * k_count, world.image_size, world.image_size, 3), dtype=np.uint8)
        bar = tqdm(total=images.shape[0], desc="rendering variants", unit="img", disable=not self.progress)
        for i, product in enumerate(self.products):
            for k in range(k_count):
                prompt = self.product_prompts[i][k % world.prompts_per_product]
                variant = variant_seed(seed, i, k)
                images[len(ids)] = generate_composite(
                    product,
                    self.noisy_masks[i],
                    prompt,
                    np.random.default_rng(variant),
                    seam_probability=gen.seam_probability,
                    seam_strength=gen.seam_strength,
                )
                ids.append(f"{product.product_id}-v{k}")
                product_index.append(i)
                variant_index.append(k)
                prompts.append(prompt)
                seeds.append(variant)
            bar.update(k_count)
        bar.close()
        return VariantSet(
            image_ids=tuple(ids),
            product_index=np.array(product_index, dtype=np.int64),
            variant_index=np.array(variant_index, dtype=np.int64),
            prompts=tuple(prompts),
            seeds=np.array(seeds, dtype=np.int64),
            images=images,
        )

    @functools.cached_property
    def variant_features(self) -> dict[str, np.ndarray]:
        """Gold terms of every variant (``engagement.measure_features``): {name: [N] float64}."""
        variants = self.variants
        return measure_features(variants.images, self.exact_masks[variants.product_index], variants.prompts)

    @functools.cached_property
    def variant_gold(self) -> np.ndarray:
        """[N, len(SEGMENTS)] float64 gold of every variant for every segment (columns in ``SEGMENTS`` order)."""
        return gold_for_segments(self.variant_features, SEGMENTS)

    def segment_column(self, segment: str) -> int:
        """Column of ``segment`` in :attr:`variant_gold`."""
        if segment not in SEGMENTS:
            raise ValueError(f"segment {segment!r} is not one of {', '.join(SEGMENTS)}")
        return SEGMENTS.index(segment)

    # ------------------------------------------------------------------------------------------------------
    def gold(
        self, images: np.ndarray, masks: np.ndarray, prompts: Sequence[str], segments: Sequence[str]
    ) -> np.ndarray:
        """Hidden gold engagement of any composites ([B, H, W, 3] uint8, exact masks [B, H, W]): [B] float64."""
        return gold_engagement(images, masks, prompts, segments)

    def gold_for_products(
        self,
        images: np.ndarray,
        product_indices: Sequence[int] | np.ndarray,
        prompts: Sequence[str],
        segment: str | Sequence[str] = "panel",
    ) -> np.ndarray:
        """Gold of composites of known products, using their exact masks: [B] float64.

        Args:
            images: [B, H, W, 3] uint8.
            product_indices: B indices into :attr:`products`.
            prompts: B prompts.
            segment: one segment for all, or B segments.
        """
        index = np.asarray(product_indices, dtype=np.int64)
        segments = [segment] * len(index) if isinstance(segment, str) else list(segment)
        return gold_engagement(images, self.exact_masks[index], prompts, segments)
