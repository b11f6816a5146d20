"""Procedural backgrounds for every prompt, and compositing a product over one.

Each prompt attribute has a visible effect at 64 px (see ``prompts.py`` for the vocabulary):

    rgb = clip(palette(region) * (1 + amplitude * texture(u, v)) * gain(y, x) + tint, 0, 1)

- palette: the colour word's (or material's) HSV, jittered; above the horizon a lighter, desaturated wall;
- layout: the surface sets the horizon (tabletop ~52 %, floor ~30 %, backdrop none but a soft sweep), marked
  by a soft shadow line;
- texture: the material's pattern in perspective surface coordinates (u across, v into the scene);
- lighting: a gain field (window side light, studio vignette, golden side light, moody spot) and a tint
  (golden hour is warm, moody and window light slightly cool);
- scene: props (potted plants, or geometric objects in muted colours) standing on the surface.

:func:`render_background` draws all jitter from the caller's generator. :func:`reference_background` renders
the same prompt with every jitter at its nominal value (fixed props from a prompt-derived seed): the
prompt's reference image, whose statistics the gold model's prompt-adherence term compares against.
All arithmetic is numpy on [H, W] arrays: one 64 px background takes about a millisecond.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

from offline_data.simulator.colour import hsv_to_rgb
from offline_data.simulator.prompts import PromptSpec, parse_prompt
from offline_data.simulator.raster import pixel_grid, value_noise

HORIZONS: dict[str, float | None] = {"tabletop": 0.52, "floor": 0.30, "backdrop": None}
"""Nominal horizon height (fraction of the image from the top) per surface; None: no horizon."""

TEXTURE_AMPLITUDE: dict[str, float] = {
    "wood": 0.16,
    "marble": 0.32,
    "concrete": 0.14,
    "linen": 0.09,
    "foliage": 0.38,
    "paper": 0.03,
}
"""Relative brightness modulation of each material's texture."""

LIGHTING_TINT: dict[str, tuple[float, float, float]] = {
    "window": (-0.01, 0.0, 0.03),
    "studio": (0.0, 0.0, 0.0),
    "golden": (0.09, 0.03, -0.08),
    "moody": (-0.01, -0.01, 0.03),
}
"""Additive RGB tint of each lighting."""


def _sinusoid_noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, waves: int = 7) -> np.ndarray:
    """Smooth noise evaluable at any coordinates: a sum of random plane waves, unit variance."""
    angles = rng.uniform(0.0, 2.0 * np.pi, waves)
    freqs = rng.uniform(1.0, 3.5, waves)
    phases = rng.uniform(0.0, 2.0 * np.pi, waves)
    total = np.zeros_like(u)
    for angle, freq, phase in zip(angles, freqs, phases):
        total += np.sin(2.0 * np.pi * freq * (np.cos(angle) * u + np.sin(angle) * v) + phase)
    return total * np.sqrt(2.0 / waves)


def _texture(material: str, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    """Material pattern, roughly in [-1, 1], on surface coordinates (u, v)."""
    if material == "wood":
        # Grain lines run across the frame, bent by smooth noise; dark seams between planks.
        warp = _sinusoid_noise(rng, u, v)
        grain = np.sin(2.0 * np.pi * (rng.uniform(9.0, 12.0) * v + 0.3 * warp))
        plank = np.mod(u * rng.uniform(2.5, 3.5) + rng.uniform(), 1.0)
        seams = np.where(np.minimum(plank, 1.0 - plank) < 0.025, -1.6, 0.0)
        return 0.8 * grain + seams
    if material == "marble":
        warp = _sinusoid_noise(rng, u, v)
        veins = 1.0 - np.abs(np.sin(2.0 * np.pi * (1.3 * (u + 0.6 * v) + 0.45 * warp)))
        return 0.3 - 1.3 * veins**6
    if material == "concrete":
        return 0.6 * value_noise(rng, size, 18) + 0.5 * value_noise(rng, size, 4)
    if material == "linen":
        weave = 0.5 * np.sin(2.0 * np.pi * 19.0 * u) + 0.5 * np.sin(2.0 * np.pi * 19.0 * v)
        return weave + 0.3 * value_noise(rng, size, 10)
    if material == "foliage":
        return np.tanh(2.5 * value_noise(rng, size, 9)) + 0.4 * value_noise(rng, size, 20)
    if material == "paper":
        return value_noise(rng, size, 3)
    raise ValueError(f"unknown material {material!r}")


def _lighting(lighting: str, y: np.ndarray, x: np.ndarray, side: float, spread: float) -> np.ndarray:
    """Multiplicative gain field; ``side`` is +1 for light from the left, -1 from the right."""
    sx = x if side > 0 else 1.0 - x
    if lighting == "window":
        return 1.12 - 0.38 * sx * spread + 0.04 * (1.0 - y)
    if lighting == "studio":
        r2 = (x - 0.5) ** 2 + (y - 0.45) ** 2
        return 1.1 - 0.45 * r2 * spread
    if lighting == "golden":
        return 1.05 - 0.32 * sx * spread - 0.1 * y
    if lighting == "moody":
        r2 = (x - 0.5) ** 2 + (y - 0.55) ** 2
        return 0.42 + 0.58 * np.exp(-r2 / (0.09 * spread))
    raise ValueError(f"unknown lighting {lighting!r}")


def _draw_props(
    scene: str, rng: np.random.Generator, rgb: np.ndarray, y: np.ndarray, x: np.ndarray, floor_y: float
) -> None:
    """Paint the scene's props into ``rgb`` ([H, W, 3] float, in place), standing at ``floor_y``."""
    if scene == "minimal":
        return
    if scene == "plants":
        for _ in range(int(rng.integers(1, 3))):
            cx = float(rng.uniform(0.06, 0.94))
            base = floor_y + float(rng.uniform(0.05, 0.2)) * (1.0 - floor_y)
            pot_h, pot_w = float(rng.uniform(0.08, 0.13)), float(rng.uniform(0.07, 0.11))
            pot_colour = hsv_to_rgb(np.array([0.05, rng.uniform(0.1, 0.6), rng.uniform(0.55, 0.9)]))
            pot = (np.abs(x - cx) <= pot_w * (0.8 + 0.2 * (base - y) / pot_h)) & (y <= base) & (y >= base - pot_h)
            for _ in range(int(rng.integers(4, 7))):
                lx = cx + float(rng.normal(0.0, 0.05))
                ly = base - pot_h - float(rng.uniform(0.03, 0.16))
                rx, ry = float(rng.uniform(0.03, 0.06)), float(rng.uniform(0.015, 0.03))
                leaf = ((x - lx) / rx) ** 2 + ((y - ly) / ry) ** 2 <= 1.0
                rgb[leaf] = hsv_to_rgb(np.array([rng.uniform(0.25, 0.38), 0.65, rng.uniform(0.3, 0.65)]))
            rgb[pot] = pot_colour
        return
    if scene == "props":
        for _ in range(int(rng.integers(2, 5))):
            cx = float(rng.uniform(0.05, 0.95))
            base = floor_y + float(rng.uniform(0.04, 0.25)) * (1.0 - floor_y)
            extent = float(rng.uniform(0.07, 0.16))
            colour = hsv_to_rgb(np.array([rng.uniform(), rng.uniform(0.2, 0.6), rng.uniform(0.45, 0.9)]))
            if rng.uniform() < 0.5:
                cy = base - extent / 2
                shape = (x - cx) ** 2 + (y - cy) ** 2 <= (extent / 2) ** 2
                shade = 1.0 - 0.5 * np.clip(((x - cx) + (y - cy)) / extent, -0.5, 0.5)
            else:
                shape = (np.abs(x - cx) <= extent * 0.4) & (y <= base) & (y >= base - extent)
                shade = 1.0 - 0.35 * np.clip((x - cx) / (extent * 0.4), -1.0, 1.0)
            rgb[shape] = (colour[None, None, :] * shade[..., None])[shape]
        return
    raise ValueError(f"unknown scene {scene!r}")


def _render(spec: PromptSpec, rng: np.random.Generator, size: int, jitter: float) -> np.ndarray:
    """Render ``spec``; ``jitter`` = 1 draws palette/layout/lighting jitter from ``rng``, 0 uses nominal values."""
    y, x = pixel_grid(size)
    hue, saturation, value = spec.palette_hsv
    hue += jitter * float(np.clip(rng.normal(0.0, 0.015), -0.04, 0.04))
    saturation *= 1.0 + jitter * float(rng.uniform(-0.15, 0.15))
    value += jitter * float(rng.uniform(-0.06, 0.06))
    surface_rgb = hsv_to_rgb(np.array([hue, saturation, value]))
    wall_rgb = hsv_to_rgb(np.array([hue, 0.55 * saturation, min(1.0, 0.8 * value + 0.2)]))

    horizon = HORIZONS[spec.surface]
    if horizon is None:
        # A seamless sweep: the material everywhere, lit slightly brighter at the top.
        horizon_y = 0.7  # props stand on the implied floor of the sweep
        palette = surface_rgb[None, None, :] * (1.06 - 0.12 * y)[..., None]
        u, v = x, y
        below = np.ones_like(y, dtype=bool)
    else:
        horizon_y = horizon + jitter * float(np.clip(rng.normal(0.0, 0.03), -0.07, 0.07))
        below = y > horizon_y
        depth = np.clip((y - horizon_y) / (1.0 - horizon_y), 0.0, 1.0)
        # Perspective: the surface recedes towards the horizon, so texture compresses and converges there.
        v = np.where(below, 1.0 / (0.25 + depth), 0.0) * 0.3
        u = np.where(below, (x - 0.5) / (0.35 + 0.65 * depth) + 0.5, x)
        palette = np.where(below[..., None], surface_rgb[None, None, :], wall_rgb[None, None, :])
        # A soft shadow line where the surface meets the wall keeps the horizon visible even for white scenes.
        palette = palette * (1.0 - 0.2 * np.exp(-(((y - horizon_y) / 0.02) ** 2)))[..., None]
    texture = _texture(spec.material, rng, u, v, size)
    amplitude = TEXTURE_AMPLITUDE[spec.material]
    if horizon is not None:
        # The wall above the horizon is plain paint: only a trace of the material's pattern.
        wall_texture = 0.04 * value_noise(rng, size, 3)
        texture = np.where(below, texture, wall_texture / amplitude)
    rgb = palette * (1.0 + amplitude * texture)[..., None]
    _draw_props(spec.scene, rng, rgb, y, x, horizon_y)
    side = 1.0 if jitter == 0.0 else float(rng.choice([-1.0, 1.0]))
    spread = 1.0 + jitter * float(rng.uniform(-0.25, 0.25))
    gain = _lighting(spec.lighting, y, x, side, spread)
    rgb = rgb * gain[..., None] + np.asarray(LIGHTING_TINT[spec.lighting])[None, None, :]
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_background(prompt: str | PromptSpec, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Render a background for ``prompt`` with random jitter from ``rng``.

    Args:
        prompt: prompt text (parsed strictly, see :func:`~offline_data.simulator.prompts.parse_prompt`) or spec.
        rng: every random choice (palette, horizon, texture, props, light side) comes from it.
        size: image side in pixels.

    Returns:
        [size, size, 3] uint8 RGB.

    Raises:
        PromptError: the prompt has a word outside the vocabulary.
    """
    spec = prompt if isinstance(prompt, PromptSpec) else parse_prompt(prompt)
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    return _render(spec, rng, size, jitter=1.0)


@functools.lru_cache(maxsize=4096)
def reference_background(spec: PromptSpec, size: int = 64) -> np.ndarray:
    """The prompt's reference image: nominal palette, horizon and lighting; props from a prompt-derived seed.

    Returns:
        [size, size, 3] uint8, read-only (cached).
    """
    rng = np.random.default_rng(zlib.crc32(spec.text.encode("utf-8")))
    image = _render(spec, rng, size, jitter=0.0)
    image.setflags(write=False)
    return image


def composite(background: np.ndarray, foreground: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Place a product layer over a background; pixels under the mask are copied bit-exactly.

    Args:
        background: [H, W, 3] uint8.
        foreground: [H, W, 4] uint8 RGBA product (its alpha == 255 is the mask when ``mask`` is None), or
            [H, W, 3] uint8 RGB (e.g. ``Product.photo()``), which needs ``mask``.
        mask: [H, W] bool, the pixels to take from the foreground; None uses the RGBA alpha.

    Returns:
        [H, W, 3] uint8.
    """
    if background.dtype != np.uint8 or background.ndim != 3 or background.shape[2] != 3:
        raise ValueError(f"background must be [H, W, 3] uint8, got {background.dtype} {background.shape}")
    if (
        foreground.dtype != np.uint8
        or foreground.shape[:2] != background.shape[:2]
        or foreground.shape[2] not in (3, 4)
    ):
        raise ValueError(
            f"foreground must be [H, W, 3 or 4] uint8 matching background {background.shape[:2]}, "
            f"got {foreground.dtype} {foreground.shape}"
        )
    if mask is None:
        if foreground.shape[2] != 4:
            raise ValueError("an RGB foreground needs an explicit mask")
        mask = foreground[..., 3] == 255
    elif mask.dtype != np.bool_ or mask.shape != background.shape[:2]:
        raise ValueError(f"mask must be [H, W] bool matching background, got {mask.dtype} {mask.shape}")
    return np.where(mask[..., None], foreground[..., :3], background)
