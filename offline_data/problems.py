"""Problems found in a batch of rows, their messages, and the per-file log of the first N.

A :class:`Finding` is one kind of problem over a whole batch: a mask of the rows that have it, the column,
what was expected, and how to show the value found. Messages are built vectorised with Arrow string
kernels (there can be a million rejected rows), in the format of STYLE.md "Errors for bad input"::

    row 17, column 'dwell_ms': expected integer >= 0, got -120
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_SHOWN_CHARS = 80
"""Longer values are cut in messages (the rejects file keeps them whole)."""

FoundText = Callable[[np.ndarray], pa.Array]
"""Given row indices [K] of a batch, the values found there as display strings [K]."""


def _escape_controls(text: pa.Array) -> pa.Array:
    """Control characters written as ``\\xNN`` so a message never carries a raw NUL or escape sequence."""
    if not pc.any(pc.match_substring_regex(text, r"[\x00-\x1f\x7f]")).as_py():
        return text
    escape = functools.partial(re.sub, r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}")
    return pa.array([None if v is None else escape(v) for v in text.to_pylist()], type=pa.string())


def show_values(values: pa.Array, *, quote: bool | np.ndarray) -> FoundText:
    """A :data:`FoundText` showing ``values`` [N]; strings are quoted where ``quote`` (bool or [N] mask).

    Nulls show as ``null``; values longer than 80 characters are cut with an ellipsis.
    """

    def found(index: np.ndarray) -> pa.Array:
        picked = values.take(pa.array(index, type=pa.int64()))
        if pa.types.is_dictionary(picked.type):
            picked = picked.dictionary_decode()
        text = picked if pa.types.is_string(picked.type) else pc.cast(picked, pa.string())
        text = _escape_controls(text)
        long = pc.greater(pc.utf8_length(text), _SHOWN_CHARS)
        text = pc.if_else(
            long, pc.binary_join_element_wise(pc.utf8_slice_codeunits(text, 0, _SHOWN_CHARS), "…", ""), text
        )
        quoted = pc.binary_join_element_wise("'", text, "'", "")
        mask = quote if isinstance(quote, bool) else pa.array(np.asarray(quote)[index])
        return pc.if_else(mask, quoted, text).fill_null("null")

    return found


def show_constant(text: str) -> FoundText:
    """The same ``text`` for every row shown (a note such as `` (not found)``)."""

    def found(index: np.ndarray) -> pa.Array:
        return pa.array([text] * len(index), type=pa.string())

    return found


def show_choice(first: FoundText, second: FoundText, use_first: np.ndarray) -> FoundText:
    """Show ``first``'s text where ``use_first`` [N] else ``second``'s (parsed value vs raw text)."""

    def found(index: np.ndarray) -> pa.Array:
        return pc.if_else(pa.array(use_first[index]), first(index), second(index))

    return found


@dataclasses.dataclass(frozen=True)
class Finding:
    """One kind of problem over a batch of N rows."""

    reason: str
    """Stable reason code, ``<column>:<kind>`` (e.g. ``position:invalid``, ``event_id:duplicate``)."""
    column: str | None
    """The column the problem is in (None for a record that could not be split into columns)."""
    mask: np.ndarray
    """[N] bool, the rows that have this problem."""
    expected: str
    """What a valid value looks like, e.g. ``integer >= 1``."""
    found: FoundText
    """How the value found is shown."""
    note: FoundText | None = None
    """Optional text appended after the value, e.g. `` (first in row 7)``."""

    def messages(self, rows: np.ndarray, index: np.ndarray) -> pa.Array:
        """Messages for the rows at batch positions ``index`` [K] (which must have this problem).

        Args:
            rows: [N] int64, the 1-based file row of each batch position.
            index: [K] int64 batch positions.

        Returns:
            [K] strings ``row R, column 'C': expected E, got F<note>``.
        """
        where = f"column '{self.column}': " if self.column is not None else ""
        parts = [
            "row ",
            pc.cast(pa.array(rows[index], type=pa.int64()), pa.string()),
            f", {where}expected {self.expected}, got ",
            self.found(index),
        ]
        if self.note is not None:
            parts.append(self.note(index))
        return pc.binary_join_element_wise(*parts, "")


class ProblemLog:
    """The problems of one file: total count, count per reason, and the first ``limit`` messages by row."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.total = 0
        self.by_reason: dict[str, int] = {}
        self._first: list[tuple[int, int, str]] = []  # (row, finding order, message)

    def add(self, findings: list[Finding], rows: np.ndarray) -> None:
        """Record every finding of a batch whose rows are ``rows`` [N]."""
        for order, finding in enumerate(findings):
            hits = np.flatnonzero(finding.mask)
            if len(hits) == 0:
                continue
            self.total += len(hits)
            self.by_reason[finding.reason] = self.by_reason.get(finding.reason, 0) + len(hits)
            if self.limit == 0:
                continue
            # Only rows that could still be among the first `limit` need a message.
            hits = hits[np.argsort(rows[hits], kind="stable")[: self.limit]]
            if len(self._first) >= self.limit and rows[hits[0]] > self._first[-1][0]:
                continue
            texts = finding.messages(rows, hits).to_pylist()
            self._first.extend((int(rows[i]), order, text) for i, text in zip(hits, texts))
            self._first.sort(key=lambda item: item[:2])
            del self._first[self.limit :]

    def add_messages(self, rows: np.ndarray, reason: str, texts: list[str]) -> None:
        """Record problems already phrased (records that could not be parsed at all)."""
        self.total += len(texts)
        self.by_reason[reason] = self.by_reason.get(reason, 0) + len(texts)
        self._first.extend((int(r), -1, t) for r, t in zip(rows, texts))
        self._first.sort(key=lambda item: item[:2])
        del self._first[self.limit :]

    @property
    def first(self) -> list[str]:
        """The first ``limit`` messages, ordered by row."""
        return [text for _, _, text in self._first]
