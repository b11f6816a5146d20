"""AssetStore: images by id, paths resolved against the original table's folder, hashes enforced."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from offline_data.assets import AssetStore, image_array
from offline_data.errors import AssetError
from offline_data.io import find_table
from offline_data.validation import validate_logs


@pytest.fixture
def store(log_rows, write_logs, tmp_path) -> AssetStore:
    directory = write_logs(log_rows, "csv", tables=("assets",))
    out = tmp_path / "elsewhere" / "validated"  # not beside the images: paths resolve through metadata
    validate_logs({"assets": find_table(directory, "assets")}, out)
    return AssetStore.open(out / "assets.parquet")


def test_images_load_by_id_with_their_channels(store):
    assert len(store) == 12 and "p1-v0" in store and "p9-v0" not in store and 3 not in store
    product, mask, generated = store.load("p1-product"), store.load("p1-mask"), store.load("p1-v0")
    assert (product.shape, mask.shape, generated.shape) == ((4, 5, 4), (4, 5, 1), (4, 5, 3))
    assert product.dtype == mask.dtype == generated.dtype == np.uint8
    # The fixture paints image k of product p with the value 10 p + k.
    assert product.min() == product.max() == 10 and mask.max() == 11 and generated.max() == 12
    record = store.record("p2-v1")
    assert (record.product_id, record.kind, record.row) == ("p2", "generated", 12)


def test_changed_file_is_refused(store):
    path = store.record("p0-v1").path
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(AssetError, match=r"p0-v1\.png: SHA-256 is [0-9a-f]{64}, but .*row 4 records [0-9a-f]{64}"):
        store.load("p0-v1")
    with pytest.raises(AssetError, match="SHA-256 is"):
        store.check_file("p0-v1")


def test_missing_file_and_unknown_id_are_named(store):
    store.record("p0-v0").path.unlink()
    with pytest.raises(AssetError, match=r"p0-v0\.png: cannot read the file of image_id 'p0-v0' \(.*row 3\)"):
        store.load("p0-v0")
    with pytest.raises(AssetError, match=r"no asset with image_id 'p7'"):
        store.load("p7")


def test_store_refuses_a_table_with_repeated_ids(tmp_path):
    table = pa.table({c: ["a", "a"] for c in ("image_id", "product_id", "path", "sha256", "kind")})
    with pytest.raises(AssetError, match="image_id is not unique"):
        AssetStore(table, tmp_path)


def test_undecodable_bytes_are_an_asset_error():
    with pytest.raises(AssetError, match="x.png: cannot decode image"):
        image_array(b"not an image", "x.png")
