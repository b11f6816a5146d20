"""Products of the studio world: procedurally rendered RGBA objects with exact masks, or real RGBA photos.

A product is what the shopper buys and what backdrop must never repaint. Each one carries its pixels as
RGBA (alpha is 0 or 255, so ``mask == (alpha == 255)`` is exact: the truth the noisy segmenter is scored
against) and its colour (hue, saturation, value) as rendered.

Procedural kinds (:data:`PRODUCT_KINDS`) are built from a few primitive shapes in unit coordinates (x right,
y down, 0..1 of the image side), shaded as cylinders, spheres or flat faces lit from the upper left, with a
label band, cap or sole in a second colour. Several kinds have thin parts (bottle neck, mug handle, shoe
laces) that segmenters tend to miss. Size and placement vary; every product stands on an invisible floor
near the bottom of the frame, as in a catalogue shot.

Real photos (``load_product_photo``) are RGBA files whose alpha is thresholded at 128 into the exact mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from offline_data.errors import AssetError
from offline_data.simulator.colour import hsv_to_rgb, hue_of_pixels, rgb_to_hsv
from offline_data.simulator.raster import pixel_grid

PRODUCT_KINDS: tuple[str, ...] = ("bottle", "box", "can", "ball", "shoe", "jar", "mug")
"""Procedural product kinds, in a fixed order (their index is part of a world's determinism)."""

PHOTO_BACKDROP: tuple[int, int, int] = (236, 236, 232)
"""uint8 RGB of the light studio sweep the original product photos were shot on. Where a generator keeps
pixels outside the true product (a dilated segmentation mask), this colour shows through as a halo."""

ProductSource = Literal["procedural", "photo"]


@dataclasses.dataclass(frozen=True, eq=False)
class Product:
    """One product: exact RGBA pixels and mask plus the colour it was made with.

    Attributes:
        product_id: stable id used in every log table.
        kind: one of :data:`PRODUCT_KINDS`, or ``"photo"`` for a loaded photograph.
        hue: main HSV hue in [0, 1).
        saturation: main HSV saturation in [0, 1].
        value: main HSV value in [0, 1].
        rgba: [H, W, 4] uint8; alpha is exactly 0 or 255, RGB is 0 where alpha is 0.
        mask: [H, W] bool, ``alpha == 255``.
        source: "procedural" or "photo".
    """

    product_id: str
    kind: str
    hue: float
    saturation: float
    value: float
    rgba: np.ndarray
    mask: np.ndarray
    source: ProductSource = "procedural"

    def __post_init__(self) -> None:
        if self.rgba.dtype != np.uint8 or self.rgba.ndim != 3 or self.rgba.shape[2] != 4:
            raise ValueError(f"product {self.product_id}: rgba must be [H, W, 4] uint8, got {self.rgba.shape}")
        if self.mask.dtype != np.bool_ or self.mask.shape != self.rgba.shape[:2]:
            raise ValueError(f"product {self.product_id}: mask must be [H, W] bool matching rgba")
        alpha = self.rgba[..., 3]
        if not np.all((alpha == 0) | (alpha == 255)) or not np.array_equal(alpha == 255, self.mask):
            raise ValueError(f"product {self.product_id}: alpha must be 0/255 and equal the mask")
        if not self.mask.any():
            raise ValueError(f"product {self.product_id}: mask is empty")
        if not 0.0 <= self.hue < 1.0:
            raise ValueError(f"product {self.product_id}: hue must be in [0, 1), got {self.hue}")

    @property
    def size(self) -> int:
        """Image side in pixels."""
        return int(self.rgba.shape[0])

    @property
    def rgb(self) -> np.ndarray:
        """[H, W, 3] uint8 product colours (0 outside the mask)."""
        return self.rgba[..., :3]

    def photo(self) -> np.ndarray:
        """[H, W, 3] uint8: the original catalogue shot, the product on :data:`PHOTO_BACKDROP`."""
        out = np.empty(self.rgb.shape, dtype=np.uint8)
        out[:] = np.asarray(PHOTO_BACKDROP, dtype=np.uint8)
        out[self.mask] = self.rgb[self.mask]
        return out


# ----------------------------------------------------------------------------------------------------------
# Procedural rendering


@dataclasses.dataclass(frozen=True)
class _Palette:
    body: np.ndarray
    label: np.ndarray
    accent: np.ndarray
    gloss: float


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _rect(x: np.ndarray, y: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def _cylinder(x: np.ndarray, cx: float, half_width: float, gloss: float) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse shade and specular highlight of a vertical cylinder lit from the upper left."""
    nx = np.clip((x - cx) / half_width, -1.0, 1.0)
    shade = 0.55 + 0.45 * np.sqrt(1.0 - nx**2) - 0.15 * nx
    specular = gloss * np.exp(-(((nx + 0.45) / 0.16) ** 2))
    return shade, specular


def _sphere(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float, gloss: float) -> tuple[np.ndarray, ...]:
    nx, ny = (x - cx) / r, (y - cy) / r
    nz = np.sqrt(np.clip(1.0 - nx**2 - ny**2, 0.0, 1.0))
    light = np.array([-0.5, -0.6, 0.62]) / np.linalg.norm([-0.5, -0.6, 0.62])
    lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0.0, 1.0)
    half = light + np.array([0.0, 0.0, 1.0])
    half = half / np.linalg.norm(half)
    specular = gloss * np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0.0, 1.0) ** 24
    return 0.3 + 0.8 * lambert, specular


def _paint(size: int, parts: list) -> tuple[np.ndarray, np.ndarray]:
    """Paint (mask [S, S] bool, colour [3] RGB, shade [S, S], specular [S, S]) parts in order, later on top."""
    rgb = np.zeros((size, size, 3), dtype=np.float64)
    mask = np.zeros((size, size), dtype=bool)
    for part_mask, colour, shade, specular in parts:
        lit = colour[None, None, :] * np.asarray(shade)[..., None] + np.asarray(specular)[..., None]
        rgb[part_mask] = np.broadcast_to(lit, rgb.shape)[part_mask]
        mask |= part_mask
    return rgb, mask


def _bottle(x: np.ndarray, y: np.ndarray, cx: float, base: float, h: float, p: _Palette) -> list:
    half = 0.2 * h
    neck = max(0.05 * h, 1.3 / x.shape[0])
    shoulder_y = base - 0.62 * h
    shade, spec = _cylinder(x, cx, half, p.gloss)
    neck_shade, neck_spec = _cylinder(x, cx, neck * 1.6, p.gloss)
    body = _rect(x, y, cx - half, cx + half, shoulder_y, base) | (
        _ellipse(x, y, cx, shoulder_y, half, 0.13 * h) & (y <= shoulder_y)
    )
    return [
        (body, p.body, shade, spec),
        (_rect(x, y, cx - neck, cx + neck, base - 0.93 * h, shoulder_y - 0.08 * h), p.body, neck_shade, neck_spec),
        (_rect(x, y, cx - 1.6 * neck, cx + 1.6 * neck, base - h, base - 0.9 * h), p.accent, neck_shade, 0 * y),
        (_rect(x, y, cx - half, cx + half, base - 0.45 * h, base - 0.18 * h), p.label, shade, 0.3 * spec),
    ]


def _box(x: np.ndarray, y: np.ndarray, cx: float, base: float, h: float, p: _Palette) -> list:
    depth = 0.16 * h
    x0, x1 = cx - 0.36 * h, cx + 0.36 * h - depth
    top = base - 0.8 * h
    front = _rect(x, y, x0, x1, top, base)
    lid = (y >= top - depth) & (y < top) & (x >= x0 + (top - y)) & (x <= x1 + (top - y))
    side = (x > x1) & (x <= x1 + depth) & (y >= top - (x - x1)) & (y <= base - (x - x1))
    ribbon = front & (np.abs(x - 0.5 * (x0 + x1)) <= 0.06 * h)
    flat = np.ones_like(x)
    return [
        (front, p.body, 0.9 * flat, 0 * x),
        (lid, p.body, 1.12 * flat, 0.08 * flat),
        (side, p.body, 0.62 * flat, 0 * x),
        (ribbon, p.label, 0.95 * flat, 0 * x),
    ]


def _can(x: np.ndarray, y: np.ndarray, cx: float, base: float, h: float, p: _Palette) -> list:
    half = 0.25 * h
    top = base - 0.9 * h
    rim = 0.055 * h
    shade, spec = _cylinder(x, cx, half, max(p.gloss, 0.35))
    body = _rect(x, y, cx - half, cx + half, top, base - rim) | _ellipse(x, y, cx, base - rim, half, rim)
    metal = np.array([0.78, 0.78, 0.8])
    return [
        (body, p.body, shade, spec),
        (_ellipse(x, y, cx, top, half, rim), metal, 1.05 + 0 * x, 0 * x),
        (_rect(x, y, cx - half, cx + half, base - 0.62 * h, base - 0.3 * h), p.label, shade, 0.5 * spec),
    ]


def _ball(x: np.ndarray, y: np.ndarray, cx: float, base: float, h: float, p: _Palette) -> list:
    r = 0.42 * h
    cy = base - r
    shade, spec = _sphere(x, y, cx, cy, r, p.gloss)
    disc = _ellipse(x, y, cx, cy, r, r)
    seam = disc & (np.abs((y - cy) - 0.35 * (x - cx)) <= 0.05 * h)
    return [(disc, p.body, shade, spec), (seam, p.label, shade, spec)]


def _shoe(x: np.ndarray, y: np.ndarray, cx: float, base: float, h: float, p: _Palette) -> list:
    length = 0.95 * h
    sole_top = base - 0.09 * length
    vertical = np.clip(0.75 + 0.4 * (y - (base - 0.45 * length)) / (0.45 * length), 0.6, 1.1)
    upper = _ellipse(x, y, cx - 0.12 * length, sole_top, 0.36 * length, 0.42 * length) & (y <= sole_top)
    toe = _ellipse(x, y, cx + 0.18 * length, sole_top, 0.32 * length, 0.17 * length) & (y <= sole_top)
    sole = _rect(x, y, cx - 0.48 * length, cx + 0.48 * length, sole_top, base)
    # Laces: three one-pixel diagonal strokes over the instep, a thin part segmenters lose.
    laces = np.zeros_like(upper)
    thickness = 0.6 / x.shape[0]
    for k in range(3):
        lx = cx + 0.02 * length + 0.08 * length * k
        ly = sole_top - 0.2 * length + 0.05 * length * k
        laces |= (np.abs((y - ly) + 0.8 * (x - lx)) <= thickness) & (np.abs(x - lx) <= 0.07 * length)
    white = np.array([0.93, 0.93, 0.9])
    return [
        (upper | toe, p.body, vertical, 0 * x),
        (sole, white if p.body.mean() < 0.6 else np.array([0.2, 0.2, 0.22]), 0.95 + 0 * x, 0 * x),
        (laces & ~sole, p.label, 1.0 + 0 * x, 0 * x),
    ]


def _jar(x: np.ndarray, y: np.ndarray, cx: float, base: float, h: float, p: _Palette) -> list:
    half = 0.32 * h
    top = base - 0.8 * h
    corner = 0.08 * h
    shade, spec = _cylinder(x, cx, half, max(p.gloss, 0.5))
    body = (
        _rect(x, y, cx - half, cx + half, top + corner, base - corner)
        | _rect(x, y, cx - half + corner, cx + half - corner, top, base)
        | _ellipse(x, y, cx - half + corner, base - corner, corner, corner)
        | _ellipse(x, y, cx + half - corner, base - corner, corner, corner)
    )
    lid_shade, lid_spec = _cylinder(x, cx, half * 1.05, 0.2)
    return [
        (body, p.body, shade, spec),
        (_rect(x, y, cx - 1.05 * half, cx + 1.05 * half, base - h, top + 0.02 * h), p.accent, lid_shade, lid_spec),
        (_rect(x, y, cx - half, cx + half, base - 0.55 * h, base - 0.25 * h), p.label, shade, 0.4 * spec),
    ]


def _mug(x: np.ndarray, y: np.ndarray, cx: float, base: float, h: float, p: _Palette) -> list:
    half = 0.27 * h
    body_cx = cx - 0.08 * h
    top = base - 0.72 * h
    shade, spec = _cylinder(x, body_cx, half, p.gloss)
    body = _rect(x, y, body_cx - half, body_cx + half, top, base)
    handle_cy = base - 0.38 * h
    handle = (
        _ellipse(x, y, body_cx + half, handle_cy, 0.2 * h, 0.22 * h)
        & ~_ellipse(x, y, body_cx + half, handle_cy, 0.12 * h, 0.14 * h)
        & (x > body_cx + half)
    )
    rim = _ellipse(x, y, body_cx, top, half, 0.05 * h)
    return [
        (body | handle, p.body, np.where(handle, 0.8, shade), np.where(handle, 0.0, spec)),
        (rim, p.body * 0.55, 1.0 + 0 * x, 0 * x),
    ]


_SHAPES: dict[str, Callable[..., list]] = {
    "bottle": _bottle,
    "box": _box,
    "can": _can,
    "ball": _ball,
    "shoe": _shoe,
    "jar": _jar,
    "mug": _mug,
}


def _sample_palette(rng: np.random.Generator) -> tuple[float, float, float, _Palette]:
    hue = float(rng.uniform(0.0, 1.0))
    # About one product in seven is near-neutral (white, black, steel): harmony barely applies to it.
    if rng.uniform() < 0.15:
        saturation = float(rng.uniform(0.0, 0.12))
        value = float(rng.choice([0.18, 0.55, 0.92]) + rng.uniform(-0.05, 0.05))
    else:
        saturation = float(rng.uniform(0.45, 0.95))
        value = float(rng.uniform(0.5, 0.95))
    body = hsv_to_rgb(np.array([hue, saturation, value]))
    label_style = int(rng.integers(3))
    if label_style == 0:
        label = hsv_to_rgb(np.array([0.12, 0.08, 0.96]))
    elif label_style == 1:
        label = hsv_to_rgb(np.array([hue + 0.5, 0.6 * saturation, 0.9]))
    else:
        label = hsv_to_rgb(np.array([hue, saturation, 0.35 * value]))
    accent = hsv_to_rgb(np.array([0.0, 0.0, float(rng.choice([0.15, 0.75]))]))
    gloss = float(rng.uniform(0.05, 0.45))
    return hue, saturation, value, _Palette(body=body, label=label, accent=accent, gloss=gloss)


def render_product(
    kind: str,
    rng: np.random.Generator,
    size: int = 64,
    *,
    product_id: str = "product",
    height_range: tuple[float, float] = (0.45, 0.72),
) -> Product:
    """Render one procedural product of ``kind`` with random colour, material, size and placement.

    Args:
        kind: one of :data:`PRODUCT_KINDS`.
        rng: all randomness (colour, gloss, size, placement) comes from here.
        size: image side in pixels (the studio world uses 64).
        product_id: id stored on the product.
        height_range: product extent as a fraction of the image side, (min, max).

    Returns:
        A :class:`Product` whose mask is exact (alpha 0/255).
    """
    if kind not in _SHAPES:
        raise ValueError(f"unknown product kind {kind!r}; expected one of {', '.join(PRODUCT_KINDS)}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    low, high = height_range
    if not 0.1 <= low <= high <= 0.9:
        raise ValueError(f"height_range must satisfy 0.1 <= min <= max <= 0.9, got {height_range}")
    hue, saturation, value, palette = _sample_palette(rng)
    height = float(rng.uniform(low, high))
    base = float(rng.uniform(0.86, 0.93))
    cx = 0.5 + float(rng.uniform(-0.08, 0.08))
    y, x = pixel_grid(size)
    rgb, mask = _paint(size, _SHAPES[kind](x, y, cx, base, height, palette))
    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = np.where(mask[..., None], np.round(np.clip(rgb, 0.0, 1.0) * 255.0), 0).astype(np.uint8)
    rgba[..., 3] = np.where(mask, 255, 0).astype(np.uint8)
    return Product(product_id=product_id, kind=kind, hue=hue, saturation=saturation, value=value, rgba=rgba, mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Real photos


def load_product_photo(path: str | Path, size: int = 64, *, product_id: str = "photo") -> Product:
    """Load an RGBA product photo as a :class:`Product` of kind ``"photo"``.

    The alpha channel is thresholded at 128 into the exact mask (soft shadows below that are dropped), the
    object is cropped to its mask, resized to fit 78 % of the frame (aspect kept, Lanczos on premultiplied
    RGBA) and stood near the bottom centre like the procedural products.

    Raises:
        AssetError: the file is missing, unreadable, has no alpha channel, or no pixel with alpha >= 128.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if "A" not in image.getbands() and not (image.mode == "P" and "transparency" in image.info):
                raise AssetError(
                    f"{path}: product photo must have an alpha channel (the product mask); got mode {image.mode}"
                )
            image = image.convert("RGBA")
    except FileNotFoundError:
        raise AssetError(f"{path}: product photo not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise AssetError(f"{path}: cannot read product photo: {exc}") from None
    alpha = np.asarray(image)[..., 3]
    rows, cols = np.nonzero(alpha >= 128)
    if rows.size == 0:
        raise AssetError(f"{path}: product photo has no pixel with alpha >= 128 (the mask would be empty)")
    crop = image.crop((int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))
    scale = 0.78 * size / max(crop.size)
    new_w, new_h = max(1, round(crop.size[0] * scale)), max(1, round(crop.size[1] * scale))
    resized = np.asarray(crop.resize((new_w, new_h), Image.Resampling.LANCZOS))
    top = min(size - new_h, round(0.9 * size) - new_h)
    left = (size - new_w) // 2
    canvas = np.zeros((size, size, 4), dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    mask = canvas[..., 3] >= 128
    if not mask.any():
        raise AssetError(f"{path}: product vanished when resized to {size} px")
    canvas[..., :3] = np.where(mask[..., None], canvas[..., :3], 0)
    canvas[..., 3] = np.where(mask, 255, 0).astype(np.uint8)
    rgb = canvas[..., :3].astype(np.float64) / 255.0
    hsv = rgb_to_hsv(rgb[mask])
    return Product(
        product_id=product_id,
        kind="photo",
        hue=hue_of_pixels(rgb, mask),
        saturation=float(hsv[:, 1].mean()),
        value=float(hsv[:, 2].mean()),
        rgba=canvas,
        mask=mask,
        source="photo",
    )
