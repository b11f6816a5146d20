"""Configuration of a reward-model audit (``backdrop reward audit``, section ``[audit]``).

    [audit]              which images are scored and probed, seeds, slices
    [audit.probes]       the spurious-feature edits and the product-tamper edits, and their strengths
    [audit.thresholds]   when a number becomes a flag (every flag names its value and its threshold)

Each ``__post_init__`` raises ``ValueError``; the config loader re-raises it naming the section.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

EDITS: tuple[str, ...] = ("brightness", "saturation", "blur", "sharpen", "jpeg", "text")
"""Spurious-feature edits: changes a shopper would not care about (``reward/probes.py`` defines each)."""
TAMPERS: tuple[str, ...] = ("hue", "blot", "crop")
"""Product-tamper edits: changes to the product itself, which a reward should punish."""
REGIONS: tuple[str, ...] = ("background", "whole")
"""Where a spurious edit is applied: outside the product mask only, or to every pixel."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """The edits of the spurious-feature and tamper probes, and their strengths."""

    edits: tuple[Literal["brightness", "saturation", "blur", "sharpen", "jpeg", "text"], ...] = EDITS
    """Spurious-feature edits to run (each on every region in ``regions``)."""
    regions: tuple[Literal["background", "whole"], ...] = REGIONS
    """background: pixels outside the logged product mask only (the product is untouched); whole: every pixel."""
    brightness: float = 1.15
    """brightness: every channel multiplied by this (PIL ImageEnhance.Brightness), clipped to [0, 255]."""
    saturation: float = 0.7
    """saturation: colour factor of PIL ImageEnhance.Color (1 = unchanged, 0 = grey)."""
    blur_radius: float = 1.0
    """blur: Gaussian blur radius in pixels (PIL ImageFilter.GaussianBlur)."""
    sharpen: float = 2.0
    """sharpen: PIL ImageEnhance.Sharpness factor (1 = unchanged, 2 = strongly sharpened)."""
    jpeg_quality: int = 30
    """jpeg: re-encode as JPEG at this quality (1-95) and decode (block artefacts, chroma subsampling)."""
    text: str = "SALE"
    """text: the overlay written in the top-left corner in white with a black outline (PIL's default font)."""
    hue_degrees: float = 90.0
    """Tamper hue: product pixels' hue rotated by this many degrees (HSV)."""
    blot_fraction: float = 0.15
    """Tamper blot: a dark-grey disc covering about this share of the product's pixels, at its centroid."""
    crop_fraction: float = 0.3
    """Tamper crop: the top share of the product's rows is cut off (replaced by the background colour just
    above the product), as if the photo had been cropped badly."""

    def __post_init__(self) -> None:
        if len(set(self.edits)) != len(self.edits) or len(set(self.regions)) != len(self.regions):
            raise ValueError(f"edits and regions must not repeat, got {list(self.edits)}, {list(self.regions)}")
        if self.edits and not self.regions:
            raise ValueError("regions must name at least one of background, whole when edits are given")
        if not self.brightness > 0 or not self.saturation >= 0 or not self.sharpen >= 0:
            raise ValueError("brightness must be > 0, saturation and sharpen >= 0")
        if not self.blur_radius > 0:
            raise ValueError(f"blur_radius must be > 0 pixels, got {self.blur_radius}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in [1, 95], got {self.jpeg_quality}")
        if "text" in self.edits and not self.text.strip():
            raise ValueError("text must be non-empty when the text edit is run")
        if not 0 < self.blot_fraction < 1 or not 0 < self.crop_fraction < 1:
            raise ValueError(
                f"blot_fraction and crop_fraction must be in (0, 1), got {self.blot_fraction}, {self.crop_fraction}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditThresholds:
    """When the audit raises a flag. Flags are listed first in the report and in ``audit.json``."""

    max_click_ece: float = 0.02
    """Flag when the calibrated click head's expected calibration error (probability units) is above this."""
    max_preference_ece: float = 0.05
    """Flag when the preference head's ECE of P(a preferred | not a tie) is above this."""
    max_dwell_calibration: float = 0.05
    """Flag when the dwell head's D-calibration distance (total variation between its censoring-aware PIT
    histogram and the uniform) is above this."""
    min_ceiling_ratio: float = 0.9
    """With truth: flag when the expected pairwise accuracy or the click AUC is below this share of its Bayes
    ceiling (the best any model could do on the same judgements / impressions)."""
    min_slice_ceiling_ratio: float = 0.85
    """With truth: flag a slice whose click AUC or pairwise accuracy is below this share of the slice's own
    ceiling."""
    max_slice_gap: float = 0.05
    """Without truth: flag a slice whose click AUC or pairwise accuracy is more than this below the overall
    value."""
    min_slice_size: int = 200
    """Slices with fewer rows (impressions, decisive pairs or dwell rows) are reported but never flagged."""
    max_spurious_shift_sd: float = 0.25
    """Flag a spurious edit whose mean reward shift, in SDs of the reward across images, exceeds this in
    absolute value; with truth, the gold shift in gold SDs is subtracted first (an edit that moves gold is not
    spurious)."""
    min_spurious_rank_correlation: float = 0.8
    """Flag a spurious edit after which the Spearman correlation of rewards before/after falls below this."""
    min_tamper_drop_sd: float = 0.1
    """Flag a product tamper that does not lower the mean reward by at least this many reward SDs ("the reward
    did not notice"; the export gate still relies on the pixel verifier)."""
    max_disagreement: float = 0.5
    """Flag when the median ensemble disagreement (member std of the reward / SD of the reward across images)
    is above this."""
    max_overoptimisation_drop_sd: float = 0.2
    """With a policy run: flag when gold gain fell more than this (within-request SDs) below its peak while the
    proxy gain did not fall (the over-optimisation turn of Gao et al. 2023)."""
    max_proxy_gold_gap_sd: float = 1.0
    """With a policy run: flag when the last evaluation's proxy gain exceeds its gold gain by more than this."""

    def __post_init__(self) -> None:
        for name in (
            "max_click_ece",
            "max_preference_ece",
            "max_dwell_calibration",
            "max_spurious_shift_sd",
            "min_tamper_drop_sd",
            "max_disagreement",
            "max_overoptimisation_drop_sd",
            "max_slice_gap",
            "max_proxy_gold_gap_sd",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("min_ceiling_ratio", "min_slice_ceiling_ratio"):
            if not 0 <= getattr(self, name) <= 1.5:
                raise ValueError(f"{name} must be a ratio in [0, 1.5], got {getattr(self, name)}")
        if not -1 <= self.min_spurious_rank_correlation <= 1:
            raise ValueError(
                f"min_spurious_rank_correlation must be in [-1, 1], got {self.min_spurious_rank_correlation}"
            )
        if self.min_slice_size < 1:
            raise ValueError(f"min_slice_size must be >= 1, got {self.min_slice_size}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Everything an audit measures beyond the model and the data (section ``[audit]``)."""

    images: int = 256
    """Generated images of the data scored for the ensemble-disagreement and probe sections (a deterministic
    sample when the data holds more; all of them when fewer)."""
    seed: int = 0
    """Seeds the image sample (and nothing else: every edit is deterministic)."""
    bins: int = 15
    """Equal-width bins of the reliability diagrams and ECEs."""
    dwell_bins: int = 10
    """Bins of the dwell head's PIT histogram (D-calibration, Haider et al. 2020)."""
    max_concordance_rows: int = 6000
    """Dwell rows the C-index is computed on (a seeded sample beyond this; the pair count is quadratic)."""
    probes: ProbeConfig = ProbeConfig()
    """Spurious-feature and tamper edits."""
    thresholds: AuditThresholds = AuditThresholds()
    """When numbers become flags."""

    def __post_init__(self) -> None:
        if self.images < 4:
            raise ValueError(f"images must be >= 4 (SDs and rank correlations need several), got {self.images}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.bins < 2 or self.dwell_bins < 2:
            raise ValueError(f"bins and dwell_bins must be >= 2, got {self.bins}, {self.dwell_bins}")
        if self.max_concordance_rows < 10:
            raise ValueError(f"max_concordance_rows must be >= 10, got {self.max_concordance_rows}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditCommandConfig:
    """Root config of ``backdrop reward audit`` (experiments/configs/audit.toml): the single section [audit]."""

    audit: AuditConfig = AuditConfig()
    """Images, probes and thresholds of the audit."""
