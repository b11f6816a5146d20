"""Request manifests: a studio run's requests come back exactly; a changed file is refused by its SHA-256."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.policy_runs.request_manifest import (
    manifest_requests,
    read_manifest,
    write_studio_manifest,
    write_table_manifest,
)
from offline_data.errors import AssetError
from offline_data.requests import read_requests


def test_studio_requests_round_trip_exactly(tmp_path: Path) -> None:
    from experiments.studio.requests import StudioRequestsConfig, studio_requests
    from offline_data.simulator import StudioWorld
    from tests.reward.conftest import small_world

    world = StudioWorld(small_world())
    studio = studio_requests(StudioRequestsConfig(split_fractions=(0.6, 0.2, 0.2), eval_products=4), world)
    write_studio_manifest(studio.train, studio.evaluation, tmp_path / "requests")
    for split, expected in (("train", studio.train), ("eval", studio.evaluation)):
        rebuilt = manifest_requests(tmp_path / "requests", expected[0].size[0], split)
        assert len(rebuilt) == len(expected) > 0
        for got, want in zip(rebuilt, expected):
            assert (got.request_id, got.product_id, got.prompt, got.segment) == (
                want.request_id, want.product_id, want.prompt, want.segment,
            )  # fmt: skip
            assert torch.equal(got.product_rgb, want.product_rgb) and torch.equal(got.product_mask, want.product_mask)
            assert torch.equal(got.confidence, want.confidence)


def test_a_changed_file_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    photo[..., 3] = 0
    photo[10:30, 10:30, 3] = 255
    Image.fromarray(photo).save(tmp_path / "a.png")
    (tmp_path / "r.csv").write_text("request_id,product_id,image,prompt\nr1,p,a.png,oak\n", encoding="utf-8")
    manifest = write_table_manifest(read_requests(tmp_path / "r.csv"), tmp_path / "run" / "requests")
    (row,) = manifest.rows()
    assert row["image"] == f"files/{row['image_sha256']}.png"
    assert len(read_manifest(tmp_path / "run" / "requests")) == 1
    photo[0, 0, 0] ^= 1  # a background pixel: the photo still validates, but it is not the file the run used
    Image.fromarray(photo).save(tmp_path / "run" / "requests" / row["image"])
    with pytest.raises(AssetError, match=f"SHA-256 is [0-9a-f]{{64}}, but the manifest records {row['image_sha256']}"):
        read_manifest(tmp_path / "run" / "requests")
