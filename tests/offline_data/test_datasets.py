"""Hugging Face views of validated tables and the impressions-dwell join."""

from __future__ import annotations

import pyarrow as pa
import pytest

from offline_data.datasets import CLICK_EXAMPLE_SCHEMA, click_examples, iter_click_examples, load_table
from offline_data.errors import InputUnreadableError
from offline_data.io import find_table
from offline_data.validation import validate_logs


@pytest.fixture
def validated(log_rows, write_logs):
    directory = write_logs(log_rows, "jsonl")
    sources = {t: find_table(directory, t) for t in ("assets", "impressions", "dwell", "preferences")}
    validate_logs(sources, directory / "validated")
    return directory / "validated"


def test_load_table_is_memory_mapped_with_schema_features(validated, log_rows):
    dataset = load_table(validated, "preferences")
    assert dataset.num_rows == 4
    assert dataset["pair_id"] == [r["pair_id"] for r in log_rows["preferences"]]
    assert all(f["filename"].startswith(str(validated / ".hf_cache")) for f in dataset.cache_files)
    impressions = load_table(validated, "impressions", columns=["event_id", "shown_at"])
    assert impressions.column_names == ["event_id", "shown_at"]
    assert str(impressions.features["shown_at"].dtype) == "timestamp[us, tz=UTC]"


def test_click_examples_join_dwell_to_its_impression(validated, log_rows):
    batches = list(iter_click_examples(validated, batch_rows=5))
    assert [b.num_rows for b in batches] == [5, 5, 2]
    joined = pa.Table.from_batches(batches)
    assert joined.schema.equals(CLICK_EXAMPLE_SCHEMA)
    assert joined.column("event_id").to_pylist() == [r["event_id"] for r in log_rows["impressions"]]
    dwell = {r["event_id"]: (r["dwell_ms"], r["censored"]) for r in log_rows["dwell"]}
    for row in joined.to_pylist():
        assert (row["dwell_ms"], row["censored"]) == dwell.get(row["event_id"], (None, None))
        assert (row["dwell_ms"] is not None) == row["clicked"]  # the base logs have dwell for every click


def test_click_examples_dataset_is_cached_and_rebuilt_when_inputs_change(validated):
    dataset = click_examples(validated)
    assert dataset.num_rows == 12 and sum(d is not None for d in dataset["dwell_ms"]) == 4
    cached = validated / ".hf_cache" / "click_examples.parquet"
    first = cached.stat().st_mtime_ns
    click_examples(validated)
    assert cached.stat().st_mtime_ns == first
    (validated / "dwell.parquet").unlink()  # without dwell, every dwell is null
    (validated / "impressions.parquet").touch()
    assert click_examples(validated)["dwell_ms"] == [None] * 12


def test_missing_table_is_named(tmp_path):
    with pytest.raises(InputUnreadableError, match=r"impressions\.parquet: validated impressions table not found"):
        next(iter_click_examples(tmp_path))
