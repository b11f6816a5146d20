"""The noisy segmenter: exact at level 0, IoU falls with the error level, each failure mode as documented."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from offline_data.simulator import mask_iou, render_product, segment_mask
from offline_data.simulator.segmenter import punch_holes, remove_thin_parts, signed_distance


def _disc(size: int = 32, radius: float = 9.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2


def test_mask_iou_hand_values() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :2] = True  # 2 pixels
    b[0, 1:4] = True  # 3 pixels, 1 shared
    assert mask_iou(a, b) == pytest.approx(1 / 4)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    batch = mask_iou(np.stack([a, a]), np.stack([b, a]))
    assert batch.shape == (2,) and batch[0] == pytest.approx(0.25) and batch[1] == 1.0


def test_mask_iou_refuses_non_bool() -> None:
    with pytest.raises(ValueError, match="bool"):
        mask_iou(np.zeros((3, 3)), np.zeros((3, 3)))


def test_signed_distance_reproduces_the_mask_and_measures_distance() -> None:
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    d = signed_distance(mask)
    assert np.array_equal(d > 0, mask)
    assert d[4, 4] == pytest.approx(2.5)  # centre of a 5x5 square: 3 px to the nearest outside pixel, minus 0.5
    assert d[4, 0] == pytest.approx(-1.5)  # 2 px left of the square's edge column


def test_level_zero_is_exact_with_confident_interior() -> None:
    product = render_product("mug", np.random.default_rng(0))
    noisy, confidence = segment_mask(product.mask, np.random.default_rng(1), 0.0)
    assert np.array_equal(noisy, product.mask)
    assert confidence.dtype == np.float32 and confidence.min() >= 0.0 and confidence.max() <= 1.0
    # At level 0 the confidence is |2 sigmoid(d / 0.6) - 1| = tanh(|d| / 1.2): unsure on the outline only.
    deep = signed_distance(product.mask)
    np.testing.assert_allclose(confidence, np.tanh(np.abs(deep) / 1.2), atol=1e-6)
    assert confidence[np.abs(deep) == 0.5].max() < 0.45


def test_iou_decreases_with_error_level() -> None:
    products = [
        render_product(k, np.random.default_rng(i)) for i, k in enumerate(["bottle", "mug", "shoe", "box"] * 5)
    ]
    means = []
    for level in (0.0, 0.25, 0.5, 0.75, 1.0):
        ious = [
            mask_iou(segment_mask(p.mask, np.random.default_rng(100 + i), level)[0], p.mask)
            for i, p in enumerate(products)
        ]
        means.append(float(np.mean(ious)))
    assert means[0] == 1.0
    assert all(a > b for a, b in itertools.pairwise(means)), means
    assert means[-1] < 0.85


def test_positive_and_negative_offsets_dilate_and_erode() -> None:
    mask = _disc()
    d = signed_distance(mask)
    dilated, eroded = d + 2.0 > 0, d - 2.0 > 0
    assert (dilated & ~mask).any() and not (mask & ~dilated).any()
    assert (mask & ~eroded).any() and not (eroded & ~mask).any()


def test_segment_mask_grows_or_shrinks_the_object() -> None:
    mask = _disc(48, 14.0)
    areas = [segment_mask(mask, np.random.default_rng(s), 0.8)[0].sum() for s in range(30)]
    assert min(areas) < mask.sum() < max(areas)


def test_remove_thin_parts_drops_the_mug_handle_and_keeps_the_body() -> None:
    product = render_product("mug", np.random.default_rng(2))
    opened = remove_thin_parts(product.mask, 2)
    assert not (opened & ~product.mask).any()
    lost = product.mask & ~opened
    cols = np.flatnonzero(product.mask.any(axis=0))
    # The handle is the right-hand part: most of what is lost lies in the right third of the object.
    right = cols.min() + 2 * (cols.max() - cols.min()) / 3
    assert lost[:, int(right) :].sum() > 0.5 * lost.sum()
    assert opened.sum() > 0.75 * product.mask.sum()


def test_remove_thin_parts_drops_the_bottle_neck() -> None:
    product = render_product("bottle", np.random.default_rng(0))
    widths = product.mask.sum(axis=1)
    neck_rows = np.flatnonzero((widths > 0) & (widths <= 4))
    assert neck_rows.size > 0
    opened = remove_thin_parts(product.mask, 2)
    # The neck is cut through (some neck rows vanish entirely) while the body stays whole.
    assert (opened[neck_rows].sum(axis=1) == 0).any()
    body_rows = np.flatnonzero(widths == widths.max())
    assert np.array_equal(opened[body_rows[2:-2]], product.mask[body_rows[2:-2]])


def test_holes_stay_inside_and_never_touch_the_outline() -> None:
    mask = _disc(40, 14.0)
    holed = punch_holes(mask, np.random.default_rng(0), count=4)
    assert not (holed & ~mask).any() and (mask & ~holed).any()
    outline = mask & (signed_distance(mask) < 1.0)
    assert np.array_equal(holed[outline], mask[outline])


def test_error_level_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"error_level must be in \[0, 1\]"):
        segment_mask(_disc(), np.random.default_rng(0), 1.5)
