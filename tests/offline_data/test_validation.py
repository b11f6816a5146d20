"""validate_logs: every malformed input named precisely, nothing lost, books balanced, formats equivalent."""

# ruff: noqa: E501
# (the table of malformed inputs keeps one case per line)

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline_data.errors import InputUnreadableError, LogValidationError
from offline_data.io import find_table, resolve_source
from offline_data.summary import ValidationSummary
from offline_data.validation import ValidationConfig, validate_logs

TABLES = ("impressions", "dwell", "preferences", "assets")


def sources_in(directory: Path, tables=TABLES) -> dict:
    return {t: find_table(directory, t) for t in tables}


def run(directory: Path, **config) -> tuple:
    out = directory / "validated"
    return validate_logs(sources_in(directory), out, ValidationConfig(**config)), out


NO_ZONE = " (no time zone: give one, or --assume-timezone ZONE, e.g. UTC, to convert such times from it)"
ID = "non-empty string without control characters (NUL, \\x01-\\x1f, \\x7f)"

# (table, 0-based row, column, bad value, reason, expected message). Rows are chosen so that rejecting them
# does not cascade (no dwell refers to those impressions, no impression or pair to those assets).
MALFORMED = [
    ("impressions", 2, "position", "0", "position:invalid", "row 3, column 'position': expected integer >= 1, got 0"),
    ("impressions", 1, "position", "abc", "position:invalid", "row 2, column 'position': expected integer >= 1, got 'abc'"),
    ("impressions", 4, "position", "2.5", "position:invalid", "row 5, column 'position': expected integer >= 1, got '2.5'"),
    ("impressions", 6, "propensity", "0", "propensity:invalid", "row 7, column 'propensity': expected number > 0 and <= 1, got 0"),
    ("impressions", 6, "propensity", "1.5", "propensity:invalid", "row 7, column 'propensity': expected number > 0 and <= 1, got 1.5"),
    ("impressions", 9, "clicked", "yes", "clicked:invalid", "row 10, column 'clicked': expected boolean (true/false, 1/0), got 'yes'"),
    ("impressions", 10, "shown_at", "2024-13-01", "shown_at:invalid", "row 11, column 'shown_at': expected ISO-8601 timestamp, got '2024-13-01'"),
    ("impressions", 10, "shown_at", "2023-02-29T10:00:00Z", "shown_at:invalid", "row 11, column 'shown_at': expected ISO-8601 timestamp, got '2023-02-29T10:00:00Z'"),
    ("impressions", 7, "shown_at", "2024-03-01T00:07:00", "shown_at:no_zone", f"row 8, column 'shown_at': expected an ISO-8601 timestamp with a zone (Z or +hh:mm), got '2024-03-01T00:07:00'{NO_ZONE}"),
    ("impressions", 7, "shown_at", "2024-03-01", "shown_at:no_zone", f"row 8, column 'shown_at': expected an ISO-8601 timestamp with a zone (Z or +hh:mm), got '2024-03-01'{NO_ZONE}"),
    ("impressions", 11, "shown_at", "yesterday", "shown_at:invalid", "row 12, column 'shown_at': expected ISO-8601 timestamp, got 'yesterday'"),
    ("impressions", 11, "segment", None, "segment:missing", "row 12, column 'segment': expected non-empty string, got null"),
    ("impressions", 11, "segment", "\"\"", "segment:invalid", "row 12, column 'segment': expected non-empty string, got ''"),
    ("impressions", 4, "event_id", "e02", "event_id:duplicate", "row 5, column 'event_id': expected a unique key, got 'e02' (first in row 2)"),
    ("impressions", 6, "image_id", "nope", "image_id:dangling", "row 7, column 'image_id': expected the image_id of an accepted assets row, got 'nope' (no assets row has it)"),
    ("impressions", 1, "product_id", "p2", "product_id:mismatch", "row 2, column 'product_id': expected the product_id of its image_id in assets, got 'p2'"),
    ("dwell", 1, "dwell_ms", "-120", "dwell_ms:invalid", "row 2, column 'dwell_ms': expected integer >= 0, got -120"),
    ("dwell", 2, "censored", "maybe", "censored:invalid", "row 3, column 'censored': expected boolean (true/false, 1/0), got 'maybe'"),
    ("dwell", 3, "event_id", "e99", "event_id:dangling", "row 4, column 'event_id': expected the event_id of an accepted impressions row, got 'e99' (no impressions row has it)"),
    ("dwell", 3, "event_id", "e02", "event_id:not_clicked", "row 4, column 'event_id': expected the event_id of a clicked impression, got 'e02' (that impression has clicked = false)"),
    ("dwell", 3, "event_id", "e01", "event_id:duplicate", "row 4, column 'event_id': expected a unique key, got 'e01' (first in row 1)"),
    ("preferences", 0, "choice", "c", "choice:invalid", "row 1, column 'choice': expected one of 'a', 'b', 'tie', got 'c'"),
    ("preferences", 1, "image_b", "p1-v0", "image_b:self_pair", "row 2, column 'image_b': expected an image other than image_a, got 'p1-v0'"),
    ("preferences", 2, "image_a", "p9-v0", "image_a:dangling", "row 3, column 'image_a': expected the image_id of an accepted assets row, got 'p9-v0' (no assets row has it)"),
    ("preferences", 3, "pair_id", "q1", "pair_id:duplicate", "row 4, column 'pair_id': expected a unique key, got 'q1' (first in row 1)"),
    ("preferences", 0, "annotator_id", None, "annotator_id:missing", f"row 1, column 'annotator_id': expected {ID}, got null"),
    ("preferences", 1, "annotator_id", "ann\x01x", "annotator_id:invalid", f"row 2, column 'annotator_id': expected {ID}, got 'ann\\x01x'"),
    ("impressions", 2, "request_id", "r1\x1b[31m", "request_id:invalid", f"row 3, column 'request_id': expected {ID}, got 'r1\\x1b[31m'"),
    ("impressions", 2, "event_id", "e03\x7f", "event_id:invalid", f"row 3, column 'event_id': expected {ID}, got 'e03\\x7f'"),
    ("assets", 0, "sha256", "abc", "sha256:invalid", "row 1, column 'sha256': expected SHA-256 as 64 lowercase hex digits, got 'abc'"),
    ("assets", 1, "kind", "photo", "kind:invalid", "row 2, column 'kind': expected one of 'product', 'mask', 'generated', got 'photo'"),
    ("assets", 4, "seed", "-1", "seed:invalid", "row 5, column 'seed': expected integer >= 0, got -1"),
    ("assets", 5, "image_id", "p1-product", "image_id:duplicate", "row 6, column 'image_id': expected a unique key, got 'p1-product' (first in row 5)"),
]  # fmt: skip


@pytest.mark.parametrize(("table", "row", "column", "value", "reason", "message"), MALFORMED)
def test_malformed_value_is_rejected_with_its_message(
    log_rows, write_logs, table, row, column, value, reason, message
):
    if value == '""':  # a quoted empty field: the empty string, not null
        value = ""
    log_rows[table][row][column] = value
    summary, out = run(write_logs(log_rows, "csv"))
    result = summary.tables[table]
    assert (result.rejected, result.rejected_by_reason) == (1, {reason: 1})
    assert [f.first for f in result.files] == [[message]]
    rejects = pq.read_table(out / f"{table}.rejects.parquet").to_pylist()
    assert [(r["row"], r["reason"], r["problems"]) for r in rejects] == [(row + 1, reason, message)]
    others = [t for t in TABLES if t != table]
    assert all(summary.tables[t].rejected == 0 for t in others), {t: summary.tables[t].rejected for t in others}


def test_clean_logs_are_all_accepted(log_rows, write_logs):
    summary, out = run(write_logs(log_rows, "csv"), check_files=True)
    for table in TABLES:
        result = summary.tables[table]
        assert (result.read, result.accepted, result.rejected) == (len(log_rows[table]),) * 2 + (0,)
        assert pq.read_table(out / f"{table}.parquet").num_rows == len(log_rows[table])
        assert pq.read_table(out / f"{table}.rejects.parquet").num_rows == 0
    assert summary.tables["assets"].skipped_checks == []
    assert ValidationSummary.read_json(out / "summary.json") == summary  # the JSON holds the whole account


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_every_format_gives_the_parquet_result(log_rows, write_logs, tmp_path, fmt):
    """Round trip: the same rows as Parquet, CSV and JSON Lines validate to identical accepted tables."""
    reference, reference_out = run(write_logs(log_rows, "parquet"))
    for table in TABLES:
        (tmp_path / "logs" / f"{table}.parquet").unlink()
    summary, out = run(write_logs(log_rows, fmt))
    for table in TABLES:
        expected = pq.read_table(reference_out / f"{table}.parquet")
        actual = pq.read_table(out / f"{table}.parquet")
        assert actual.schema.equals(expected.schema, check_metadata=False)
        assert actual.equals(expected), table
        assert summary.tables[table].format == fmt and reference.tables[table].format == "parquet"


def test_accepted_rows_have_the_schema_types(log_rows, write_logs):
    _, out = run(write_logs(log_rows, "csv"))
    impressions = pq.read_table(out / "impressions.parquet")
    assert impressions.schema.field("position").type == pa.int64()
    assert impressions.schema.field("shown_at").type == pa.timestamp("us", tz="UTC")
    assert impressions.column("shown_at")[1].as_py().isoformat() == "2024-03-01T00:01:00+00:00"
    assert impressions.column("clicked").to_pylist()[:4] == [True, False, False, True]


def test_reconciliation_and_nothing_lost(log_rows, write_logs):
    bad = {1: ("position", "-3"), 2: ("propensity", "2"), 6: ("segment", None), 9: ("image_id", "zzz")}
    for row, (column, value) in bad.items():
        log_rows["impressions"][row][column] = value
    log_rows["impressions"][9]["shown_at"] = "not a time"  # a second problem in one row
    summary, out = run(write_logs(log_rows, "csv"))
    result = summary.tables["impressions"]
    assert result.read == 12 == result.accepted + result.rejected
    assert result.rejected == 4 == sum(result.rejected_by_reason.values())
    assert result.problems == 5
    accepted = pq.read_table(out / "impressions.parquet").column("event_id").to_pylist()
    rejected = pq.read_table(out / "impressions.rejects.parquet")
    assert sorted(accepted + rejected.column("event_id").to_pylist()) == [
        r["event_id"] for r in log_rows["impressions"]
    ]
    assert sorted(rejected.column("row").to_pylist()) == [2, 3, 7, 10]
    # The first problem of a row (in column order) is its reason; all problems are kept.
    by_row = {r["row"]: r for r in rejected.to_pylist()}
    assert by_row[10]["reason"] == "shown_at:invalid"  # column checks come before references
    assert by_row[10]["problems"].count("; ") == 1 and "'not a time'" in by_row[10]["problems"]
    # Original text survives in the rejects file, whatever the column type.
    assert by_row[2]["position"] == "-3" and by_row[3]["propensity"] == "2" and by_row[7]["segment"] is None
    assert by_row[2]["file"].endswith("impressions.csv")


def test_strict_mode_fails_and_withholds_accepted_tables(log_rows, write_logs):
    log_rows["preferences"][0]["choice"] = "x"
    directory = write_logs(log_rows, "csv")
    with pytest.raises(LogValidationError, match=r"strict mode: 1 of 32 rows rejected") as info:
        run(directory, strict=True)
    assert "row 1, column 'choice': expected one of 'a', 'b', 'tie', got 'x'" in str(info.value)
    out = directory / "validated"
    assert [t for t in TABLES if (out / f"{t}.parquet").exists()] == []
    assert pq.read_table(out / "preferences.rejects.parquet").num_rows == 1
    assert (out / "summary.json").is_file()


def test_strict_mode_passes_clean_logs(log_rows, write_logs):
    summary, out = run(write_logs(log_rows, "parquet"), strict=True)
    assert summary.rejected == 0 and (out / "impressions.parquet").is_file()


def test_max_problems_limits_the_listing_not_the_count(log_rows, write_logs):
    for row in log_rows["impressions"]:
        row["position"] = "0"
        row["propensity"] = "7"
    summary, _ = run(write_logs(log_rows, "csv"), max_problems=3)
    result = summary.tables["impressions"]
    assert result.problems == 24
    (listed,) = result.files
    assert listed.problems == 24
    assert listed.first == [
        "row 1, column 'position': expected integer >= 1, got 0",
        "row 1, column 'propensity': expected number > 0 and <= 1, got 7",
        "row 2, column 'position': expected integer >= 1, got 0",
    ]
    assert listed.render().startswith(f"{listed.path}: 24 problem(s); first 3:\n  row 1, column 'position'")


def test_part_files_keep_their_own_row_numbers(log_rows, write_logs, table_writer, tmp_path):
    directory = write_logs(log_rows, "parquet", tables=("assets", "dwell", "preferences"))
    parts = directory / "impressions"
    impressions = log_rows["impressions"]
    impressions[7]["event_id"] = "e03"  # repeats a key of the first part
    impressions[8]["position"] = 0
    parts.mkdir()
    table_writer(tmp_path / "p0", "impressions", impressions[:6], "parquet").rename(parts / "part-0.parquet")
    table_writer(tmp_path / "p1", "impressions", impressions[6:], "parquet").rename(parts / "part-1.parquet")
    summary, _ = run(directory)
    files = {Path(f.path).name: f.first for f in summary.tables["impressions"].files}
    assert files == {
        "part-1.parquet": [
            "row 2, column 'event_id': expected a unique key, got 'e03' (first in part-0.parquet row 3)",
            "row 3, column 'position': expected integer >= 1, got 0",
        ]
    }


def test_absent_propensity_is_said(log_rows, write_logs):
    for row in log_rows["impressions"]:
        del row["propensity"]
    summary, out = run(write_logs(log_rows, "csv"))
    result = summary.tables["impressions"]
    assert result.rejected == 0 and result.absent_columns == ["propensity"]
    assert result.notes == ["propensity absent: later stages estimate it (and say so)"]
    assert pq.read_table(out / "impressions.parquet").column("propensity").null_count == 12


def test_some_missing_propensities_are_counted(log_rows, write_logs):
    log_rows["impressions"][0]["propensity"] = None
    summary, _ = run(write_logs(log_rows, "csv"))
    assert summary.tables["impressions"].null_counts["propensity"] == 1
    assert "propensity missing in 1 accepted rows" in summary.tables["impressions"].notes[0]


def test_reference_to_a_rejected_row_names_it(log_rows, write_logs):
    log_rows["assets"][2]["kind"] = "photo"  # p0-v0, shown in impressions 1, 7 and in pairs q1, q4
    summary, _ = run(write_logs(log_rows, "csv"))
    assert summary.tables["impressions"].rejected_by_reason == {"image_id:dangling": 2}
    assert summary.tables["impressions"].files[0].first[0] == (
        "row 1, column 'image_id': expected the image_id of an accepted assets row, got 'p0-v0' "
        "(assets row 3 was rejected)"
    )
    # Cascade: dwell of rejected impression e01, pairs using p0-v0.
    assert summary.tables["dwell"].rejected_by_reason == {"event_id:dangling": 1}
    assert summary.tables["preferences"].rejected == 2


def test_zone_less_timestamps_are_converted_only_from_a_named_zone(log_rows, write_logs):
    log_rows["impressions"][7]["shown_at"] = "2024-03-01T01:07:00"  # Paris wall clock (UTC+1 in March)
    log_rows["impressions"][6]["shown_at"] = "2024-07-01 02:06"  # summer time: UTC+2
    summary, out = run(write_logs(log_rows, "csv"), assume_timezone="Europe/Paris")
    assert summary.tables["impressions"].rejected == 0
    shown = pq.read_table(out / "impressions.parquet").column("shown_at").to_pylist()
    assert shown[7].isoformat() == "2024-03-01T00:07:00+00:00" and shown[6].isoformat() == "2024-07-01T00:06:00+00:00"
    assert shown[5].isoformat() == "2024-03-01T00:05:00+00:00"  # a time with its zone is never shifted
    with pytest.raises(ValueError, match="assume_timezone must be an IANA zone"):
        ValidationConfig(assume_timezone="Mars/Olympus")


def test_check_files_keeps_asset_paths_inside_the_logs_folder(log_rows, write_logs, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes((tmp_path / "logs" / "images" / "p0-mask.png").read_bytes())
    log_rows["assets"][1]["path"] = "../secret.png"  # p0-mask, same bytes and sha256: only the place is wrong
    log_rows["assets"][5]["path"] = str(outside)
    log_rows["assets"][5]["sha256"] = log_rows["assets"][1]["sha256"]
    directory = write_logs(log_rows, "csv")
    summary, _ = run(directory, check_files=True)
    result = summary.tables["assets"]
    assert result.rejected_by_reason == {"path:outside": 2}
    expected = f"expected a path inside {directory} (--allow-outside-assets reads others)"
    first, second = result.files[0].first[:2]
    assert first == f"row 2, column 'path': {expected}, got '../secret.png'"
    # Long values are shown cut to a fixed width (offline_data.problems), and tmp_path's length varies by runner.
    assert second.startswith(f"row 6, column 'path': {expected}, got '") and "secret" in second
    allowed, _ = run(directory, check_files=True, allow_outside_assets=True)
    assert allowed.tables["assets"].rejected == 0


def test_check_files_finds_missing_and_changed_files(log_rows, write_logs, tmp_path):
    directory = write_logs(log_rows, "csv")
    (directory / "images" / "p0-mask.png").unlink()
    (directory / "images" / "p1-mask.png").write_bytes(b"changed")
    summary, _ = run(directory, check_files=True)
    result = summary.tables["assets"]
    assert result.rejected_by_reason == {"path:missing_file": 1, "sha256:mismatch": 1}
    first = result.files[0].first
    assert (
        first[0]
        == f"row 2, column 'path': expected a file (relative to {directory}), got 'images/p0-mask.png' (not found)"
    )
    recorded = log_rows["assets"][5]["sha256"]
    actual = hashlib.sha256(b"changed").hexdigest()
    assert (
        first[1] == f"row 6, column 'sha256': expected the SHA-256 of the file, got '{recorded}' (file has {actual})"
    )


def test_columns_outside_the_schema_are_reported(log_rows, write_logs):
    for row in log_rows["dwell"]:
        row["browser"] = "firefox"
    summary, out = run(write_logs(log_rows, "csv"))
    assert summary.tables["dwell"].ignored_columns == ["browser"]
    assert "browser" not in pq.read_table(out / "dwell.parquet").column_names


def test_checks_against_missing_tables_are_listed_as_skipped(log_rows, write_logs):
    directory = write_logs(log_rows, "csv")
    summary = validate_logs(
        {"dwell": resolve_source("dwell", directory / "dwell.csv")}, directory / "only", ValidationConfig()
    )
    assert summary.tables["dwell"].accepted == 4
    assert summary.tables["dwell"].skipped_checks == ["dwell.event_id -> impressions (no impressions table given)"]


def test_an_unreadable_table_writes_nothing(log_rows, write_logs):
    directory = write_logs(log_rows, "csv")
    (directory / "dwell.csv").unlink()
    (directory / "dwell.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputUnreadableError, match=r"dwell\.parquet: cannot read as Parquet"):
        run(directory)
    assert not (directory / "validated").exists() or not any((directory / "validated").glob("*.parquet"))


def test_malformed_csv_records_are_rejected_whole(log_rows, write_logs):
    directory = write_logs(log_rows, "csv")
    path = directory / "impressions.csv"
    lines = path.read_text().splitlines()
    lines[3] = "e03,r1,p2-v0,p2,3,false"  # data row 3: 6 fields instead of 9
    path.write_text("\n".join(lines) + "\n")
    summary, out = run(directory)
    result = summary.tables["impressions"]
    assert result.rejected_by_reason == {"row:malformed": 1}
    assert result.files[0].first == ["row 3: expected 9 fields, got 6: 'e03,r1,p2-v0,p2,3,false'"]
    (reject,) = pq.read_table(out / "impressions.rejects.parquet").to_pylist()
    assert (reject["row"], reject["raw"], reject["event_id"]) == (3, "e03,r1,p2-v0,p2,3,false", None)
    assert result.read == 12 and result.accepted == 11


def test_jsonl_optional_key_first_seen_later_is_not_absent(log_rows, write_logs):
    for row in log_rows["impressions"][:3]:
        del row["propensity"]  # the first records lack the key; later ones carry it
    summary, out = run(write_logs(log_rows, "jsonl"))
    result = summary.tables["impressions"]
    assert result.absent_columns == [] and result.null_counts["propensity"] == 3
    assert result.notes == ["propensity missing in 3 accepted rows: later stages estimate it"]
    assert pq.read_table(out / "impressions.parquet").column("propensity").to_pylist()[2:4] == [None, 0.25]


def test_a_column_of_the_wrong_kind_makes_the_file_unreadable(log_rows, write_logs, tmp_path):
    directory = write_logs(log_rows, "parquet")
    path = directory / "dwell.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(1, "dwell_ms", pa.array([[1]] * table.num_rows)), path)
    with pytest.raises(
        InputUnreadableError,
        match=r"dwell\.parquet: column 'dwell_ms': Arrow type list<element: int64> cannot hold integer values \(expected int64\)",
    ):
        run(directory)


def test_generated_log_rejects_exactly_the_injected_rows(tmp_path):
    """The benchmark's generator at a small size: every injected bad row, and only those, across many batches."""
    from experiments.bench.validate_logs import generate, run_once

    injected = generate(tmp_path / "logs", 30_000, products=50)
    result = run_once(tmp_path / "logs", tmp_path / "out", batch_rows=1024)  # 30 batches: index merges happen
    assert result["rejected_by_reason"] == injected
    assert result["read"] == 30_000 == result["accepted"] + result["rejected"]
