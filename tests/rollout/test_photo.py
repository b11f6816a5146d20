"""Photos at their own size: letterbox and native canvases, paint-back, and the alpha rule checked exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline_data.photos import PhotoError, check_composite, composite
from rollout.photo import PhotoRequest, fit_canvas, native_canvas, paint_back

RNG = np.random.default_rng(3)


def photo(height: int, width: int) -> PhotoRequest:
    alpha = np.zeros((height, width), dtype=np.uint8)
    alpha[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 255
    alpha[height // 3 - 1, width // 3 : 2 * width // 3] = RNG.integers(1, 255, 2 * width // 3 - width // 3)
    rgb = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return PhotoRequest(request_id="r", product_id="p", segment="panel", prompt="oak", rgb=rgb, alpha=alpha)


def painted_like(request) -> torch.Tensor:
    """What a model returns: random background, the canvas's product pixels kept."""
    painted = torch.from_numpy(RNG.integers(0, 256, (3, *request.size), dtype=np.uint8))
    return torch.where(request.product_mask, request.product_rgb, painted)


@pytest.mark.parametrize(("height", "width"), [(37, 53), (90, 41), (64, 64), (301, 200)])
def test_fit_keeps_product_pixels_and_the_photo_size(height: int, width: int) -> None:
    source = photo(height, width)
    request, placement = fit_canvas(source, 64)
    assert request.size == (64, 64) and placement.side == max(height, width)
    output, check = paint_back(painted_like(request), source, placement)
    assert output.shape == (height, width, 3) and check.ok
    full = source.alpha == 255
    np.testing.assert_array_equal(output[full], source.rgb[full])
    assert check.product_pixels == int(full.sum()) and check.soft_pixels == int(((source.alpha > 0) & ~full).sum())


def test_soft_pixels_follow_the_integer_formula() -> None:
    rgb = np.array([[[200, 10, 255]]], dtype=np.uint8)
    painted = np.array([[[0, 250, 1]]], dtype=np.uint8)
    for a in (1, 64, 127, 128, 254):
        out = composite(rgb, np.array([[a]], dtype=np.uint8), painted)
        expected = [(a * int(p) + (255 - a) * int(q) + 127) // 255 for p, q in zip(rgb[0, 0], painted[0, 0])]
        assert out[0, 0].tolist() == expected
    assert composite(rgb, np.array([[255]], dtype=np.uint8), painted)[0, 0].tolist() == [200, 10, 255]
    assert composite(rgb, np.array([[0]], dtype=np.uint8), painted)[0, 0].tolist() == [0, 250, 1]


def test_the_check_catches_a_changed_product_or_soft_pixel() -> None:
    source = photo(40, 40)
    painted = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    output = composite(source.rgb, source.alpha, painted)
    assert check_composite(output, source.rgb, source.alpha, painted).ok
    tampered = output.copy()
    tampered[20, 20] ^= 1  # a product pixel
    soft = np.argwhere((source.alpha > 0) & (source.alpha < 255))[0]
    tampered[soft[0], soft[1]] ^= 1
    check = check_composite(tampered, source.rgb, source.alpha, painted)
    assert (check.product_changed, check.soft_off) == (1, 1) and not check.ok


def test_native_pads_odd_sizes_to_the_vae_factor_and_crops_back() -> None:
    source = photo(37, 53)
    request, placement = native_canvas(source, 8)
    assert request.size == (40, 56)
    np.testing.assert_array_equal(request.product_rgb[:, :37, :53].permute(1, 2, 0).numpy(), source.rgb)
    assert not request.product_mask[37:].any() and not request.product_mask[:, 53:].any()
    output, check = paint_back(painted_like(request), source, placement)
    assert output.shape == (37, 53, 3) and check.ok


def test_native_refuses_photos_over_the_cap() -> None:
    with pytest.raises(PhotoError, match="the photo is 53x37; --native paints photos with sides up to 48 pixels"):
        native_canvas(photo(37, 53), 8, max_side=48)
