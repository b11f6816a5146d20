"""Vectorised conversion of raw column values (CSV strings, JSON values, any Parquet type) to a schema type.

Each converter returns the typed values and a mask of the entries that are present but are not a value of
the type, so that one bad entry rejects one row instead of failing the whole batch (``pc.cast`` alone
fails on the first bad string). Accepted spellings:

- integer: an Arrow integer type, an integral float (pandas writes int columns with nulls as float),
  or a string of optional sign and digits;
- number: any numeric type, or a decimal string (``1``, ``-0.5``, ``2e-3``; not ``nan``/``inf``);
- boolean: a boolean, integers 0/1, or the strings ``true``/``false``/``1``/``0`` (any letter case);
- timestamp: an Arrow timestamp (naive means UTC; sub-microsecond digits are truncated), a date, or an
  ISO-8601 string ``YYYY-MM-DD[(T| )hh:mm[:ss[.fraction]][Z|±hh[:mm]]]`` (no offset means UTC);
- string: any string type, or integers (ids stored as numbers).

Surrounding whitespace is ignored when parsing numbers, booleans and timestamps from strings.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_INTEGER_RE = r"^[+-]?[0-9]{1,18}$"
_NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_TIMESTAMP_RE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?$"
)
_ZONE_RE = r"[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"
_TRUE = ("true", "1")
_FALSE = ("false", "0")
_DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


class ColumnTypeError(TypeError):
    """The column's Arrow type cannot hold values of the target type at all (e.g. a list column)."""


def _mask(array: pa.Array) -> np.ndarray:
    """A boolean Arrow array as a numpy mask, null counting as False."""
    return np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _keep(values: pa.Array, bad: np.ndarray) -> pa.Array:
    """``values`` with the ``bad`` entries set to null."""
    if not bad.any():
        return values
    return pc.if_else(pa.array(bad), pa.nulls(len(values), values.type), values)


def _is_string(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def convert(array: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Convert raw values to ``target``.

    Args:
        array: [N] raw values of any Arrow type.
        target: one of string, int64, float64, bool, timestamp[us, tz=UTC].

    Returns:
        ``(values, unparseable)``: [N] values of type ``target`` (null where the raw value is null or
        unparseable) and [N] bool, True where a raw value is present but is not a value of ``target``.

    Raises:
        ColumnTypeError: the raw type can never hold ``target`` values (nested or binary types).
    """
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if array.type == target:
        return array, np.zeros(len(array), dtype=bool)
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), target), np.zeros(len(array), dtype=bool)
    if pa.types.is_string(target):
        return _to_string(array)
    if pa.types.is_integer(target):
        return _to_integer(array, target)
    if pa.types.is_floating(target):
        return _to_number(array, target)
    if pa.types.is_boolean(target):
        return _to_boolean(array)
    if pa.types.is_timestamp(target):
        return _to_timestamp(array, target)
    raise ColumnTypeError(f"no conversion to {target}")


def _unsupported(array: pa.Array, what: str) -> ColumnTypeError:
    return ColumnTypeError(f"Arrow type {array.type} cannot hold {what} values")


def _to_string(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    if _is_string(array.type) or pa.types.is_integer(array.type):
        return pc.cast(array, pa.string()), np.zeros(len(array), dtype=bool)
    raise _unsupported(array, "string")


def _to_integer(array: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    if pa.types.is_integer(array.type):
        if pa.types.is_uint64(array.type):
            bad = _mask(pc.greater(array, pa.scalar(np.iinfo(np.int64).max, pa.uint64())))
            return pc.cast(_keep(array, bad), target), bad
        return pc.cast(array, target), np.zeros(len(array), dtype=bool)
    if pa.types.is_floating(array.type):
        integral = pc.and_(pc.is_finite(array), pc.equal(pc.floor(array), array))
        in_range = pc.and_(pc.greater_equal(array, -(2.0**63)), pc.less(array, 2.0**63))
        bad = _mask(pc.is_valid(array)) & ~_mask(pc.and_(integral, in_range))
        return pc.cast(_keep(array, bad), target, safe=False), bad
    if _is_string(array.type):
        text = pc.utf8_trim_whitespace(pc.cast(array, pa.string()))
        bad = _mask(pc.is_valid(text)) & ~_mask(pc.match_substring_regex(text, _INTEGER_RE))
        text = _keep(text, bad)
        if _mask(pc.starts_with(text, "+")).any():  # Arrow's cast takes "-7" but not "+7"
            text = pc.utf8_ltrim(text, "+")
        return pc.cast(text, target), bad
    raise _unsupported(array, "integer")


def _to_number(array: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_decimal(array.type):
        return pc.cast(array, target, safe=False), np.zeros(len(array), dtype=bool)
    if _is_string(array.type):
        text = pc.utf8_trim_whitespace(pc.cast(array, pa.string()))
        bad = _mask(pc.is_valid(text)) & ~_mask(pc.match_substring_regex(text, _NUMBER_RE))
        return pc.cast(_keep(text, bad), target), bad
    raise _unsupported(array, "number")


def _to_boolean(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    if pa.types.is_integer(array.type):
        bad = _mask(pc.is_valid(array)) & ~_mask(pc.is_in(array, pa.array([0, 1], array.type)))
        return pc.not_equal(_keep(array, bad), 0), bad
    if _is_string(array.type):
        text = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(array, pa.string())))
        true = _mask(pc.is_in(text, pa.array(_TRUE)))
        bad = _mask(pc.is_valid(text)) & ~(true | _mask(pc.is_in(text, pa.array(_FALSE))))
        return _keep(pa.array(true), bad | ~_mask(pc.is_valid(text))), bad
    raise _unsupported(array, "boolean")


def _to_timestamp(array: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    none = np.zeros(len(array), dtype=bool)
    if pa.types.is_timestamp(array.type):
        # A naive timestamp is UTC by the schema's convention; casting to a tz-aware type keeps the instant.
        naive = pa.timestamp(array.type.unit)
        if array.type.tz is None:
            array = pc.cast(array, naive)
        return pc.cast(array, target, safe=False), none
    if pa.types.is_date(array.type):
        return pc.cast(pc.cast(array, pa.timestamp(target.unit)), target), none
    if _is_string(array.type):
        return _parse_iso8601(pc.utf8_trim_whitespace(pc.cast(array, pa.string())), target)
    raise _unsupported(array, "timestamp")


def _digits(text: pa.Array, start: int, stop: int) -> np.ndarray:
    return pc.cast(pc.utf8_slice_codeunits(text, start, stop), pa.int64()).to_numpy(zero_copy_only=False)


def _parse_iso8601(text: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """ISO-8601 strings -> timestamps, checking calendar ranges vectorised before Arrow's cast."""
    present = _mask(pc.is_valid(text))
    shaped = _mask(pc.match_substring_regex(text, _TIMESTAMP_RE))
    # Fixed positions in the matched shape; rows of another shape get a placeholder so slicing never fails.
    safe = pc.if_else(pa.array(shaped), text, "1970-01-01T00:00:00")
    year, month, day = _digits(safe, 0, 4), _digits(safe, 5, 7), _digits(safe, 8, 10)
    has_time = _mask(pc.greater(pc.utf8_length(safe), 10))
    timed = pc.if_else(pa.array(has_time), safe, "1970-01-01T00:00:00")
    hour, minute = _digits(timed, 11, 13), _digits(timed, 14, 16)
    with_seconds = _mask(pc.match_substring_regex(timed, r"^.{16}:"))
    second = np.where(
        with_seconds, _digits(pc.if_else(pa.array(with_seconds), timed, "1970-01-01T00:00:00"), 17, 19), 0
    )
    month_ok = (month >= 1) & (month <= 12)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    days = _DAYS_IN_MONTH[np.clip(month, 1, 12) - 1] + ((month == 2) & leap)
    calendar_ok = month_ok & (day >= 1) & (day <= days) & (hour <= 23) & (minute <= 59) & (second <= 59)
    good = present & shaped & calendar_ok
    if _mask(pc.match_substring_regex(text, r"\.[0-9]{7}")).any():
        text = pc.replace_substring_regex(text, r"(\.[0-9]{6})[0-9]{1,3}", r"\1")
    zoned = _mask(pc.match_substring_regex(text, _ZONE_RE)) & good
    try:
        values = pc.coalesce(
            pc.cast(_keep(text, ~zoned), target),
            pc.cast(pc.cast(_keep(text, ~(good & ~zoned)), pa.timestamp(target.unit)), target),
        )
    except pa.ArrowInvalid:
        # A shape the checks above let through but Arrow refuses (e.g. a zone offset of +99:00): find the
        # culprits one by one. Only reached on bad input, never on the happy path.
        for i in np.flatnonzero(good):
            zone_target = target if zoned[i] else pa.timestamp(target.unit)
            try:
                pc.cast(text.slice(i, 1), zone_target)
            except pa.ArrowInvalid:
                good[i] = False
        return _parse_iso8601(_keep(text, present & ~good), target)[0], present & ~good
    return values, present & ~good
