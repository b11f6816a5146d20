"""Probes of a reward model: edits that should not matter (spurious features) and edits of the product (tamper).

Spurious-feature edits (``ProbeConfig.edits``), each applied to the BACKGROUND only (pixels outside the logged
product mask; the product is bit-identical) or to the WHOLE image:

- brightness: every channel x ``brightness`` (PIL ``ImageEnhance.Brightness``);
- saturation: colour factor ``saturation`` (PIL ``ImageEnhance.Color``);
- blur: Gaussian blur of radius ``blur_radius`` px; sharpen: PIL ``ImageEnhance.Sharpness(sharpen)``;
- jpeg: re-encoded at ``jpeg_quality`` and decoded;
- text: a small white overlay (``text``, black outline) in the top-left corner.

Product tampers (``TAMPERS``), applied INSIDE the product mask only: the product's hue rotated by
``hue_degrees``; a dark blot covering ``blot_fraction`` of its pixels; its top ``crop_fraction`` of rows cut
off (filled with the background colour of the row).

For each edit the report gives the mean shift of the reward in units of the reward's standard deviation across
the probed images, the mean absolute shift, the share of images whose reward rose, and the Spearman correlation
of rewards before and after. With a gold function (the simulator's hidden engagement, evaluation only) the same
numbers for gold: an edit that moves gold is not spurious, so the *spurious part* of a shift is the reward shift
minus the gold shift, each in its own SDs. Only a score with spread (``audit_metrics.has_spread``) is a unit: a
reward without spread stops the probes, a gold without spread leaves the gold shifts out (None, "no spread").
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from reward.audit_config import ProbeConfig
from reward.audit_metrics import has_spread, spearman

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""``images [N, H, W, 3] uint8 -> reward [N] float64`` (the images keep their order, requests and masks)."""


# ----------------------------------------------------------------------------------------------------------
# Edits: one image [H, W, 3] uint8 (and its product mask [H, W] bool) -> the edited image


def _pil(image: np.ndarray):
    return Image.fromarray(image)


def _array(picture) -> np.ndarray:
    return np.asarray(picture.convert("RGB"), dtype=np.uint8).copy()


def _overlay_text(image: np.ndarray, text: str) -> np.ndarray:
    height = image.shape[0]
    size = max(8, height // 6)
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    picture = _pil(image)
    ImageDraw.Draw(picture).text((2, 1), text, fill=(255, 255, 255), font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    return _array(picture)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    _pil(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return _array(Image.open(buffer))


def spurious_edit(image: np.ndarray, edit: str, config: ProbeConfig) -> np.ndarray:
    """``edit`` (one of ``reward.audit_config.EDITS``) applied to the whole of ``image`` [H, W, 3] uint8."""
    _check_image(image)
    if edit == "brightness":
        return _array(ImageEnhance.Brightness(_pil(image)).enhance(config.brightness))
    if edit == "saturation":
        return _array(ImageEnhance.Color(_pil(image)).enhance(config.saturation))
    if edit == "blur":
        return _array(_pil(image).filter(ImageFilter.GaussianBlur(config.blur_radius)))
    if edit == "sharpen":
        return _array(ImageEnhance.Sharpness(_pil(image)).enhance(config.sharpen))
    if edit == "jpeg":
        return _jpeg(image, config.jpeg_quality)
    if edit == "text":
        return _overlay_text(image, config.text)
    raise ValueError(f"unknown edit {edit!r}; expected one of brightness, saturation, blur, sharpen, jpeg, text")


def apply_in_region(original: np.ndarray, edited: np.ndarray, mask: np.ndarray, region: str) -> np.ndarray:
    """``edited`` where the region is, ``original`` elsewhere: region "background" = ~mask, "whole" = all."""
    if region == "whole":
        return edited.copy()
    if region == "background":
        return np.where(mask[..., None], original, edited)
    raise ValueError(f"unknown region {region!r}; expected background or whole")


def tamper_product(image: np.ndarray, mask: np.ndarray, tamper: str, config: ProbeConfig) -> np.ndarray:
    """``image`` with its product altered by ``tamper`` ("hue", "blot", "crop"); pixels outside ``mask`` kept.

    Raises:
        ValueError: an unknown tamper or an empty mask.
    """
    _check_image(image)
    if mask.shape != image.shape[:2] or mask.dtype != np.bool_:
        raise ValueError(f"mask must be bool {list(image.shape[:2])}, got {mask.dtype} {list(mask.shape)}")
    if not mask.any():
        raise ValueError("the product mask is empty: nothing to tamper with")
    if tamper == "hue":
        hsv = np.asarray(_pil(image).convert("HSV"), dtype=np.uint8).copy()
        hsv[..., 0] = ((hsv[..., 0].astype(np.int64) + round(config.hue_degrees / 360.0 * 256)) % 256).astype(np.uint8)

        changed = _array(Image.fromarray(hsv, mode="HSV"))
    elif tamper == "blot":
        rows, cols = np.nonzero(mask)
        radius = math.sqrt(config.blot_fraction * rows.size / math.pi)
        yy, xx = np.mgrid[: mask.shape[0], : mask.shape[1]]
        disc = (yy - rows.mean()) ** 2 + (xx - cols.mean()) ** 2 <= radius**2
        changed = np.where(disc[..., None], np.uint8(40), image)
    elif tamper == "crop":
        rows = np.flatnonzero(mask.any(axis=1))
        cut = rows[0] + max(1, round(config.crop_fraction * (rows[-1] - rows[0] + 1)))
        changed = image.copy()
        background = ~mask
        for row in range(rows[0], cut):
            fill = image[row][background[row]]
            colour = fill.mean(axis=0) if fill.size else image[~mask].mean(axis=0)
            changed[row] = np.round(colour).astype(np.uint8)
    else:
        raise ValueError(f"unknown tamper {tamper!r}; expected one of hue, blot, crop")
    return np.where(mask[..., None], changed, image)


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] uint8, got {image.dtype} {list(image.shape)}")


# ----------------------------------------------------------------------------------------------------------
# Running the probes


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """How reward (and gold) moved under one edit over N images."""

    edit: str
    """Edit name (spurious edits) or tamper name."""
    region: str
    """"background", "whole" or "product" (tampers)."""
    reward_shift_sd: float
    """mean(reward_after − reward_before) / SD(reward_before) across the images."""
    reward_abs_shift_sd: float
    """mean |reward_after − reward_before| / SD(reward_before)."""
    reward_rank_correlation: float
    """Spearman correlation of the rewards before and after."""
    share_up: float
    """Share of images whose reward rose."""
    gold_shift_sd: float | None = None
    """The same mean shift for gold, in SDs of gold across the images (None without a gold function, or when
    gold has no spread across the images)."""
    gold_rank_correlation: float | None = None
    """Spearman correlation of gold before and after."""

    @property
    def spurious_shift_sd(self) -> float:
        """The part of the reward's shift that gold does not share: reward − gold shift (the reward's alone when
        gold is unknown or constant across the images)."""
        gold = self.gold_shift_sd
        return self.reward_shift_sd - (gold if gold is not None and math.isfinite(gold) else 0.0)

    def to_dict(self) -> dict[str, float | str | None]:
        return dataclasses.asdict(self) | {"spurious_shift_sd": self.spurious_shift_sd}


@dataclasses.dataclass(frozen=True, eq=False)
class ProbeOutcome:
    """Every probe's result and one example image per edit (for the report)."""

    spurious: tuple[ProbeResult, ...]
    tamper: tuple[ProbeResult, ...]
    reward_sd: float
    """SD of the unedited rewards across the images (the unit of every reward shift)."""
    gold_sd: float | None
    """SD of the unedited gold across the images (None without a gold function)."""
    gold_has_spread: bool
    """Whether gold varies across the images (otherwise its shifts have no unit and are left out)."""
    examples: dict[str, np.ndarray]
    """"original" and "<edit>/<region>" -> [H, W, 3] uint8 of the first image."""


def run_probes(
    images: np.ndarray,
    masks: np.ndarray,
    score_fn: ScoreFn,
    config: ProbeConfig,
    *,
    tampers: tuple[str, ...] = ("hue", "blot", "crop"),
    gold_fn: ScoreFn | None = None,
) -> ProbeOutcome:
    """Score the images, every edited copy, and compare (module docstring).

    Args:
        images: [N, H, W, 3] uint8 composites (N >= 3).
        masks: [N, H, W] bool product masks the reward sees (edits of the background stay outside them).
        score_fn: the reward of a batch of images (same order, requests and masks as ``images``).
        config: edits, regions and strengths.
        tampers: product tampers to run.
        gold_fn: the hidden gold of a batch (evaluation only), or None.

    Raises:
        ValueError: shapes, or rewards that do not vary across the images (shifts would have no unit).
    """
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[3] != 3 or images.shape[0] < 3:
        raise ValueError(f"images must be [N >= 3, H, W, 3] uint8, got {images.dtype} {list(images.shape)}")
    if masks.shape != images.shape[:3] or masks.dtype != np.bool_:
        raise ValueError(f"masks must be bool {list(images.shape[:3])}, got {masks.dtype} {list(masks.shape)}")
    before = np.asarray(score_fn(images), dtype=np.float64)
    reward_sd = float(before.std())
    if not has_spread(before):
        raise ValueError(
            f"the reward is (nearly) the same for every probed image (SD {reward_sd:.3g}); shifts have no unit"
        )
    gold_before = None if gold_fn is None else np.asarray(gold_fn(images), dtype=np.float64)
    gold_sd = None if gold_before is None else float(gold_before.std())
    gold_spread = gold_before is not None and has_spread(gold_before)
    examples = {"original": images[0]}

    def measure(edit: str, region: str, edited: np.ndarray) -> ProbeResult:
        examples[f"{edit}/{region}"] = edited[0]
        after = np.asarray(score_fn(edited), dtype=np.float64)
        shift = after - before
        result = ProbeResult(
            edit=edit,
            region=region,
            reward_shift_sd=float(shift.mean() / reward_sd),
            reward_abs_shift_sd=float(np.abs(shift).mean() / reward_sd),
            reward_rank_correlation=spearman(before, after),
            share_up=float((shift > 0).mean()),
        )
        if gold_fn is not None:
            gold_after = np.asarray(gold_fn(edited), dtype=np.float64)
            gold_shift = float((gold_after - gold_before).mean() / gold_sd) if gold_spread else None
            result = dataclasses.replace(
                result,
                gold_shift_sd=gold_shift,
                gold_rank_correlation=spearman(gold_before, gold_after),
            )
        return result

    spurious = []
    for edit in config.edits:
        whole = np.stack([spurious_edit(image, edit, config) for image in images])
        for region in config.regions:
            edited = np.stack([apply_in_region(o, e, m, region) for o, e, m in zip(images, whole, masks)])
            spurious.append(measure(edit, region, edited))
    tampered = [
        measure(tamper, "product", np.stack([tamper_product(o, m, tamper, config) for o, m in zip(images, masks)]))
        for tamper in tampers
    ]
    return ProbeOutcome(
        spurious=tuple(spurious),
        tamper=tuple(tampered),
        reward_sd=reward_sd,
        gold_sd=gold_sd,
        gold_has_spread=gold_spread,
        examples=examples,
    )
