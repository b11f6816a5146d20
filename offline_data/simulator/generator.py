"""The simulated production generator that made the logged composites, flaws included.

A real inpainting pipeline receives the product photo and the *segmenter's* mask, paints the background and
pastes the photo back under that mask. So its flaws follow from the mask's errors, plus its own:

- where the noisy mask is larger than the product, the photo's studio backdrop (``PHOTO_BACKDROP``) is
  kept: a light halo hugging the product;
- where the noisy mask is smaller, the painter overwrites the product's edge with background;
- with ``seam_probability`` the painted light does not match near the product: the background within
  three pixels of the mask is brightened or darkened (a visible seam);
- the background itself comes from :func:`~offline_data.simulator.backgrounds.render_background`, so props
  may land right next to the product (clutter).

The gold model (``engagement.py``) penalises halos, seams and clutter; a policy can learn to avoid them.
"""

from __future__ import annotations

import numpy as np

from offline_data.simulator.backgrounds import composite, render_background
from offline_data.simulator.products import Product
from offline_data.simulator.raster import box_mean, dilate


def generate_composite(
    product: Product,
    noisy_mask: np.ndarray,
    prompt: str,
    rng: np.random.Generator,
    *,
    seam_probability: float = 0.35,
    seam_strength: float = 0.3,
) -> np.ndarray:
    """One logged composite: a background for ``prompt`` around ``product``, pasted through ``noisy_mask``.

    Args:
        product: the product (its photo on the studio backdrop is what gets pasted).
        noisy_mask: [H, W] bool, the segmenter's mask the generator trusted.
        prompt: background prompt.
        rng: every random choice of this composite.
        seam_probability: chance of a lighting-mismatch band around the mask.
        seam_strength: largest relative brightness change of that band.

    Returns:
        [H, W, 3] uint8.
    """
    size = product.size
    if noisy_mask.shape != (size, size) or noisy_mask.dtype != np.bool_:
        raise ValueError(f"noisy_mask must be [{size}, {size}] bool, got {noisy_mask.dtype} {noisy_mask.shape}")
    background = render_background(prompt, rng, size)
    seam_draw, seam_sign, seam_scale = rng.uniform(), rng.choice([-1.0, 1.0]), rng.uniform(0.3, 1.0)
    if seam_draw < seam_probability:
        band = box_mean(dilate(noisy_mask, 3) & ~noisy_mask, 1)
        gain = 1.0 + seam_sign * seam_strength * seam_scale * band
        background = np.round(np.clip(background * gain[..., None], 0, 255)).astype(np.uint8)
    return composite(background, product.photo(), noisy_mask)
