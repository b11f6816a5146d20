"""Validated tables on disk: the accepted table (schema types) and the rejects table, and reading them back.

For a table ``impressions`` the output folder receives

- ``impressions.parquet``: accepted rows, every schema column in its Arrow type (an optional column the
  input lacked is all null);
- ``impressions.rejects.parquet``: rejected rows with ``file`` (the input file), ``row`` (1-based within it),
  ``reason`` (the first problem's code), ``problems`` (every message, ``; ``-separated), ``raw`` (the text
  of a record that could not be split into columns) and every schema column's original value as a string.

Files are written under a temporary name and renamed into place when complete, so a failed or interrupted
run never leaves a half-written table that looks finished.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from offline_data.errors import InputUnreadableError, LogValidationError
from offline_data.schemas import SCHEMAS, TableName, TableSchema

_DICTIONARY_SAMPLE = 8192

REJECT_FIELDS = ("file", "row", "reason", "problems", "raw")
"""Columns of a rejects table before the original values."""


def accepted_path(out_dir: Path, table: str) -> Path:
    return out_dir / f"{table}.parquet"


def rejects_path(out_dir: Path, table: str) -> Path:
    return out_dir / f"{table}.rejects.parquet"


def rejects_schema(schema: TableSchema) -> pa.Schema:
    """The rejects table of ``schema``: provenance and reason, then every column as its original text."""
    clash = [c.name for c in schema.columns if c.name in REJECT_FIELDS]
    if clash:
        raise ValueError(f"{schema.name}: columns {clash} clash with the rejects table's own {REJECT_FIELDS}")
    fields = [
        pa.field("file", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("problems", pa.string(), nullable=False),
        pa.field("raw", pa.string()),
    ]
    return pa.schema(fields + [pa.field(c.name, pa.string()) for c in schema.columns])


class AtomicParquetWriter:
    """A Parquet file written batch by batch under ``<name>.tmp`` and renamed into place on :meth:`commit`."""

    def __init__(self, path: Path, schema: pa.Schema, metadata: dict[str, str] | None = None) -> None:
        self.path = path
        self.rows = 0
        self._tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        if metadata:
            schema = schema.with_metadata({**(schema.metadata or {}), **metadata})
        self.schema = schema
        self._writer: pq.ParquetWriter | None = None
        self._closed = False

    def _open(self, first: pa.RecordBatch | None) -> pq.ParquetWriter:
        # Min/max statistics only where readers filter on them (times, numbers): on strings they cost a fifth of
        # the write time and rarely prune anything.
        statistics = [f.name for f in self.schema if not pa.types.is_string(f.type)]
        return pq.ParquetWriter(
            self._tmp, self.schema, use_dictionary=_dictionary_columns(first), write_statistics=statistics
        )

    def write(self, batch: pa.RecordBatch) -> None:
        if self._closed:
            raise RuntimeError(f"{self.path}: write after commit/abort")
        if batch.num_rows:
            if self._writer is None:
                self._writer = self._open(batch)
            self._writer.write_batch(batch)
            self.rows += batch.num_rows

    def commit(self) -> Path:
        if self._closed:
            raise RuntimeError(f"{self.path}: committed twice")
        writer = self._writer or self._open(None)
        writer.close()
        self._writer = None
        self._closed = True
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._writer = None
        self._closed = True
        self._tmp.unlink(missing_ok=True)


def _dictionary_columns(first: pa.RecordBatch | None) -> bool | list[str]:
    """Columns worth dictionary-encoding: at most one distinct value in two among the first 8192 rows.

    Dictionary-encoding a unique column (ids, timestamps) costs time for nothing: Parquet gives up once the
    dictionary page is full and falls back to plain encoding. A sample keeps the judgement cheap.
    """
    if first is None or first.num_rows < 1000:
        return True
    sample = first.slice(0, _DICTIONARY_SAMPLE)
    return [
        field.name
        for field, column in zip(sample.schema, sample.columns)
        if 2 * pc.count_distinct(column).as_py() <= sample.num_rows
    ]


def open_validated(validated_dir: str | Path, table: TableName) -> pq.ParquetFile:
    """Open the accepted ``table`` of a ``backdrop data validate`` output folder, checking its column types.

    Raises:
        InputUnreadableError: the file is missing or not Parquet.
        LogValidationError: a column is missing or not of the schema's type (not a validated table).
    """
    path = accepted_path(Path(validated_dir), table)
    if not path.is_file():
        raise InputUnreadableError(
            f"{path}: validated {table} table not found (run 'backdrop data validate' and point at its output)"
        )
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputUnreadableError(f"{path}: cannot read as Parquet: {exc}") from None
    stored = file.schema_arrow
    for column in SCHEMAS[table].columns:
        found = stored.field(column.name).type if column.name in stored.names else None
        if found != column.type:
            raise LogValidationError(
                f"{path}: column '{column.name}' is {found or 'missing'}, expected {column.type}: not a validated "
                f"{table} table (run 'backdrop data validate' first)"
            )
    return file
