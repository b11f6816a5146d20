"""StudioWorld: determinism, per-item seeding, reproducible variants, gold of arbitrary composites."""

from __future__ import annotations

import numpy as np
import pytest

from offline_data.simulator import (
    SimulatorConfig,
    StudioWorld,
    WorldConfig,
    composite,
    generate_composite,
    gold_engagement,
    mask_iou,
    render_background,
)

from .conftest import small_config


def test_world_is_deterministic_and_seeded_per_item() -> None:
    a = StudioWorld(small_config())
    b = StudioWorld(small_config())
    assert np.array_equal(a.variants.images, b.variants.images)
    assert a.product_prompts == b.product_prompts
    bigger = StudioWorld(small_config(world={"products": 15, "variants_per_product": 4}))
    # Adding products leaves the earlier ones untouched.
    assert all(np.array_equal(p.rgba, q.rgba) for p, q in zip(a.products, bigger.products))
    assert np.array_equal(a.noisy_masks, bigger.noisy_masks[:12])
    assert np.array_equal(a.variants.images, bigger.variants.images[: len(a.variants)])
    other = StudioWorld(small_config(seed=9))
    assert not np.array_equal(a.variants.images, other.variants.images)


def test_variants_are_reproducible_from_their_recorded_seed() -> None:
    world = StudioWorld(small_config())
    variants = world.variants
    for j in (0, 7, len(variants) - 1):
        i = int(variants.product_index[j])
        again = generate_composite(
            world.products[i],
            world.noisy_masks[i],
            variants.prompts[j],
            np.random.default_rng(int(variants.seeds[j])),
            seam_probability=world.config.generator.seam_probability,
            seam_strength=world.config.generator.seam_strength,
        )
        assert np.array_equal(again, variants.images[j])
    assert variants.image_ids[5] == f"{world.products[1].product_id}-v1"
    assert np.all(variants.seeds >= 0)


def test_variants_cycle_through_the_products_prompts() -> None:
    world = StudioWorld(small_config())
    k = world.config.world.variants_per_product
    for j, prompt in enumerate(world.variants.prompts):
        i, v = divmod(j, k)
        assert prompt == world.product_prompts[i][v % world.config.world.prompts_per_product]


def test_segmenter_truth_is_recorded() -> None:
    world = StudioWorld(small_config())
    np.testing.assert_allclose(world.segmenter_iou, mask_iou(world.noisy_masks, world.exact_masks))
    levels = world.segmenter_error_levels
    assert np.all((levels >= 0.1) & (levels <= 0.6))
    assert world.confidences.dtype == np.float32 and world.confidences.shape == world.noisy_masks.shape


def test_gold_of_new_composites_uses_the_exact_masks() -> None:
    world = StudioWorld(SimulatorConfig(world=WorldConfig(products=5, variants_per_product=2)))
    prompt = "cream linen backdrop, soft window light, minimal"
    images = np.stack(
        [composite(render_background(prompt, np.random.default_rng(i)), world.products[i].rgba) for i in range(3)]
    )
    expected = gold_engagement(images, world.exact_masks[:3], [prompt] * 3, ["panel"] * 3)
    np.testing.assert_array_equal(world.gold_for_products(images, [0, 1, 2], [prompt] * 3), expected)
    np.testing.assert_array_equal(world.gold(images, world.exact_masks[:3], [prompt] * 3, ["panel"] * 3), expected)
    column = world.segment_column("cool")
    variant_gold = gold_engagement(
        world.variants.images,
        world.exact_masks[world.variants.product_index],
        world.variants.prompts,
        ["cool"] * len(world.variants),
    )
    np.testing.assert_allclose(world.variant_gold[:, column], variant_gold)


def test_a_world_too_big_for_memory_is_refused_at_once() -> None:
    """A typo such as products=1e11 is refused by the config (with the memory it would need), not simulated."""
    with pytest.raises(ValueError, match=r"products=100,000,000 x .* hold 13,732.9 GiB in memory .* at most 16 GiB"):
        WorldConfig(products=100_000_000)
    WorldConfig(products=100_000)  # 13.7 GiB of 64 px images: allowed
