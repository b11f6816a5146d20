"""Training views of validated logs: Hugging Face ``datasets`` (memory-mapped Arrow) and joined click examples.

The reward trainer reads validated tables (``backdrop data validate`` output, or one split of
``backdrop data split``) through these views:

- :func:`load_table`: any validated table as a ``datasets.Dataset``, converted once into a memory-mapped
  Arrow cache (``Dataset.from_parquet`` with a local ``cache_dir``; nothing is downloaded);
- :func:`iter_click_examples`: impressions left-joined with dwell on ``event_id``, streamed in record
  batches in impression order; ``dwell_ms`` / ``censored`` are null where no dwell row exists (not clicked,
  or not logged);
- :func:`click_examples`: the same join materialised in the cache folder and opened as a ``Dataset``.

The join keeps the dwell table's key index (about 30 bytes per dwell row) and its three columns in memory;
impressions stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from offline_data.keys import KeyIndex, hash_strings
from offline_data.outputs import AtomicParquetWriter, accepted_path, open_validated
from offline_data.schemas import DWELL, IMPRESSIONS, TableName

if TYPE_CHECKING:
    import datasets

CACHE_DIR_NAME = ".hf_cache"
"""Default cache folder, inside the validated folder."""

CLICK_EXAMPLE_SCHEMA = pa.schema(
    [*IMPRESSIONS.arrow_schema(), pa.field("dwell_ms", pa.int64()), pa.field("censored", pa.bool_())]
)
"""Impressions columns, then the dwell of the event (null when there is no dwell row)."""


def _cache_dir(validated_dir: Path, cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else validated_dir / CACHE_DIR_NAME


def load_table(
    validated_dir: str | Path,
    table: TableName,
    *,
    cache_dir: str | Path | None = None,
    columns: list[str] | None = None,
) -> datasets.Dataset:
    """A validated table as a memory-mapped ``datasets.Dataset``.

    Args:
        validated_dir: a ``backdrop data validate`` output folder (or a split folder).
        table: which table.
        cache_dir: where ``datasets`` keeps its Arrow cache (default ``<validated_dir>/.hf_cache``).
        columns: load only these columns.

    Raises:
        InputUnreadableError: the table is missing or unreadable.
        LogValidationError: the file is not a validated table.
    """
    import datasets  # heavy: Hugging Face datasets (~0.6 s) only for the Dataset views, not the log tables

    validated_dir = Path(validated_dir)
    open_validated(validated_dir, table)  # type and presence checks, with our error messages
    path = accepted_path(validated_dir, table)
    cache = _cache_dir(validated_dir, cache_dir)
    return datasets.Dataset.from_parquet(str(path), cache_dir=str(cache), columns=columns)


def iter_click_examples(validated_dir: str | Path, *, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """Impressions joined with their dwell, as record batches of :data:`CLICK_EXAMPLE_SCHEMA`.

    Args:
        validated_dir: folder with validated ``impressions.parquet`` and (optionally) ``dwell.parquet``;
            without dwell every ``dwell_ms`` is null.
        batch_rows: impressions per batch.

    Yields:
        [B] record batches in impression order.
    """
    validated_dir = Path(validated_dir)
    impressions = open_validated(validated_dir, "impressions")
    dwell = None
    index = KeyIndex()
    if accepted_path(validated_dir, "dwell").is_file():
        dwell = open_validated(validated_dir, "dwell").read(columns=[c.name for c in DWELL.columns])
        dwell = dwell.combine_chunks()
        hashes = hash_strings(dwell.column("event_id"))
        index.insert(hashes, np.arange(len(hashes), dtype=np.int64))
    for batch in impressions.iter_batches(batch_size=batch_rows):
        batch = pa.RecordBatch.from_arrays(batch.columns, schema=IMPRESSIONS.arrow_schema())
        n = batch.num_rows
        if dwell is None:
            extra = [pa.nulls(n, pa.int64()), pa.nulls(n, pa.bool_())]
        else:
            lookup = index.lookup(hash_strings(batch.column("event_id")))
            rows = pa.array(lookup.locations, mask=~lookup.found)
            extra = [dwell.column("dwell_ms").take(rows), dwell.column("censored").take(rows)]
            extra = [e.combine_chunks() if isinstance(e, pa.ChunkedArray) else e for e in extra]
        yield pa.RecordBatch.from_arrays([*batch.columns, *extra], schema=CLICK_EXAMPLE_SCHEMA)


def click_examples(validated_dir: str | Path, *, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """:func:`iter_click_examples` materialised as ``<cache_dir>/click_examples.parquet`` and opened as a
    memory-mapped ``datasets.Dataset``. The join is redone only when an input is newer than the cache.
    """
    import datasets  # heavy: Hugging Face datasets (~0.6 s) only for the Dataset views, not the log tables

    validated_dir = Path(validated_dir)
    cache = _cache_dir(validated_dir, cache_dir)
    joined = cache / "click_examples.parquet"
    inputs = [accepted_path(validated_dir, t) for t in ("impressions", "dwell")]
    newest = max(os.stat(p).st_mtime_ns for p in inputs if p.is_file()) if any(p.is_file() for p in inputs) else 0
    if not joined.is_file() or os.stat(joined).st_mtime_ns < newest:
        writer = AtomicParquetWriter(joined, CLICK_EXAMPLE_SCHEMA)
        try:
            for batch in iter_click_examples(validated_dir):
                writer.write(batch)
        except BaseException:
            writer.abort()
            raise
        writer.commit()
    if pq.ParquetFile(joined).metadata.num_rows == 0:
        return datasets.Dataset.from_dict({f.name: [] for f in CLICK_EXAMPLE_SCHEMA}).cast(
            datasets.Features.from_arrow_schema(CLICK_EXAMPLE_SCHEMA)
        )
    return datasets.Dataset.from_parquet(str(joined), cache_dir=str(cache))
