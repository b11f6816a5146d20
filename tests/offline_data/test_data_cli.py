"""``backdrop data validate`` / ``split``: exit 0 all accepted, 1 rows rejected, 2 unreadable; never a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from experiments.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_clean_folder_exits_0(log_rows, write_logs, capsys):
    directory = write_logs(log_rows, "parquet")
    code, out, _ = run_cli(capsys, "data", "validate", str(directory))
    assert code == 0
    assert out.splitlines()[0].split() == ["table", "format", "read", "accepted", "rejected", "top", "reasons"]
    assert out.splitlines()[2].split() == ["impressions", "parquet", "12", "12", "0", "-"]
    summary = json.loads((directory / "validated" / "summary.json").read_text())
    assert summary["tables"]["dwell"]["accepted"] == 4


def test_rejected_rows_exit_1_and_are_listed(log_rows, write_logs, capsys):
    log_rows["dwell"][1]["dwell_ms"] = -120
    directory = write_logs(log_rows, "csv")
    code, out, _ = run_cli(capsys, "data", "validate", str(directory), "--out", str(directory / "v"))
    assert code == 1
    assert ["dwell", "csv", "4", "3", "1", "dwell_ms:invalid", "1"] in [line.split() for line in out.splitlines()]
    listing = f"{directory / 'dwell.csv'}: 1 problem(s); first 1:\n"
    assert listing + "  row 2, column 'dwell_ms': expected integer >= 0, got -120" in out
    assert pq.read_table(directory / "v" / "dwell.rejects.parquet").num_rows == 1


def test_strict_exits_1_with_the_problems(log_rows, write_logs, capsys):
    log_rows["dwell"][1]["dwell_ms"] = -120
    directory = write_logs(log_rows, "csv")
    code, _, err = run_cli(capsys, "data", "validate", str(directory), "--strict")
    assert code == 1
    # The error is one line of its own; the run's log lines (per-table counts) may go to stderr before it.
    assert any(line.startswith("backdrop: error: strict mode: 1 of 32 rows rejected") for line in err.splitlines())
    assert "row 2, column 'dwell_ms': expected integer >= 0, got -120" in err


def test_tables_given_one_by_one(log_rows, write_logs, capsys, tmp_path):
    directory = write_logs(log_rows, "jsonl")
    code, out, _ = run_cli(
        capsys, "data", "validate", "--impressions", str(directory / "impressions.jsonl"),
        "--dwell", str(directory / "dwell.jsonl"), "--out", str(tmp_path / "v"),
    )  # fmt: skip
    assert code == 0
    assert "not checked: impressions.image_id -> assets (no assets table given)" in out
    assert sorted(p.name for p in (tmp_path / "v").glob("*.parquet")) == [
        "dwell.parquet", "dwell.rejects.parquet", "impressions.parquet", "impressions.rejects.parquet",
    ]  # fmt: skip


def _truncate(directory) -> None:
    path = directory / "impressions.parquet"
    path.write_bytes(path.read_bytes()[:200])


def _utf16(directory) -> None:
    (directory / "impressions.parquet").unlink()
    text = "event_id,request_id,image_id,product_id,position,clicked,shown_at,segment\n"
    (directory / "impressions.csv").write_text(text, encoding="utf-16")


def _missing_column(directory) -> None:
    path = directory / "impressions.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["position"]), path)


def _non_parquet(directory) -> None:
    (directory / "impressions.parquet").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, r"impressions\.parquet: cannot read as Parquet"),
        (_utf16, r"impressions\.csv: not UTF-8 text \(looks like UTF-16\)"),
        (_missing_column, r"impressions\.parquet: missing required column 'position' \(impressions needs: "),
        (_non_parquet, r"impressions\.parquet: cannot read as Parquet"),
    ],
)
def test_unreadable_input_exits_2(log_rows, write_logs, capsys, damage, message):
    directory = write_logs(log_rows, "parquet")
    damage(directory)
    code, _, err = run_cli(capsys, "data", "validate", str(directory))
    assert code == 2
    assert re.search(message, err), err
    assert err.startswith("backdrop: error: ") and err.count("\n") == 1
    assert not (directory / "validated" / "summary.json").exists()


def test_missing_folder_and_empty_folder_exit_2(tmp_path, capsys):
    assert run_cli(capsys, "data", "validate", str(tmp_path / "nope"))[0] == 2
    code, _, err = run_cli(capsys, "data", "validate", str(tmp_path))
    assert code == 2 and "no log tables found in" in err


def test_split_command_writes_the_splits(log_rows, write_logs, capsys):
    directory = write_logs(log_rows, "csv")
    assert run_cli(capsys, "data", "validate", str(directory))[0] == 0
    code, out, _ = run_cli(capsys, "data", "split", str(directory), "--by", "time", "--fractions", "0.5,0.25,0.25")
    assert code == 0
    assert out.startswith(f"using the validated tables in {directory / 'validated'}")
    split = directory / "validated" / "splits" / "time"
    assert [pq.read_table(split / s / "impressions.parquet").num_rows for s in ("train", "validation", "test")] == [
        6,
        3,
        3,
    ]
    assert json.loads((split / "split_report.json").read_text())["by"] == "time"


def test_bad_fractions_are_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "split", str(tmp_path), "--fractions", "0.5,0.6,0.1"])
    assert info.value.code == 2
    assert "expected three shares >= 0 that sum to 1, got '0.5,0.6,0.1'" in capsys.readouterr().err


def test_validate_runs_as_a_subprocess_without_traceback(tmp_path):
    (tmp_path / "impressions.parquet").write_bytes(b"garbage")
    result = subprocess.run(
        [sys.executable, "-m", "experiments", "data", "validate", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "cannot read as Parquet" in result.stderr


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["data", "validate", "--help"])
    text = capsys.readouterr().out
    for option in (
        "--impressions",
        "--dwell",
        "--preferences",
        "--assets",
        "--out",
        "--strict",
        "--max-problems",
        "--check-files",
    ):
        assert option in text
    assert "0 all rows accepted, 1 rows rejected" in " ".join(text.split())


def test_parquet_string_columns_round_trip_through_the_cli(tmp_path, capsys):
    """A Parquet file that stores position as text (a common export bug) is validated, not refused."""
    pq.write_table(
        pa.table({"event_id": ["e1", "e2"], "dwell_ms": ["5", "x"], "censored": [True, False]}), tmp_path / "d.parquet"
    )
    code, out, _ = run_cli(capsys, "data", "validate", "--dwell", str(tmp_path / "d.parquet"))
    assert code == 1 and "row 2, column 'dwell_ms': expected integer >= 0, got 'x'" in out
