"""Colour spaces the studio world renders and scores in: HSV for palettes, an opponent space for gold.

Rendering picks colours in HSV (hue in [0, 1), saturation and value in [0, 1]) because prompt words map
naturally onto it ("navy" = dark saturated blue). Scoring (``engagement.py``) works in a linear opponent
space instead, because every quantity there must be a smooth function of the pixels:

    L = 0.299 R + 0.587 G + 0.114 B        (luma, [0, 1])
    a = (R - G) / √2                        (red-green axis)
    b = (R + G - 2 B) / √6                  (yellow-blue axis)

with R, G, B in [0, 1]. The chroma ``z = a + i b`` is a complex number whose modulus is a saturation and whose
argument is a hue angle (0 = red, ≈ π/3 = yellow, ≈ 2π/3 = green, π = cyan, ≈ -2π/3 = blue); averaging ``z``
over a region gives a saturation-weighted circular mean hue for free.
"""

from __future__ import annotations

import numpy as np

_INV_SQRT2 = 1.0 / np.sqrt(2.0)
_INV_SQRT6 = 1.0 / np.sqrt(6.0)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB.

    Args:
        hsv: [..., 3] float, hue in [0, 1) (wrapped), saturation and value clipped to [0, 1].

    Returns:
        [..., 3] float64 RGB in [0, 1].
    """
    hsv = np.asarray(hsv, dtype=np.float64)
    if hsv.shape[-1] != 3:
        raise ValueError(f"hsv must have a trailing axis of 3, got shape {hsv.shape}")
    h = np.mod(hsv[..., 0], 1.0) * 6.0
    s = np.clip(hsv[..., 1], 0.0, 1.0)
    v = np.clip(hsv[..., 2], 0.0, 1.0)
    # Standard piecewise form written as one expression: channel n uses k = (n + h) mod 6.
    out = np.empty(hsv.shape, dtype=np.float64)
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = np.mod(n + h, 6.0)
        out[..., channel] = v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return out


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Vectorised RGB -> HSV (the inverse of :func:`hsv_to_rgb`; hue of a grey is 0).

    Args:
        rgb: [..., 3] float in [0, 1].

    Returns:
        [..., 3] float64 with hue in [0, 1).
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have a trailing axis of 3, got shape {rgb.shape}")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    safe_c = np.where(c > 0, c, 1.0)
    h = np.where(
        v == r, np.mod((g - b) / safe_c, 6.0), np.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0)
    )
    h = np.where(c > 0, h / 6.0, 0.0)
    s = np.where(v > 0, c / np.where(v > 0, v, 1.0), 0.0)
    return np.stack([np.mod(h, 1.0), s, v], axis=-1)


def rgb_to_opponent(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> (L, a, b) in the linear opponent space of the module docstring.

    Args:
        rgb: [..., 3] float.

    Returns:
        [..., 3] float64: luma, red-green, yellow-blue.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb must have a trailing axis of 3, got shape {rgb.shape}")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    return np.stack([luma, (r - g) * _INV_SQRT2, (r + g - 2.0 * b) * _INV_SQRT6], axis=-1)


def hue_of_pixels(rgb: np.ndarray, mask: np.ndarray) -> float:
    """Saturation-weighted circular mean HSV hue of the masked pixels, in [0, 1).

    Used for real photos, whose hue is not known from a renderer. A grey region returns 0.

    Args:
        rgb: [H, W, 3] float in [0, 1].
        mask: [H, W] bool; must select at least one pixel.
    """
    if not mask.any():
        raise ValueError("mask selects no pixels")
    hsv = rgb_to_hsv(rgb[mask])
    angle = 2.0 * np.pi * hsv[:, 0]
    weight = hsv[:, 1] * hsv[:, 2]
    z = np.sum(weight * np.exp(1j * angle))
    if abs(z) < 1e-9:
        return 0.0
    return float(np.mod(np.angle(z) / (2.0 * np.pi), 1.0))
