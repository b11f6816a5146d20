"""Loading reward data from validated splits, and the named errors for data a reward cannot learn from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from offline_data.assets import ASSET_ROOT_KEY
from reward.data import check_trainable, estimate_examination, load_reward_data
from reward.errors import MissingImageError, RewardDataError

WEIGHTS = {"click": 1.0, "dwell": 0.3, "preference": 1.0}


def test_loads_rows_images_and_masks(small_splits: Path):
    data = load_reward_data(small_splits / "train")
    table = pq.read_table(small_splits / "train" / "impressions.parquet")
    assert len(data.impressions) == table.num_rows
    assert len(data.pairs) == pq.read_metadata(small_splits / "train" / "preferences.parquet").num_rows
    assert data.images.pixels.dtype == torch.uint8 and data.images.pixels.shape[1:] == (3, 64, 64)
    assert data.images.masks is not None and data.images.masks.shape == (len(data.images), 64, 64)
    assert data.images.masks.any(dim=(1, 2)).all()
    # Row i's image index points at its image id.
    first = table.column("image_id")[0].as_py()
    assert data.images.image_ids[int(data.impressions.image[0])] == first
    dwell = pq.read_table(small_splits / "train" / "dwell.parquet")
    assert int(data.impressions.has_dwell.sum()) == dwell.num_rows
    assert all(k is not None for k in data.images.kinds) and all(p for p in data.images.prompts)
    check_trainable(data, WEIGHTS, split="train")


def _copy(split: Path, tmp_path: Path) -> Path:
    """A copy of a split whose assets table points at the original files by absolute path."""
    out = tmp_path / split.name
    shutil.copytree(split, out, ignore=shutil.ignore_patterns(".hf_cache"))
    table = pq.read_table(out / "assets.parquet")
    root = (split / table.schema.metadata[ASSET_ROOT_KEY.encode()].decode()).resolve()
    metadata = {**table.schema.metadata, ASSET_ROOT_KEY.encode(): str(root).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), out / "assets.parquet")
    return out


def test_an_image_id_without_asset_is_named(small_splits: Path, tmp_path: Path):
    folder = _copy(small_splits / "train", tmp_path)
    path = folder / "impressions.parquet"
    table = pq.read_table(path)
    ids = table.column("image_id").to_pylist()
    ids[2] = "no-such-image"
    table = table.set_column(table.schema.get_field_index("image_id"), table.schema.field("image_id"), pa.array(ids))
    pq.write_table(table, path)
    with pytest.raises(
        MissingImageError,
        match=r"impressions\.parquet: 1 image_id value\(s\) have no row in the assets table: "
        r"row 3 \('no-such-image'\)",
    ):
        load_reward_data(folder)


def test_a_product_without_mask_is_named(small_splits: Path, tmp_path: Path):
    folder = _copy(small_splits / "train", tmp_path)
    path = folder / "assets.parquet"
    table = pq.read_table(path)
    product = table.column("product_id")[0].as_py()
    keep = pc.invert(pc.and_(pc.equal(table.column("kind"), "mask"), pc.equal(table.column("product_id"), product)))
    pq.write_table(table.filter(keep).replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(RewardDataError, match=f"product '{product}' has no mask asset"):
        load_reward_data(folder)
    assert load_reward_data(folder, load_masks=False).images.masks is None


def test_an_empty_split_and_a_head_without_labels_are_refused(small_splits: Path, tmp_path: Path):
    folder = _copy(small_splits / "train", tmp_path)
    (folder / "dwell.parquet").unlink()
    data = load_reward_data(folder)
    with pytest.raises(RewardDataError, match="dwell head: no dwell rows"):
        check_trainable(data, WEIGHTS, split="train")
    check_trainable(data, {**WEIGHTS, "dwell": 0.0}, split="train")

    for table in ("impressions", "preferences"):
        path = folder / f"{table}.parquet"
        original = pq.read_table(path)
        pq.write_table(original.slice(0, 0), path)
    with pytest.raises(RewardDataError, match="no impressions and no preference pairs"):
        load_reward_data(folder)


def test_only_ties_and_no_clicks_are_named(small_splits: Path):
    data = load_reward_data(small_splits / "validation")
    data.impressions.clicked.zero_()
    data.pairs.choice.fill_(2)
    with pytest.raises(
        RewardDataError, match="click head: none of the .* impressions was clicked; preference head: only ties"
    ):
        check_trainable(data, WEIGHTS, split="validation")


def test_examination_from_randomised_logs():
    # Slot CTRs 0.4, 0.2, 0.1 with random placement -> θ = 1, 0.5, 0.25.
    positions = torch.tensor([1] * 10 + [2] * 10 + [3] * 10)
    clicked = torch.tensor([1] * 4 + [0] * 6 + [1] * 2 + [0] * 8 + [1] + [0] * 9, dtype=torch.bool)
    assert estimate_examination(positions, clicked) == pytest.approx((1.0, 0.5, 0.25))
    with pytest.raises(RewardDataError, match="slot 1 has no impressions or no clicks"):
        estimate_examination(torch.tensor([1, 2]), torch.tensor([False, True]))
