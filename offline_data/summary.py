"""The account of a validation run: per table read = accepted + rejected, per reason, per file problems.

The summary is written as ``summary.json`` beside the outputs and printed as a table by the CLI.
:meth:`TableSummary.reconcile` checks the books (``read == accepted + rejected``, the per-reason counts
add up to ``rejected``, and the files on disk hold exactly those rows); a mismatch is a bug in backdrop,
never a property of the input, so it raises ``RuntimeError``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


@dataclasses.dataclass
class FileProblems:
    """Problems of one input file: the total and the first few, in STYLE.md's format."""

    path: str
    problems: int
    first: list[str]

    def render(self) -> str:
        lines = [f"{self.path}: {self.problems} problem(s); first {len(self.first)}:"]
        return "\n".join(lines + [f"  {text}" for text in self.first])


@dataclasses.dataclass
class TableSummary:
    """Counts and notes for one table."""

    table: str
    format: str
    sources: list[str]
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    """Rejected rows by their first problem's reason code (sums to ``rejected``)."""
    problems: int = 0
    """All problems found (a rejected row can have several)."""
    problems_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    files: list[FileProblems] = dataclasses.field(default_factory=list)
    absent_columns: list[str] = dataclasses.field(default_factory=list)
    """Optional schema columns no input file has (all null in the output)."""
    ignored_columns: list[str] = dataclasses.field(default_factory=list)
    """Input columns that are not in the schema (not carried into the output)."""
    null_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    """Nulls among accepted rows in each nullable column."""
    skipped_checks: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    accepted_path: str | None = None
    """None when strict mode withheld the accepted table."""
    rejects_path: str | None = None

    def reconcile(self) -> None:
        """Check read = accepted + rejected, the per-reason split, and the row counts of the files written.

        Raises:
            RuntimeError: the books do not balance (a bug in backdrop).
        """
        errors = []
        if self.read != self.accepted + self.rejected:
            errors.append(f"read {self.read} != accepted {self.accepted} + rejected {self.rejected}")
        if sum(self.rejected_by_reason.values()) != self.rejected:
            errors.append(f"reasons add up to {sum(self.rejected_by_reason.values())}, rejected {self.rejected}")
        for path, expected in ((self.accepted_path, self.accepted), (self.rejects_path, self.rejected)):
            if path is not None and (on_disk := pq.ParquetFile(path).metadata.num_rows) != expected:
                errors.append(f"{path} holds {on_disk} rows, expected {expected}")
        if errors:
            raise RuntimeError(f"{self.table}: validation counts do not reconcile: {'; '.join(errors)}")

    def top_reasons(self, limit: int = 3) -> str:
        ranked = sorted(self.rejected_by_reason.items(), key=lambda item: (-item[1], item[0]))
        text = ", ".join(f"{reason} {count:,}" for reason, count in ranked[:limit])
        if len(ranked) > limit:
            text += f", +{len(ranked) - limit} more"
        return text or "-"


@dataclasses.dataclass
class ValidationSummary:
    """The whole run."""

    out_dir: str
    strict: bool
    tables: dict[str, TableSummary] = dataclasses.field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(t.rejected for t in self.tables.values())

    @property
    def read(self) -> int:
        return sum(t.read for t in self.tables.values())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read_json(cls, path: Path) -> ValidationSummary:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        tables = {}
        for name, table in data["tables"].items():
            files = [FileProblems(**f) for f in table.pop("files")]
            tables[name] = TableSummary(**table, files=files)
        return cls(out_dir=data["out_dir"], strict=data["strict"], tables=tables)

    def render_table(self) -> str:
        """One line per table: format, read, accepted, rejected, top reasons; then notes and skipped checks."""
        header = ("table", "format", "read", "accepted", "rejected", "top reasons")
        rows = [
            (t.table, t.format, f"{t.read:,}", f"{t.accepted:,}", f"{t.rejected:,}", t.top_reasons())
            for t in self.tables.values()
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        lines = []
        for row in [header, *rows]:
            cells = [
                cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))
            ]
            lines.append("  ".join([*cells, row[-1]]))
        for t in self.tables.values():
            lines.extend(f"note: {t.table}: {note}" for note in t.notes)
            lines.extend(f"not checked: {check}" for check in t.skipped_checks)
        return "\n".join(lines)

    def render_problems(self) -> str:
        """The STYLE.md problem block of every file with problems."""
        return "\n".join(f.render() for t in self.tables.values() for f in t.files if f.problems)
