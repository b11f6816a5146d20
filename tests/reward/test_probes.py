"""Probe edits (what they change and what they leave alone) and the probe statistics against hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.config import ConfigError, load_config
from reward.audit_config import EDITS, AuditCommandConfig, ProbeConfig
from reward.probes import apply_in_region, run_probes, spurious_edit, tamper_product


def textured_scene(seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A noisy coloured background with a flat orange product disc in the middle, and the disc's mask."""
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 220, size=(size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size / 4) ** 2
    image[mask] = (200 + 5 * (seed % 8), 120, 30)  # orange, a little redder with the seed
    return image, mask


@pytest.mark.parametrize("edit", EDITS)
def test_each_edit_changes_the_image_and_background_region_keeps_the_product(edit: str) -> None:
    image, mask = textured_scene()
    edited = spurious_edit(image, edit, ProbeConfig())
    assert edited.shape == image.shape and edited.dtype == np.uint8
    assert not np.array_equal(edited, image)
    background = apply_in_region(image, edited, mask, "background")
    assert np.array_equal(background[mask], image[mask])  # the product is bit-identical
    assert np.array_equal(background[~mask], edited[~mask])
    assert np.array_equal(apply_in_region(image, edited, mask, "whole"), edited)


def test_brightness_and_saturation_by_hand() -> None:
    grey = np.full((8, 8, 3), 100, dtype=np.uint8)
    assert spurious_edit(grey, "brightness", ProbeConfig(brightness=1.2))[0, 0].tolist() == [120, 120, 120]
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[...] = (200, 100, 0)
    desaturated = spurious_edit(colour, "saturation", ProbeConfig(saturation=0.0))
    # PIL's colour factor 0 is its greyscale: L = R * 299/1000 + G * 587/1000 + B * 114/1000.
    assert desaturated[0, 0].tolist() == [118, 118, 118]


@pytest.mark.parametrize("tamper", ["hue", "blot", "crop"])
def test_tampers_change_only_product_pixels(tamper: str) -> None:
    image, mask = textured_scene(1)
    tampered = tamper_product(image, mask, tamper, ProbeConfig())
    assert np.array_equal(tampered[~mask], image[~mask])
    changed = (tampered != image).any(axis=2)
    assert changed[mask].any()


def test_tamper_sizes() -> None:
    image, mask = textured_scene(2, size=64)
    config = ProbeConfig(blot_fraction=0.2, crop_fraction=0.25)
    blot = (tamper_product(image, mask, "blot", config) != image).any(axis=2)
    assert blot.sum() / mask.sum() == pytest.approx(0.2, abs=0.03)
    crop = (tamper_product(image, mask, "crop", config) != image).any(axis=2)
    rows = np.flatnonzero(mask.any(axis=1))
    cut = rows[0] + round(0.25 * len(rows))
    assert crop[rows[0] : cut].sum() == mask[rows[0] : cut].sum()  # every product pixel above the cut line
    assert not crop[cut:].any()
    hue = tamper_product(image, mask, "hue", ProbeConfig(hue_degrees=180.0))
    assert hue[mask][0, 2] > hue[mask][0, 0]  # orange turned blue-ish


def test_tamper_rejects_an_empty_mask_and_unknown_names() -> None:
    image, mask = textured_scene()
    with pytest.raises(ValueError, match="empty"):
        tamper_product(image, np.zeros_like(mask), "blot", ProbeConfig())
    with pytest.raises(ValueError, match="unknown tamper 'paint'"):
        tamper_product(image, mask, "paint", ProbeConfig())
    with pytest.raises(ValueError, match="unknown edit 'rotate'"):
        spurious_edit(image, "rotate", ProbeConfig())


def test_run_probes_statistics_by_hand() -> None:
    scenes = [textured_scene(seed) for seed in range(6)]
    images = np.stack([s[0] for s in scenes])
    masks = np.stack([s[1] for s in scenes])

    def background_mean(batch: np.ndarray) -> np.ndarray:
        """A 'reward' that reads the background's mean red channel only."""
        return np.array([image[..., 0][~m].mean() for image, m in zip(batch, masks)])

    def product_mean(batch: np.ndarray) -> np.ndarray:
        """A 'gold' that reads the product only."""
        return np.array([image[..., 0][m].mean() for image, m in zip(batch, masks)])

    config = ProbeConfig(edits=("brightness",), regions=("background",), brightness=1.1)
    outcome = run_probes(images, masks, background_mean, config, tampers=("blot",), gold_fn=product_mean)
    before = background_mean(images)
    edited = np.stack(
        [apply_in_region(i, spurious_edit(i, "brightness", config), m, "background") for i, m in zip(images, masks)]
    )
    expected_shift = (background_mean(edited) - before).mean() / before.std()
    (bright,) = outcome.spurious
    assert bright.reward_shift_sd == pytest.approx(expected_shift)
    assert bright.reward_shift_sd > 0 and bright.share_up == 1.0
    assert bright.gold_shift_sd == 0.0  # the product was not touched
    assert bright.spurious_shift_sd == bright.reward_shift_sd
    (blot,) = outcome.tamper
    assert blot.reward_shift_sd == 0.0  # a background-only reward cannot notice a tamper
    assert blot.gold_shift_sd < 0  # a dark blot lowers the product's red mean
    assert outcome.reward_sd == pytest.approx(before.std())
    assert set(outcome.examples) == {"original", "brightness/background", "blot/product"}


def test_run_probes_refuses_a_constant_reward() -> None:
    images, masks = textured_scene()
    batch = np.stack([images] * 3)
    with pytest.raises(ValueError, match=r"nearly\) the same for every probed image"):
        run_probes(batch, np.stack([masks] * 3), lambda b: np.zeros(len(b)), ProbeConfig())


def test_a_near_constant_gold_is_not_a_unit() -> None:
    """Gold that differs only by round-off across the images has no SD to standardise by: its shifts are left out
    ("no spread") instead of being reported as millions of SDs."""
    scenes = [textured_scene(seed) for seed in range(5)]
    images, masks = np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes])

    def reward(batch: np.ndarray) -> np.ndarray:
        return batch[..., 0].mean(axis=(1, 2)).astype(np.float64)

    def near_constant_gold(batch: np.ndarray) -> np.ndarray:
        return 0.25 + 1e-9 * batch[..., 0].mean(axis=(1, 2))

    config = ProbeConfig(edits=("brightness",), regions=("whole",), brightness=1.3)
    outcome = run_probes(images, masks, reward, config, tampers=(), gold_fn=near_constant_gold)
    (bright,) = outcome.spurious
    assert not outcome.gold_has_spread and outcome.gold_sd is not None and outcome.gold_sd < 1e-6
    assert bright.gold_shift_sd is None
    assert bright.spurious_shift_sd == bright.reward_shift_sd
    assert bright.reward_shift_sd > 0 and np.isfinite(bright.reward_shift_sd)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("audit.probes.jpeg_quality=0", "jpeg_quality must be in \\[1, 95\\], got 0"),
        ("audit.probes.blur_radius=0", "blur_radius must be > 0 pixels, got 0.0"),
        ("audit.probes.blot_fraction=1.5", "blot_fraction and crop_fraction must be in \\(0, 1\\)"),
        ('audit.probes.edits=["blur", "blur"]', "edits and regions must not repeat"),
        ('audit.probes.edits=["glow"]', "audit.probes.edits\\[0\\]' expects one of 'brightness'"),
        ("audit.probes.regions=[]", "regions must name at least one"),
        ("audit.thresholds.max_click_ece=-1", "max_click_ece must be >= 0, got -1.0"),
        ("audit.thresholds.min_slice_size=0", "min_slice_size must be >= 1, got 0"),
        ("audit.images=2", "images must be >= 4"),
    ],
)
def test_bad_audit_config_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(AuditCommandConfig, None, [override])


def test_shipped_audit_config_is_the_default() -> None:
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "audit.toml"
    assert load_config(AuditCommandConfig, shipped) == AuditCommandConfig()
