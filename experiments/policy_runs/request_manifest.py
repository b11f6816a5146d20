"""A run's request manifest: the requests it used, in its own folder, so the run is self-contained.

Every run that takes requests (``policy train``, ``policy offline``, ``policy compare``, ``rollout sample``) writes
``<run>/requests/``:

- ``requests.parquet``: a validated request table (``offline_data.requests``) whose ``image`` and ``mask`` paths
  point at copies in ``files/`` (named by their SHA-256, so a photo used by several requests is stored once),
  with each file's SHA-256, the photo's upright size and the ``split`` (train / eval) the run used;
- ``requests.rejects.parquet``: the rows of the input table that were rejected, with their reasons;
- ``confidence.npz`` (studio-world runs only): the segmenter's confidence map of each request (``request_ids``
  [N] and ``confidence`` [N, H, W] float32, compressed), for the optional edge band (a mask PNG holds the hard
  mask only).

Studio-world runs (no ``--requests``) write their studio requests the same way (catalogue shot as a PNG, the
noisy mask as a 0/255 PNG). :func:`read_manifest` re-validates the table, refuses any file whose SHA-256 differs
from the recorded one, and :func:`manifest_requests` rebuilds the model-resolution requests, so ``export`` and
``policy compare`` never re-simulate the world to find a run's requests.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from offline_data.assets import file_sha256
from offline_data.errors import AssetError
from offline_data.photos import PhotoLimits
from offline_data.requests import RequestTable, RequestTableConfig, read_requests, write_requests
from rollout.photo import table_requests

MANIFEST_DIR = "requests"
CONFIDENCE_FILE = "confidence.npz"


def guard_fn(guard: Any) -> Any:
    """A ``rollout.guards.PromptGuard`` as the request table's guard callable (None stays None)."""
    if guard is None:
        return None
    return lambda prompts: [None if v.allowed else v.reason for v in guard.check(list(prompts))]


def write_table_manifest(table: RequestTable, folder: Path) -> RequestTable:
    """Copy a validated table's files into ``folder/files`` and write the manifest table; returns it re-read."""
    files = folder / "files"
    files.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in table.rows():
        copy = {name: row[name] for name in ("request_id", "product_id", "prompt", "segment", "split")}
        for column in ("image", "mask"):
            copy[column] = None
            if row[column] is not None:
                source = table.base_dir / row[column]
                target = files / f"{row[f'{column}_sha256']}{source.suffix.lower()}"
                if not target.exists():
                    shutil.copyfile(source, target)
                copy[column] = f"files/{target.name}"
        rows.append(copy)
    _write_input(rows, folder)
    manifest = _record(folder, {r["request_id"]: r for r in table.rows()})
    pq.write_table(table.rejects, folder / "requests.rejects.parquet")
    return manifest


def write_studio_manifest(train: Sequence[Any], evaluation: Sequence[Any], folder: Path) -> RequestTable:
    """The studio world's requests (``rollout.request.InpaintRequest``, model resolution) as a manifest."""
    files = folder / "files"
    files.mkdir(parents=True, exist_ok=True)
    rows, confidence = [], {}
    for split, requests in (("train", train), ("eval", evaluation)):
        for request in requests:
            paths = {}
            for column, array in (
                ("image", request.product_rgb.permute(1, 2, 0).numpy()),
                ("mask", request.product_mask.numpy().astype(np.uint8) * np.uint8(255)),
            ):
                scratch = files / f".{column}.png"
                Image.fromarray(np.ascontiguousarray(array)).save(scratch)
                target = files / f"{file_sha256(scratch)}.png"
                scratch.replace(target)
                paths[column] = f"files/{target.name}"
            rows.append({"request_id": request.request_id, "product_id": request.product_id,
                         "prompt": request.prompt, "segment": request.segment, "split": split, **paths})  # fmt: skip
            if request.confidence is not None:
                confidence[request.request_id] = request.confidence.float().numpy()
    _write_input(rows, folder)
    if confidence:
        maps = np.stack(list(confidence.values()))
        np.savez_compressed(folder / CONFIDENCE_FILE, request_ids=np.array(list(confidence)), confidence=maps)
    return _record(folder, None)


def read_manifest(folder: Path) -> RequestTable:
    """A run's manifest, re-validated, with every file checked against the SHA-256 it records.

    Raises:
        AssetError: no manifest, a rejected row (a file missing or no longer valid), or a SHA-256 mismatch.
    """
    path = Path(folder) / "requests.parquet"
    if not path.is_file():
        raise AssetError(f"{folder}: no request manifest (requests.parquet); the run predates request manifests")
    recorded = pq.read_table(path)
    if "image_sha256" not in recorded.schema.names:
        raise AssetError(f"{path}: not a request manifest (no image_sha256 column)")
    return _validated(Path(folder), {r["request_id"]: r for r in recorded.to_pylist()})


def _validated(folder: Path, expected: dict[str, dict] | None) -> RequestTable:
    """``folder/requests.parquet`` validated; each file's SHA-256 compared with ``expected`` (request_id -> row
    with ``image_sha256`` / ``mask_sha256``) when given."""
    path = folder / "requests.parquet"
    table = read_requests(path, config=RequestTableConfig(limits=PhotoLimits(min_side=1, max_side=1 << 16)))
    if table.rejects.num_rows:
        raise AssetError(f"{path}: the manifest does not validate:\n" + "\n".join(table.problems()))
    for row in table.rows() if expected is not None else []:
        want = expected.get(row["request_id"], {})
        for column in ("image", "mask"):
            if row[f"{column}_sha256"] != want.get(f"{column}_sha256"):
                raise AssetError(
                    f"{folder / row[column]}: SHA-256 is {row[f'{column}_sha256']}, but the manifest records "
                    f"{want.get(f'{column}_sha256')} for request {row['request_id']!r} (the file changed)"
                )
    return table


def _record(folder: Path, expected: dict[str, dict] | None) -> RequestTable:
    """Validate the manifest just written and replace its input table with the validated one (with hashes)."""
    table = _validated(folder, expected)
    write_requests(table, folder)
    return table


def manifest_requests(folder: Path, resolution: int, split: str | None = None) -> list[Any]:
    """The manifest's requests at the model's ``resolution`` (``rollout.photo.table_requests``), in table order,
    with the studio confidence maps when the manifest has them."""

    table = read_manifest(folder)
    requests = table_requests(table, resolution, split)
    confidence_path = Path(folder) / CONFIDENCE_FILE
    if not confidence_path.is_file():
        return requests

    with np.load(confidence_path) as stored:
        maps = {str(i): torch.from_numpy(m) for i, m in zip(stored["request_ids"], stored["confidence"])}
    return [
        dataclasses.replace(r, confidence=maps[r.request_id])
        if r.request_id in maps and maps[r.request_id].shape == r.product_mask.shape
        else r
        for r in requests
    ]


def _write_input(rows: list[dict], folder: Path) -> None:
    names = ("request_id", "product_id", "image", "mask", "prompt", "segment", "split")
    columns = {name: pa.array([r.get(name) for r in rows], type=pa.string()) for name in names}
    pq.write_table(pa.table(columns), folder / "requests.parquet")
