"""Simulated logs pass offline_data's strict validation with zero rejects; injected corruptions are rejected."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from offline_data.io import find_table
from offline_data.validation import ValidationConfig, validate_logs

TABLES = ("assets", "impressions", "dwell", "preferences")


def _validate(sim: Path, out: Path, strict: bool):
    sources = {table: find_table(sim, table) for table in TABLES}
    return validate_logs(sources, out, ValidationConfig(strict=strict, check_files=True))


def test_simulated_logs_pass_strict_validation_with_zero_rejects(small_sim: Path, tmp_path: Path) -> None:
    summary = _validate(small_sim, tmp_path / "validated", strict=True)
    assert summary.rejected == 0
    for table in TABLES:
        rows = pq.read_metadata(small_sim / f"{table}.parquet").num_rows
        assert summary.tables[table].read == rows == summary.tables[table].accepted


def _replace(path: Path, column: str, row: int, value) -> None:
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    pq.write_table(
        table.set_column(index, table.schema.field(index), pa.array(values, type=table.schema.field(index).type)), path
    )


def _rejects(path: Path) -> list[dict]:
    # ParquetFile, not read_table: the preferences rejects hold two columns named 'source' (provenance and the
    # table's own column), which the dataset reader refuses.
    table = pq.ParquetFile(path).read()
    return [
        {"row": row, "problems": problems}
        for row, problems in zip(table.column("row").to_pylist(), table.column("problems").to_pylist())
    ]


def test_injected_corruptions_are_rejected_with_their_reasons(small_sim: Path, tmp_path: Path) -> None:
    sim = tmp_path / "corrupt"
    shutil.copytree(small_sim, sim)
    first_a = pq.read_table(sim / "preferences.parquet").column("image_a")[0].as_py()
    _replace(sim / "impressions.parquet", "propensity", 2, 0.0)  # row 3: propensity must be > 0
    _replace(sim / "impressions.parquet", "image_id", 9, "no-such-image")  # row 10: dangling reference
    _replace(sim / "dwell.parquet", "dwell_ms", 0, -5)  # row 1: negative dwell
    _replace(sim / "preferences.parquet", "image_b", 0, first_a)  # row 1: an image against itself
    summary = _validate(sim, tmp_path / "validated", strict=False)
    rejects = {
        table: _rejects(tmp_path / "validated" / f"{table}.rejects.parquet")
        for table in ("impressions", "dwell", "preferences")
    }
    impressions_rows = {r["row"]: r["problems"] for r in rejects["impressions"]}
    assert 3 in impressions_rows and "propensity" in impressions_rows[3]
    assert 10 in impressions_rows and "image_id" in impressions_rows[10]
    assert [r["row"] for r in rejects["dwell"]][:1] == [1] and "dwell_ms" in rejects["dwell"][0]["problems"]
    assert [r["row"] for r in rejects["preferences"]] == [1]
    # Nothing is dropped silently: read = accepted + rejected for every table.
    for table in TABLES:
        part = summary.tables[table]
        assert part.read == part.accepted + part.rejected
    accepted = pq.read_table(tmp_path / "validated/impressions.parquet").column("image_id")
    assert not pc.any(pc.equal(accepted, "no-such-image")).as_py()
