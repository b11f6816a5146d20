"""Checks across rows and tables: duplicate keys and references to other tables' keys.

Each table's key column (``schemas.TableSchema.key``) gets a :class:`TableKeys`: the hashed keys of every
row read so far, with where they were first seen and, for tables other tables point to, a payload
(whether the row was accepted; the impression's ``clicked``; the asset's product). It serves both checks:

- duplicates: the second and later rows with a key are rejected, naming the row of the first;
- references: ``impressions.image_id`` and ``preferences.image_a/b -> assets.image_id``,
  ``dwell.event_id -> impressions.event_id``; a reference must point to an *accepted* row, otherwise the
  referring row would survive validation while what it describes did not. Two consistency checks ride on
  the same lookups: an impression's ``product_id`` must be its image's product, and dwell can only follow
  a clicked impression.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from offline_data.checks import ParsedBatch
from offline_data.keys import KeyIndex, KeyLookup, first_occurrence, hash_strings
from offline_data.problems import Finding, FoundText, show_values

_ROW_BITS = 40
"""A location packs (file index, row) as ``file_index << 40 | row``: 2^40 rows per file is plenty."""


def pack_locations(file_index: int, rows: np.ndarray) -> np.ndarray:
    """[N] int64 locations of ``rows`` [N] (1-based) in file ``file_index``."""
    return (np.int64(file_index) << np.int64(_ROW_BITS)) | rows.astype(np.int64)


def unpack_location(location: int) -> tuple[int, int]:
    """(file index, row) of a packed location."""
    return location >> _ROW_BITS, location & ((1 << _ROW_BITS) - 1)


@dataclasses.dataclass(frozen=True)
class KeyCheck:
    """The keys of a batch after :meth:`TableKeys.duplicates`, ready for :meth:`TableKeys.commit`."""

    hashes: np.ndarray
    """[N] uint64 key hashes of the batch."""
    new_by_hash: np.ndarray
    """Batch positions of the first sightings of new keys, in ascending hash order."""


class TableKeys:
    """The key column of one table, indexed for duplicate detection and for references into the table."""

    def __init__(
        self,
        table: str,
        column: str,
        files: tuple[Path, ...],
        payload: Mapping[str, np.dtype | type] | None = None,
        expected_rows: int = 0,
    ) -> None:
        """Args:
        table: table name, for messages.
        column: the key column.
        files: the table's files, to name the file of a first occurrence in another part file.
        payload: extra per-key fields besides ``accepted`` (e.g. ``{"clicked": bool}``).
        expected_rows: the table's row count when known (Parquet), to size the index once.
        """
        self.table = table
        self.column = column
        self.files = files
        self.index = KeyIndex({"accepted": bool, **(payload or {})}, expected_keys=expected_rows)

    def describe(self, location: int, file_index: int | None = None) -> str:
        """``row 7`` (single-file table, or the same file as ``file_index``) or ``part-1.parquet row 7``."""
        where, row = unpack_location(location)
        if where == file_index or len(self.files) == 1:
            return f"row {row}"
        return f"{self.files[where].name} row {row}"

    def duplicates(self, batch: ParsedBatch) -> tuple[Finding | None, KeyCheck]:
        """Find keys already seen (earlier in this batch or in earlier batches).

        Returns:
            The duplicate finding (None when there are none) and what :meth:`commit` needs to store the
            first sightings.
        """
        n = len(batch)
        hashes = hash_strings(batch.values[self.column])
        valid = np.flatnonzero(batch.valid[self.column])
        first_index, order = first_occurrence(hashes[valid])
        first = valid[first_index]
        repeat_in_batch = first != valid
        candidates = valid[~repeat_in_batch]
        seen = self.index.lookup(hashes[candidates])
        new = np.zeros(n, dtype=bool)
        new[candidates[~seen.found]] = True
        by_hash = valid[order]
        check = KeyCheck(hashes, by_hash[new[by_hash]])
        first_location = np.full(n, -1, dtype=np.int64)
        first_location[valid[repeat_in_batch]] = pack_locations(batch.file_index, batch.rows[first[repeat_in_batch]])
        first_location[candidates[seen.found]] = seen.locations[seen.found]
        duplicate = first_location >= 0
        if not duplicate.any():
            return None, check
        note = _note(lambda i: f" (first in {self.describe(int(first_location[i]), batch.file_index)})")
        shown = show_values(batch.values[self.column], quote=True)
        finding = Finding(f"{self.column}:duplicate", self.column, duplicate, "a unique key", shown, note)
        return finding, check

    def commit(
        self,
        batch: ParsedBatch,
        check: KeyCheck,
        accepted: np.ndarray,
        payload: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Store the batch's first sightings with whether their rows were ``accepted`` [N] and ``payload`` [N]."""
        new = check.new_by_hash
        fields = {"accepted": accepted, **(payload or {})}
        self.index.insert(
            check.hashes[new],
            pack_locations(batch.file_index, batch.rows[new]),
            {k: v[new] for k, v in fields.items()},
            order=np.arange(len(new)),  # already in hash order
        )

    def refer(self, batch: ParsedBatch, column: str) -> tuple[Finding | None, KeyLookup, np.ndarray]:
        """Check that ``column`` of ``batch`` points to accepted rows of this table.

        Returns:
            ``(finding, lookup, usable)``: the dangling-reference finding (None when there are none), the
            lookup of every row's value, and [N] bool marking rows whose reference resolved to an accepted row.
        """
        lookup = self.index.lookup_strings(batch.values[column])
        usable = batch.valid[column] & lookup.found & lookup.payload["accepted"]
        dangling = batch.valid[column] & ~usable
        if not dangling.any():
            return None, lookup, usable

        def why(i: int) -> str:
            if not lookup.found[i]:
                return f" (no {self.table} row has it)"
            return f" ({self.table} {self.describe(int(lookup.locations[i]))} was rejected)"

        expected = f"the {self.column} of an accepted {self.table} row"
        shown = show_values(batch.values[column], quote=True)
        return Finding(f"{column}:dangling", column, dangling, expected, shown, _note(why)), lookup, usable


def _note(describe: Callable[[int], str]) -> FoundText:
    """A per-row note; only ever evaluated for the few rows whose message is shown or stored."""

    def note(index: np.ndarray) -> pa.Array:
        return pa.array([describe(int(i)) for i in index], type=pa.string())

    return note


def product_mismatch(batch: ParsedBatch, lookup: KeyLookup, usable: np.ndarray) -> Finding | None:
    """Impressions: ``product_id`` must equal the product of the image shown (from assets)."""
    hashes = hash_strings(batch.values["product_id"], repeated=True)
    wrong = usable & batch.valid["product_id"] & (hashes != lookup.payload["product"])
    if not wrong.any():
        return None
    shown = show_values(batch.values["product_id"], quote=True)
    expected = "the product_id of its image_id in assets"
    return Finding("product_id:mismatch", "product_id", wrong, expected, shown)


def not_clicked(batch: ParsedBatch, lookup: KeyLookup, usable: np.ndarray) -> Finding | None:
    """Dwell: the impression it follows must have been clicked."""
    unclicked = usable & ~lookup.payload["clicked"]
    if not unclicked.any():
        return None
    shown = show_values(batch.values["event_id"], quote=True)
    note = _note(lambda i: " (that impression has clicked = false)")
    return Finding("event_id:not_clicked", "event_id", unclicked, "the event_id of a clicked impression", shown, note)
