"""Products: exact masks from alpha, every kind renders, determinism, thin parts, real RGBA photos."""

from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from offline_data.errors import AssetError
from offline_data.simulator import PRODUCT_KINDS, Product, load_product_photo, render_product
from offline_data.simulator.products import PHOTO_BACKDROP

SAMPLE_PHOTO = Path(matplotlib.cbook.get_sample_data("Minduka_Present_Blue_Pack.png", asfileobj=False))


@pytest.mark.parametrize("kind", PRODUCT_KINDS)
def test_every_kind_renders_with_an_exact_mask(kind: str) -> None:
    product = render_product(kind, np.random.default_rng(1), 64, product_id="p1")
    assert product.rgba.shape == (64, 64, 4) and product.rgba.dtype == np.uint8
    alpha = product.rgba[..., 3]
    assert set(np.unique(alpha)) <= {0, 255}
    assert np.array_equal(product.mask, alpha == 255)
    assert np.all(product.rgb[~product.mask] == 0)
    # A real product, neither a speck nor the whole frame, standing in the lower part of the image.
    area = product.mask.mean()
    assert 0.03 < area < 0.5, area
    rows = np.flatnonzero(product.mask.any(axis=1))
    assert rows.max() > 0.8 * 64
    assert 0.0 <= product.hue < 1.0 and product.kind == kind


def test_at_least_six_kinds() -> None:
    assert len(PRODUCT_KINDS) >= 6 and {"bottle", "box", "can", "ball", "shoe", "jar"} <= set(PRODUCT_KINDS)


def test_render_is_deterministic_per_rng_and_varies_across_draws() -> None:
    a = render_product("bottle", np.random.default_rng(7))
    b = render_product("bottle", np.random.default_rng(7))
    c = render_product("bottle", np.random.default_rng(8))
    assert np.array_equal(a.rgba, b.rgba)
    assert not np.array_equal(a.rgba, c.rgba)


def test_hue_and_size_vary_over_a_catalogue() -> None:
    products = [render_product("can", np.random.default_rng(i)) for i in range(40)]
    hues = np.array([p.hue for p in products])
    areas = np.array([p.mask.mean() for p in products])
    assert hues.std() > 0.2  # uniform on [0, 1) has sd 0.29
    assert areas.max() / areas.min() > 1.5


def test_bottle_has_a_thin_neck() -> None:
    product = render_product("bottle", np.random.default_rng(0))
    widths = product.mask.sum(axis=1)
    widths = widths[widths > 0]
    assert widths.min() <= 4 and widths.max() >= 3 * widths.min()


def test_photo_shows_the_product_on_the_studio_backdrop() -> None:
    product = render_product("jar", np.random.default_rng(3))
    photo = product.photo()
    assert np.array_equal(photo[product.mask], product.rgb[product.mask])
    assert np.all(photo[~product.mask] == np.array(PHOTO_BACKDROP, dtype=np.uint8))


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown product kind 'vase'"):
        render_product("vase", np.random.default_rng(0))


def test_product_refuses_soft_alpha() -> None:
    product = render_product("ball", np.random.default_rng(0))
    rgba = product.rgba.copy()
    rgba[product.mask.nonzero()[0][0], product.mask.nonzero()[1][0], 3] = 128
    with pytest.raises(ValueError, match="alpha must be 0/255"):
        Product(product_id="x", kind="ball", hue=0.1, saturation=0.5, value=0.5, rgba=rgba, mask=product.mask)


def test_sample_photo_loads_as_a_product() -> None:
    product = load_product_photo(SAMPLE_PHOTO, 64, product_id="gift")
    assert product.kind == "photo" and product.source == "photo" and product.product_id == "gift"
    assert np.array_equal(product.mask, product.rgba[..., 3] == 255)
    assert 0.1 < product.mask.mean() < 0.6
    # The gift is blue: its hue sits in the blue range (HSV hue ~ 0.5-0.7).
    assert 0.5 < product.hue < 0.7


def test_photo_mask_is_the_alpha_threshold_at_full_size(tmp_path: Path) -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[2:18, 5:15] = (200, 30, 30, 255)
    rgba[2:18, 15:17, 3] = 100  # a soft shadow below the threshold is not product
    path = tmp_path / "p.png"
    Image.fromarray(rgba).save(path)
    product = load_product_photo(path, 40)
    rows, cols = np.nonzero(product.mask)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert height == round(0.78 * 40) and abs(width - round(0.78 * 40 * 10 / 16)) <= 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "product photo not found"),
        (lambda d: _write(d / "rgb.png", np.zeros((8, 8, 3), np.uint8)), "must have an alpha channel"),
        (lambda d: _write(d / "clear.png", np.zeros((8, 8, 4), np.uint8)), "no pixel with alpha >= 128"),
        (lambda d: _text(d / "junk.png"), "cannot read product photo"),
    ],
)
def test_bad_photos_raise_asset_errors(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(AssetError, match=message) as info:
        load_product_photo(path)
    assert str(path) in str(info.value)


def _write(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def _text(path: Path) -> Path:
    path.write_text("not an image")
    return path
