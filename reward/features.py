"""Fixed image operations of the small CNN encoder: a colour/texture filter bank and rings around the product.

A composite's appeal depends on how the product stands against what surrounds it (contrast, colour harmony,
halos and seams at the boundary, clutter nearby) and on the scene as a whole (prompt adherence, warmth,
busyness). So the encoder (``encoders.StudioCNN``) averages per-pixel features over regions defined by the
product mask: the product, rings at increasing distance from it, and the rest of the image split into top
and bottom halves (wall and surface). With ~2,000 training composites, a generic CNN overfits long before it
learns such region comparisons (measured: held-out correlation with the hidden engagement 0.67 for a 4-layer
CNN trained on the engagement itself); pooling over mask rings gives it them for free.

The filter bank is the classic fixed first layer of colour-texture models, in a linear opponent space:

    L = 0.299 R + 0.587 G + 0.114 B,   a = (R − G) / √2,   b = (R + G − 2B) / √6    (R, G, B in [0, 1])

- colour: L, a, b and their squares (region means and second moments);
- axial hue: |z| (cos 2φ, sin 2φ) with z = a + i b: hue as an axis rather than a direction, so complementary
  and analogous colours line up (colour-harmony templates, Cohen-Or et al. 2006, are axial);
- texture: gradient magnitudes of L, a, b at scales 1, 2 and 4 px (forward differences of box-blurred maps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

FILTER_BANK_CHANNELS = 17
"""Channels of :func:`filter_bank`: 3 colour + 3 squared colour + 2 axial hue + 9 gradient magnitudes."""
OPPONENT_SLICE = slice(0, 3)
"""Channels of L, a, b in the filter bank."""
GRADIENT_L_CHANNEL = 8
"""Channel of the scale-1 luma gradient magnitude."""
_GRADIENT_SCALES = (1, 2, 4)


def check_images(images: Tensor, masks: Tensor | None = None) -> None:
    """Raise ValueError unless images are uint8 [B, 3, H, W] and masks (if given) bool [B, H, W]."""
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        found = f"{images.dtype} {list(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a uint8 tensor [B, 3, H, W], got {found}")
    if masks is not None:
        expected = (images.shape[0], images.shape[2], images.shape[3])
        if not isinstance(masks, Tensor) or masks.dtype != torch.bool or tuple(masks.shape) != expected:
            found = f"{masks.dtype} {list(masks.shape)}" if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"masks must be a bool tensor {list(expected)} (True on the product), got {found}")


def opponent(images: Tensor) -> Tensor:
    """uint8 RGB [B, 3, H, W] -> float32 (L, a, b) [B, 3, H, W] (module docstring)."""
    rgb = images.float() / 255.0
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    return torch.cat(
        [0.299 * r + 0.587 * g + 0.114 * b, (r - g) / math.sqrt(2.0), (r + g - 2.0 * b) / math.sqrt(6.0)], dim=1
    )


def box_sums(maps: Tensor, radii: Sequence[int]) -> list[Tensor]:
    """Sums over the (2r+1) x (2r+1) window around each pixel of [..., H, W] maps, for each r in ``radii``
    (zero outside the image; r = 0 returns the maps).

    One integral image (two cumulative sums), padded for the largest radius, serves every radius: O(1) per pixel
    whatever the radius, and on a CPU several times faster than pooling or convolution for these small maps.
    Exact for 0/1 masks.
    """
    largest = max(radii)
    if largest <= 0:
        return [maps for _ in radii]
    height, width = maps.shape[-2:]
    table = F.pad(maps, (largest + 1, largest, largest + 1, largest)).cumsum(-1).cumsum(-2)
    out = []
    for radius in radii:
        if radius <= 0:
            out.append(maps)
            continue
        # Pixel i sits at padded index i + largest + 1; its window sum is T[i + r + L + 1] − T[i − r + L].
        hi, lo = (
            slice(radius + largest + 1, radius + largest + 1 + height),
            slice(largest - radius, largest - radius + height),
        )
        hi_w, lo_w = (
            slice(radius + largest + 1, radius + largest + 1 + width),
            slice(largest - radius, largest - radius + width),
        )
        out.append(table[..., hi, hi_w] - table[..., lo, hi_w] - table[..., hi, lo_w] + table[..., lo, lo_w])
    return out


def _gradient_magnitude(maps: Tensor, step: int) -> Tensor:
    """sqrt(dx² + dy²) of forward differences ``step`` px apart (0 where the step leaves the image)."""
    dx = F.pad(maps[..., :, step:] - maps[..., :, :-step], (0, step))
    dy = F.pad(maps[..., step:, :] - maps[..., :-step, :], (0, 0, 0, step))
    return torch.sqrt(dx * dx + dy * dy + 1e-8)


def filter_bank(images: Tensor) -> Tensor:
    """The fixed per-pixel features of the module docstring: uint8 [B, 3, H, W] -> float32 [B, 17, H, W]."""
    check_images(images)
    lab = opponent(images)
    a, b = lab[:, 1:2], lab[:, 2:3]
    modulus = torch.sqrt(a * a + b * b + 1e-8)
    features = [lab, lab * lab, (a * a - b * b) / modulus, 2.0 * a * b / modulus]
    radii = [scale - 1 for scale in _GRADIENT_SCALES]
    blurs = {s: m / float((2 * r + 1) ** 2) for s, r, m in zip(_GRADIENT_SCALES, radii, box_sums(lab, radii))}
    for scale in _GRADIENT_SCALES:
        blurred = blurs[scale]
        features.append(_gradient_magnitude(blurred, scale))
    return torch.cat(features, dim=1)


def dilate(masks: Tensor, radius: int) -> Tensor:
    """Square dilation by ``radius`` px of 0/1 float masks [B, 1, H, W]: 1 where any pixel within the window is 1."""
    return dilations(masks, [radius])[0]


def dilations(masks: Tensor, radii: Sequence[int]) -> list[Tensor]:
    """:func:`dilate` for several radii at once (one integral image)."""
    return [m if r <= 0 else (m > 0.5).to(masks.dtype) for r, m in zip(radii, box_sums(masks, radii))]


def ring_regions(masks: Tensor, bands: Sequence[int]) -> Tensor:
    """Soft region maps around the product: [B, H, W] bool -> [B, R, H, W] float32, R = len(bands) + 5.

    Regions, in order: the product's interior (more than 2 px inside its edge), its 2 px inner rim, one ring per
    band (pixels at square distance (previous radius, radius] outside the mask), the rest of the image above
    and below the middle row, and the whole product.
    """
    mask = masks.float()[:, None]
    interior = 1.0 - dilate(1.0 - mask, 2)
    regions = [interior, mask - interior]
    previous = mask
    for grown in dilations(mask, bands):
        regions.append(grown - previous)
        previous = grown
    outside = 1.0 - previous
    height = mask.shape[2]
    top = torch.zeros_like(outside)
    top[:, :, : height // 2] = 1.0
    regions += [outside * top, outside * (1.0 - top), mask]
    return torch.cat(regions, dim=1)


def region_count(bands: Sequence[int]) -> int:
    """R of :func:`ring_regions`."""
    return len(bands) + 5


def pool_regions(maps: Tensor, regions: Tensor, prior: float = 1.0) -> Tensor:
    """Region means of feature maps: [B, F, H, W] x [B, R, H, W] -> [B, R, F].

    ``prior`` pixels of value 0 are added to every region, so an empty region (a product touching the border
    leaves no outer ring) gives 0 rather than a division by zero, and a tiny one is shrunk toward 0.
    """
    if maps.shape[0] != regions.shape[0] or maps.shape[2:] != regions.shape[2:]:
        raise ValueError(f"maps {list(maps.shape)} and regions {list(regions.shape)} must share batch and size")
    sums = torch.einsum("bfhw,brhw->brf", maps, regions)
    return sums / (regions.sum(dim=(2, 3))[..., None] + prior)


EDGE_NEAR, EDGE_GAP, EDGE_FAR = 2, 3, 7
"""Edge discontinuity rings (px): colour within EDGE_NEAR of the mask edge (outside, and the inner rim) against
the background between EDGE_GAP and EDGE_FAR outside it."""
EDGE_FEATURES = 8
"""Columns of :func:`edge_discontinuity`."""


def _distance(x: Tensor, y: Tensor) -> Tensor:
    """sqrt(ΔL² + ½ |Δchroma|²) between opponent colours [B, 3, H, W] -> [B, 1, H, W]."""
    d = x - y
    return torch.sqrt(d[:, 0:1] ** 2 + 0.5 * (d[:, 1:2] ** 2 + d[:, 2:3] ** 2) + 1e-8)


def edge_discontinuity(lab: Tensor, masks: Tensor) -> Tensor:
    """How much the colour hugging the product departs from the background a few pixels further out.

    Halos (backdrop left inside a too-large mask), seams (relit bands around the product) and eaten edges all
    show as a local colour step at the mask boundary. For each pixel near the edge, the local mean colour of the
    near ring (radius 2 normalised convolution) is compared with that of the far ring (radius 4) around it;
    texture averages out, steps at the boundary do not.

    Args:
        lab: [B, 3, H, W] opponent colour (:func:`opponent`).
        masks: [B, H, W] bool.

    Returns:
        [B, 8]: mean step size at the outer and at the inner near ring, and the mean signed step (near − far) of
        L, a, b at each.
    """
    mask = masks.float()[:, None]
    grown = dilations(mask, [EDGE_NEAR, EDGE_GAP, EDGE_FAR])
    inner = mask - (1.0 - dilate(1.0 - mask, EDGE_NEAR))
    outer = grown[0] - mask
    far = grown[2] - grown[1]
    far_sum, far_count = box_sums(torch.cat([lab * far, far], dim=1), [4])[0].split([3, 1], dim=1)
    far_mean = far_sum / far_count.clamp(min=1e-6)
    valid = (far_count > 0.5).float()
    out = []
    for ring in (outer, inner):
        near_sum, near_count = box_sums(torch.cat([lab * ring, ring], dim=1), [2])[0].split([3, 1], dim=1)
        near_mean = near_sum / near_count.clamp(min=1e-6)
        where = ring * valid
        weight = where.sum(dim=(2, 3)).clamp(min=1.0)
        out.append((_distance(near_mean, far_mean) * where).sum(dim=(2, 3)) / weight)
        out.append(((near_mean - far_mean) * where).sum(dim=(2, 3)) / weight)
    return torch.cat(out, dim=1)


def chroma_harmony(mean_lab: Tensor, scale: float = 0.08) -> Tensor:
    """Hue relation of the product's mean colour with each other region's mean colour.

    With z = a + i b the mean chroma of a region, the relation is cos 2(arg z_p − arg z_r) (analogous or
    complementary hues +1, a 90° clash −1), weighted by both saturations |z| / (|z| + scale) so that greys
    count for nothing.

    Args:
        mean_lab: [B, R, 3] region means of (L, a, b); the last region is the product.

    Returns:
        [B, R − 1].
    """
    z = torch.complex(mean_lab[..., 1], mean_lab[..., 2])
    modulus = z.abs()
    unit_sq = (z / modulus.clamp(min=1e-6)) ** 2
    cos2 = (unit_sq[:, -1:] * unit_sq[:, :-1].conj()).real
    weight = modulus / (modulus + scale)
    return cos2 * weight[:, -1:] * weight[:, :-1]
