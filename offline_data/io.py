"""Streaming readers for the log tables: Parquet (native), CSV and JSON Lines, never loading a file whole.

A table is one file or a folder of part files (``impressions.parquet``, ``impressions.csv``,
``impressions/part-0000.parquet`` ...). Each file is read in record batches of about ``batch_rows`` rows;
every row keeps its 1-based row number within its file so that problems can name it:

- Parquet and CSV: row 1 is the first data record (the CSV header is not counted);
- JSON Lines: the row is the line number (blank lines are skipped but still counted).

Parquet columns arrive in their stored Arrow types; CSV columns arrive as strings (type parsing is the
validator's job, so one bad value rejects one row rather than the file); JSON Lines values arrive in the
schema's types when Arrow parses the whole block with them, and as strings (read line by line) when it
does not. Records that cannot be split into fields at all (a CSV line with the wrong number of fields, a
JSON line that is not an object) come out as :class:`MalformedRows`, so they are rejected with the rest.
Files in a part folder whose names start with ``.`` or ``_`` (``_SUCCESS``, ``.crc``) are not parts; any other
entry that is not a regular file (a folder, a symlink loop) is an error, never skipped.

A file that cannot be read at all (missing, not Parquet, truncated, not UTF-8, missing a required column)
raises :class:`~offline_data.errors.InputUnreadableError` naming the file.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import errno
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from offline_data.errors import InputUnreadableError
from offline_data.schemas import TableName, TableSchema

FileFormat = Literal["parquet", "csv", "jsonl"]
SUFFIXES: dict[str, FileFormat] = {
    ".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
}  # fmt: skip
"""File name suffix -> format."""

_TOO_DEEP = "nests arrays or objects too deeply to parse (Python's recursion limit)"
"""Problem of a JSON line nested deeper than ``json.loads`` can follow (about 1,000 levels)."""

_TEXT_BLOCK_BYTES = 4 << 20
"""Bytes per block when reading CSV / JSON Lines (one block becomes one or a few batches)."""


@dataclasses.dataclass(frozen=True)
class TableSource:
    """Where one table's rows come from: a file, or a folder of part files of one format."""

    table: TableName
    path: Path
    """The file or folder as given."""
    format: FileFormat
    files: tuple[Path, ...]
    """The files to read, in order (the file itself, or the folder's part files sorted by name)."""

    @property
    def base_dir(self) -> Path:
        """The folder holding the table (asset paths are relative to it)."""
        return self.path.parent


@dataclasses.dataclass(frozen=True)
class RawBatch:
    """Rows of one file as read, before any type parsing."""

    file_index: int
    """Index of the file in :attr:`TableSource.files`."""
    rows: np.ndarray
    """[N] int64, 1-based row numbers within the file."""
    columns: dict[str, pa.Array]
    """Schema columns found in the file, each [N], in the file's types (strings for CSV)."""

    def __len__(self) -> int:
        return len(self.rows)


@dataclasses.dataclass(frozen=True)
class MalformedRows:
    """Records that could not be split into columns (they are rejected whole)."""

    file_index: int
    rows: np.ndarray
    """[M] int64, 1-based row numbers within the file."""
    text: list[str]
    """The raw text of each record."""
    problems: list[str]
    """What is wrong with each record, e.g. ``expected 9 fields, got 8``."""

    def __len__(self) -> int:
        return len(self.rows)


# ----------------------------------------------------------------------------------------------------------
# Finding tables


def format_of(path: Path) -> FileFormat | None:
    """The format implied by a file name's suffix, or None."""
    return SUFFIXES.get(path.suffix.lower())


def resolve_source(table: TableName, path: str | Path) -> TableSource:
    """The :class:`TableSource` for a file or a folder of part files.

    Raises:
        InputUnreadableError: the path does not exist, has an unknown suffix, or is a folder without part
            files or with part files of several formats.
    """
    path = Path(path)
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if not p.name.startswith((".", "_")))
        for part in parts:
            _check_part_file(part, table)
        formats = {format_of(p) for p in parts} - {None}
        if not formats:
            raise InputUnreadableError(
                f"{path}: no {table} part files found (expected files ending in {', '.join(sorted(SUFFIXES))})"
            )
        if len(formats) > 1:
            raise InputUnreadableError(f"{path}: part files of several formats ({', '.join(sorted(formats))})")
        fmt = formats.pop()
        return TableSource(table, path, fmt, tuple(p for p in parts if format_of(p) == fmt))
    if not path.exists():
        raise InputUnreadableError(f"{path}: {table} table not found")
    fmt = format_of(path)
    if fmt is None:
        raise InputUnreadableError(
            f"{path}: cannot tell the format of the {table} table from its suffix "
            f"(expected one of {', '.join(sorted(SUFFIXES))})"
        )
    return TableSource(table, path, fmt, (path,))


def _check_part_file(part: Path, table: str) -> None:
    """A part folder's entry must be a regular file (or a symlink to one): nothing is skipped silently."""
    if part.is_file():
        return
    if part.is_symlink():
        try:
            part.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a symlink loop this way
            found = "a symlink loop"
        except OSError as exc:
            found = "a symlink loop" if exc.errno == errno.ELOOP else "a broken symlink"
        else:
            found = "a symlink to something that is not a regular file"
    elif part.is_dir():
        found = "a folder"
    else:
        found = "not a regular file (a device, socket or pipe)"
    raise InputUnreadableError(
        f"{part}: expected a part file of the {table} table, found {found}; remove it, or start its name with "
        "'_' or '.' (such entries are not parts)"
    )


def find_table(directory: str | Path, table: TableName) -> TableSource | None:
    """The table named ``table`` in ``directory`` (``<table>.parquet|.csv|.jsonl`` or ``<table>/``), or None.

    Raises:
        InputUnreadableError: more than one candidate exists (the choice would be a guess).
    """
    directory = Path(directory)
    candidates = [directory / f"{table}{suffix}" for suffix in SUFFIXES] + [directory / table]
    found = [c for c in candidates if c.exists()]
    if len(found) > 1:
        names = ", ".join(c.name for c in found)
        raise InputUnreadableError(f"{directory}: several {table} tables ({names}); keep exactly one")
    return resolve_source(table, found[0]) if found else None


# ----------------------------------------------------------------------------------------------------------
# Reading


class FileReader:
    """Reads one file of a table in batches. Open with :func:`open_file`."""

    def __init__(self, path: Path, schema: TableSchema, file_index: int, batch_rows: int) -> None:
        self.path = path
        self.schema = schema
        self.file_index = file_index
        self.batch_rows = batch_rows
        self.present: tuple[str, ...] = ()
        """Schema columns the file has, in schema order."""
        self.ignored: tuple[str, ...] = ()
        """Columns of the file that are not in the schema (not carried into the output)."""
        self.declared: tuple[str, ...] = ()
        """Schema columns named by the file's header (Parquet schema, CSV header, first JSON record)."""

    @property
    def size_hint(self) -> tuple[int, str]:
        """(total, unit) for a progress bar."""
        return self.path.stat().st_size, "B"

    def batches(self) -> Iterator[RawBatch | MalformedRows]:
        raise NotImplementedError

    def _check_columns(self, names: list[str], what: str) -> None:
        missing = [name for name in self.schema.required if name not in names]
        if missing:
            quoted = ", ".join(repr(m) for m in missing)
            raise InputUnreadableError(
                f"{self.path}: missing required column{'s' if len(missing) > 1 else ''} {quoted} "
                f"({self.schema.name} needs: {', '.join(self.schema.required)}; {what}: {', '.join(names) or 'none'})"
            )
        known = {c.name for c in self.schema.columns}
        self.present = tuple(c.name for c in self.schema.columns if c.name in names)
        self.declared = self.present
        self.ignored = tuple(n for n in names if n not in known)

    def _unreadable(self, exc: BaseException, where: str = "") -> InputUnreadableError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return InputUnreadableError(f"{self.path}: cannot read as {self.format_name}{where}: {detail}")

    format_name = "a table"


class ParquetFileReader(FileReader):
    format_name = "Parquet"

    def __init__(self, path: Path, schema: TableSchema, file_index: int, batch_rows: int) -> None:
        super().__init__(path, schema, file_index, batch_rows)
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise self._unreadable(exc) from None
        self._check_columns(self._file.schema_arrow.names, "found")

    @property
    def size_hint(self) -> tuple[int, str]:
        return self._file.metadata.num_rows, "rows"

    def batches(self) -> Iterator[RawBatch]:
        next_row = 1
        iterator = self._file.iter_batches(batch_size=self.batch_rows, columns=list(self.present), use_threads=True)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                raise self._unreadable(exc, f" (after row {next_row - 1})") from None
            rows = np.arange(next_row, next_row + batch.num_rows, dtype=np.int64)
            next_row += batch.num_rows
            yield RawBatch(self.file_index, rows, {name: batch.column(name) for name in self.present})


def _check_utf8_text(path: Path, fmt: str) -> bytes:
    """First block of a text file, checked to be UTF-8 (with or without BOM); returns it without the BOM."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
    except OSError as exc:
        raise InputUnreadableError(f"{path}: cannot open: {exc.strerror or exc}") from None
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or (len(head) > 1 and b"\x00" in head[:1024]):
        raise InputUnreadableError(
            f"{path}: not UTF-8 text (looks like UTF-16); save the {fmt} as UTF-8 and try again"
        )
    head = head.removeprefix(codecs.BOM_UTF8)
    try:
        # An incremental decoder accepts a character cut at the end of the block.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise InputUnreadableError(
            f"{path}: not UTF-8 text (byte 0x{head[exc.start]:02x} at offset {exc.start}); save the {fmt} as UTF-8"
        ) from None
    return head


class CsvFileReader(FileReader):
    """CSV with a header row, comma-separated, UTF-8; every schema column is read as a string.

    An unquoted empty field is null; a quoted empty field ``""`` is the empty string. A blank line is a
    record of nulls (rejected, not skipped), so that row numbers stay record numbers.
    """

    format_name = "CSV"

    def __init__(self, path: Path, schema: TableSchema, file_index: int, batch_rows: int) -> None:
        super().__init__(path, schema, file_index, batch_rows)
        head = _check_utf8_text(path, "CSV")
        first_line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
        names = next(csv.reader([first_line]), []) if first_line else []
        self._check_columns([n.strip() for n in names], "header has")
        if len({n.strip() for n in names}) != len(names):
            raise InputUnreadableError(f"{path}: the CSV header repeats a column name: {first_line}")

    def batches(self) -> Iterator[RawBatch | MalformedRows]:
        invalid: list[tuple[int, str, str]] = []

        def on_invalid_row(row: pa_csv.InvalidRow) -> str:
            # row.number is the 1-based physical line (the header is line 1); with one record per line the
            # record number is one less.
            number = (row.number or 0) - 1
            invalid.append((number, row.text, f"expected {row.expected_columns} fields, got {row.actual_columns}"))
            return "skip"

        try:
            reader = pa_csv.open_csv(
                self.path,
                # Single-threaded: the invalid-row callback only gets line numbers when parsing is serial.
                read_options=pa_csv.ReadOptions(use_threads=False, block_size=_TEXT_BLOCK_BYTES),
                parse_options=pa_csv.ParseOptions(invalid_row_handler=on_invalid_row, ignore_empty_lines=False),
                convert_options=pa_csv.ConvertOptions(
                    column_types={name: pa.string() for name in self.present},
                    include_columns=list(self.present),
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                    null_values=[""],
                ),
            )
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise self._unreadable(exc) from None
        next_record = 1
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
                raise self._unreadable(exc, f" (after row {next_record - 1})") from None
            # Valid records fill the record numbers not taken by invalid (skipped) ones.
            taken = np.array(sorted(n for n, _, _ in invalid if n >= next_record), dtype=np.int64)
            candidates = np.arange(next_record, next_record + batch.num_rows + len(taken), dtype=np.int64)
            rows = candidates[~np.isin(candidates, taken)][: batch.num_rows]
            if len(rows):
                next_record = int(rows[-1]) + 1
            done = [item for item in invalid if item[0] < next_record]
            invalid = [item for item in invalid if item[0] >= next_record]
            if done:
                yield self._malformed(done)
            if batch.num_rows:
                yield RawBatch(self.file_index, rows, {name: batch.column(name) for name in self.present})
        if invalid:
            yield self._malformed(invalid)

    def _malformed(self, items: list[tuple[int, str, str]]) -> MalformedRows:
        return MalformedRows(
            self.file_index,
            np.array([n for n, _, _ in items], dtype=np.int64),
            [text for _, text, _ in items],
            [problem for _, _, problem in items],
        )


class JsonlFileReader(FileReader):
    """JSON Lines, UTF-8: one object per line, keys are column names.

    The columns are the keys of the first record (a required key missing there makes the file unreadable;
    missing in a later record it is a null in that row). Blocks of lines are parsed by Arrow with the
    schema's types; a block Arrow refuses is parsed line by line with its values as text (so
    ``"position": "abc"`` rejects one row, not the file).
    """

    format_name = "JSON Lines"

    def __init__(self, path: Path, schema: TableSchema, file_index: int, batch_rows: int) -> None:
        super().__init__(path, schema, file_index, batch_rows)
        head = _check_utf8_text(path, "JSON Lines file")
        first = next((line for line in head.splitlines() if line.strip()), b"")
        try:
            record = json.loads(first) if first else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputUnreadableError(f"{path}: not JSON Lines: line 1 is not JSON ({exc.msg})") from None
        except RecursionError:
            raise InputUnreadableError(f"{path}: not JSON Lines: line 1 {_TOO_DEEP}") from None
        if not isinstance(record, dict):
            raise InputUnreadableError(f"{path}: not JSON Lines: the first record is not a JSON object")
        self._check_columns(list(record), "first record has")
        # Optional keys may appear first in later records: read every schema column.
        self.present = tuple(c.name for c in schema.columns)
        self._arrow_schema = pa.schema(
            [pa.field(c.name, pa.string() if pa.types.is_timestamp(c.type) else c.type) for c in schema.columns]
        )

    def batches(self) -> Iterator[RawBatch | MalformedRows]:
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise self._unreadable(exc) from None
        with handle:
            carry = b""
            line_base = 0  # lines before the start of `carry`
            first_block = True
            while True:
                try:
                    block = handle.read(_TEXT_BLOCK_BYTES)
                except OSError as exc:
                    raise self._unreadable(exc) from None
                if first_block:
                    block = block.removeprefix(codecs.BOM_UTF8)
                    first_block = False
                data = carry + block
                if not block:
                    if data.strip():
                        yield from self._parse_lines(data, line_base)
                    return
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                yield from self._parse_lines(data[:cut], line_base)
                line_base += data.count(b"\n", 0, cut)
                carry = data[cut:]

    def _parse_lines(self, data: bytes, line_base: int) -> Iterator[RawBatch | MalformedRows]:
        """Parse whole lines; ``line_base`` is the number of lines before ``data``."""
        raw = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(raw == ord("\n"))
        if len(ends) == 0 or ends[-1] != len(raw) - 1:
            ends = np.append(ends, len(raw))
        starts = np.concatenate([[0], ends[:-1] + 1])
        # Blank lines are not records; every other line is one. Only short lines can be whitespace-only in
        # practice ("\r", " "), so only those are looked at one by one.
        lengths = ends - starts
        blank = lengths == 0
        for i in np.flatnonzero(~blank & (lengths <= 4)):
            blank[i] = not data[starts[i] : ends[i]].strip()
        keep = np.flatnonzero(~blank)
        line_numbers = line_base + 1 + keep
        spans = np.stack([starts[keep], ends[keep]], axis=1)
        for first in range(0, len(keep), self.batch_rows):
            yield from self._parse_span(data, spans[first : first + self.batch_rows], line_numbers[first:])

    def _parse_span(
        self, data: bytes, spans: np.ndarray, line_numbers: np.ndarray
    ) -> Iterator[RawBatch | MalformedRows]:
        """Parse the lines ``spans`` [n, 2] (start, end byte) with Arrow, or line by line if Arrow refuses."""
        n = len(spans)
        if n == 0:
            return
        chunk = data[spans[0, 0] : spans[-1, 1]]
        try:
            table = pa_json.read_json(
                io.BytesIO(chunk),
                read_options=pa_json.ReadOptions(use_threads=True, block_size=max(len(chunk), 1 << 16) + 1),
                parse_options=pa_json.ParseOptions(
                    explicit_schema=self._arrow_schema, unexpected_field_behavior="ignore"
                ),
            )
        except pa.ArrowException:
            table = None
        if table is not None and table.num_rows == n:
            columns = {name: table.column(name).combine_chunks() for name in self.present}
            yield RawBatch(self.file_index, np.asarray(line_numbers[:n], dtype=np.int64), columns)
            return
        yield from self._parse_slowly(data, spans, line_numbers[:n])

    def _parse_slowly(
        self, data: bytes, spans: np.ndarray, line_numbers: np.ndarray
    ) -> Iterator[RawBatch | MalformedRows]:
        """The unhappy path: a block holding a line Arrow cannot parse with the schema's types.

        Every line of the block is parsed by Python's json and its values kept as text, for the validator
        to parse like CSV (so ``"position": "abc"`` rejects one row, ``"position": "3"`` is accepted).
        About 300 k lines/s, against millions for Arrow; only blocks with a bad line take it.
        """
        rows: list[int] = []
        values: dict[str, list[str | None]] = {name: [] for name in self.present}
        bad_rows: list[int] = []
        bad_text: list[str] = []
        problems: list[str] = []
        for (start, end), number in zip(spans.tolist(), line_numbers.tolist()):
            line = data[start:end]
            if not line.strip():
                continue
            problem, record = _parse_json_line(line)
            if problem is not None:
                bad_rows.append(number)
                bad_text.append(line.decode("utf-8", errors="replace").rstrip("\r\n"))
                problems.append(problem)
                continue
            rows.append(number)
            for name, column in values.items():
                column.append(_json_text(record.get(name)))
        if rows:
            columns = {name: pa.array(column, type=pa.string()) for name, column in values.items()}
            yield RawBatch(self.file_index, np.array(rows, dtype=np.int64), columns)
        if bad_rows:
            yield MalformedRows(self.file_index, np.array(bad_rows, dtype=np.int64), bad_text, problems)


def _parse_json_line(line: bytes) -> tuple[str | None, dict]:
    """(problem, record): problem is None for a JSON object, else says what the line is instead."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "not valid UTF-8", {}
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg})", {}
    except RecursionError:
        return _TOO_DEEP, {}
    if not isinstance(record, dict):
        found = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(record), "number")
        return f"expected a JSON object, got {found}", {}
    return None, record


def _json_text(value: object) -> str | None:
    """A JSON value as the text the string parsers read (None stays null)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


_READERS: dict[FileFormat, type[FileReader]] = {
    "parquet": ParquetFileReader,
    "csv": CsvFileReader,
    "jsonl": JsonlFileReader,
}


def open_file(source: TableSource, file_index: int, schema: TableSchema, batch_rows: int) -> FileReader:
    """Open ``source.files[file_index]`` and check its columns.

    Raises:
        InputUnreadableError: the file is missing, unreadable in its format, or lacks a required column.
    """
    path = source.files[file_index]
    if not path.is_file():
        raise InputUnreadableError(f"{path}: {source.table} file not found")
    return _READERS[source.format](path, schema, file_index, batch_rows)


def as_text(array: pa.Array) -> pa.Array:
    """Values as strings, for rejects and messages (the original value whatever its type)."""
    if pa.types.is_string(array.type):
        return array
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    try:
        return pc.cast(array, pa.string())
    except pa.ArrowException:
        return pa.array([None if v is None else str(v) for v in array.to_pylist()], type=pa.string())
