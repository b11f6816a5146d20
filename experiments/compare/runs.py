"""``backdrop runs compare``: a table and curves for several run directories side by side.

Works on any run directory that has a ``metrics.jsonl`` (every ``start_run`` directory, every sweep trial and
every sweep directory). Per run the table shows its name and timestamp, the config keys whose values differ
between the runs (``run.name`` and ``run.output_dir`` are left out: the name column and the path say them), and
for each metric its final value (last finite one logged) and its best value with the step it was reached at.

"Best" is the minimum for metrics that read as costs (a name with a word loss, kl, error, nll, ece, regret,
violation, sec or time, or a word ending in loss: ``policy/kl``, ``train/bt_loss``, ``rollout/sec_per_batch``)
and the maximum otherwise; ``lower_is_better`` overrides it per metric,
and the table header says which was used (``best(min)`` / ``best(max)``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.tracking import read_metrics
from offline_data.errors import BackdropError, InputUnreadableError
from offline_data.finite import NON_FINITE_KEY

COST_WORDS = ("loss", "kl", "error", "nll", "ece", "regret", "violation", "sec", "time")
IGNORED_CONFIG_KEYS = ("run.name", "run.output_dir")
MISSING = "—"


class RunDirectoryError(InputUnreadableError):
    """A path given as a run directory is not one (no metrics.jsonl) or its files cannot be read."""


class UnknownMetricError(BackdropError):
    """A metric asked for by name was logged by none of the runs."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run directory, read back."""

    path: Path
    name: str
    """run.name from config.toml, else the parent folder's name."""
    timestamp: str
    """environment.json's start time, else the folder name."""
    config: dict[str, Any]
    """Flattened config.toml (dotted keys); empty when the run has none."""
    metrics: list[dict[str, Any]]
    """metrics.jsonl records in logged order."""

    def series(self, metric: str) -> list[tuple[int, float]]:
        """(step, value) of every finite logged value of ``metric``."""
        points = []
        for record in self.metrics:
            value = record.get(metric)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                points.append((int(record["step"]), float(value)))
        return points

    @property
    def metric_names(self) -> set[str]:
        return {k for record in self.metrics for k in record if k not in ("step", "time", NON_FINITE_KEY)}


def load_run(path: str | Path) -> RunRecord:
    """Read a run directory's metrics.jsonl, config.toml (optional) and environment.json (optional).

    Raises:
        RunDirectoryError: no such directory, no metrics.jsonl, or a line of it that is not a JSON object with a
            step (named by file and 1-based line).
    """
    path = Path(path)
    if not path.is_dir():
        raise RunDirectoryError(f"{path}: no such run directory")
    metrics_path = path / "metrics.jsonl"
    if not metrics_path.is_file():
        raise RunDirectoryError(
            f"{path}: not a run directory: no metrics.jsonl (a run directory holds metrics.jsonl and config.toml)"
        )
    try:
        metrics = read_metrics(path)  # a torn last line (a run killed mid-write) is dropped with a warning
    except InputUnreadableError as exc:
        raise RunDirectoryError(str(exc)) from None
    config: dict[str, Any] = {}
    config_path = path / "config.toml"
    if config_path.is_file():
        try:
            config = flatten(tomllib.loads(config_path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RunDirectoryError(f"{config_path}: invalid TOML: {exc}") from None
    timestamp = path.name
    environment_path = path / "environment.json"
    if environment_path.is_file():
        # environment.json is informative only; the folder name is the fallback timestamp.
        with contextlib.suppress(json.JSONDecodeError):
            timestamp = json.loads(environment_path.read_text(encoding="utf-8")).get("started", timestamp)
    name = str(config.get("run.name", path.parent.name))
    return RunRecord(path=path, name=name, timestamp=str(timestamp), config=config, metrics=metrics)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables -> dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Config keys whose value differs between the runs (absent in some counts as different), sorted."""
    keys = sorted({k for run in runs for k in run.config} - set(IGNORED_CONFIG_KEYS))
    return [k for k in keys if len({json.dumps(run.config.get(k), sort_keys=True) for run in runs}) > 1]


def lower_is_better_default(metric: str) -> bool:
    """Whether ``metric`` reads as a cost (see the module docstring)."""
    words = re.split(r"[^a-z0-9]+", metric.lower())
    return any(word in COST_WORDS or word.endswith("loss") for word in words)


@dataclasses.dataclass(frozen=True)
class MetricSummary:
    final: float | None
    best: float | None
    best_step: int | None


def summarize_metric(run: RunRecord, metric: str, *, lower_is_better: bool) -> MetricSummary:
    """Final (last finite) value, best value and the step of the best (first step reaching it)."""
    points = run.series(metric)
    if not points:
        return MetricSummary(None, None, None)
    if lower_is_better:
        best_step, best = min(points, key=lambda p: (p[1], p[0]))
    else:
        best_step, best = max(points, key=lambda p: (p[1], -p[0]))
    return MetricSummary(final=points[-1][1], best=best, best_step=best_step)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The comparison table: runs, the config keys that differ, the metrics and their summaries."""

    runs: list[RunRecord]
    config_keys: list[str]
    metrics: list[str]
    lower_is_better: dict[str, bool]
    summaries: dict[tuple[int, str], MetricSummary]
    """(run index, metric) -> summary."""

    def header(self) -> list[str]:
        columns = ["run", "timestamp", *self.config_keys]
        for metric in self.metrics:
            sense = "min" if self.lower_is_better[metric] else "max"
            columns += [f"{metric} final", f"{metric} best({sense})", f"{metric} best step"]
        return columns

    def rows(self) -> list[list[Any]]:
        rows = []
        for index, run in enumerate(self.runs):
            row: list[Any] = [run.name, run.timestamp, *(run.config.get(k) for k in self.config_keys)]
            for metric in self.metrics:
                summary = self.summaries[(index, metric)]
                row += [summary.final, summary.best, summary.best_step]
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": [{"path": str(r.path), "name": r.name, "timestamp": r.timestamp} for r in self.runs],
            "config_keys": self.config_keys,
            "metrics": {m: {"lower_is_better": self.lower_is_better[m]} for m in self.metrics},
            "rows": [dict(zip(self.header(), row)) for row in self.rows()],
        }


def compare_runs(
    paths: Sequence[str | Path],
    *,
    metrics: Sequence[str] | None = None,
    lower_is_better: Iterable[str] = (),
) -> Comparison:
    """Load the runs and summarise ``metrics`` (default: every metric any run logged).

    Raises:
        RunDirectoryError: a path is not a run directory.
        UnknownMetricError: a requested metric was logged by none of the runs (with a did-you-mean).
    """
    runs = [load_run(p) for p in paths]
    available = sorted(set().union(*(run.metric_names for run in runs)))
    if metrics:
        for metric in metrics:
            if metric not in available:
                close = difflib.get_close_matches(metric, available, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else f"; logged: {', '.join(available) or 'none'}"
                raise UnknownMetricError(f"metric '{metric}' was not logged by any of the runs{hint}")
        chosen = list(metrics)
    else:
        chosen = available
    lower = set(lower_is_better)
    senses = {m: m in lower or lower_is_better_default(m) for m in chosen}
    summaries = {
        (i, m): summarize_metric(run, m, lower_is_better=senses[m]) for i, run in enumerate(runs) for m in chosen
    }
    return Comparison(runs, differing_keys(runs), chosen, senses, summaries)


# ----------------------------------------------------------------------------------------------------------
# Output


def format_cell(value: Any) -> str:
    """A table cell: floats to 6 significant digits, None as a dash."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_cell(v) for v in value) + "]"
    return str(value)


TABLE_WIDTH = 119
"""Widest line :func:`format_table` prints; wider tables continue in blocks below (the full table is in the CSV)."""
CELL_WIDTH = 40
"""Longest cell or header printed; longer ones keep their start and end around an ellipsis."""


def abbreviate(text: str, width: int = CELL_WIDTH) -> str:
    """``text`` cut to ``width`` characters by replacing its middle with "…" (the end of a metric name or path
    usually tells runs apart, so both ends stay)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    width: int = TABLE_WIDTH,
    key_columns: int = 1,
    cell_width: int = CELL_WIDTH,
) -> str:
    """A plain-text table with aligned columns (numbers right-aligned) no wider than ``width``.

    Cells and headers longer than ``cell_width`` are abbreviated (:func:`abbreviate`). When the columns do not fit
    in ``width``, the table continues in blocks separated by a blank line, each repeating the first
    ``key_columns`` columns (the run) so every block reads on its own.
    """
    header = [abbreviate(h, cell_width) for h in header]
    cells = [[abbreviate(format_cell(v), cell_width) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(header))]
    keys = list(range(min(key_columns, len(header))))
    blocks: list[list[int]] = []
    for column in range(len(keys), len(header)):
        block = blocks[-1] if blocks else None
        used = sum(widths[c] + 2 for c in [*keys, *(block or [])])
        if block is None or (block and used + widths[column] > width):
            blocks.append([column])
        else:
            block.append(column)
    parts = []
    for block in blocks or [[]]:
        columns = [*keys, *block]

        def line(values: Sequence[str], columns: list[int] = columns) -> str:
            return "  ".join(
                values[c].rjust(widths[c]) if numeric[c] else values[c].ljust(widths[c]) for c in columns
            ).rstrip()

        lines = [line(header), "  ".join("-" * widths[c] for c in columns)]
        lines += [line(row) for row in cells]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def write_comparison(comparison: Comparison, out_dir: str | Path) -> dict[str, Any]:
    """Write comparison.csv, comparison.json and one PNG per metric (runs overlaid); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "comparison.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(comparison.header())
        for row in comparison.rows():
            writer.writerow(["" if v is None else json.dumps(v) if isinstance(v, list) else v for v in row])
    (out / "comparison.json").write_text(json.dumps(comparison.to_json(), indent=2, default=str) + "\n")
    plots = {m: str(plot_metric(comparison, m, out)) for m in comparison.metrics}
    return {"csv": str(out / "comparison.csv"), "json": str(out / "comparison.json"), "plots": plots}


def plot_metric(comparison: Comparison, metric: str, out_dir: Path) -> Path:
    """One figure: ``metric`` against step, one line per run, labelled by name and the differing config keys."""
    # matplotlib loads only when a figure is drawn, and with the Agg backend selected before pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the Agg backend is chosen

    figure, axes = plt.subplots(figsize=(7, 4))
    for run in comparison.runs:
        points = run.series(metric)
        if not points:
            continue
        steps, values = zip(*points)
        axes.plot(steps, values, marker="." if len(points) < 30 else None, label=run_label(run, comparison))
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(metric)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize="small")
    path = out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_") + ".png")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run_label(run: RunRecord, comparison: Comparison, max_keys: int = 3) -> str:
    """``name (key=value, ...)`` with up to ``max_keys`` of the differing config keys."""
    shown = [f"{k.rsplit('.', 1)[-1]}={format_cell(run.config.get(k))}" for k in comparison.config_keys[:max_keys]]
    return f"{run.name} ({', '.join(shown)})" if shown else f"{run.name} [{run.timestamp}]"
