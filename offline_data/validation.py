"""Validate the log tables at the boundary: every row is accepted or rejected with its reasons, none dropped.

:func:`validate_logs` streams each table (assets, then impressions, dwell, preferences, so references
can be checked against what was accepted before) in batches through

1. type parsing, nulls, ranges, closed sets and formats (:mod:`offline_data.checks`);
2. references to other tables and duplicate keys (:mod:`offline_data.references`);
3. optionally, each asset file's existence and SHA-256 (``check_files``);

and writes accepted rows (schema types) and rejected rows (with reasons and original text) beside each
other in the output folder (:mod:`offline_data.outputs`), with a ``summary.json`` whose books are checked:
read = accepted + rejected per table and per reason. Problems are reported per file in the STYLE.md
format: the first ``max_problems`` with row, column, expectation and value, plus the total.

Memory is bounded by the batch size plus the hashed key indexes (about 30 bytes per key of a table that
is still referred to), so a 10 M-row impressions table validates in well under 4 GiB.
"""

from __future__ import annotations

import dataclasses
import logging
import zoneinfo
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from offline_data.assets import asset_root_metadata, file_sha256, is_inside, resolve_asset_path
from offline_data.checks import ParsedBatch, check_columns
from offline_data.errors import LogValidationError
from offline_data.io import FileReader, MalformedRows, RawBatch, TableSource, as_text, open_file
from offline_data.keys import hash_strings
from offline_data.outputs import AtomicParquetWriter, accepted_path, rejects_path, rejects_schema
from offline_data.problems import Finding, FoundText, ProblemLog, show_constant, show_values
from offline_data.references import TableKeys, not_clicked, product_mismatch
from offline_data.schemas import SCHEMAS, TABLE_NAMES, TableName, TableSchema
from offline_data.summary import FileProblems, TableSummary, ValidationSummary

logger = logging.getLogger(__name__)

REFERENCES: dict[TableName, tuple[tuple[str, TableName], ...]] = {
    "assets": (),
    "impressions": (("image_id", "assets"),),
    "dwell": (("event_id", "impressions"),),
    "preferences": (("image_a", "assets"), ("image_b", "assets")),
}
"""table -> (column, referenced table) pairs; the referenced table's key column is the target."""

KEY_PAYLOAD: dict[TableName, dict[str, type]] = {"assets": {"product": np.uint64}, "impressions": {"clicked": bool}}
"""Per-key fields kept for the consistency checks of tables that refer to these."""

VALIDATION_ORDER: tuple[TableName, ...] = ("assets", "impressions", "dwell", "preferences")
"""Referenced tables first, so references are checked against rows already accepted."""

SUMMARY_FILE = "summary.json"
MALFORMED_REASON = "row:malformed"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValidationConfig:
    """How :func:`validate_logs` treats problems and how much it reads at once."""

    strict: bool = False
    """Fail with LogValidationError when any row is rejected. The rejects and summary are still written,
    the accepted tables are not (so nothing downstream runs on a partial table by accident)."""
    max_problems: int = 20
    """Problems listed per input file (all of them are counted, and every rejected row keeps its messages)."""
    check_files: bool = False
    """Also read every asset file and compare its SHA-256 with the table (slow: reads every image once)."""
    assume_timezone: str | None = None
    """IANA zone (``UTC``, ``Europe/Paris``) in which timestamps written without a zone were recorded; they are
    converted to UTC from it. None: such a timestamp is refused (``shown_at:no_zone``), never guessed."""
    allow_outside_assets: bool = False
    """With ``check_files``: read asset paths that lead outside the assets table's folder (``../``, absolute
    paths, symlinks out). Off: such a row is rejected (``path:outside``) and its file is never opened."""
    batch_rows: int = 262_144
    """Rows per batch. Peak memory grows with it (about 0.5 KB per impressions row in flight)."""

    def __post_init__(self) -> None:
        if self.max_problems < 0:
            raise ValueError(f"max_problems must be >= 0, got {self.max_problems}")
        if self.batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {self.batch_rows}")
        if self.assume_timezone is not None:
            try:
                zoneinfo.ZoneInfo(self.assume_timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"assume_timezone must be an IANA zone like UTC or Europe/Paris, got {self.assume_timezone!r}"
                ) from None


def validate_logs(
    sources: Mapping[TableName, TableSource], out_dir: str | Path, config: ValidationConfig | None = None
) -> ValidationSummary:
    """Validate the given tables and write accepted rows, rejects and ``summary.json`` to ``out_dir``.

    Args:
        sources: the tables to validate (any subset of the four; checks of references into a table that is
            not given are skipped and listed in the summary).
        out_dir: output folder, created if needed; earlier outputs of the same tables are replaced.
        config: see :class:`ValidationConfig`.

    Returns:
        The summary (also written to ``out_dir/summary.json``).

    Raises:
        InputUnreadableError: a file cannot be read at all (nothing is written for any table then).
        LogValidationError: ``config.strict`` and some row was rejected.
    """
    config = config or ValidationConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for table in sources:
        if table not in SCHEMAS:
            raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLE_NAMES)}")
    # Open every file first (footers, headers): an unreadable input fails before any row is processed.
    readers = {
        table: [open_file(source, i, SCHEMAS[table], config.batch_rows) for i in range(len(source.files))]
        for table, source in sources.items()
    }
    summary = ValidationSummary(out_dir=str(out_dir), strict=config.strict)
    keys: dict[TableName, TableKeys] = {}
    writers: list[tuple[TableSummary, AtomicParquetWriter, AtomicParquetWriter]] = []
    order = [table for table in VALIDATION_ORDER if table in sources]
    try:
        for position, table in enumerate(order):
            table_readers = readers.pop(table)
            rows = sum(total for total, unit in (r.size_hint for r in table_readers) if unit == "rows")
            validator = _TableValidator(
                sources[table], out_dir, config, keys, given=tuple(sources), expected_rows=rows
            )
            table_summary, accepted, rejects = validator.run(table_readers)
            summary.tables[table] = table_summary
            writers.append((table_summary, accepted, rejects))
            keys[table] = validator.keys
            # Keep only the key indexes a table still to come refers to (they can be hundreds of MB).
            needed = {target for later in order[position + 1 :] for _, target in REFERENCES[later]}
            keys = {name: index for name, index in keys.items() if name in needed}
    except BaseException:
        for _, accepted, rejects in writers:
            accepted.abort()
            rejects.abort()
        raise
    withhold = config.strict and summary.rejected > 0
    for table_summary, accepted, rejects in writers:
        table_summary.rejects_path = str(rejects.commit())
        if withhold:
            accepted.abort()
            accepted_path(out_dir, table_summary.table).unlink(missing_ok=True)
        else:
            table_summary.accepted_path = str(accepted.commit())
        table_summary.reconcile()
    summary.write(out_dir / SUMMARY_FILE)
    if withhold:
        raise LogValidationError(
            f"strict mode: {summary.rejected:,} of {summary.read:,} rows rejected (accepted tables not written; "
            f"rejects and summary in {out_dir})\n{summary.render_table()}\n{summary.render_problems()}"
        )
    return summary


class _TableValidator:
    """Validates one table; holds its key index for the tables validated after it."""

    def __init__(
        self,
        source: TableSource,
        out_dir: Path,
        config: ValidationConfig,
        keys: Mapping[TableName, TableKeys],
        given: tuple[TableName, ...],
        expected_rows: int = 0,
    ) -> None:
        self.source = source
        self.schema: TableSchema = SCHEMAS[source.table]
        self.config = config
        self.out_dir = out_dir
        self.referenced = keys
        self.keys = TableKeys(
            source.table, self.schema.key, source.files, KEY_PAYLOAD.get(source.table), expected_rows=expected_rows
        )
        self.summary = TableSummary(table=source.table, format=source.format, sources=[str(p) for p in source.files])
        for column, target in REFERENCES[source.table]:
            if target not in given:
                self.summary.skipped_checks.append(f"{source.table}.{column} -> {target} (no {target} table given)")
        if source.table == "assets" and not config.check_files:
            self.summary.skipped_checks.append("assets files exist and match sha256 (use --check-files)")
        self._null_counts = {c.name: 0 for c in self.schema.columns if c.nullable}

    def run(self, readers: list[FileReader]) -> tuple[TableSummary, AtomicParquetWriter, AtomicParquetWriter]:
        """Validate every file of the table (``readers``, in order) into uncommitted accepted/rejects writers."""
        metadata = {"backdrop.table": self.source.table, "backdrop.source": str(self.source.path)}
        if self.source.table == "assets":
            metadata.update(asset_root_metadata(self.source.base_dir, self.out_dir))
        table = self.source.table
        accepted = AtomicParquetWriter(accepted_path(self.out_dir, table), self.schema.arrow_schema(), metadata)
        rejects = AtomicParquetWriter(rejects_path(self.out_dir, table), rejects_schema(self.schema), metadata)
        try:
            declared: set[str] = set()
            ignored: list[str] = []
            for reader in readers:
                declared.update(reader.declared)
                ignored.extend(c for c in reader.ignored if c not in ignored)
            self.summary.ignored_columns = ignored
            self.summary.absent_columns = [c.name for c in self.schema.columns if c.name not in declared]
            for reader in readers:
                log = ProblemLog(reader.path, self.config.max_problems)
                for item in self._progress(reader):
                    if isinstance(item, MalformedRows):
                        self._reject_malformed(item, reader.path, log, rejects)
                    else:
                        self._validate_batch(item, reader.path, log, accepted, rejects)
                if log.total:
                    self.summary.files.append(FileProblems(str(reader.path), log.total, log.first))
                for reason, count in log.by_reason.items():
                    self.summary.problems_by_reason[reason] = self.summary.problems_by_reason.get(reason, 0) + count
                self.summary.problems += log.total
        except BaseException:
            accepted.abort()
            rejects.abort()
            raise
        self.summary.null_counts = dict(self._null_counts)
        # JSON Lines declares columns by its first record only: a column absent there but filled later is present.
        self.summary.absent_columns = [
            name for name in self.summary.absent_columns if self._null_counts.get(name, 0) == self.summary.accepted
        ]
        self._add_notes()
        logger.info(
            "%s: read %d, accepted %d, rejected %d", self.source.table, self.summary.read, self.summary.accepted,
            self.summary.rejected,
        )  # fmt: skip
        return self.summary, accepted, rejects

    def _progress(self, reader: FileReader) -> Iterator[RawBatch | MalformedRows]:
        total, unit = reader.size_hint
        with tqdm(total=total if unit == "rows" else None, unit="rows", desc=str(reader.path), disable=None) as bar:
            for item in reader.batches():
                bar.update(len(item))
                yield item

    def _add_notes(self) -> None:
        if self.source.table == "impressions" and self.summary.accepted:
            if "propensity" in self.summary.absent_columns:
                self.summary.notes.append("propensity absent: later stages estimate it (and say so)")
            elif missing := self._null_counts["propensity"]:
                self.summary.notes.append(f"propensity missing in {missing:,} accepted rows: later stages estimate it")
        if self.summary.ignored_columns:
            self.summary.notes.append(
                f"columns not in the schema, not carried into the output: {', '.join(self.summary.ignored_columns)}"
            )

    # ------------------------------------------------------------------------------------------------------

    def _validate_batch(
        self,
        batch: RawBatch,
        path: Path,
        log: ProblemLog,
        accepted: AtomicParquetWriter,
        rejects: AtomicParquetWriter,
    ) -> None:
        parsed, findings = check_columns(batch, self.schema, path, timezone=self.config.assume_timezone)
        findings.extend(self._reference_findings(parsed))
        if self.source.table == "assets" and self.config.check_files:
            findings.extend(self._file_findings(parsed))
        duplicate, key_check = self.keys.duplicates(parsed)
        if duplicate is not None:
            findings.append(duplicate)
        rejected = np.zeros(len(parsed), dtype=bool)
        for finding in findings:
            rejected |= finding.mask
        self.keys.commit(parsed, key_check, ~rejected, self._payload(parsed))
        log.add(findings, parsed.rows)
        self.summary.read += len(parsed)
        self.summary.rejected += int(rejected.sum())
        self.summary.accepted += int((~rejected).sum())
        keep = pa.array(~rejected)
        columns = [parsed.values[c.name].filter(keep) for c in self.schema.columns]
        accepted.write(pa.RecordBatch.from_arrays(columns, schema=accepted.schema))
        for column, values in zip(self.schema.columns, columns):
            if column.name in self._null_counts:
                self._null_counts[column.name] += values.null_count
        if rejected.any():
            rejects.write(self._rejects_batch(parsed, findings, rejected, path, rejects.schema))

    def _payload(self, parsed: ParsedBatch) -> dict[str, np.ndarray]:
        if self.source.table == "assets":
            return {"product": hash_strings(parsed.values["product_id"], repeated=True)}
        if self.source.table == "impressions":
            clicked = pc.fill_null(parsed.values["clicked"], False)
            return {"clicked": np.asarray(clicked.to_numpy(zero_copy_only=False), dtype=bool)}
        return {}

    def _reference_findings(self, parsed: ParsedBatch) -> list[Finding]:
        findings = []
        for column, target in REFERENCES[self.source.table]:
            target_keys = self.referenced.get(target)
            if target_keys is None:
                continue
            dangling, lookup, usable = target_keys.refer(parsed, column)
            if dangling is not None:
                findings.append(dangling)
            extra = None
            if self.source.table == "impressions":
                extra = product_mismatch(parsed, lookup, usable)
            elif self.source.table == "dwell":
                extra = not_clicked(parsed, lookup, usable)
            if extra is not None:
                findings.append(extra)
        return findings

    def _file_findings(self, parsed: ParsedBatch) -> list[Finding]:
        """assets --check-files: the file exists and its SHA-256 is the recorded one (reads every file)."""
        usable = np.flatnonzero(parsed.valid["path"] & parsed.valid["sha256"])
        paths = parsed.values["path"].take(pa.array(usable)).to_pylist()
        recorded = parsed.values["sha256"].take(pa.array(usable)).to_pylist()
        missing = np.zeros(len(parsed), dtype=bool)
        mismatch = np.zeros(len(parsed), dtype=bool)
        outside = np.zeros(len(parsed), dtype=bool)
        actual: list[str | None] = [None] * len(parsed)
        for i, rel, expected in zip(usable, paths, recorded):
            file = resolve_asset_path(self.source.base_dir, rel)
            if not self.config.allow_outside_assets and not is_inside(self.source.base_dir, file):
                outside[i] = True  # never opened: the logs name files, they do not get to read any file
                continue
            if not file.is_file():
                missing[i] = True
                continue
            actual[i] = file_sha256(file)
            mismatch[i] = actual[i] != expected
        findings = []
        if outside.any():
            expected = f"a path inside {self.source.base_dir} (--allow-outside-assets reads others)"
            shown = show_values(parsed.values["path"], quote=True)
            findings.append(Finding("path:outside", "path", outside, expected, shown))
        if missing.any():
            expected = f"a file (relative to {self.source.base_dir})"
            shown = show_values(parsed.values["path"], quote=True)
            findings.append(
                Finding("path:missing_file", "path", missing, expected, shown, show_constant(" (not found)"))
            )
        if mismatch.any():
            digest = pa.array(actual, type=pa.string())
            shown = show_values(parsed.values["sha256"], quote=True)
            note = show_values(digest, quote=False)
            findings.append(
                Finding(
                    "sha256:mismatch",
                    "sha256",
                    mismatch,
                    "the SHA-256 of the file",
                    shown,
                    _prefixed(" (file has ", note, ")"),
                )
            )
        return findings

    def _rejects_batch(
        self,
        parsed: ParsedBatch,
        findings: list[Finding],
        rejected: np.ndarray,
        path: Path,
        schema: pa.Schema,
    ) -> pa.RecordBatch:
        index = np.flatnonzero(rejected)
        masks = np.stack([f.mask[index] for f in findings])
        reasons = np.array([f.reason for f in findings], dtype=object)[np.argmax(masks, axis=0)]
        for reason, count in zip(*np.unique(reasons.astype(str), return_counts=True)):
            self.summary.rejected_by_reason[str(reason)] = self.summary.rejected_by_reason.get(str(reason), 0) + int(
                count
            )
        messages = []
        for finding, mask in zip(findings, masks):
            where = np.flatnonzero(mask)
            if len(where) == 0:
                continue
            text = finding.messages(parsed.rows, index[where])
            slot = np.full(len(index), -1, dtype=np.int64)
            slot[where] = np.arange(len(where))
            messages.append(text.take(pa.array(slot, mask=slot < 0)))
        problems = pc.binary_join_element_wise(*messages, "; ", null_handling="skip")
        take = pa.array(index)
        arrays = {
            "file": pa.array(np.full(len(index), str(path), dtype=object), type=pa.string()),
            "row": pa.array(parsed.rows[index]),
            "reason": pa.array(reasons, type=pa.string()),
            "problems": problems,
            "raw": pa.nulls(len(index), pa.string()),
        }
        for column in self.schema.columns:
            raw = parsed.raw.get(column.name)
            arrays[column.name] = pa.nulls(len(index), pa.string()) if raw is None else as_text(raw.take(take))
        return pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema)

    def _reject_malformed(
        self, rows: MalformedRows, path: Path, log: ProblemLog, rejects: AtomicParquetWriter
    ) -> None:
        messages = [
            f"row {r}: {problem}: {text[:80]!r}" for r, problem, text in zip(rows.rows, rows.problems, rows.text)
        ]
        log.add_messages(rows.rows, MALFORMED_REASON, messages)
        n = len(rows)
        self.summary.read += n
        self.summary.rejected += n
        self.summary.rejected_by_reason[MALFORMED_REASON] = (
            self.summary.rejected_by_reason.get(MALFORMED_REASON, 0) + n
        )
        arrays = {
            "file": pa.array([str(path)] * n, type=pa.string()),
            "row": pa.array(rows.rows, type=pa.int64()),
            "reason": pa.array([MALFORMED_REASON] * n, type=pa.string()),
            "problems": pa.array(messages, type=pa.string()),
            "raw": pa.array(rows.text, type=pa.string()),
        }
        columns = [arrays.get(f.name, pa.nulls(n, pa.string())) for f in rejects.schema]
        rejects.write(pa.RecordBatch.from_arrays(columns, schema=rejects.schema))


def _prefixed(before: str, inner: FoundText, after: str) -> FoundText:
    def note(index: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(before, inner(index), after, "")

    return note
