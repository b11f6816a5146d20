"""Precomputed image embeddings supplied by the user, keyed by ``image_id`` (a team's own visual engine).

Two formats:

- Parquet: an ``image_id`` string column plus either one fixed-size or variable list<float> column (every row
  the same length D) or D float columns;
- safetensors: one tensor ``embeddings`` [N, D] plus a JSON list of the N ids next to it, ``<file>.ids.json``.

Everything is checked on load and reported with the file, the 1-based row and the id: a missing or duplicate
id, a row of the wrong width, NaN or inf values. Ids the logs use but the file lacks are reported by
:meth:`EmbeddingTable.lookup` (the trainer checks every image id it will need before training).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from reward.errors import EmbeddingError

TENSOR_NAME = "embeddings"
"""Name of the tensor in a safetensors embeddings file."""
_SHOWN = 5


def _rows(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i) + 1) for i in indices[:_SHOWN])
    more = f" and {len(indices) - _SHOWN} more" if len(indices) > _SHOWN else ""
    return f"row(s) {shown}{more}"


class EmbeddingTable:
    """Validated embeddings [N, D] float32 and their ids, looked up by id.

    Args:
        ids: N distinct image ids.
        values: [N, D] float32, finite.
        source: file name used in messages.
    """

    def __init__(self, ids: Sequence[str], values: np.ndarray, *, source: str) -> None:
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[0] != len(ids):
            raise EmbeddingError(f"{source}: expected [N, D] embeddings for {len(ids)} ids, got shape {values.shape}")
        if values.shape[1] == 0:
            raise EmbeddingError(f"{source}: embeddings have width 0")
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            raise EmbeddingError(
                f"{source}: {bad.size} embedding(s) hold NaN or inf, {_rows(bad)} (image_id {ids[bad[0]]!r})"
            )
        index: dict[str, int] = {}
        for row, image_id in enumerate(ids):
            if not isinstance(image_id, str) or not image_id:
                raise EmbeddingError(f"{source}: row {row + 1}: image_id must be a non-empty string, got {image_id!r}")
            if image_id in index:
                raise EmbeddingError(
                    f"{source}: image_id {image_id!r} appears twice (rows {index[image_id] + 1} and {row + 1})"
                )
            index[image_id] = row
        self.ids = tuple(ids)
        self.values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        self.source = source
        self._index = index

    @property
    def dim(self) -> int:
        """D."""
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def missing(self, image_ids: Sequence[str]) -> list[str]:
        """The ids of ``image_ids`` that have no embedding (in order, without repeats)."""
        return list(dict.fromkeys(i for i in image_ids if i not in self._index))

    def lookup(self, image_ids: Sequence[str]) -> Tensor:
        """Embeddings of ``image_ids``: [B, D] float32.

        Raises:
            EmbeddingError: some ids have no embedding (the first few are named).
        """
        missing = self.missing(image_ids)
        if missing:
            shown = ", ".join(repr(i) for i in missing[:_SHOWN])
            raise EmbeddingError(
                f"{self.source}: no embedding for {len(missing)} image id(s) the logs use: {shown}"
                + (" ..." if len(missing) > _SHOWN else "")
            )
        rows = torch.tensor([self._index[i] for i in image_ids], dtype=torch.long)
        return self.values[rows]


def read_embeddings(path: str | Path, *, column: str = "") -> EmbeddingTable:
    """Read and validate an embeddings file (module docstring has the formats).

    Args:
        path: a ``.parquet`` or ``.safetensors`` file.
        column: Parquet only: the list column to use ("" = the only list column, else every float column).

    Raises:
        EmbeddingError: unreadable file, wrong layout, duplicate ids, NaN/inf, ragged rows.
    """
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"{path}: embeddings file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path, column)
    if suffix == ".safetensors":
        return _read_safetensors(path)
    raise EmbeddingError(f"{path}: expected a .parquet or .safetensors embeddings file, got suffix {suffix!r}")


def _read_parquet(path: Path, column: str) -> EmbeddingTable:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise EmbeddingError(f"{path}: cannot read as Parquet: {exc}") from None
    if "image_id" not in table.column_names:
        raise EmbeddingError(f"{path}: missing column 'image_id' (columns: {', '.join(table.column_names)})")
    ids_column = table.column("image_id")
    if not pa.types.is_string(ids_column.type) and not pa.types.is_large_string(ids_column.type):
        raise EmbeddingError(f"{path}: column 'image_id' must be strings, got {ids_column.type}")
    ids = ids_column.to_pylist()
    lists = [f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)]
    floats = [f.name for f in table.schema if f.name != "image_id" and pa.types.is_floating(f.type)]
    if column:
        if column not in table.column_names:
            raise EmbeddingError(f"{path}: no column {column!r} (columns: {', '.join(table.column_names)})")
        lists = [column]
    if lists:
        if len(lists) > 1:
            raise EmbeddingError(
                f"{path}: several list columns ({', '.join(lists)}); choose one with embeddings_column"
            )
        values = table.column(lists[0]).to_pylist()
        nulls = np.array([v is None for v in values])
        if nulls.any():
            raise EmbeddingError(f"{path}: column {lists[0]!r} is null in {_rows(np.flatnonzero(nulls))}")
        widths = np.array([len(v) for v in values], dtype=np.int64)
        if widths.size and (widths != widths[0]).any():
            bad = np.flatnonzero(widths != widths[0])
            raise EmbeddingError(
                f"{path}: column {lists[0]!r}: expected every embedding to have {widths[0]} values (row 1), "
                f"found {widths[bad[0]]} in {_rows(bad)}"
            )
        array = np.array([[np.nan if x is None else x for x in v] for v in values], dtype=np.float64)
        array = array.reshape(len(values), int(widths[0]) if widths.size else 0)
        return EmbeddingTable(ids, array, source=str(path))
    if not floats:
        raise EmbeddingError(f"{path}: no embedding columns: expected one list<float> column or float columns")
    array = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in floats], axis=1)
    return EmbeddingTable(ids, array, source=str(path))


def ids_path(path: Path) -> Path:
    """``<file>.ids.json``: the id list that goes with a safetensors embeddings file."""
    return path.with_name(path.name + ".ids.json")


def _read_safetensors(path: Path) -> EmbeddingTable:
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise EmbeddingError(f"{path}: cannot read as safetensors: {exc}") from None
    if TENSOR_NAME not in tensors:
        raise EmbeddingError(f"{path}: no tensor named {TENSOR_NAME!r} (found: {', '.join(tensors) or 'none'})")
    listing = ids_path(path)
    try:
        ids = json.loads(listing.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EmbeddingError(f"{listing}: the id list of {path.name} is missing (a JSON list of image ids)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EmbeddingError(f"{listing}: cannot read the id list: {exc}") from None
    if not isinstance(ids, list):
        raise EmbeddingError(f"{listing}: expected a JSON list of image ids, got {type(ids).__name__}")
    values = tensors[TENSOR_NAME].to(torch.float64).numpy()
    if values.ndim != 2 or values.shape[0] != len(ids):
        raise EmbeddingError(
            f"{path}: tensor {TENSOR_NAME!r} has shape {list(values.shape)}, expected [{len(ids)}, D] for the "
            f"{len(ids)} ids of {listing.name}"
        )
    return EmbeddingTable(ids, values, source=str(path))


def write_embeddings(path: str | Path, image_ids: Sequence[str], values: Tensor | np.ndarray) -> Path:
    """Write embeddings [N, D] as Parquet (image_id + list<float32> ``embedding``) or safetensors + ids JSON."""
    path = Path(path)
    array = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != len(image_ids):
        raise ValueError(f"values must be [{len(image_ids)}, D], got {list(array.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".safetensors":
        save_file({TENSOR_NAME: torch.from_numpy(array)}, str(path))
        ids_path(path).write_text(json.dumps(list(image_ids)), encoding="utf-8")
        return path

    flat = pa.array(array.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, array.shape[1])
    pq.write_table(pa.table({"image_id": pa.array(list(image_ids), type=pa.string()), "embedding": column}), path)
    return path
