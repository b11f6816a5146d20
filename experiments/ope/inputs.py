"""Read the inputs of ``backdrop ope`` from files: the impressions log and a candidate's per-impression scores.

- impressions (``<logs>/impressions.parquet|.csv|.jsonl``, a folder of part files, or the file itself): the
  table of ``offline_data.schemas.IMPRESSIONS``. It goes through offline_data's validation in strict mode
  (:func:`offline_data.validation.validate_logs`; the validated copy, rejects and summary are written to a folder
  the caller names), so OPE sees exactly the rows every other stage accepts and any bad row stops it with the
  validator's message. OPE uses event_id, request_id, position (1-based slot), clicked (the reward) and the
  optional propensity (null = not logged; then only DM is possible).
- candidate scores (parquet, csv or jsonl): one row per impression, joined on event_id:
  ``candidate_propensity`` (π_e of the logged image in its slot) and optionally ``dm_prediction`` (the reward
  model's expected reward of the candidate in that slot), ``dm_logged`` (its prediction for the logged image)
  and ``unsupported_mass`` (π_e's mass on images the logger never shows there). See experiments/ope/data.py.
  Not a log table of the schema, so it is checked here.

Nothing is dropped silently: an impression without a score row, a score row for an unknown event, a repeated
event_id, a missing column or an unparseable value is an error naming the file, the 1-based data row (the
CSV header is not counted; JSON Lines rows are records) and the column.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from experiments.ope.data import (
    MAX_REPORTED_PROBLEMS,
    CandidatePolicy,
    ImpressionLog,
    build_candidate,
    build_impression_log,
)
from offline_data.conversion import ColumnTypeError, convert
from offline_data.errors import InputUnreadableError, LogValidationError
from offline_data.io import find_table, resolve_source
from offline_data.outputs import accepted_path
from offline_data.validation import ValidationConfig, validate_logs

SCORE_COLUMNS = ("event_id", "candidate_propensity")
OPTIONAL_SCORE_COLUMNS = ("dm_prediction", "dm_logged", "unsupported_mass")
SUFFIXES = (".parquet", ".csv", ".jsonl")
"""Formats of the candidate scores file."""


@dataclasses.dataclass(frozen=True, eq=False)
class OPEInputs:
    """The impressions as an :class:`ImpressionLog`, plus what joining score files onto them needs."""

    log: ImpressionLog
    event_ids: pa.Array
    """[N] event_id of each impression, in file order (= the log's flat input order)."""
    path: Path


def read_table(path: str | Path) -> pa.Table:
    """Read a whole parquet, csv or jsonl file by its suffix.

    Raises:
        InputUnreadableError: missing file, unknown suffix, or a file pyarrow cannot parse.
    """
    path = Path(path)
    if not path.is_file():
        raise InputUnreadableError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".csv":
            # Ids stay strings even when they look like numbers ("0001" must not become 1).
            options = pa_csv.ConvertOptions(column_types={"event_id": pa.string(), "request_id": pa.string()})
            return pa_csv.read_csv(path, convert_options=options)
        if suffix == ".jsonl":
            return pa_json.read_json(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise InputUnreadableError(f"{path}: cannot read as {suffix[1:]}: {exc}") from None
    raise InputUnreadableError(f"{path}: unknown format {suffix!r} (expected {', '.join(SUFFIXES)})")


def load_impressions(logs: str | Path, validated_dir: str | Path) -> OPEInputs:
    """Validate the impressions under ``logs`` (strict) into ``validated_dir`` and lay them out for OPE.

    Args:
        logs: a folder holding the impressions table, or the table's file / part-file folder itself.
        validated_dir: where the validator writes the accepted table, the rejects and ``summary.json``.

    Raises:
        InputUnreadableError: no impressions table, an unreadable file or a missing required column.
        LogValidationError: any row rejected by the validator, or a (request_id, position) shown twice.
    """
    logs = Path(logs)
    if not logs.exists():
        raise InputUnreadableError(f"{logs}: no such folder or file")
    source = find_table(logs, "impressions") if logs.is_dir() else None
    if source is None:
        source = resolve_source("impressions", logs)
    validated_dir = Path(validated_dir)
    validate_logs({"impressions": source}, validated_dir, ValidationConfig(strict=True))
    path = accepted_path(validated_dir, "impressions")
    table = read_table(path)
    event_ids = table.column("event_id").combine_chunks()
    log = build_impression_log(
        request_id=table.column("request_id").to_numpy(),
        position=table.column("position").to_numpy(),
        reward=table.column("clicked").to_numpy(zero_copy_only=False).astype(np.float64),
        propensity=(
            table.column("propensity").to_numpy(zero_copy_only=False).astype(np.float64)
            if "propensity" in table.column_names
            else None
        ),
        source=str(source.path),
    )
    return OPEInputs(log=log, event_ids=event_ids, path=source.path)


def load_candidate_scores(inputs: OPEInputs, path: str | Path, *, name: str) -> CandidatePolicy:
    """Read a candidate's per-impression scores and join them onto ``inputs`` by event_id.

    Raises:
        InputUnreadableError: unreadable file or missing column.
        LogValidationError: bad values; an impression without a score row, a score row for an event that is
            not in the impressions, or a repeated event_id.
    """
    path = Path(path)
    table = read_table(path)
    _require_columns(table, path, SCORE_COLUMNS, "candidate scores")
    problems = ColumnProblems(path)
    score_ids = problems.column(table, "event_id", "id")
    keys = [k for k in (*SCORE_COLUMNS[1:], *OPTIONAL_SCORE_COLUMNS) if k in table.column_names]
    values = {key: problems.column(table, key, "number", nullable=True) for key in keys}
    problems.raise_if_any()
    _check_unique(score_ids, path)
    # position[i] = the score row of impression i (null when it has none).
    position = pc.index_in(inputs.event_ids, value_set=score_ids)
    missing = np.flatnonzero(~np.asarray(position.is_valid()))
    unknown = np.flatnonzero(~np.asarray(pc.is_in(score_ids, value_set=inputs.event_ids)))
    if missing.size or unknown.size:
        unmatched = [
            f"impressions row {i + 1}: event_id {inputs.event_ids[i].as_py()!r} has no score row"
            for i in missing[:MAX_REPORTED_PROBLEMS]
        ] + [
            f"row {i + 1}: event_id {score_ids[i].as_py()!r} is not in {inputs.path}"
            for i in unknown[:MAX_REPORTED_PROBLEMS]
        ]
        raise LogValidationError(
            f"{path}: expected exactly one score row per impression of {inputs.path}; {missing.size} "
            f"impression(s) without a score, {unknown.size} score row(s) for unknown events; first:\n  "
            + "\n  ".join(unmatched)
        )
    order = np.asarray(position, dtype=np.int64)
    columns = {key: column[order] for key, column in values.items()}
    return build_candidate(inputs.log, name=name, source=str(path), source_rows=order + 1, **columns)


def _require_columns(table: pa.Table, path: Path, required: tuple[str, ...], what: str) -> None:
    absent = [c for c in required if c not in table.column_names]
    if absent:
        raise InputUnreadableError(
            f"{path}: missing required column(s) {', '.join(repr(c) for c in absent)} ({what} needs: "
            f"{', '.join(required)}; found: {', '.join(table.column_names) or 'no columns'})"
        )


class ColumnProblems:
    """Converts the columns of one scores file, collecting the problems of all of them before raising."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []
        self.total = 0

    def column(self, table: pa.Table, name: str, kind: Literal["id", "number"], *, nullable: bool = False) -> Any:
        """Column ``name`` as ids (pa.Array of strings) or numbers (numpy float64, NaN for nulls when
        ``nullable``), parsed with offline_data's converters; bad entries are recorded and come back null."""
        raw = table.column(name).combine_chunks()
        try:
            values, bad = convert(raw, pa.string() if kind == "id" else pa.float64())
        except ColumnTypeError as exc:
            raise InputUnreadableError(f"{self.path}: column '{name}': {exc}") from None
        if not nullable:
            bad = bad | np.asarray(raw.is_null())
        rows = np.flatnonzero(bad)
        self.total += rows.size
        expected = "non-empty id" if kind == "id" else "number"
        for i in rows[:MAX_REPORTED_PROBLEMS]:
            self.problems.append(f"row {i + 1}, column '{name}': expected {expected}, got {raw[i].as_py()!r}")
        if kind == "id":
            return values
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)

    def raise_if_any(self) -> None:
        if self.total:
            raise LogValidationError(
                f"{self.path}: {self.total} problem(s); first {len(self.problems)}:\n  " + "\n  ".join(self.problems)
            )


def _check_unique(ids: pa.Array, path: Path) -> None:
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        first = repeated[0].as_py()
        rows = np.flatnonzero(np.asarray(pc.equal(ids, first))) + 1
        raise LogValidationError(
            f"{path}: column 'event_id' must be unique; {len(repeated)} value(s) repeat, first {first!r} at rows "
            + ", ".join(str(r) for r in rows[:MAX_REPORTED_PROBLEMS])
        )
