"""The summary of a sweep: best trials, parameter importances and optuna's plots, written into the sweep directory.

- ``summary.json``: counts by state (and feasible / infeasible under a constraint), the best trials, every
  trial (number, state, value, params, constraint, run directory, error), importances, the plots written and
  the plots skipped with the reason;
- ``best_trials.csv``: the best-trials table; ``metrics.jsonl``: per trial number, ``sweep/value`` and
  ``sweep/best_value`` (so ``backdrop runs compare`` works on sweep directories too);
- ``plots/``: optuna.visualization.matplotlib's optimization history (all trials, infeasible ones marked),
  intermediate values (when trials reported any), and, over the feasible completed trials only, param
  importances, parallel coordinate and slice (an infeasible trial's value is not a value at the budget).

Importances use the evaluator named in the space (fANOVA by default, seeded) on the feasible completed trials;
they need at least :data:`MIN_TRIALS_FOR_IMPORTANCE` of them, and a plot that needs more completed trials than
there are is skipped with a note rather than failing the sweep.
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from optuna.visualization import matplotlib as optuna_plots

from experiments.compare.runs import format_table
from experiments.sweep.study import STUDY_NAME, Sweep, open_storage
from experiments.tracking import Run
from offline_data.finite import dumps_strict

logger = logging.getLogger(__name__)

MIN_TRIALS_FOR_IMPORTANCE = 3
"""Importances and the importance plot need this many feasible completed trials."""
MIN_TRIALS_FOR_COMPARISON_PLOTS = 2
"""Parallel-coordinate and slice plots need this many feasible completed trials."""


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every trial of the study as a plain dict (state, value, params, constraint, run directory, error)."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        constraints = trial.constraints
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "feasible": (all(v <= 0 for v in constraints.values()) if constraints else None),
                "constraint_value": trial.user_attrs.get("constraint_value"),
                "objective_step": trial.user_attrs.get("objective_step"),
                "last_step": trial.last_step,
                "params": dict(trial.params),
                "run_dir": trial.user_attrs.get("run_dir"),
                "retry_of": trial.user_attrs.get("retry_of"),
                "error": trial.user_attrs.get("error"),
                "duration_s": trial.duration.total_seconds() if trial.duration is not None else None,
            }
        )
    return rows


def feasible_complete(study: Any) -> list[Any]:
    """Completed trials within the budget (all completed trials when there is no constraint)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in trials if all(v <= 0 for v in t.constraints.values())]


def best_rows(study: Any, space: Any) -> list[dict[str, Any]]:
    """The ``top_k`` feasible completed trials, best first."""
    trials = sorted(feasible_complete(study), key=lambda t: t.value, reverse=space.direction == "maximize")
    by_number = {row["number"]: row for row in trial_rows(study)}
    return [by_number[t.number] for t in trials[: space.top_k]]


def make_evaluator(name: str, seed: int) -> Any:
    if name == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    if name == "mdi":
        return optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=seed)
    return optuna.importance.PedAnovaImportanceEvaluator()


def summarize_sweep(sweep: Sweep) -> dict[str, Any]:
    """Compute and write the summary of ``sweep`` (see the module docstring); return summary.json's content."""
    space = sweep.space
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(sweep.paths))
    feasible = study if space.budget is None else _feasible_study(study, space.direction)
    n_feasible = len(feasible_complete(study))
    rows = trial_rows(study)
    states: dict[str, int] = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    summary: dict[str, Any] = {
        "sweep_dir": str(sweep.paths.dir),
        "target": space.target,
        "objective": space.objective,
        "direction": space.direction,
        "constraint": None if space.budget is None else vars(space.budget),
        "states": states,
        "feasible_complete": n_feasible,
        "best": best_rows(study, space),
        "importances": None,
        "importance_evaluator": space.importance,
        "notes": [],
        "plots": {},
        "trials": rows,
    }
    if space.budget is not None:
        infeasible = states.get("COMPLETE", 0) - n_feasible
        summary["notes"].append(
            f"{infeasible} completed trial(s) never met the budget on '{space.budget.metric}' (infeasible: "
            "excluded from best trials, importances, parallel-coordinate and slice plots, whose trial numbers "
            "count the feasible trials only)"
        )
    if n_feasible >= MIN_TRIALS_FOR_IMPORTANCE:
        try:
            summary["importances"] = optuna.importance.get_param_importances(
                feasible, evaluator=make_evaluator(space.importance, space.seed)
            )
        except (ValueError, RuntimeError) as exc:
            summary["notes"].append(f"importances not computed: {exc}")
    else:
        summary["notes"].append(
            f"importances need {MIN_TRIALS_FOR_IMPORTANCE} feasible completed trials, have {n_feasible}"
        )
    summary["plots"] = write_plots(sweep.paths.dir / "plots", study, feasible, n_feasible, space, summary["notes"])
    _write_tables(sweep, summary)
    return summary


def _feasible_study(study: Any, direction: str) -> Any:
    """An in-memory study holding only the feasible completed trials (for importances and comparison plots)."""
    copy = optuna.create_study(direction=direction)
    copy.add_trials(feasible_complete(study))
    return copy


def write_plots(out: Path, study: Any, feasible: Any, n_feasible: int, space: Any, notes: list[str]) -> dict[str, str]:
    """Save optuna's matplotlib plots as PNG; append a note for each plot skipped. Returns name -> path.

    ``feasible`` is the study the importance, parallel-coordinate and slice plots are drawn from (the study
    itself without a constraint), holding ``n_feasible`` completed trials within budget.
    """
    # matplotlib loads only when plots are drawn, and with the Agg backend selected before pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    out.mkdir(parents=True, exist_ok=True)
    completed = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    reported = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    enough_for_importance = n_feasible >= MIN_TRIALS_FOR_IMPORTANCE
    enough_for_comparison = n_feasible >= MIN_TRIALS_FOR_COMPARISON_PLOTS
    importance_need = f"needs {MIN_TRIALS_FOR_IMPORTANCE} feasible completed trials, have {n_feasible}"
    comparison_need = f"needs {MIN_TRIALS_FOR_COMPARISON_PLOTS} feasible completed trials, have {n_feasible}"
    evaluator = make_evaluator(space.importance, space.seed)
    # (file name, drawable, why not, plot function, its arguments)
    plans = [
        ("optimization_history", completed >= 1, "needs 1 completed trial", optuna_plots.plot_optimization_history,
         {"study": study}),
        ("intermediate_values", reported, "no trial reported intermediate values",
         optuna_plots.plot_intermediate_values, {"study": study}),
        ("param_importances", enough_for_importance, importance_need, optuna_plots.plot_param_importances,
         {"study": feasible, "evaluator": evaluator}),
        ("parallel_coordinate", enough_for_comparison, comparison_need, optuna_plots.plot_parallel_coordinate,
         {"study": feasible}),
        ("slice", enough_for_comparison, comparison_need, optuna_plots.plot_slice, {"study": feasible}),
    ]  # fmt: skip
    written = {}
    for name, possible, reason, draw, kwargs in plans:
        if not possible:
            notes.append(f"plot {name} skipped: {reason}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = draw(**kwargs)
        except (ValueError, RuntimeError) as exc:
            notes.append(f"plot {name} skipped: {exc}")
            continue
        figure = _figure_of(axes)
        path = out / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written[name] = str(path)
    return written


def _figure_of(axes: Any) -> Any:
    """The figure behind what a plot function returned (one Axes, or an array of them for slice plots)."""
    if hasattr(axes, "figure"):
        return axes.figure
    return next(iter(axes.flat)).figure


def _write_tables(sweep: Sweep, summary: dict[str, Any]) -> None:
    directory = sweep.paths.dir
    (directory / "summary.json").write_text(
        dumps_strict(summary, indent=2, default=str) + "\n",
        encoding="utf-8",  # NaN -> null, listed in non_finite
    )
    header, rows = best_table(summary, list(sweep.space.params))
    with (directory / "best_trials.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    # The sweep's own curve: objective per trial and best so far (rewritten whole, so a resume does not repeat).
    (directory / "metrics.jsonl").unlink(missing_ok=True)
    best = math.nan
    with Run(directory) as run:
        for row in sorted(summary["trials"], key=lambda r: r["number"]):
            if row["state"] != "COMPLETE" or row["value"] is None:
                continue
            if row["feasible"] is not False:
                better = max if summary["direction"] == "maximize" else min
                best = row["value"] if math.isnan(best) else better(best, row["value"])
            run.log_metrics({"sweep/value": row["value"], "sweep/best_value": best}, step=row["number"])


def best_table(summary: dict[str, Any], param_names: list[str]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the best-trials table."""
    constrained = summary["constraint"] is not None
    header = ["trial", summary["objective"], "at step"]
    if constrained:
        header.append(summary["constraint"]["metric"])
    header += [*param_names, "run_dir"]
    rows = []
    for row in summary["best"]:
        line = [row["number"], row["value"], row["objective_step"]]
        if constrained:
            line.append(row["constraint_value"])
        line += [row["params"].get(p) for p in param_names]
        line.append(row["run_dir"])
        rows.append(line)
    return header, rows


def format_summary(summary: dict[str, Any], param_names: list[str]) -> str:
    """The text printed at the end of a sweep: counts, best trials, importances, notes."""
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary["states"].items()))
    lines = [f"trials: {states or 'none'}"]
    header, rows = best_table(summary, param_names)
    if rows:
        lines += ["", f"best trials ({summary['direction']} {summary['objective']}):", format_table(header, rows)]
    else:
        lines += ["", "no feasible completed trial yet"]
    if summary["importances"]:
        lines += ["", f"parameter importances ({summary['importance_evaluator']}):"]
        lines += [f"  {name}: {value:.3f}" for name, value in summary["importances"].items()]
    if summary["notes"]:
        lines += ["", *(f"note: {note}" for note in summary["notes"])]
    return "\n".join(lines)
