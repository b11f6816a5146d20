"""Raw values to schema types, one entry at a time: which spellings parse, which are flagged."""

# ruff: noqa: E501
# (the table of conversions keeps one case per line)

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from offline_data.conversion import ColumnTypeError, convert

UTC = dt.UTC
TIMESTAMP = pa.timestamp("us", tz="UTC")
BAD = object()  # marks an entry expected to be flagged unparseable

CASES = [
    # (raw values, raw type or None, target, expected values with BAD where unparseable)
    (["1", " 2 ", "-5", "+7", "abc", "2.0", "1e3", "", None, "9" * 19], None, pa.int64(), [1, 2, -5, 7, BAD, BAD, BAD, BAD, None, BAD]),
    ([1.0, 2.5, None, float("nan"), -3.0, 1e30], pa.float64(), pa.int64(), [1, BAD, None, BAD, -3, BAD]),
    ([1, 2], pa.int32(), pa.int64(), [1, 2]),
    ([2**63 + 1, 3], pa.uint64(), pa.int64(), [BAD, 3]),
    (["0.5", "1e-3", "-.25", "7", " 8 ", "1,5", "x"], None, pa.float64(), [0.5, 0.001, -0.25, 7.0, 8.0, BAD, BAD]),
    (["0.5", "+2"], None, pa.float64(), [0.5, 2.0]),  # all parse: Arrow's own cast
    ([1, 2], pa.int64(), pa.float64(), [1.0, 2.0]),
    (["true", "FALSE", " True ", "1", "0", "yes", "t", None], None, pa.bool_(), [True, False, True, True, False, BAD, BAD, None]),
    ([0, 1, 2, None], pa.int64(), pa.bool_(), [False, True, BAD, None]),
    ([3, 4], pa.int64(), pa.string(), ["3", "4"]),
    (
        ["2024-03-01", "2024-03-01T04:05Z", "2024-03-01 04:05:06", "2024-03-01T04:05:06.5+02:00", "2024-03-01T04:05:06.123456789-0130",
         "2024-02-29T00:00:00Z", "2023-02-29", "2024-00-10", "2024-04-31", "2024-03-01T24:00:00Z", "2024-03-01T10:60Z", "03/01/2024",
         "2024-3-1", "2024-03-01T4", "2024-03-01T04", None],
        None, TIMESTAMP,
        [dt.datetime(2024, 3, 1, tzinfo=UTC), dt.datetime(2024, 3, 1, 4, 5, tzinfo=UTC), dt.datetime(2024, 3, 1, 4, 5, 6, tzinfo=UTC),
         dt.datetime(2024, 3, 1, 2, 5, 6, 500000, tzinfo=UTC), dt.datetime(2024, 3, 1, 5, 35, 6, 123456, tzinfo=UTC),
         dt.datetime(2024, 2, 29, tzinfo=UTC), BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD, dt.datetime(2024, 3, 1, 4, tzinfo=UTC), None],
    ),
    ([dt.datetime(2024, 1, 2, 3, 4, 5)], pa.timestamp("ms"), TIMESTAMP, [dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)]),
    ([dt.date(2024, 1, 2)], pa.date32(), TIMESTAMP, [dt.datetime(2024, 1, 2, tzinfo=UTC)]),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "raw_type", "target", "expected"), CASES)
def test_conversion(raw, raw_type, target, expected):
    values, unparseable = convert(pa.array(raw, type=raw_type), target)
    assert values.type == target
    assert unparseable.tolist() == [e is BAD for e in expected]
    assert values.to_pylist() == [None if e is BAD else e for e in expected]


def test_timestamp_with_another_zone_keeps_the_instant():
    raw = pa.array(
        [dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))], type=pa.timestamp("s", tz="+02:00")
    )
    values, _ = convert(raw, TIMESTAMP)
    assert values.to_pylist() == [dt.datetime(2024, 1, 1, 10, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("raw", "target"),
    [(pa.array([[1, 2]]), pa.int64()), (pa.array([b"\x00"]), pa.string()), (pa.array([1.5]), pa.string())],
)
def test_types_that_can_never_hold_the_target_are_refused(raw, target):
    with pytest.raises(ColumnTypeError, match="cannot hold"):
        convert(raw, target)


def test_every_timestamp_spelling_gives_the_same_answer_alone_or_mixed():
    """Arrow's fast path (all values parse) and the per-entry path (some do not) must agree."""
    good = ["2024-03-01T04:05:06Z", "2024-03-01 04:05:06", "2024-03-01", "2024-03-01T04:05:06.25-01:00"]
    mixed, unparseable = convert(pa.array([*good, "nope"]), TIMESTAMP)
    alone = [convert(pa.array([g]), TIMESTAMP)[0][0].as_py() for g in good]
    assert mixed.to_pylist()[:4] == alone and unparseable.tolist() == [False] * 4 + [True]
