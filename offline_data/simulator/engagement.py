r"""Hidden gold engagement: the studio world's ground truth of how much a composite appeals to a segment.

No model ever sees this function; experiments use it to tell real engagement gains from proxy gains. It is
computed from the composited image, the exact product mask, the prompt and the shopper segment only, so it
scores any image, the policy's generated ones included. All quantities are smooth functions of local colour
and gradient statistics (a small CNN can learn them) combined nonlinearly (a linear probe cannot).

Notation. Pixels are mapped to the opponent space of ``colour.py``: luma ``L`` and chroma ``z = a + i b``.
``G = |∇L|`` is the luma gradient magnitude (forward differences). Regions are square rings around the
product mask ``M`` (``D_r`` = M dilated by an r-pixel square): surround ``S = D_8 \ M``, seam ring
``N = D_2 \ M``, halo reference ``F = D_7 \ D_3``, clutter ring ``C = D_12 \ D_3``, background ``B = ¬D_3``
(top half ``B_top``, bottom half ``B_bot``). ``⟨·⟩_R`` is the mean over region R.

Terms (each per image):

    contrast   c = tanh(Δ / 0.18),   Δ = sqrt((⟨L⟩_M − ⟨L⟩_S)² + ½ |⟨z⟩_M − ⟨z⟩_S|²)
    harmony    h = tanh(|z_p| / 0.08) · tanh(|z_b| / 0.08) · cos 2(arg z_p − arg z_b),  z_p = ⟨z⟩_M, z_b = ⟨z⟩_B
               (analogous or complementary hues +1, a 90° clash −1, greys 0)
    clutter    k = κ² / (1 + κ) · (1.4 − c),   κ = ⟨G⟩_C / 0.04
               (gradient energy near the product; worse when the product does not stand out)
    adherence  a = exp(−½ · mean_j ((s_j − r_j) / w_j)²)
               s = (⟨L, a, b⟩_{B_top}, ⟨L, a, b⟩_{B_bot}, ⟨G⟩_B) of the image, r the same statistics of the
               prompt's reference image (``backgrounds.reference_background``), w = (0.07 ×6, 0.025)
    seam       e = tanh(0.01 · softplus((ε − 0.04) / 0.01) / 0.08),   ε = ⟨ ‖Δ(x)‖ ⟩_N,
               Δ(x) = mean over the outline pixels within 6 px of x of (m_N − m_F), m_R(x) the mean colour of
               the pixels of R within r px of x (r = 2 for N, 4 for F; normalised convolutions), ‖·‖ the
               opponent distance used for contrast. The signed step between the colour hugging the product
               and the background just beyond it is averaged along arcs of the outline first, so texture
               (steps of changing sign) cancels while halos and lighting seams (one sign along an arc) stay;
               the smooth hinge ignores the ~0.03 that clean composites reach from light falloff alone
    taste      warmth w = tanh(⟨R − B⟩_B / 0.12), busyness u = tanh(⟨G⟩_B / 0.04),
               colourfulness q = tanh(⟨|z|⟩_B / 0.15)

Gold for segment s combines the terms with the segment's weights (:data:`SEGMENT_WEIGHTS`) and a fixed
normalisation (:data:`GOLD_NORMALISATION`) so that gold has mean ≈ 0 and spread ≈ 1 per segment over the
default world's logged composites:

    gold_s = (W_s · [c, h, k, a, e, w, u, q] − μ_s) / σ_s

Segments: ``warm`` likes warm scenes, ``cool`` likes cool ones, ``minimal`` likes calm, muted, uncluttered
scenes and clear contrast. ``panel`` is the population-average taste (the mean of the three weight vectors),
used for pairwise panels. Everything is vectorised over the batch; a few thousand 64 px images per second on
one core.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from offline_data.simulator.backgrounds import reference_background
from offline_data.simulator.colour import rgb_to_opponent
from offline_data.simulator.prompts import parse_prompt
from offline_data.simulator.raster import box_sum, dilate

FEATURES: tuple[str, ...] = ("contrast", "harmony", "clutter", "adherence", "seam", "warmth", "busyness", "colour")
"""Terms of the gold model, in the order of the weight vectors."""

SHOPPER_SEGMENTS: tuple[str, ...] = ("warm", "cool", "minimal")
"""Segments that generate traffic."""

PANEL_SEGMENT = "panel"
"""Population-average taste, used to score pairwise judgements."""

# Smooth, region-level terms (contrast, clutter, taste) carry most of the weight; the fine-scale seam and the
# hue-interaction harmony are present but lighter, so that a small CNN trained on a few thousand logged
# composites can learn gold to a within-product correlation of about 0.85 (measured in the simulator's
# learnability test), which is what lets reward models approach the Bayes ceilings.
_BASE = {"contrast": 1.3, "harmony": 0.25, "clutter": -1.0, "adherence": 0.6, "seam": -0.6}
SEGMENT_WEIGHTS: dict[str, dict[str, float]] = {
    "warm": {**_BASE, "warmth": 1.0, "busyness": -0.4, "colour": -0.2},
    "cool": {**_BASE, "warmth": -1.0, "busyness": -0.4, "colour": -0.2},
    "minimal": {**_BASE, "contrast": 1.6, "clutter": -1.5, "warmth": 0.0, "busyness": -1.0, "colour": -0.8},
}
SEGMENT_WEIGHTS[PANEL_SEGMENT] = {
    f: float(np.mean([SEGMENT_WEIGHTS[s][f] for s in SHOPPER_SEGMENTS])) for f in FEATURES
}
"""Weights W_s of each term per segment (``panel`` is the mean of the shopper segments)."""

SEGMENTS: tuple[str, ...] = (*SHOPPER_SEGMENTS, PANEL_SEGMENT)
"""Every segment gold is defined for."""

GOLD_NORMALISATION: dict[str, tuple[float, float]] = {
    "warm": (0.9313, 0.7009),
    "cool": (0.2016, 0.8903),
    "minimal": (-0.0428, 0.8219),
    "panel": (0.3634, 0.6302),
}
"""(μ_s, σ_s) per segment, fixed once from the default world's logged composites (all 4,800 variants of
``experiments/configs/studio_world.toml``, seed 0) by::

    fit_normalisation(StudioWorld(SimulatorConfig()).variant_features)

Changing the world's config does not change them: gold is one fixed function of (image, mask, prompt,
segment), comparable across worlds and policies."""

ADHERENCE_SCALES = np.array([0.07, 0.07, 0.07, 0.07, 0.07, 0.07, 0.025])
"""w_j: tolerated deviation of each background statistic from the prompt's reference."""

SEAM_ARC = 6
"""Half-width (px) of the arc of outline over which the signed seam step is averaged."""
SEAM_TOLERANCE = 0.04
"""ε a clean composite reaches from texture and light falloff alone; only the excess counts as a seam."""
SEAM_SCALE = 0.08
"""Excess ε at which the seam term reaches tanh(1) ≈ 0.76."""

_CHUNK = 256


def _check_inputs(images: np.ndarray, masks: np.ndarray, prompts: Sequence[str], segments: Sequence[str] | None):
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be [B, H, W, 3] uint8, got {images.dtype} {images.shape}")
    if masks.dtype != np.bool_ or masks.shape != images.shape[:3]:
        raise ValueError(f"masks must be [B, H, W] bool matching images {images.shape[:3]}, got {masks.shape}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {images.shape[0]} images")
    if segments is not None:
        if len(segments) != images.shape[0]:
            raise ValueError(f"got {len(segments)} segments for {images.shape[0]} images")
        for i, segment in enumerate(segments):
            if segment not in SEGMENT_WEIGHTS:
                raise ValueError(f"segment {i}: {segment!r} is not one of {', '.join(SEGMENTS)}")
    empty = np.flatnonzero(~masks.any(axis=(1, 2)))
    if empty.size:
        raise ValueError(f"product mask of image {int(empty[0])} is empty; gold needs the product's pixels")


def _region_mean(values: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean of values [B, H, W] (or [B, H, W, C]) over region [B, H, W]; 0 where the region is empty."""
    batch = region.shape[0]
    weights = region.reshape(batch, 1, -1).astype(np.float64)
    count = np.maximum(weights.sum(axis=2), 1.0)
    flat = values.reshape(batch, weights.shape[2], -1)
    means = np.matmul(weights, flat)[:, 0, :] / count
    return means if values.ndim == 4 else means[:, 0]


def _gradient(luma: np.ndarray) -> np.ndarray:
    gx = np.zeros_like(luma)
    gy = np.zeros_like(luma)
    gx[:, :, :-1] = luma[:, :, 1:] - luma[:, :, :-1]
    gy[:, :-1, :] = luma[:, 1:, :] - luma[:, :-1, :]
    return np.sqrt(gx**2 + gy**2 + 1e-12)


def _local_mean(values: np.ndarray, region: np.ndarray, radius: int) -> np.ndarray:
    """Mean of values [B, H, W, C] over the pixels of region [B, H, W] within ``radius`` of each pixel.

    float32: these local means feed ring differences of a few hundredths, far above float32 resolution.
    """
    weight = region.astype(np.float32)
    count = np.maximum(box_sum(weight, radius, dtype=np.float32), np.float32(1e-6))
    weighted = values.astype(np.float32) * weight[..., None]
    return box_sum(weighted, radius, axes=(1, 2), dtype=np.float32) / count[..., None]


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x), overflow-free: a smooth hinge."""
    return np.logaddexp(0.0, x)


def _opponent_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sqrt(ΔL² + ½ |Δz|²) between opponent colours [..., 3]."""
    d = a - b
    return np.sqrt(d[..., 0] ** 2 + 0.5 * (d[..., 1] ** 2 + d[..., 2] ** 2) + 1e-12)


def _background_statistics(opponent: np.ndarray, gradient: np.ndarray, region: np.ndarray) -> np.ndarray:
    """s = (⟨L,a,b⟩ over top half, ⟨L,a,b⟩ over bottom half, ⟨G⟩) of ``region``: [B, 7]."""
    half = region.shape[1] // 2
    top = region.copy()
    top[:, half:] = False
    bottom = region & ~top
    return np.concatenate(
        [_region_mean(opponent, top), _region_mean(opponent, bottom), _region_mean(gradient, region)[:, None]], axis=1
    )


@functools.lru_cache(maxsize=4096)
def prompt_reference_statistics(prompt: str, size: int) -> np.ndarray:
    """Statistics r of the prompt's reference image (see the module docstring): [7] float64, read-only."""
    image = reference_background(parse_prompt(prompt), size)[None].astype(np.float64) / 255.0
    opponent = rgb_to_opponent(image)
    region = np.ones(image.shape[:3], dtype=bool)
    stats = _background_statistics(opponent, _gradient(opponent[..., 0]), region)[0]
    stats.setflags(write=False)
    return stats


def _features_chunk(images: np.ndarray, masks: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
    rgb = images.astype(np.float64) / 255.0
    opponent = rgb_to_opponent(rgb)
    luma = opponent[..., 0]
    z = opponent[..., 1] + 1j * opponent[..., 2]
    gradient = _gradient(luma)
    # Square dilations compose (D_a then D_b = D_(a+b)), so each ring grows from the previous one.
    d2 = dilate(masks, 2)
    d3 = dilate(d2, 1)
    d7 = dilate(d3, 4)
    d8 = dilate(d7, 1)
    d12 = dilate(d8, 4)
    surround, seam_ring, halo_ref, clutter_ring, background = d8 & ~masks, d2 & ~masks, d7 & ~d3, d12 & ~d3, ~d3

    product_colour = _region_mean(opponent, masks)
    delta = _opponent_distance(product_colour, _region_mean(opponent, surround))
    contrast = np.tanh(delta / 0.3)

    z_product = _region_mean(z, masks)
    z_background = _region_mean(z, background)
    unit = lambda v: v / np.maximum(np.abs(v), 1e-9)  # noqa: E731
    cos_2d = np.real(unit(z_product) ** 2 * np.conj(unit(z_background) ** 2))
    harmony = np.tanh(np.abs(z_product) / 0.08) * np.tanh(np.abs(z_background) / 0.08) * cos_2d

    kappa = _region_mean(gradient, clutter_ring) / 0.04
    clutter = kappa**2 / (1.0 + kappa) * (1.4 - contrast)

    stats = _background_statistics(opponent, gradient, background)
    sizes = images.shape[1]
    reference = np.stack([prompt_reference_statistics(p, sizes) for p in prompts])
    adherence = np.exp(-0.5 * np.mean(((stats - reference) / ADHERENCE_SCALES) ** 2, axis=1))

    # Normalised convolutions: the local mean colour of the seam ring and of the ring beyond it, per pixel.
    near = _local_mean(opponent, seam_ring, 2)
    far, far_count = _local_mean(opponent, halo_ref, 4), box_sum(halo_ref, 4)
    seam_pixels = seam_ring & (far_count > 0.5)
    # Average the signed step along the outline before taking its size: texture steps change sign from
    # pixel to pixel and cancel, a halo or a lighting seam has one sign all along an arc and stays.
    step = _local_mean(np.where(seam_pixels[..., None], near - far, 0.0), seam_pixels, SEAM_ARC)
    epsilon = _region_mean(_opponent_distance(step, np.zeros_like(step)), seam_pixels)
    seam = np.tanh(_softplus((epsilon - SEAM_TOLERANCE) / 0.01) * 0.01 / SEAM_SCALE)

    warmth = np.tanh(_region_mean(rgb[..., 0] - rgb[..., 2], background) / 0.12)
    busyness = np.tanh(_region_mean(gradient, background) / 0.04)
    colourfulness = np.tanh(_region_mean(np.abs(z), background) / 0.15)
    return np.stack([contrast, harmony, clutter, adherence, seam, warmth, busyness, colourfulness], axis=1)


def measure_features(images: np.ndarray, masks: np.ndarray, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """The segment-independent terms [c, h, k, a, e, w, u, q] of the module docstring.

    Args:
        images: [B, H, W, 3] uint8 composites.
        masks: [B, H, W] bool exact product masks (none empty).
        prompts: B prompt strings (the background each image was asked for).

    Returns:
        {name in :data:`FEATURES`: [B] float64}.
    """
    images, masks = np.asarray(images), np.asarray(masks)
    _check_inputs(images, masks, prompts, None)
    parts = [
        _features_chunk(images[i : i + _CHUNK], masks[i : i + _CHUNK], prompts[i : i + _CHUNK])
        for i in range(0, images.shape[0], _CHUNK)
    ]
    table = np.concatenate(parts, axis=0) if parts else np.zeros((0, len(FEATURES)))
    return {name: table[:, j] for j, name in enumerate(FEATURES)}


def _weight_matrix(segments: Sequence[str]) -> np.ndarray:
    return np.array([[SEGMENT_WEIGHTS[s][f] for f in FEATURES] for s in segments], dtype=np.float64).reshape(
        len(segments), len(FEATURES)
    )


def combine_gold(features: dict[str, np.ndarray], segments: Sequence[str]) -> dict[str, np.ndarray]:
    """Each term's contribution to gold, in gold units: ``sum(result.values()) == gold``.

    Returns:
        {"contrast", "harmony", "clutter", "adherence", "seam", "taste", "offset"}: [B] float64 each, where
        taste sums the warmth, busyness and colourfulness terms and offset is −μ_s / σ_s.
    """
    for i, segment in enumerate(segments):
        if segment not in SEGMENT_WEIGHTS:
            raise ValueError(f"segment {i}: {segment!r} is not one of {', '.join(SEGMENTS)}")
    weights = _weight_matrix(segments)
    mu = np.array([GOLD_NORMALISATION[s][0] for s in segments])
    sigma = np.array([GOLD_NORMALISATION[s][1] for s in segments])
    terms = {f: weights[:, j] * features[f] / sigma for j, f in enumerate(FEATURES)}
    return {
        "contrast": terms["contrast"],
        "harmony": terms["harmony"],
        "clutter": terms["clutter"],
        "adherence": terms["adherence"],
        "seam": terms["seam"],
        "taste": terms["warmth"] + terms["busyness"] + terms["colour"],
        "offset": -mu / sigma,
    }


def gold_components(
    images: np.ndarray, masks: np.ndarray, prompts: Sequence[str], segments: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-term contributions to :func:`gold_engagement` (they sum to it); see :func:`combine_gold`."""
    images, masks = np.asarray(images), np.asarray(masks)
    _check_inputs(images, masks, prompts, segments)
    return combine_gold(measure_features(images, masks, prompts), segments)


def gold_engagement(
    images: np.ndarray, masks: np.ndarray, prompts: Sequence[str], segments: Sequence[str]
) -> np.ndarray:
    """Hidden gold engagement of each composite for its segment (module docstring has the equation).

    Args:
        images: [B, H, W, 3] uint8 composites.
        masks: [B, H, W] bool exact product masks.
        prompts: B prompts (what each background was asked to show).
        segments: B segment names from :data:`SEGMENTS`.

    Returns:
        [B] float64, ≈ zero mean and unit spread per segment over the default world.

    Raises:
        ValueError: shapes/dtypes are wrong, a mask is empty or a segment is unknown.
        PromptError: a prompt uses a word outside the vocabulary.
    """
    components = gold_components(images, masks, prompts, segments)
    return np.sum(np.stack(list(components.values())), axis=0)


def gold_for_segments(features: dict[str, np.ndarray], segments: Sequence[str] = SEGMENTS) -> np.ndarray:
    """Gold of every image for every listed segment at once: [B, len(segments)] float64."""
    count = len(next(iter(features.values())))
    columns = [np.sum(np.stack(list(combine_gold(features, [s] * count).values())), axis=0) for s in segments]
    return np.stack(columns, axis=1) if columns else np.zeros((count, 0))


def fit_normalisation(features: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(μ_s, σ_s) that make each segment's gold zero-mean, unit-spread over ``features``.

    This is how :data:`GOLD_NORMALISATION` was fixed; it is not called at run time.
    """
    table = np.stack([features[f] for f in FEATURES], axis=1)
    out = {}
    for segment in SEGMENTS:
        raw = table @ np.array([SEGMENT_WEIGHTS[segment][f] for f in FEATURES])
        out[segment] = (float(raw.mean()), float(raw.std()))
    return out
