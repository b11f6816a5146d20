"""Hidden gold: hand-computed terms on flat images, the orderings a person expects, invariants, errors."""

from __future__ import annotations

import numpy as np
import pytest

from offline_data.simulator import (
    SEGMENTS,
    PromptError,
    SimulatorConfig,
    StudioWorld,
    WorldConfig,
    composite,
    gold_components,
    gold_engagement,
    measure_features,
    render_background,
)
from offline_data.simulator.engagement import FEATURES, GOLD_NORMALISATION, SEGMENT_WEIGHTS, SHOPPER_SEGMENTS
from offline_data.simulator.products import PHOTO_BACKDROP
from offline_data.simulator.raster import dilate

YY, XX = np.mgrid[0:64, 0:64]
OVAL = ((YY - 40) / 18.0) ** 2 + ((XX - 32) / 11.0) ** 2 <= 1.0
"""A product-sized oval standing in the lower half of the frame."""

CLEAN = "white seamless paper backdrop, bright studio light, minimal"


def _flat(background_rgb, product_rgb) -> np.ndarray:
    image = np.empty((64, 64, 3), dtype=np.uint8)
    image[:] = np.asarray(background_rgb, dtype=np.uint8)
    image[OVAL] = np.asarray(product_rgb, dtype=np.uint8)
    return image


def _product_rgba(rgb) -> np.ndarray:
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[OVAL, :3] = np.asarray(rgb, dtype=np.uint8)
    rgba[OVAL, 3] = 255
    return rgba


def _gold(images, prompts, segment) -> np.ndarray:
    return gold_engagement(np.stack(images), np.stack([OVAL] * len(images)), prompts, [segment] * len(images))


def _opponent(rgb) -> tuple[float, complex]:
    r, g, b = (c / 255.0 for c in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b, complex((r - g) / np.sqrt(2), (r + g - 2 * b) / np.sqrt(6))


@pytest.mark.parametrize(
    ("background", "product"),
    [((240, 240, 236), (200, 40, 40)), ((30, 50, 120), (230, 200, 60)), ((120, 160, 110), (125, 160, 112))],
)
def test_flat_images_match_the_documented_equations(background, product) -> None:
    features = measure_features(_flat(background, product)[None], OVAL[None], [CLEAN])
    lb, zb = _opponent(background)
    lp, zp = _opponent(product)
    delta = np.sqrt((lp - lb) ** 2 + 0.5 * abs(zp - zb) ** 2)
    assert features["contrast"][0] == pytest.approx(np.tanh(delta / 0.3), abs=1e-8)
    harmony = np.tanh(abs(zp) / 0.08) * np.tanh(abs(zb) / 0.08) * np.cos(2 * (np.angle(zp) - np.angle(zb)))
    assert features["harmony"][0] == pytest.approx(harmony, abs=1e-9)
    assert features["warmth"][0] == pytest.approx(np.tanh((background[0] - background[2]) / 255.0 / 0.12), rel=1e-9)
    assert features["colour"][0] == pytest.approx(np.tanh(abs(zb) / 0.15), rel=1e-9)
    # A flat background has no clutter, no busyness and no seam step (ε = 0: only the hinge's floor remains).
    assert features["clutter"][0] < 1e-6 and features["busyness"][0] < 1e-4
    assert features["seam"][0] == pytest.approx(np.tanh(0.01 * np.logaddexp(0.0, -0.04 / 0.01) / 0.08), abs=1e-6)


def test_harmony_rewards_analogous_and_complementary_hues_over_a_right_angle_clash() -> None:
    red = (200, 30, 30)
    # Opponent hue angles: red 30°, magenta-red ~15° (analogous), cyan 210° (complementary), chartreuse 120° (90°).
    backgrounds = {"analogous": (200, 30, 110), "complementary": (30, 170, 170), "clash": (110, 200, 30)}
    harmony = {
        name: measure_features(_flat(bg, red)[None], OVAL[None], [CLEAN])["harmony"][0]
        for name, bg in backgrounds.items()
    }
    assert harmony["analogous"] > 0.5 and harmony["complementary"] > 0.5 and harmony["clash"] < -0.5
    grey = measure_features(_flat((128, 128, 128), red)[None], OVAL[None], [CLEAN])["harmony"][0]
    assert abs(grey) < 1e-6  # a grey scene has no hue to clash with


def test_clean_high_contrast_beats_camouflage_on_clutter_of_its_own_colour() -> None:
    product = _product_rgba((189, 94, 72))  # terracotta
    camouflage = "terracotta foliage backdrop, bright studio light, with props"
    for seed in range(3):
        clean_image = composite(render_background(CLEAN, np.random.default_rng(seed)), product)
        camo_image = composite(render_background(camouflage, np.random.default_rng(seed)), product)
        for segment in SEGMENTS:
            clean, camo = _gold([clean_image, camo_image], [CLEAN, camouflage], segment)
            assert clean > camo + 1.0, (seed, segment, clean, camo)


def test_halo_and_seam_lower_gold() -> None:
    prompt = "navy seamless paper backdrop, bright studio light, minimal"
    background = render_background(prompt, np.random.default_rng(1))
    product = _product_rgba((230, 225, 210))
    photo = product[..., :3].copy()
    photo[~OVAL] = PHOTO_BACKDROP
    clean = composite(background, product)
    halo = composite(background, photo, dilate(OVAL, 1))  # a one-pixel ring of studio backdrop
    band = dilate(OVAL, 3) & ~OVAL
    seam = clean.copy()
    seam[band] = np.clip(seam[band] * 1.4, 0, 255).astype(np.uint8)  # lighting mismatch hugging the product
    images = [clean, halo, seam]
    for segment in SEGMENTS:
        gold = _gold(images, [prompt] * 3, segment)
        assert gold[0] > gold[1] + 0.3 and gold[0] > gold[2] + 0.3, (segment, gold)
    terms = gold_components(np.stack(images), np.stack([OVAL] * 3), [prompt] * 3, ["panel"] * 3)
    assert terms["seam"][0] > terms["seam"][1] and terms["seam"][0] > terms["seam"][2]


def test_warm_segment_prefers_the_warm_scene_and_cool_segment_the_cool_one() -> None:
    product = _product_rgba((240, 240, 240))
    warm, cool = (
        "terracotta linen backdrop, golden hour light, minimal",
        "navy linen backdrop, soft window light, minimal",
    )
    for seed in range(3):
        images = [
            composite(render_background(warm, np.random.default_rng(seed)), product),
            composite(render_background(cool, np.random.default_rng(seed)), product),
        ]
        warm_segment = _gold(images, [warm, cool], "warm")
        cool_segment = _gold(images, [warm, cool], "cool")
        assert warm_segment[0] > warm_segment[1] and cool_segment[1] > cool_segment[0], seed


def test_clutter_near_the_product_costs_more_than_far_away() -> None:
    base = _flat((235, 235, 230), (40, 90, 200))
    near, far = base.copy(), base.copy()
    stripes = XX % 4 < 2
    near_zone = dilate(OVAL, 9) & ~dilate(OVAL, 4) & stripes
    far_zone = (YY < 12) & (XX < 20) & stripes
    near[near_zone] = (60, 60, 60)
    far[far_zone] = (60, 60, 60)
    features = measure_features(np.stack([base, near, far]), np.stack([OVAL] * 3), [CLEAN] * 3)
    assert features["clutter"][1] > 0.5 > features["clutter"][2] + 0.4
    gold = _gold([base, near, far], [CLEAN] * 3, "minimal")
    assert gold[0] > gold[2] > gold[1]


def test_adherence_is_higher_for_the_prompt_that_made_the_background() -> None:
    prompts = [
        "sage oak wood tabletop, soft window light, minimal",
        "charcoal marble floor, moody low light, with props",
    ]
    product = _product_rgba((200, 200, 40))
    for seed in range(3):
        for own, other in (prompts, prompts[::-1]):
            image = composite(render_background(own, np.random.default_rng(seed)), product)
            scored = measure_features(np.stack([image, image]), np.stack([OVAL, OVAL]), [own, other])["adherence"]
            assert scored[0] > 0.5 > scored[1], (seed, own, scored)


def test_components_sum_to_gold_and_scores_do_not_depend_on_the_batch() -> None:
    world = StudioWorld(SimulatorConfig(seed=1, world=WorldConfig(products=4, variants_per_product=3)))
    variants = world.variants
    masks = world.exact_masks[variants.product_index]
    segments = [SEGMENTS[i % len(SEGMENTS)] for i in range(len(variants))]
    gold = gold_engagement(variants.images, masks, variants.prompts, segments)
    parts = gold_components(variants.images, masks, variants.prompts, segments)
    np.testing.assert_allclose(sum(parts.values()), gold, rtol=0, atol=1e-12)
    one_by_one = [
        gold_engagement(
            variants.images[i : i + 1], masks[i : i + 1], variants.prompts[i : i + 1], segments[i : i + 1]
        )[0]
        for i in range(len(variants))
    ]
    np.testing.assert_allclose(one_by_one, gold, rtol=0, atol=1e-12)
    assert np.array_equal(gold, gold_engagement(variants.images, masks, variants.prompts, segments))


def test_panel_is_the_population_average_of_the_shopper_segments() -> None:
    for feature in FEATURES:
        mean = np.mean([SEGMENT_WEIGHTS[s][feature] for s in SHOPPER_SEGMENTS])
        assert SEGMENT_WEIGHTS["panel"][feature] == pytest.approx(mean)


def test_gold_is_roughly_standardised_over_the_default_world() -> None:
    # The first 40 products of the default world (items are seeded per index, so they are the same products).
    world = StudioWorld(SimulatorConfig(world=WorldConfig(products=40)))
    gold = world.variant_gold
    for j, segment in enumerate(SEGMENTS):
        assert abs(gold[:, j].mean()) < 0.25, (segment, gold[:, j].mean())
        assert 0.8 < gold[:, j].std() < 1.2, (segment, gold[:, j].std())
    assert set(GOLD_NORMALISATION) == set(SEGMENTS)


@pytest.mark.parametrize(
    ("images", "masks", "prompts", "segments", "error", "message"),
    [
        (np.zeros((2, 8, 8, 3), np.float32), np.ones((2, 8, 8), bool), [CLEAN] * 2, ["warm"] * 2, ValueError, "uint8"),
        (
            np.zeros((2, 8, 8, 3), np.uint8),
            np.ones((2, 8, 9), bool),
            [CLEAN] * 2,
            ["warm"] * 2,
            ValueError,
            "masks must be",
        ),
        (
            np.zeros((2, 8, 8, 3), np.uint8),
            np.ones((2, 8, 8), bool),
            [CLEAN],
            ["warm"] * 2,
            ValueError,
            "1 prompts for 2",
        ),
        (
            np.zeros((2, 8, 8, 3), np.uint8),
            np.ones((2, 8, 8), bool),
            [CLEAN] * 2,
            ["warm"],
            ValueError,
            "1 segments for 2",
        ),
        (np.zeros((1, 8, 8, 3), np.uint8), np.ones((1, 8, 8), bool), [CLEAN], ["hipster"], ValueError, "'hipster'"),
        (
            np.zeros((2, 8, 8, 3), np.uint8),
            np.stack([np.ones((8, 8), bool), np.zeros((8, 8), bool)]),
            [CLEAN] * 2,
            ["warm"] * 2,
            ValueError,
            "image 1 is empty",
        ),
        (
            np.zeros((1, 8, 8, 3), np.uint8),
            np.ones((1, 8, 8), bool),
            ["disco floor"],
            ["warm"],
            PromptError,
            "'disco'",
        ),
    ],
)
def test_bad_inputs_are_named(images, masks, prompts, segments, error, message: str) -> None:
    with pytest.raises(error, match=message):
        gold_engagement(images, masks, prompts, segments)
