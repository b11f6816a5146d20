"""Read the inputs of ``backdrop ope`` from files: the impressions log and a candidate's per-impression scores.

- impressions (``<logs>/impressions.parquet|.csv|.jsonl``, or that file itself): the columns of
  ``offline_data.schemas.IMPRESSIONS`` that OPE uses: event_id, request_id, position (1-based), clicked (the
  reward) and the optional propensity (empty / null = not logged; then only DM is possible).
- candidate scores (parquet, csv or jsonl): one row per impression, joined on event_id:
  ``candidate_propensity`` (π_e of the logged image in its slot) and optionally ``dm_prediction`` (the reward
  model's expected reward of the candidate in that slot), ``dm_logged`` (its prediction for the logged image)
  and ``unsupported_mass`` (π_e's mass on images the logger never shows there). See experiments/ope_data.py.

Nothing is dropped silently: an impression without a score row, a score row for an unknown event, a repeated
event_id, a missing column or an unparseable value is an error naming the file, the 1-based data row (the
CSV header is not counted; JSON Lines rows are records) and the column.

The files are read whole with pyarrow (OPE needs every row at once anyway). When offline_data's validation
layer lands, the impressions should come through it instead, so that OPE sees exactly the accepted rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from experiments.ope_data import (
    MAX_REPORTED_PROBLEMS,
    CandidatePolicy,
    ImpressionLog,
    build_candidate,
    build_impression_log,
)
from offline_data.errors import InputUnreadableError, LogValidationError

IMPRESSION_COLUMNS = ("event_id", "request_id", "position", "clicked")
SCORE_COLUMNS = ("event_id", "candidate_propensity")
OPTIONAL_SCORE_COLUMNS = ("dm_prediction", "dm_logged", "unsupported_mass")
SUFFIXES = (".parquet", ".csv", ".jsonl")

_TYPES = {"string": pa.string(), "int": pa.int64(), "bool": pa.bool_(), "float": pa.float64()}
_EXPECTED = {"string": "non-empty id", "int": "integer", "bool": "boolean (true/false, 1/0)", "float": "number"}


@dataclasses.dataclass(frozen=True, eq=False)
class OPEInputs:
    """The impressions as an :class:`ImpressionLog`, plus what joining score files onto them needs."""

    log: ImpressionLog
    event_ids: pa.Array
    """[N] event_id of each impression, in file order (= the log's flat input order)."""
    path: Path


def find_impressions(logs: str | Path) -> Path:
    """The impressions file: ``logs`` itself when it is a file, else ``logs/impressions.<suffix>``.

    Raises:
        InputUnreadableError: none or several impressions files.
    """
    logs = Path(logs)
    if logs.is_file():
        return logs
    if not logs.is_dir():
        raise InputUnreadableError(f"{logs}: no such folder or file")
    found = [logs / f"impressions{s}" for s in SUFFIXES if (logs / f"impressions{s}").is_file()]
    if len(found) != 1:
        what = (
            "no impressions table"
            if not found
            else "several impressions tables (" + ", ".join(p.name for p in found) + "); keep exactly one"
        )
        raise InputUnreadableError(f"{logs}: {what} (expected impressions{'|'.join(SUFFIXES)})")
    return found[0]


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
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if suffix == ".csv":
            import pyarrow.csv as pa_csv

            # Ids stay strings even when they look like numbers ("0001" must not become 1).
            options = pa_csv.ConvertOptions(column_types={"event_id": pa.string(), "request_id": pa.string()})
            return pa_csv.read_csv(path, convert_options=options)
        if suffix == ".jsonl":
            import pyarrow.json as pa_json

            return pa_json.read_json(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise InputUnreadableError(f"{path}: cannot read as {suffix[1:]}: {exc}") from None
    raise InputUnreadableError(f"{path}: unknown format {suffix!r} (expected {', '.join(SUFFIXES)})")


def load_impressions(logs: str | Path) -> OPEInputs:
    """Read and check the impressions under ``logs`` (see the module docstring).

    Raises:
        InputUnreadableError: unreadable file or missing column.
        LogValidationError: bad values, nulls in required columns, repeated event_id or (request, position).
    """
    path = find_impressions(logs)
    table = read_table(path)
    _require_columns(table, path, IMPRESSION_COLUMNS, "impressions")
    problems = ColumnProblems(path)
    event_ids = problems.column(table, "event_id", "string")
    request_ids = problems.column(table, "request_id", "string")
    position = problems.column(table, "position", "int")
    clicked = problems.column(table, "clicked", "bool")
    propensity = (
        problems.column(table, "propensity", "float", nullable=True)
        if "propensity" in table.column_names
        else np.full(table.num_rows, np.nan)
    )
    problems.raise_if_any()
    _check_unique(event_ids, path)
    log = build_impression_log(
        request_id=request_ids.to_numpy(zero_copy_only=False),
        position=position,
        reward=clicked.astype(np.float64),
        propensity=propensity,
        source=str(path),
    )
    return OPEInputs(log=log, event_ids=event_ids, path=path)


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
    score_ids = problems.column(table, "event_id", "string")
    keys = [k for k in (*SCORE_COLUMNS[1:], *OPTIONAL_SCORE_COLUMNS) if k in table.column_names]
    values = {key: problems.column(table, key, "float", nullable=True) for key in keys}
    problems.raise_if_any()
    _check_unique(score_ids, path)
    # position[i] = the score row of impression i (null when it has none).
    position = pc.index_in(inputs.event_ids, value_set=score_ids)
    missing = np.flatnonzero(~np.asarray(position.is_valid()))
    unknown = np.flatnonzero(~np.asarray(pc.is_in(score_ids, value_set=inputs.event_ids)))
    if missing.size or unknown.size:
        problems = [
            f"impressions row {i + 1}: event_id {inputs.event_ids[i].as_py()!r} has no score row"
            for i in missing[:MAX_REPORTED_PROBLEMS]
        ] + [
            f"row {i + 1}: event_id {score_ids[i].as_py()!r} is not in {inputs.path}"
            for i in unknown[:MAX_REPORTED_PROBLEMS]
        ]
        raise LogValidationError(
            f"{path}: expected exactly one score row per impression of {inputs.path}; {missing.size} "
            f"impression(s) without a score, {unknown.size} score row(s) for unknown events; first:\n  "
            + "\n  ".join(problems)
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
    """Converts the columns of one file, collecting the problems of all of them before raising."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []
        self.total = 0

    def column(self, table: pa.Table, name: str, kind: str, *, nullable: bool = False) -> Any:
        """Column ``name`` as ``kind``: a pa.Array for "string" ids, else a numpy array (nulls -> NaN when
        ``nullable``). Bad entries are recorded (row, column, value) and come back as NaN / null."""
        raw = table.column(name).combine_chunks()
        target = _TYPES[kind]
        try:
            values = raw if raw.type == target else pc.cast(raw, target)
            bad = np.zeros(len(raw), dtype=bool)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = _unconvertible(raw, target)
            if not bad.any():
                raise InputUnreadableError(
                    f"{self.path}: column '{name}' of type {raw.type} cannot be read as {kind}"
                ) from None
            values = pc.cast(pc.if_else(pa.array(bad), pa.nulls(len(raw), raw.type), raw), target)
        if kind == "bool" and pa.types.is_integer(raw.type):
            # Arrow casts any non-zero integer to true; only 0/1 are booleans.
            bad |= ~np.asarray(pc.fill_null(pc.is_in(raw, value_set=pa.array([0, 1], raw.type)), True))
        if not nullable:
            bad |= np.asarray(raw.is_null())
        rows = np.flatnonzero(bad)
        self.total += rows.size
        for i in rows[:MAX_REPORTED_PROBLEMS]:
            self.problems.append(f"row {i + 1}, column '{name}': expected {_EXPECTED[kind]}, got {raw[i].as_py()!r}")
        if kind == "string":
            return values
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64 if kind == "float" else None)

    def raise_if_any(self) -> None:
        if self.total:
            raise LogValidationError(
                f"{self.path}: {self.total} problem(s); first {len(self.problems)}:\n  " + "\n  ".join(self.problems)
            )


def _unconvertible(raw: pa.Array, target: pa.DataType) -> np.ndarray:
    """Which entries fail the cast (element by element: only reached on the error path)."""
    bad = np.zeros(len(raw), dtype=bool)
    for i, value in enumerate(raw):
        if not value.is_valid:
            continue
        try:
            pc.cast(pa.array([value.as_py()], raw.type), target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad[i] = True
    return bad


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
