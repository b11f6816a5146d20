"""Row checks that need only the batch itself: types, nulls, ranges, closed sets, formats, self-pairs.

Everything is vectorised over the batch (Arrow compute and numpy); checks that need other rows or other
tables (duplicate keys, references) live in :mod:`offline_data.references`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from offline_data.conversion import ColumnTypeError, assume_timezone, convert, zone_less
from offline_data.errors import InputUnreadableError
from offline_data.io import RawBatch
from offline_data.problems import Finding, show_choice, show_constant, show_values
from offline_data.schemas import Column, TableSchema

SHA256_RE = r"^[0-9a-f]{64}$"
"""A SHA-256 digest as written in the assets table."""

_FORMATS: dict[tuple[str, str], tuple[str, str]] = {
    ("assets", "sha256"): (SHA256_RE, "SHA-256 as 64 lowercase hex digits"),
}
"""(table, column) -> (regex the value must match, how to say so); stricter than "non-empty string"."""

CONTROL_RE = r"[\x00-\x1f\x7f]"
"""A control character (NUL, \\x01-\\x1f, DEL): never part of an id (they break joins, files and terminals)."""
ID_EXPECTATION = "non-empty string without control characters (NUL, \\x01-\\x1f, \\x7f)"


def is_id_column(column: Column) -> bool:
    """Columns holding identifiers: ``*_id`` and the two images of a preference pair."""
    return pa.types.is_string(column.type) and (column.name.endswith("_id") or column.name in ("image_a", "image_b"))


@dataclasses.dataclass(frozen=True)
class ParsedBatch:
    """A batch after type parsing: every schema column typed, plus which entries are usable."""

    file_index: int
    rows: np.ndarray
    """[N] int64, 1-based rows within the file."""
    raw: dict[str, pa.Array]
    """The columns as read (present ones only), for the rejects file."""
    values: dict[str, pa.Array]
    """Every schema column in its schema type, [N]; null where missing, unparseable or absent."""
    valid: dict[str, np.ndarray]
    """Per column, [N] bool: a value is present and passed the column checks."""

    def __len__(self) -> int:
        return len(self.rows)


def _expectation(table: str, column: Column) -> str:
    fmt = _FORMATS.get((table, column.name))
    if fmt:
        return fmt[1]
    return ID_EXPECTATION if is_id_column(column) else column.expectation()


def _violations(table: str, column: Column, values: pa.Array) -> np.ndarray:
    """[N] bool: a parsed, non-null value outside the column's constraint (null entries are False)."""
    ok = None
    if column.allowed is not None:
        ok = pc.is_in(values, pa.array(column.allowed, type=values.type))
    elif pa.types.is_string(column.type):
        fmt = _FORMATS.get((table, column.name))
        ok = pc.match_substring_regex(values, fmt[0]) if fmt else pc.greater(pc.binary_length(values), 0)
        if is_id_column(column):
            ok = pc.and_(ok, pc.invert(pc.match_substring_regex(values, CONTROL_RE)))
    else:
        bounds = []
        if column.min_value is not None:
            bounds.append(pc.greater_equal(values, column.min_value))
        if column.exclusive_min is not None:
            bounds.append(pc.greater(values, column.exclusive_min))
        if column.max_value is not None:
            bounds.append(pc.less_equal(values, column.max_value))
        for bound in bounds:
            ok = bound if ok is None else pc.and_(ok, bound)
    if ok is None:
        return np.zeros(len(values), dtype=bool)
    # NaN compares false with every bound, so it lands here as a violation, as it should.
    return ~np.asarray(ok.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)


def check_columns(
    batch: RawBatch, schema: TableSchema, path: Path, *, timezone: str | None = None
) -> tuple[ParsedBatch, list[Finding]]:
    """Parse every column of ``batch`` and find missing, unparseable and out-of-constraint values.

    A timestamp without a zone is refused (``<column>:no_zone``) unless ``timezone`` (an IANA name) says which
    zone such times were written in; they are then converted to UTC from it.

    Raises:
        InputUnreadableError: a column's stored type can never hold the schema type (e.g. a list column).
    """
    n = len(batch)
    values: dict[str, pa.Array] = {}
    valid: dict[str, np.ndarray] = {}
    findings: list[Finding] = []
    for column in schema.columns:
        raw = batch.columns.get(column.name)
        if raw is None:
            values[column.name] = pa.nulls(n, column.type)
            valid[column.name] = np.zeros(n, dtype=bool)
            continue
        try:
            parsed, unparseable = convert(raw, column.type)
        except ColumnTypeError as exc:
            raise InputUnreadableError(f"{path}: column '{column.name}': {exc} (expected {column.type})") from None
        present = np.asarray(raw.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        invalid = unparseable | _violations(schema.name, column, parsed)
        expected = _expectation(schema.name, column)
        if not column.nullable and not present.all():
            findings.append(
                Finding(f"{column.name}:missing", column.name, ~present, expected, show_values(raw, quote=False))
            )
        if invalid.any():
            is_text = pa.types.is_string(column.type)
            shown = show_choice(
                show_values(parsed, quote=is_text), show_values(raw, quote=True), use_first=~unparseable
            )
            findings.append(Finding(f"{column.name}:invalid", column.name, invalid, expected, shown))
        if pa.types.is_timestamp(column.type):
            naive = zone_less(raw) & present & ~invalid
            if timezone is not None:
                parsed = assume_timezone(parsed, naive, timezone)
            elif naive.any():
                findings.append(_no_zone(column, naive, raw))
                invalid |= naive
        values[column.name] = parsed
        valid[column.name] = present & ~invalid
    parsed_batch = ParsedBatch(batch.file_index, batch.rows, batch.columns, values, valid)
    if schema.name == "preferences":
        findings.extend(_self_pairs(parsed_batch))
    return parsed_batch, findings


def _no_zone(column: Column, naive: np.ndarray, raw: pa.Array) -> Finding:
    expected = "an ISO-8601 timestamp with a zone (Z or +hh:mm)"
    note = " (no time zone: give one, or --assume-timezone ZONE, e.g. UTC, to convert such times from it)"
    shown = show_values(raw, quote=True)
    return Finding(f"{column.name}:no_zone", column.name, naive, expected, shown, show_constant(note))


def _self_pairs(batch: ParsedBatch) -> list[Finding]:
    """A preference pair must compare two different images."""
    both = batch.valid["image_a"] & batch.valid["image_b"]
    same = both & np.asarray(
        pc.equal(batch.values["image_a"], batch.values["image_b"]).fill_null(False).to_numpy(zero_copy_only=False),
        dtype=bool,
    )
    if not same.any():
        return []
    batch.valid["image_b"][same] = False
    shown = show_values(batch.values["image_b"], quote=True)
    return [Finding("image_b:self_pair", "image_b", same, "an image other than image_a", shown)]
