"""A labelled grid of images (rows of cells with captions), drawn with Pillow, for people to look at samples."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CAPTION_HEIGHT = 12
PADDING = 4


def draw_contact_sheet(
    rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]],
    path: str | Path,
    *,
    scale: int = 2,
    label_width: int = 170,
) -> Path:
    """Write a PNG grid: one row per ``(label, cells)``, each cell an ``[H, W, 3]`` uint8 image and a caption.

    Images are enlarged ``scale`` times with nearest-neighbour (pixels stay visible); cells of one sheet may
    differ in size (each column is as wide as its widest cell). Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet_array(rows, scale=scale, label_width=label_width)).save(path)
    return path


def contact_sheet_array(
    rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]], *, scale: int = 2, label_width: int = 170
) -> np.ndarray:
    """The grid of :func:`draw_contact_sheet` as an ``[H, W, 3]`` uint8 array (for TensorBoard or MLflow)."""
    if not rows or not any(cells for _, cells in rows):
        raise ValueError("a contact sheet needs at least one image")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    for label, cells in rows:
        for image, _ in cells:
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"row {label!r}: images must be [H, W, 3] uint8, got {image.dtype} {image.shape}")
    columns = max(len(cells) for _, cells in rows)
    widths = [max((c[i][0].shape[1] for _, c in rows if len(c) > i), default=0) * scale for i in range(columns)]
    heights = [max(image.shape[0] for image, _ in cells) * scale if cells else 0 for _, cells in rows]
    width = label_width + sum(w + PADDING for w in widths) + PADDING
    height = sum(h + CAPTION_HEIGHT + PADDING for h in heights) + PADDING
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    top = PADDING
    for (label, cells), row_height in zip(rows, heights):
        draw.text((PADDING, top + row_height // 2 - 6), label[: label_width // 6], fill=(0, 0, 0))
        left = label_width
        for (image, caption), cell_width in zip(cells, widths):
            tile = Image.fromarray(image).resize(
                (image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST
            )
            sheet.paste(tile, (left, top))
            draw.text((left, top + row_height + 1), caption[: max(cell_width // 6, 4)], fill=(60, 60, 60))
            left += cell_width + PADDING
        top += row_height + CAPTION_HEIGHT + PADDING
    return np.asarray(sheet, dtype=np.uint8).copy()
