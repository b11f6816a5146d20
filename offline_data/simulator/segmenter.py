"""A noisy product segmenter: exact masks in, masks that fail the way real segmenters fail out.

Real matting and segmentation models rarely return the true alpha. They

1. grow or shrink the object as a whole (a threshold or a blurry logit map: *dilation* / *erosion*),
2. wobble along the outline (*jittered boundary*),
3. punch *holes* into low-contrast interiors (labels, highlights), and
4. drop *thin parts* (bottle necks, mug handles, laces) that the network's receptive field smooths away.

All four are modelled on the signed distance ``d`` to the true outline (pixels; > 0 inside):
the segmenter's foreground logit is ``field = d + offset + jitter(x, y)``, the mask is ``field > 0``, then holes
are punched and a morphological opening removes parts thinner than ``2 r + 1`` pixels. The emitted confidence
is ``|2 σ(field / softness) - 1|`` (0 on the segmenter's own boundary, → 1 far from it), lowered to 0.25 in
punched holes and dropped thin parts, where a real model's logits are weak. ``error_level`` in [0, 1] scales
every mechanism; 0 returns the exact mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from offline_data.simulator.raster import value_noise


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance to the outline in pixels: +k - 0.5 inside, -(k - 0.5) outside.

    Pixels adjacent to the outline get ±0.5, so ``signed_distance(m) > 0`` reproduces ``m`` exactly.

    Args:
        mask: [H, W] bool.

    Returns:
        [H, W] float64.
    """
    mask = _check_mask(mask)
    if mask.all():
        return np.full(mask.shape, np.inf)
    if not mask.any():
        return np.full(mask.shape, -np.inf)
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, inside - 0.5, -(outside - 0.5))


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError(f"mask must be [H, W] bool, got {mask.dtype} {mask.shape}")
    return mask


def _disk(radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2 + 0.5


def remove_thin_parts(mask: np.ndarray, radius: int) -> np.ndarray:
    """Morphological opening by a disk of ``radius``: drops parts narrower than about ``2 * radius + 1`` px.

    Args:
        mask: [H, W] bool.
        radius: disk radius in pixels (0 returns the mask unchanged).

    Returns:
        [H, W] bool, a subset of ``mask``.
    """
    mask = _check_mask(mask)
    if radius <= 0:
        return mask.copy()
    return ndimage.binary_opening(mask, structure=_disk(radius)) & mask


def punch_holes(mask: np.ndarray, rng: np.random.Generator, count: int, max_radius: float = 2.5) -> np.ndarray:
    """Clear ``count`` small discs centred at least 2 px inside the object (holes never touch the outline).

    Args:
        mask: [H, W] bool.
        rng: chooses centres and radii.
        count: number of holes (>= 0).
        max_radius: largest hole radius in pixels; radii are uniform in [1, max_radius].

    Returns:
        [H, W] bool, a subset of ``mask`` (unchanged when no pixel is 2 px deep).
    """
    mask = _check_mask(mask)
    depth = signed_distance(mask)
    rows, cols = np.nonzero(depth >= 2.0)
    out = mask.copy()
    if rows.size == 0 or count <= 0:
        return out
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    for _ in range(count):
        pick = int(rng.integers(rows.size))
        # A hole may not reach the outline: cap its radius by the centre's depth.
        radius = min(float(rng.uniform(1.0, max_radius)), float(depth[rows[pick], cols[pick]]) - 1.0)
        out &= (yy - rows[pick]) ** 2 + (xx - cols[pick]) ** 2 > radius**2
    return out


def segment_mask(mask: np.ndarray, rng: np.random.Generator, error_level: float) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a segmenter on the exact product mask (see the module docstring for the model).

    Args:
        mask: [H, W] bool exact product mask.
        rng: all randomness of this call.
        error_level: 0 (perfect) .. 1 (a poor segmenter: ±2.5 px offset, ±1.8 px jitter, frequent holes
            and lost thin parts). Mean IoU against the truth falls monotonically with it.

    Returns:
        ``(noisy_mask [H, W] bool, confidence [H, W] float32 in [0, 1])``.
    """
    mask = _check_mask(mask)
    if not 0.0 <= error_level <= 1.0:
        raise ValueError(f"error_level must be in [0, 1], got {error_level}")
    size = mask.shape[0]
    # Draw every random quantity unconditionally, so changing error_level keeps the same noise pattern.
    direction = rng.choice([-1.0, 1.0])
    offset = error_level * 2.5 * direction * rng.uniform(0.3, 1.0)
    jitter = error_level * 1.8 * value_noise(rng, size, 6)[: mask.shape[0], : mask.shape[1]]
    hole_draw, thin_draw = rng.uniform(size=2)
    hole_count = int(rng.poisson(1.0 + 2.0 * error_level))
    hole_rng = np.random.default_rng(rng.integers(2**63))

    field = signed_distance(mask) + offset + jitter
    noisy = field > 0.0
    softness = 0.6 + 1.5 * error_level
    confidence = np.abs(2.0 / (1.0 + np.exp(-np.clip(field, -50.0, 50.0) / softness)) - 1.0)
    if hole_draw < 1.2 * error_level:
        holed = punch_holes(noisy, hole_rng, hole_count)
        confidence = np.where(noisy & ~holed, 0.25, confidence)
        noisy = holed
    if thin_draw < 1.2 * error_level:
        opened = remove_thin_parts(noisy, 1 if error_level < 0.5 else 2)
        confidence = np.where(noisy & ~opened, 0.25, confidence)
        noisy = opened
    return noisy, confidence.astype(np.float32)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Intersection over union of bool masks over the last two axes (1.0 when both are empty).

    Args:
        a, b: [..., H, W] bool of the same shape.

    Returns:
        A float for [H, W] inputs, else [...] float64.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != np.bool_ or b.dtype != np.bool_ or a.ndim < 2:
        raise ValueError(f"mask_iou needs two [..., H, W] bool arrays of one shape, got {a.shape}, {b.shape}")
    intersection = np.sum(a & b, axis=(-2, -1))
    union = np.sum(a | b, axis=(-2, -1))
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return float(iou) if iou.ndim == 0 else iou
