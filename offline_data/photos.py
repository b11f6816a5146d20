"""Decoding a team's own product photos and masks, and the alpha rule every output is verified against.

Decoding (:func:`decode_photo`, Pillow):

- EXIF orientation is applied (``ImageOps.exif_transpose``) and recorded, so the photo is used the way a viewer
  shows it; a mask is transposed by its own EXIF tag the same way.
- 8-bit ``RGB``, ``RGBA``, ``L``, ``LA`` and bilevel ``1`` photos are accepted; grey is replicated into the three
  channels and bilevel is 0/255, both exactly. Palette photos (``P``, ``PA``) are expanded through their palette,
  which is lossless, to RGB or (with transparency) RGBA.
- Anything that cannot be kept exactly at 8 bits per channel is refused BY NAME with how to convert it: CMYK,
  YCbCr, LAB, HSV, 16-bit and 32-bit integer or float images (``I;16*``, ``I``, ``F``), and 16-bit-per-channel
  PNGs, which Pillow would otherwise reduce to 8 bits without a word (detected from the PNG header's bit depth).
  Outputs are 8-bit, so a product kept "bit-identical" at a reduced depth would be a lie; converting is the
  user's decision.
- Photos with a side under ``min_side`` or over ``max_side`` pixels are refused by name.

The alpha rule (:func:`composite`), verified on every output by :func:`check_composite`: the product's alpha
``a`` is the photo's alpha channel, or 255 where the mask file is >= 128 and 0 elsewhere (a mask file replaces
the photo's alpha). Then per channel

- ``a == 255``: the photo's pixel, bit-identical;
- ``a == 0``: the painted pixel;
- ``0 < a < 255``: ``(a * photo + (255 - a) * painted + 127) // 255`` in integers (round half up), so the soft
  rim of a cut-out blends into the new background the way it blended into the old one.

The model itself sees the product as ``a >= 128`` (its hard mask); a product is "empty" when no pixel has
``a >= 128`` and "almost the whole image" when more than :data:`MAX_PRODUCT_FRACTION` of the pixels do.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from offline_data.errors import AssetError

MAX_PRODUCT_FRACTION = 0.95
"""A product covering more than this share of its photo leaves too little background to paint."""

PRODUCT_ALPHA = 128
"""Alpha (or mask grey level) from which a pixel is product for the model's hard mask."""

_EXACT_MODES = ("RGB", "RGBA", "L", "LA", "1", "P", "PA")
_CONVERT_HINT = {
    "CMYK": "convert it to sRGB with a colour-managed tool (e.g. `magick in.jpg -colorspace sRGB out.png`)",
    "YCbCr": "save it as an RGB PNG or JPEG",
    "LAB": "convert it to sRGB with a colour-managed tool",
    "HSV": "save it as an RGB PNG",
}
_DEEP_HINT = "reduce it to 8 bits per channel yourself (e.g. `magick in.png -depth 8 out.png`) if that is acceptable"


class PhotoError(AssetError):
    """A photo or mask that cannot be used exactly: unreadable, unsupported depth or colour space, odd size."""

    exit_code = 2

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
        """Stable reason code (``image:unsupported``, ``mask:size``, ...) for rejects tables."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhotoLimits:
    """Sizes a photo may have."""

    min_side: int = 32
    """Photos with a side shorter than this (pixels) are refused: too little to place a product in."""
    max_side: int = 8192
    """Photos with a side longer than this (pixels) are refused before decoding (memory)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_side <= self.max_side:
            raise ValueError(f"need 1 <= min_side <= max_side, got {self.min_side} and {self.max_side}")


@dataclasses.dataclass(frozen=True, eq=False)
class Photo:
    """A decoded photo, upright, 8 bits per channel."""

    rgb: np.ndarray
    """[H, W, 3] uint8."""
    alpha: np.ndarray | None
    """[H, W] uint8 alpha channel, or None when the photo has none."""
    mode: str
    """The file's Pillow mode (``RGBA``, ``P``, ...)."""
    orientation: int
    """EXIF orientation tag applied (1 = upright already, or no tag)."""

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


def decode_photo(path: Path, limits: PhotoLimits | None = None, *, kind: str = "image") -> Photo:
    """The photo at ``path`` under the decoding rules of the module docstring.

    Args:
        path: the file.
        limits: sizes accepted (default :class:`PhotoLimits`).
        kind: what the file is (``image`` or ``mask``), for messages and reason codes (``image:missing``, ...).

    Raises:
        PhotoError: missing, undecodable, refused mode or depth (by name, with how to convert), or a size outside
            ``limits``.
    """
    limits = limits or PhotoLimits()
    path = Path(path)
    try:
        with Image.open(path) as image:
            _check_size(path, image.size, limits, kind)
            _check_depth(path, image, kind)
            orientation = int(image.getexif().get(0x0112, 1) or 1)
            upright = ImageOps.exif_transpose(image)
            mode = image.mode
    except FileNotFoundError:
        raise PhotoError(f"{path}: {kind} file not found", f"{kind}:missing") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise PhotoError(f"{path}: cannot decode {kind}: {exc}", f"{kind}:unreadable") from None
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in upright.info
        upright = upright.convert("RGBA" if has_alpha else "RGB")
    elif mode == "1":
        upright = upright.convert("L")
    array = np.asarray(upright, dtype=np.uint8)
    if array.ndim == 2:
        return Photo(np.repeat(array[..., None], 3, axis=2), None, mode, orientation)
    if array.shape[2] == 2:  # LA
        return Photo(np.repeat(array[..., :1], 3, axis=2), array[..., 1].copy(), mode, orientation)
    alpha = array[..., 3].copy() if array.shape[2] == 4 else None
    return Photo(np.ascontiguousarray(array[..., :3]), alpha, mode, orientation)


def decode_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask file as bool [H, W] (grey level >= 128 = product), upright, checked against its photo's ``shape``.

    Raises:
        PhotoError: missing (``mask:missing``), undecodable (``mask:unreadable``) or unsupported
            (``mask:unsupported``) file, another size (``mask:size``).
    """
    photo = decode_photo(path, PhotoLimits(min_side=1, max_side=1 << 16), kind="mask")
    if photo.size != shape:
        raise PhotoError(
            f"{path}: mask is {photo.size[1]}x{photo.size[0]} but its photo is {shape[1]}x{shape[0]} (both upright)",
            "mask:size",
        )
    grey = photo.rgb[..., 0] if photo.mode in ("L", "LA", "1") else _luma(photo.rgb)
    return grey >= PRODUCT_ALPHA


def product_alpha(photo: Photo, mask: np.ndarray | None, origin: str) -> np.ndarray:
    """The product's alpha [H, W] uint8 (module docstring): the mask as 0/255 if given, else the photo's alpha.

    Raises:
        PhotoError: no mask and no alpha (``alpha:none``), no product pixel (``mask:empty``), or a product covering
            more than :data:`MAX_PRODUCT_FRACTION` of the photo (``mask:covers``).
    """
    if mask is not None:
        alpha = np.where(mask, np.uint8(255), np.uint8(0))
    elif photo.alpha is not None:
        alpha = photo.alpha
    else:
        raise PhotoError(
            f"{origin}: the photo has no alpha channel and the row gives no mask; give a mask file (white = product) "
            "or an RGBA cut-out",
            "alpha:none",
        )
    product = alpha >= PRODUCT_ALPHA
    share = float(product.mean())
    if share == 0.0:
        raise PhotoError(f"{origin}: no product pixel (no alpha or mask value >= {PRODUCT_ALPHA})", "mask:empty")
    if share > MAX_PRODUCT_FRACTION:
        raise PhotoError(
            f"{origin}: the product covers {share:.1%} of the photo (more than {MAX_PRODUCT_FRACTION:.0%}); there is "
            "too little background to paint",
            "mask:covers",
        )
    return alpha


def composite(photo_rgb: np.ndarray, alpha: np.ndarray, painted: np.ndarray) -> np.ndarray:
    """The alpha rule: ``(a * photo + (255 - a) * painted + 127) // 255`` per channel, uint8 [H, W, 3].

    Args:
        photo_rgb: [H, W, 3] uint8 original pixels.
        alpha: [H, W] uint8 product alpha.
        painted: [H, W, 3] uint8 painted image at the photo's size.
    """
    a = alpha.astype(np.uint32)[..., None]
    mixed = a * photo_rgb.astype(np.uint32) + (255 - a) * painted.astype(np.uint32) + 127
    return (mixed // 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class CompositeCheck:
    """How an output compares with the alpha rule."""

    product_pixels: int
    """Pixels with alpha 255 (must be bit-identical to the photo)."""
    soft_pixels: int
    """Pixels with 0 < alpha < 255 (must equal the formula)."""
    product_changed: int
    soft_off: int

    @property
    def ok(self) -> bool:
        return self.product_changed == 0 and self.soft_off == 0


def check_composite(
    output: np.ndarray, photo_rgb: np.ndarray, alpha: np.ndarray, painted: np.ndarray
) -> CompositeCheck:
    """Count the pixels of ``output`` [H, W, 3] that break the alpha rule (see :func:`composite` for the args).

    Product pixels are compared with the decoded photo directly, not with the formula, so a formula bug could not
    hide a changed product pixel.
    """
    if output.shape != photo_rgb.shape:
        raise ValueError(f"output is {output.shape} but the photo is {photo_rgb.shape}")
    full = alpha == 255
    soft = (alpha > 0) & ~full
    changed = np.any(output != photo_rgb, axis=2)
    off = np.any(output != composite(photo_rgb, alpha, painted), axis=2)
    return CompositeCheck(int(full.sum()), int(soft.sum()), int((changed & full).sum()), int((off & soft).sum()))


def _check_size(path: Path, size: tuple[int, int], limits: PhotoLimits, kind: str) -> None:
    width, height = size
    if min(width, height) < limits.min_side:
        raise PhotoError(
            f"{path}: {kind} is {width}x{height}; photos need sides of at least {limits.min_side} pixels",
            f"{kind}:size",
        )
    if max(width, height) > limits.max_side:
        raise PhotoError(
            f"{path}: {kind} is {width}x{height}; photos may have sides of at most {limits.max_side} pixels (resize "
            "it, or raise the limit)",
            f"{kind}:size",
        )


def _check_depth(path: Path, image: object, kind: str) -> None:
    """Refuse modes and depths that 8-bit outputs cannot keep exactly (module docstring)."""
    mode = image.mode  # type: ignore[attr-defined]
    if mode in _CONVERT_HINT:
        raise PhotoError(f"{path}: {mode} images are not supported; {_CONVERT_HINT[mode]}", f"{kind}:unsupported")
    if mode not in _EXACT_MODES:
        raise PhotoError(
            f"{path}: Pillow mode {mode!r} has more than 8 bits per channel, which 8-bit outputs cannot keep; "
            f"{_DEEP_HINT}",
            f"{kind}:unsupported",
        )
    if image.format == "PNG":  # type: ignore[attr-defined]
        depth = _png_bit_depth(path)
        if depth == 16:
            raise PhotoError(
                f"{path}: 16-bit-per-channel PNG; outputs are 8-bit, so its product pixels cannot be kept exactly; "
                f"{_DEEP_HINT}",
                f"{kind}:unsupported",
            )


def _png_bit_depth(path: Path) -> int:
    """The bit depth byte of a PNG's IHDR chunk (signature 8 bytes, length 4, 'IHDR' 4, width 4, height 4)."""
    with open(path, "rb") as handle:
        header = handle.read(25)
    return header[24] if len(header) == 25 and header[12:16] == b"IHDR" else 8


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as Pillow's ``convert("L")`` computes it, for colour mask files."""
    return np.asarray(Image.fromarray(rgb, mode="RGB").convert("L"))
