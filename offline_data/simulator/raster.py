"""Small vectorised raster operations shared by the renderers, the segmenter and the gold model.

Everything here works on the last two axes ([..., H, W]) so that the gold model can run on a whole batch at
once: box sums (scipy's separable running filters, O(1) per pixel whatever the radius), square dilation
and erosion, pixel-centre coordinate grids and smooth value noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)``, each [size, size] float64 in units of the image side (0..1)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    axis = (np.arange(size, dtype=np.float64) + 0.5) / size
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return y, x


def box_sum(values: np.ndarray, radius: int, axes: tuple[int, int] = (-2, -1), dtype: type = np.float64) -> np.ndarray:
    """Sum over the (2r+1)x(2r+1) window around each pixel; pixels beyond the image count 0.

    Args:
        values: array whose ``axes`` are the image rows and columns, e.g. [B, H, W] or [B, H, W, C]
            (bool is summed as 0/1).
        radius: window half-width r >= 0 in pixels.
        axes: the (row, column) axes.
        dtype: float type of the computation and result (float32 halves the memory traffic).

    Returns:
        window sums in ``dtype``, same shape as ``values``.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    values = np.asarray(values, dtype=dtype)
    if values.ndim < 2:
        raise ValueError(f"values must have at least two (image) axes, got shape {values.shape}")
    if radius == 0:
        return values.copy()
    width = 2 * radius + 1
    size = [1] * values.ndim
    for axis in axes:
        size[axis] = width
    # scipy's separable running mean (C); x width^2 turns the zero-padded mean into the window sum.
    return ndimage.uniform_filter(values, size=size, mode="constant", cval=0.0) * values.dtype.type(width * width)


def box_mean(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the window of :func:`box_sum`, counting only pixels inside the image (no edge darkening)."""
    ones = np.ones(values.shape[-2:], dtype=np.float64)
    return box_sum(values, radius) / box_sum(ones, radius)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of [..., H, W] bool masks by a (2r+1)-square structuring element."""
    mask = np.asarray(mask, dtype=bool)
    if radius == 0:
        return mask.copy()
    size = [1] * (mask.ndim - 2) + [2 * radius + 1, 2 * radius + 1]
    return ndimage.maximum_filter(mask, size=size, mode="constant", cval=False)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion of [..., H, W] bool masks by a (2r+1)-square; pixels beyond the image count as outside."""
    if radius == 0:
        return np.asarray(mask, dtype=bool).copy()
    return box_sum(mask, radius) > (2 * radius + 1) ** 2 - 0.5


def value_noise(rng: np.random.Generator, size: int, cells: int | tuple[int, int]) -> np.ndarray:
    """Smooth random field: Gaussian values on a (cells+1)^2 lattice, smoothstep-interpolated to size^2.

    Args:
        rng: source of the lattice values.
        size: output side in pixels.
        cells: lattice cells across the image, (rows, cols) or one int for both; more cells = finer detail.

    Returns:
        [size, size] float64 with roughly zero mean and unit spread at the lattice points.
    """
    rows, cols = (cells, cells) if isinstance(cells, int) else cells
    if rows < 1 or cols < 1:
        raise ValueError(f"cells must be >= 1, got {cells}")
    lattice = rng.standard_normal((rows + 1, cols + 1))

    def weights(n_cells: int) -> tuple[np.ndarray, np.ndarray]:
        position = (np.arange(size) + 0.5) / size * n_cells
        index = np.minimum(np.floor(position).astype(np.int64), n_cells - 1)
        t = position - index
        return index, t * t * (3.0 - 2.0 * t)

    iy, ty = weights(rows)
    ix, tx = weights(cols)
    top = lattice[iy][:, ix] * (1.0 - tx) + lattice[iy][:, ix + 1] * tx
    bottom = lattice[iy + 1][:, ix] * (1.0 - tx) + lattice[iy + 1][:, ix + 1] * tx
    return top * (1.0 - ty[:, None]) + bottom * ty[:, None]
