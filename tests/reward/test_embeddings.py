"""Precomputed embeddings: round trips in both formats, and every bad file named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from reward.embeddings import ids_path, read_embeddings, write_embeddings
from reward.encoders import PrecomputedEncoder
from reward.errors import EmbeddingError

IDS = ["img-a", "img-b", "img-c"]
VALUES = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


@pytest.mark.parametrize("suffix", [".parquet", ".safetensors"])
def test_round_trip_and_lookup(tmp_path: Path, suffix: str):
    path = write_embeddings(tmp_path / f"emb{suffix}", IDS, VALUES)
    table = read_embeddings(path)
    assert table.dim == 4 and len(table) == 3
    assert torch.equal(table.lookup(["img-c", "img-a"]), torch.from_numpy(VALUES[[2, 0]]))
    encoder = PrecomputedEncoder(table)
    assert encoder.encode(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), image_ids=["img-b", "img-b"]).shape == (2, 4)


def test_float_columns_are_read_as_one_embedding(tmp_path: Path):
    path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"image_id": IDS, "f0": VALUES[:, 0], "f1": VALUES[:, 1]}), path)
    assert read_embeddings(path).values.shape == (3, 2)


def _write(path: Path) -> Path:
    path.write_bytes(b"0")
    return path


def _parquet(tmp_path: Path, ids, rows) -> Path:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image_id": ids, "embedding": pa.array(rows, type=pa.list_(pa.float32()))}), path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: _parquet(t, IDS, [[0.0, 1.0], [0.0, float("nan")], [1.0, 1.0]]),
         r"1 embedding\(s\) hold NaN or inf, row\(s\) 2 \(image_id 'img-b'\)"),
        (lambda t: _parquet(t, IDS, [[0.0, 1.0], [0.0], [1.0, 1.0]]),
         r"expected every embedding to have 2 values \(row 1\), found 1 in row\(s\) 2"),
        (lambda t: _parquet(t, ["a", "b", "a"], [[0.0], [1.0], [2.0]]),
         r"image_id 'a' appears twice \(rows 1 and 3\)"),
        (lambda t: _parquet(t, IDS, [[0.0], None, [2.0]]), r"column 'embedding' is null in row\(s\) 2"),
        (lambda t: t / "missing.parquet", "embeddings file not found"),
        (lambda t: _write(t / "x.npy"), "expected a .parquet or .safetensors"),
    ],
)  # fmt: skip
def test_bad_parquet_files_are_named(tmp_path: Path, make, message):
    with pytest.raises(EmbeddingError, match=message):
        read_embeddings(make(tmp_path))


def test_bad_safetensors_files_are_named(tmp_path: Path):
    path = tmp_path / "emb.safetensors"
    save_file({"embeddings": torch.zeros(3, 2)}, str(path))
    with pytest.raises(
        EmbeddingError, match=r"emb\.safetensors\.ids\.json: the id list of emb\.safetensors is missing"
    ):
        read_embeddings(path)
    ids_path(path).write_text(json.dumps(["a", "b"]))
    with pytest.raises(EmbeddingError, match=r"has shape \[3, 2\], expected \[2, D\]"):
        read_embeddings(path)
    save_file({"other": torch.zeros(2, 2)}, str(path))
    with pytest.raises(EmbeddingError, match="no tensor named 'embeddings'"):
        read_embeddings(path)


def test_missing_ids_and_pixels_only_calls_are_named(tmp_path: Path):
    table = read_embeddings(write_embeddings(tmp_path / "e.parquet", IDS, VALUES))
    with pytest.raises(EmbeddingError, match=r"no embedding for 1 image id\(s\) the logs use: 'img-z'"):
        table.lookup(["img-a", "img-z"])
    with pytest.raises(EmbeddingError, match="cannot encode new pixels"):
        PrecomputedEncoder(table).encode(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
