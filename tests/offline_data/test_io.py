"""Readers: finding tables, streaming batches with exact row numbers, and unreadable inputs named."""

# ruff: noqa: E501
# (the table of unreadable inputs keeps one case per line)

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline_data.errors import InputUnreadableError
from offline_data.io import MalformedRows, RawBatch, find_table, open_file, resolve_source
from offline_data.schemas import DWELL, IMPRESSIONS

DWELL_HEADER = "event_id,dwell_ms,censored\n"


def read_all(path: Path, table: str = "dwell", batch_rows: int = 2) -> tuple[list[RawBatch], list[MalformedRows]]:
    source = resolve_source(table, path)
    reader = open_file(source, 0, DWELL if table == "dwell" else IMPRESSIONS, batch_rows)
    items = list(reader.batches())
    return [i for i in items if isinstance(i, RawBatch)], [i for i in items if isinstance(i, MalformedRows)]


def rows_and_ids(batches: list[RawBatch]) -> list[tuple[int, str]]:
    return [(int(r), e) for b in batches for r, e in zip(b.rows, b.columns["event_id"].to_pylist())]


def test_find_table_by_name_in_each_format(tmp_path):
    (tmp_path / "dwell.jsonl").write_text('{"event_id": "e1", "dwell_ms": 1, "censored": false}\n')
    (tmp_path / "impressions").mkdir()
    (tmp_path / "impressions" / "b.csv").write_text("x\n")
    (tmp_path / "impressions" / "a.csv").write_text("x\n")
    (tmp_path / "impressions" / "_SUCCESS").write_text("")
    assert find_table(tmp_path, "preferences") is None
    dwell = find_table(tmp_path, "dwell")
    assert (dwell.format, dwell.files) == ("jsonl", (tmp_path / "dwell.jsonl",))
    impressions = find_table(tmp_path, "impressions")
    assert impressions.format == "csv"
    assert [p.name for p in impressions.files] == ["a.csv", "b.csv"]
    assert impressions.base_dir == tmp_path


def test_two_candidates_are_refused(tmp_path):
    (tmp_path / "dwell.csv").write_text(DWELL_HEADER)
    (tmp_path / "dwell.parquet").write_bytes(b"")
    with pytest.raises(
        InputUnreadableError, match=r"several dwell tables \(dwell\.parquet, dwell\.csv\); keep exactly one"
    ):
        find_table(tmp_path, "dwell")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("dwell.txt", "x", r"dwell\.txt: cannot tell the format of the dwell table from its suffix"),
        ("missing.csv", None, r"missing\.csv: dwell table not found"),
        ("parts", {"a.csv": "x", "b.jsonl": "x"}, r"parts: part files of several formats \(csv, jsonl\)"),
        ("empty", {}, r"empty: no dwell part files found"),
    ],
)
def test_sources_that_cannot_be_resolved(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, dict):
        path.mkdir()
        for part, text in content.items():
            (path / part).write_text(text)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InputUnreadableError, match=message):
        resolve_source("dwell", path)


def test_csv_row_numbers_count_records_around_malformed_and_blank_lines(tmp_path):
    path = tmp_path / "dwell.csv"
    lines = ["e1,1,false", "e2,2", "", "e4,4,true,extra", "e5,5,false", "e6,6,true", "e7,7,false"]
    path.write_text(DWELL_HEADER + "\n".join(lines) + "\n")
    batches, malformed = read_all(path)
    # Row 3 is blank: a record of nulls (rejected later), never silently skipped.
    assert rows_and_ids(batches) == [(1, "e1"), (3, None), (5, "e5"), (6, "e6"), (7, "e7")]
    bad = [(int(r), t, p) for m in malformed for r, t, p in zip(m.rows, m.text, m.problems)]
    assert bad == [(2, "e2,2", "expected 3 fields, got 2"), (4, "e4,4,true,extra", "expected 3 fields, got 4")]


def test_csv_values_arrive_as_text_and_empty_quoted_is_not_null(tmp_path):
    path = tmp_path / "dwell.csv"
    path.write_text(DWELL_HEADER + 'e1,0012,TRUE\n"",,""\n')
    (batch,) = read_all(path, batch_rows=10)[0]
    assert batch.columns["dwell_ms"].type == pa.string()
    assert batch.columns["dwell_ms"].to_pylist() == ["0012", None]
    assert batch.columns["event_id"].to_pylist() == ["e1", ""]


def test_csv_with_bom_and_crlf_reads(tmp_path):
    path = tmp_path / "dwell.csv"
    path.write_bytes(("\ufeff" + DWELL_HEADER + "e1,5,false\r\ne2,6,true\r\n").encode("utf-8"))
    batches, malformed = read_all(path)
    assert rows_and_ids(batches) == [(1, "e1"), (2, "e2")] and malformed == []
    assert [b.columns["censored"].to_pylist() for b in batches] == [["false", "true"]]


def test_jsonl_rows_are_line_numbers_and_odd_lines_take_the_slow_path(tmp_path):
    path = tmp_path / "dwell.jsonl"
    lines = [
        '{"event_id": "e1", "dwell_ms": 10, "censored": false}',
        "",
        '{"event_id": "e3", "dwell_ms": "abc", "censored": false}',  # a string where a number belongs
        '{"event_id": "e4", "dwell_ms": 40, "censored": true, "extra": [1, 2]}',
        "not json",
        "[1, 2]",
        '{"event_id": "e7", "censored": 1}',  # missing key: null; 1 for a boolean
        '{"event_id": "e8", "dwell_ms": 80, "censored": false}',
    ]
    path.write_text("\n".join(lines))  # no newline after the last line
    batches, malformed = read_all(path, batch_rows=3)
    assert rows_and_ids(batches) == [(1, "e1"), (3, "e3"), (4, "e4"), (7, "e7"), (8, "e8")]
    # Blocks (batch_rows = 3 lines) holding a line Arrow refuses are read as text by Python, in line order.
    values = {int(r): v for b in batches for r, v in zip(b.rows, b.columns["dwell_ms"].to_pylist())}
    assert values == {1: "10", 3: "abc", 4: "40", 7: None, 8: 80}  # blocks: lines 1-4, 5-7, 8
    censored = {int(r): v for b in batches for r, v in zip(b.rows, b.columns["censored"].to_pylist())}
    assert censored[7] == "1"  # slow path: text for the validator to parse
    bad = [(int(r), p) for m in malformed for r, p in zip(m.rows, m.problems)]
    assert bad == [(5, "not valid JSON (Expecting value)"), (6, "expected a JSON object, got array")]


def test_clean_jsonl_arrives_in_schema_types(tmp_path):
    path = tmp_path / "dwell.jsonl"
    path.write_text("".join(f'{{"event_id": "e{i}", "dwell_ms": {i}, "censored": false}}\n' for i in range(5)))
    batches, malformed = read_all(path, batch_rows=2)
    assert [list(b.rows) for b in batches] == [[1, 2], [3, 4], [5]] and malformed == []
    assert batches[0].columns["dwell_ms"].type == pa.int64() and batches[0].columns["censored"].type == pa.bool_()


def test_parquet_batches_keep_file_types(tmp_path):
    path = tmp_path / "dwell.parquet"
    pq.write_table(
        pa.table(
            {"event_id": ["a", "b", "c"], "dwell_ms": pa.array([1, 2, 3], pa.int32()), "censored": [True, False, None]}
        ),
        path,
    )
    batches, _ = read_all(path)
    assert [list(b.rows) for b in batches] == [[1, 2], [3]]
    assert batches[0].columns["dwell_ms"].type == pa.int32()


def _truncated_parquet(path: Path) -> None:
    pq.write_table(pa.table({"event_id": ["a"] * 100, "dwell_ms": np.arange(100), "censored": [True] * 100}), path)
    path.write_bytes(path.read_bytes()[:-100])


def _latin1_late(path: Path) -> None:
    # Valid UTF-8 for the first 64 KiB (checked up front), then a Latin-1 byte: found while streaming.
    path.write_bytes(DWELL_HEADER.encode() + b"e1,1,false\n" * 7000 + b"caf\xe9,2,true\n")


UNREADABLE = [
    ("dwell.parquet", _truncated_parquet, r"dwell\.parquet: cannot read as Parquet: .*"),
    ("dwell.parquet", lambda p: p.write_text("event_id,dwell_ms\n"), r"dwell\.parquet: cannot read as Parquet: .*magic bytes"),
    ("dwell.csv", lambda p: p.write_text(DWELL_HEADER + "e1,1,false\n", encoding="utf-16"), r"dwell\.csv: not UTF-8 text \(looks like UTF-16\)"),
    ("dwell.csv", lambda p: p.write_bytes(b"event_id,dwell_ms,censored\ncaf\xe9,1,true\n"), r"dwell\.csv: not UTF-8 text \(byte 0xe9 at offset 30\); save the CSV as UTF-8"),
    ("dwell.csv", _latin1_late, r"dwell\.csv: cannot read as CSV.*Row #7002.*invalid UTF8"),
    ("dwell.csv", lambda p: p.write_text("event_id,censored\ne1,true\n"), r"dwell\.csv: missing required column 'dwell_ms' \(dwell needs: event_id, dwell_ms, censored; header has: event_id, censored\)"),
    ("dwell.csv", lambda p: p.write_text(""), r"dwell\.csv: missing required columns 'event_id', 'dwell_ms', 'censored'"),
    ("dwell.jsonl", lambda p: p.write_text('{"event_id": "e1", "censored": true}\n'), r"dwell\.jsonl: missing required column 'dwell_ms' .*first record has: event_id, censored"),
    ("dwell.jsonl", lambda p: p.write_text("event_id,dwell_ms\n"), r"dwell\.jsonl: not JSON Lines: line 1 is not JSON"),
    ("dwell.parquet", lambda p: pq.write_table(pa.table({"event_id": ["a"], "dwell_ms": [1]}), p), r"dwell\.parquet: missing required column 'censored'"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "write", "message"), UNREADABLE)
def test_unreadable_inputs_are_named(tmp_path, name, write, message):
    path = tmp_path / name
    write(path)
    with pytest.raises(InputUnreadableError, match=message):
        read_all(path)


def test_folder_parts_are_read_file_by_file(tmp_path):
    folder = tmp_path / "dwell"
    folder.mkdir()
    (folder / "part-0.csv").write_text(DWELL_HEADER + "e1,1,true\n")
    (folder / "part-1.csv").write_text(DWELL_HEADER + "e2,2,true\ne3,3,true\n")
    source = resolve_source("dwell", folder)
    rows = [
        (reader.path.name, [int(r) for b in reader.batches() for r in b.rows])
        for reader in (open_file(source, i, DWELL, 10) for i in range(2))
    ]
    assert rows == [("part-0.csv", [1]), ("part-1.csv", [1, 2])]
