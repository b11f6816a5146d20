"""Backgrounds: every prompt attribute is visible at 64 px; compositing copies product pixels exactly."""

from __future__ import annotations

import numpy as np
import pytest

from offline_data.simulator import PromptError, composite, reference_background, render_background, render_product
from offline_data.simulator.colour import rgb_to_opponent
from offline_data.simulator.prompts import MATERIALS, PromptSpec


def _mean_over_draws(prompt: str, statistic, draws: int = 8) -> float:
    return float(
        np.mean([statistic(render_background(prompt, np.random.default_rng(s)) / 255.0) for s in range(draws)])
    )


def _luma(image: np.ndarray) -> np.ndarray:
    return rgb_to_opponent(image)[..., 0]


def _warmth(image: np.ndarray) -> float:
    return float((image[..., 0] - image[..., 2]).mean())


def _texture(image: np.ndarray) -> float:
    luma = _luma(image)
    return float(np.abs(np.diff(luma, axis=0)).mean() + np.abs(np.diff(luma, axis=1)).mean())


def test_shape_dtype_and_determinism() -> None:
    a = render_background("navy marble tabletop, golden hour light, with plants", np.random.default_rng(4))
    b = render_background("navy marble tabletop, golden hour light, with plants", np.random.default_rng(4))
    c = render_background("navy marble tabletop, golden hour light, with plants", np.random.default_rng(5))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert render_background("marble", np.random.default_rng(0), size=32).shape == (32, 32, 3)


def test_colour_words_set_the_palette() -> None:
    navy = _mean_over_draws("navy seamless paper backdrop, bright studio light, minimal", _warmth)
    terracotta = _mean_over_draws("terracotta seamless paper backdrop, bright studio light, minimal", _warmth)
    assert navy < -0.1 < 0.2 < terracotta
    charcoal = _mean_over_draws("charcoal seamless paper backdrop", lambda im: _luma(im).mean())
    white = _mean_over_draws("white seamless paper backdrop", lambda im: _luma(im).mean())
    assert white > charcoal + 0.5


def test_materials_have_distinct_texture_energy() -> None:
    energy = {
        m: _mean_over_draws(f"white {p} backdrop, bright studio light, minimal", _texture)
        for m, p in MATERIALS.items()
    }
    assert min(energy, key=energy.get) == "paper"
    assert energy["foliage"] > 3 * energy["paper"] and energy["marble"] > 2 * energy["paper"]


def test_lighting_changes_brightness_and_tint() -> None:
    moody = _mean_over_draws("cream linen backdrop, moody low light, minimal", lambda im: _luma(im).mean())
    studio = _mean_over_draws("cream linen backdrop, bright studio light, minimal", lambda im: _luma(im).mean())
    assert moody < studio - 0.2
    golden = _mean_over_draws("white linen backdrop, golden hour light, minimal", _warmth)
    window = _mean_over_draws("white linen backdrop, soft window light, minimal", _warmth)
    assert golden > window + 0.1
    # Window light comes from one side: the two halves of the image differ clearly.
    sides = _mean_over_draws(
        "white linen backdrop, soft window light, minimal",
        lambda im: abs(_luma(im[:, :32]).mean() - _luma(im[:, 32:]).mean()),
    )
    assert sides > 0.08


@pytest.mark.parametrize(("surface", "row"), [("tabletop", 0.52 * 64), ("floor", 0.30 * 64)])
def test_surface_sets_a_visible_horizon(surface: str, row: float) -> None:
    for colour in ("navy", "white"):
        for seed in range(5):
            image = render_background(f"{colour} seamless paper {surface}", np.random.default_rng(seed)) / 255.0
            jumps = np.abs(np.diff(_luma(image).mean(axis=1)))
            # The horizon is jittered by at most 0.07 of the height (4.5 px); its shadow line spans 2 px.
            assert abs(int(jumps.argmax()) - row) <= 7 and jumps.max() > 0.05, (colour, seed)


def test_backdrop_has_no_horizon() -> None:
    for seed in range(5):
        image = render_background("navy seamless paper backdrop", np.random.default_rng(seed)) / 255.0
        assert np.abs(np.diff(_luma(image).mean(axis=1))).max() < 0.02


def test_props_and_plants_add_clutter() -> None:
    minimal = _mean_over_draws("white seamless paper backdrop, bright studio light, minimal", _texture, 12)
    props = _mean_over_draws("white seamless paper backdrop, bright studio light, with props", _texture, 12)
    plants = _mean_over_draws("white seamless paper backdrop, bright studio light, with plants", _texture, 12)
    assert props > 2 * minimal and plants > 2 * minimal


def test_reference_background_is_nominal_deterministic_and_read_only() -> None:
    spec = PromptSpec(material="wood", colour="sage", lighting="window", scene="props")
    a = reference_background(spec)
    assert np.array_equal(
        a, reference_background(PromptSpec(material="wood", colour="sage", lighting="window", scene="props"))
    )
    assert not a.flags.writeable
    # Jittered renders scatter around the reference's mean colour.
    means = np.array([render_background(spec, np.random.default_rng(s)).mean(axis=(0, 1)) for s in range(30)])
    assert np.all(np.abs(means.mean(axis=0) - a.mean(axis=(0, 1))) < 12)


def test_unknown_prompt_word_is_refused() -> None:
    with pytest.raises(PromptError, match="'velvet'"):
        render_background("velvet backdrop", np.random.default_rng(0))


def test_composite_copies_product_pixels_exactly() -> None:
    product = render_product("shoe", np.random.default_rng(2))
    background = render_background("oak wood tabletop", np.random.default_rng(0))
    out = composite(background, product.rgba)
    assert np.array_equal(out[product.mask], product.rgb[product.mask])
    assert np.array_equal(out[~product.mask], background[~product.mask])
    # Through a larger mask the photo's backdrop shows: a halo.
    grown = np.zeros_like(product.mask)
    grown[1:] |= product.mask[:-1]
    grown |= product.mask
    haloed = composite(background, product.photo(), grown)
    assert np.array_equal(haloed[grown], product.photo()[grown])


@pytest.mark.parametrize(
    ("background", "foreground", "mask", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8), None, "background must be"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 4), np.uint8), None, "foreground must be"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), None, "needs an explicit mask"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), "mask must be"),
    ],
)
def test_composite_refuses_bad_inputs(background, foreground, mask, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        composite(background, foreground, mask)
