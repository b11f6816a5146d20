"""Vectorised conversion of raw column values (CSV strings, JSON values, any Parquet type) to a schema type.

Each converter returns the typed values and a mask of the entries that are present but are not a value of
the type, so that one bad entry rejects one row instead of failing the whole batch (``pc.cast`` alone
fails on the first bad string). Accepted spellings:

- integer: an Arrow integer type, an integral float (pandas writes int columns with nulls as float),
  or a string of optional sign and digits;
- number: any numeric type, or a decimal string (``1``, ``-0.5``, ``2e-3``; ``nan`` and ``inf`` parse,
  and every range then refuses them);
- boolean: a boolean, integers 0/1, or the strings ``true``/``false``/``1``/``0`` (any letter case);
- timestamp: an Arrow timestamp (naive means UTC; sub-microsecond digits are truncated), a date, or an
  ISO-8601 string ``YYYY-MM-DD[(T| )hh[:mm[:ss[.fraction]]][Z|±hh[:mm]]]`` (no offset means UTC here;
  :func:`zone_less` finds such values so that validation refuses them or, told the zone, converts them with
  :func:`assume_timezone`);
- string: any string type, or integers (ids stored as numbers).

Surrounding whitespace is ignored when parsing numbers, booleans and timestamps from strings. Strings go
through Arrow's own cast first (one C++ pass); only a batch holding a value it refuses takes the slower
path that finds which entries are bad.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_INTEGER_RE = r"^[+-]?[0-9]{1,18}$"
_NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_TIMESTAMP_RE = (
    r"^(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"(?:[T ](?P<hour>[0-9]{2})(?::(?P<minute>[0-9]{2})(?::(?P<second>[0-9]{2})(?:\.[0-9]{1,9})?)?)?"
    r"(?P<zone>Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?$"
)
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
        if (fast := _fast_cast(array, target)) is not None:
            return fast, np.zeros(len(array), dtype=bool)
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
        if (fast := _fast_cast(array, target)) is not None:  # takes "nan"/"inf": every range then refuses them
            return fast, np.zeros(len(array), dtype=bool)
        text = pc.utf8_trim_whitespace(pc.cast(array, pa.string()))
        bad = _mask(pc.is_valid(text)) & ~_mask(pc.match_substring_regex(text, _NUMBER_RE))
        return pc.cast(_keep(text, bad), target), bad
    raise _unsupported(array, "number")


def _to_boolean(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    if pa.types.is_integer(array.type):
        bad = _mask(pc.is_valid(array)) & ~_mask(pc.is_in(array, pa.array([0, 1], array.type)))
        return pc.not_equal(_keep(array, bad), 0), bad
    if _is_string(array.type):
        if (fast := _fast_cast(array, pa.bool_())) is not None:  # Arrow takes true/false/1/0, any case
            return fast, np.zeros(len(array), dtype=bool)
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


def zone_less(array: pa.Array) -> np.ndarray:
    """[N] bool: present timestamp values that carry no time zone (naive Arrow timestamps, dates, ISO strings
    without ``Z`` or an offset). :func:`convert` reads them as UTC; whether that is right is the caller's call."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    present = _mask(pc.is_valid(array))
    if pa.types.is_timestamp(array.type):
        return present if array.type.tz is None else np.zeros(len(array), dtype=bool)
    if pa.types.is_date(array.type):
        return present
    if _is_string(array.type):
        zone = pc.extract_regex(pc.utf8_trim_whitespace(pc.cast(array, pa.string())), _TIMESTAMP_RE).field("zone")
        return present & ~_mask(pc.not_equal(zone.fill_null(""), ""))
    return np.zeros(len(array), dtype=bool)


def assume_timezone(values: pa.Array, naive: np.ndarray, timezone: str) -> pa.Array:
    """Re-read the ``naive`` [N] entries of ``values`` (timestamps read as UTC) as wall-clock times in ``timezone``.

    An ambiguous or skipped local time (a daylight-saving change) takes the earlier instant.

    Raises:
        pyarrow.ArrowInvalid: ``timezone`` is not an IANA zone name.
    """
    if not naive.any():
        return values
    wall = pc.cast(values, pa.timestamp(values.type.unit))  # the written wall-clock time, zone dropped
    local = pc.assume_timezone(wall, timezone=timezone, ambiguous="earliest", nonexistent="earliest")
    return pc.if_else(pa.array(naive), pc.cast(local, values.type), values)


def _fast_cast(text: pa.Array, target: pa.DataType) -> pa.Array | None:
    """Arrow's own cast when every value parses (the common case, one C++ pass); None when any does not."""
    try:
        return pc.cast(text, target)
    except pa.ArrowInvalid:
        return None


def _field(parts: pa.StructArray, name: str) -> np.ndarray:
    """An extracted digit group as int64 (0 where the optional group is absent or the row did not match)."""
    digits = parts.field(name)
    digits = pc.if_else(pc.equal(digits, ""), "0", digits).fill_null("0")
    return pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False)


def _parse_iso8601(text: pa.Array, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """ISO-8601 strings -> timestamps: Arrow's parser when all parse, else calendar checks per entry."""
    naive = pa.timestamp(target.unit)
    for attempt in (lambda: _fast_cast(text, target), lambda: _fast_cast(text, naive)):
        values = attempt()  # every value with a zone offset, or every value without one
        if values is not None:
            return pc.cast(values, target), np.zeros(len(text), dtype=bool)
    present = _mask(pc.is_valid(text))
    parts = pc.extract_regex(text, _TIMESTAMP_RE)
    shaped = _mask(parts.is_valid())
    year, month, day = _field(parts, "year"), _field(parts, "month"), _field(parts, "day")
    hour, minute, second = _field(parts, "hour"), _field(parts, "minute"), _field(parts, "second")
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    days = _DAYS_IN_MONTH[np.clip(month, 1, 12) - 1] + ((month == 2) & leap)
    calendar_ok = (month >= 1) & (month <= 12) & (day >= 1) & (day <= days)
    good = present & shaped & calendar_ok & (hour <= 23) & (minute <= 59) & (second <= 59)
    zoned = good & _mask(pc.not_equal(parts.field("zone").fill_null(""), ""))
    if _mask(pc.match_substring_regex(text, r"\.[0-9]{7}")).any():  # Arrow parses at most microseconds
        text = pc.replace_substring_regex(text, r"(\.[0-9]{6})[0-9]{1,3}", r"\1")
    try:
        values = pc.coalesce(
            pc.cast(_keep(text, ~zoned), target), pc.cast(pc.cast(_keep(text, ~(good & ~zoned)), naive), target)
        )
    except pa.ArrowInvalid:
        # A shape the checks above let through but Arrow refuses (e.g. a zone offset of +99:00): find the
        # culprits one by one. Only reached on bad input, never on the happy path.
        for i in np.flatnonzero(good):
            try:
                pc.cast(text.slice(i, 1), target if zoned[i] else naive)
            except pa.ArrowInvalid:
                good[i] = False
        return _parse_iso8601(_keep(text, present & ~good), target)[0], present & ~good
    return values, present & ~good
