"""Photos at their own size: onto the model's canvas, painted, and back to the photo with its pixels kept.

A :class:`PhotoRequest` is a photo of any size with its product alpha (``offline_data.photos`` decodes it and
states the alpha rule). Two ways onto the model:

- **fit** (default, :func:`fit_canvas`): the whole photo is letterboxed, centred on a square of side
  ``max(H, W)`` (aspect kept, the padding is background), and resized (Lanczos) to the model's resolution; the
  product there is the resized alpha >= 128. The model paints that canvas; :func:`paint_back` resizes the painted
  canvas to the square, crops the photo's area out of it, and composites the ORIGINAL pixels over it under the
  alpha rule. Resizing only ever touches the painted background: every alpha = 255 pixel of the output is the
  photo's own pixel.
- **native** (:func:`native_canvas`): the photo is painted at its own size, padded at the bottom and right to
  the model's VAE factor (the latent downsampling) and cropped back; refused by name above
  ``max_native_side`` pixels (the model's cost grows with the area: a cap, not a guess).

Either way the output has exactly the photo's (H, W), and :func:`paint_back` verifies the alpha rule on it
(``offline_data.photos.check_composite``): product pixels bit-identical to the decoded photo, soft pixels equal
to the integer formula. :func:`table_requests` builds model-resolution requests (for training and evaluation)
from a validated request table the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

from offline_data.photos import PRODUCT_ALPHA, CompositeCheck, PhotoError, check_composite, composite
from offline_data.requests import RequestTable
from rollout.request import InpaintRequest

CanvasMode = Literal["fit", "native"]

DEFAULT_MAX_NATIVE_SIDE = 1024
"""Default cap on a photo side painted natively (``--native``), in pixels."""


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class PhotoRequest:
    """A background to paint behind one photo at its own size."""

    request_id: str
    product_id: str
    segment: str
    prompt: str
    rgb: np.ndarray
    """[H, W, 3] uint8, the decoded photo."""
    alpha: np.ndarray
    """[H, W] uint8 product alpha (255 product, 0 background, between: soft rim)."""

    def __post_init__(self) -> None:
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f"request {self.request_id!r}: rgb must be uint8 [H, W, 3], got {self.rgb.shape}")
        if self.alpha.dtype != np.uint8 or self.alpha.shape != self.rgb.shape[:2]:
            raise ValueError(f"request {self.request_id!r}: alpha must be uint8 {list(self.rgb.shape[:2])}")

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a photo sits on its canvas: how :func:`paint_back` undoes :func:`fit_canvas` / :func:`native_canvas`."""

    mode: CanvasMode
    side: int
    """fit: side of the letterbox square (max(H, W)); native: unused (0)."""
    top: int
    left: int


def fit_canvas(photo: PhotoRequest, resolution: int) -> tuple[InpaintRequest, Placement]:
    """The photo letterboxed onto a ``resolution`` square (module docstring) as a request, and its placement."""
    height, width = photo.size
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    rgb = np.zeros((side, side, 3), dtype=np.uint8)
    alpha = np.zeros((side, side), dtype=np.uint8)
    rgb[top : top + height, left : left + width] = photo.rgb
    alpha[top : top + height, left : left + width] = photo.alpha
    if side != resolution:
        rgb, alpha = _resize(rgb, resolution), _resize(alpha, resolution)
    return _request(photo, rgb, alpha), Placement("fit", side, top, left)


def native_canvas(
    photo: PhotoRequest, factor: int, max_side: int = DEFAULT_MAX_NATIVE_SIDE
) -> tuple[InpaintRequest, Placement]:
    """The photo at its own size, padded at the bottom and right to multiples of the VAE ``factor``.

    Raises:
        PhotoError: a side is longer than ``max_side`` (``image:native_size``).
    """
    height, width = photo.size
    if max(height, width) > max_side:
        raise PhotoError(
            f"request {photo.request_id!r}: the photo is {width}x{height}; --native paints photos with sides up to "
            f"{max_side} pixels (drop --native to paint it at the model's resolution, or raise the cap)",
            "image:native_size",
        )
    padded = (-(-height // factor) * factor, -(-width // factor) * factor)
    rgb = np.zeros((*padded, 3), dtype=np.uint8)
    alpha = np.zeros(padded, dtype=np.uint8)
    rgb[:height, :width] = photo.rgb
    alpha[:height, :width] = photo.alpha
    return _request(photo, rgb, alpha), Placement("native", 0, 0, 0)


def paint_back(painted: torch.Tensor, photo: PhotoRequest, placement: Placement) -> tuple[np.ndarray, CompositeCheck]:
    """The painted canvas [3, h, w] uint8 back at the photo's size, composited under the alpha rule, verified.

    Returns:
        The output [H, W, 3] uint8 and its check (``ok`` is False if any product or soft pixel breaks the rule).
    """
    canvas = np.ascontiguousarray(painted.permute(1, 2, 0).cpu().numpy())
    height, width = photo.size
    if placement.mode == "fit":
        if canvas.shape[0] != placement.side:
            canvas = _resize(canvas, placement.side)
        canvas = canvas[placement.top : placement.top + height, placement.left : placement.left + width]
    else:
        canvas = canvas[:height, :width]
    output = composite(photo.rgb, photo.alpha, canvas)
    return output, check_composite(output, photo.rgb, photo.alpha, canvas)


def table_requests(table: RequestTable, resolution: int, split: str | None = None) -> list[InpaintRequest]:
    """Model-resolution requests (fit canvases) of a validated request table's rows (optionally one split)."""
    return [fit_canvas(row_photo(table, row), resolution)[0] for row in table.rows(split)]


def row_photo(table: RequestTable, row: dict) -> PhotoRequest:
    """The :class:`PhotoRequest` of an accepted row of ``table`` (files re-checked against their SHA-256)."""
    photo, alpha = table.load(row)
    return PhotoRequest(
        request_id=row["request_id"], product_id=row["product_id"], segment=row["segment"], prompt=row["prompt"],
        rgb=photo.rgb, alpha=alpha,
    )  # fmt: skip


def merge_checks(checks: Sequence[CompositeCheck]) -> CompositeCheck:
    """The sum of several outputs' checks."""
    return CompositeCheck(*(sum(getattr(c, f.name) for c in checks) for f in dataclasses.fields(CompositeCheck)))


def _request(photo: PhotoRequest, rgb: np.ndarray, alpha: np.ndarray) -> InpaintRequest:
    alpha_t = torch.from_numpy(np.array(alpha))  # a copy: resized arrays are read-only
    return InpaintRequest(
        request_id=photo.request_id,
        product_id=photo.product_id,
        segment=photo.segment,
        prompt=photo.prompt,
        product_rgb=torch.from_numpy(np.array(rgb.transpose(2, 0, 1))),
        product_mask=alpha_t >= PRODUCT_ALPHA,
        confidence=alpha_t.float() / 255.0,
    )


def _resize(array: np.ndarray, side: int) -> np.ndarray:
    """A square uint8 image ([S, S] or [S, S, 3]) resized to ``side`` (Lanczos)."""
    return np.asarray(Image.fromarray(array).resize((side, side), Image.Resampling.LANCZOS))
