"""One sweep trial: build its config, open its run directory, run the target, report to optuna, record the outcome.

Each trial is an ordinary run directory at ``<sweep>/trials/<number>`` (config.toml with the resolved config,
environment.json, metrics.jsonl, log.txt, TensorBoard) plus ``trial.json``: the params, the state (RUNNING,
COMPLETE, PRUNED with the step, FAILED with the error, INTERRUPTED), the objective and where it was reached, the
worker's pid and CUDA_VISIBLE_DEVICES.
A failed trial also gets ``error.txt`` with the traceback. Nothing is deleted: a pruned trial keeps its curves.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from experiments.sweep.objective import ObjectiveResult, ObjectiveTracker
from experiments.sweep.space import ParamValue, SweepSpaceConfig, apply_params, suggest_params
from experiments.sweep.targets import SweepTarget
from experiments.tracking import Run, start_run

logger = logging.getLogger(__name__)

TRIAL_FILE = "trial.json"


def trial_dir(sweep_dir: Path, number: int) -> Path:
    """Where trial ``number`` of the sweep in ``sweep_dir`` writes its run."""
    return sweep_dir / "trials" / f"{number:04d}"


def write_trial_record(directory: Path, record: Mapping[str, Any]) -> None:
    """(Re)write ``trial.json`` in a trial's directory."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(record), indent=2, default=str, allow_nan=True)
    (directory / TRIAL_FILE).write_text(text + "\n", encoding="utf-8")


def read_trial_record(directory: Path) -> dict[str, Any] | None:
    """The ``trial.json`` of a trial directory, or None when the trial never got that far."""
    path = directory / TRIAL_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


class _ReportingLog:
    """The ``log_metrics`` a trial's target receives: writes the run's metrics, reports to optuna, prunes."""

    def __init__(self, run: Run, tracker: ObjectiveTracker, trial: optuna.Trial) -> None:
        self.run = run
        self.tracker = tracker
        self.trial = trial
        self.last_reported = -1
        self.pruned_at: int | None = None

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log_metrics(metrics, step)
        for report_step, value in self.tracker.update(metrics, step):
            # Pruners assume increasing steps; a trainer that logs an earlier step again is not re-reported.
            if report_step <= self.last_reported:
                continue
            self.trial.report(value, report_step)
            self.last_reported = report_step
            if self.trial.should_prune():
                self.pruned_at = report_step
                raise optuna.TrialPruned(
                    f"pruned at step {report_step}: {self.tracker.objective} so far {value:.6g} "
                    "(worse than the pruner's threshold at that step)"
                )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrialRunner:
    """The optuna objective of a sweep: ``TrialRunner(...)(trial) -> objective value``.

    Raises from ``__call__`` what optuna expects: ``TrialPruned`` for a pruned trial, the target's exception
    for a failed one (optuna records it as FAIL; the sweep catches it and goes on).
    """

    sweep_dir: Path
    target: SweepTarget
    base_config: Any
    space: SweepSpaceConfig
    threads: int
    """run.threads of every trial (cores / workers)."""

    def __call__(self, trial: optuna.Trial) -> float:
        directory = trial_dir(self.sweep_dir, trial.number)
        trial.set_user_attr("run_dir", str(directory.relative_to(self.sweep_dir)))
        params: dict[str, ParamValue] = {}
        record: dict[str, Any] = {
            "number": trial.number,
            "state": "RUNNING",
            "params": params,
            "retry_of": trial.user_attrs.get("retry_of"),
            "pid": os.getpid(),
            # The GPU(s) this worker was given (experiments/sweep/study.py worker_devices); None: not set.
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "started": dt.datetime.now().isoformat(timespec="seconds"),
        }
        try:
            params.update(suggest_params(trial, self.space))
            config = self.trial_config(trial.number, params)
            with start_run(
                config.run,
                config,
                command=f"sweep trial ({self.target.name})",
                extra={"sweep": {"dir": str(self.sweep_dir), "trial": trial.number, "params": params}},
                directory=directory,
                record_errors=False,  # a failed or pruned trial is recorded by the handlers below
            ) as run:
                write_trial_record(directory, record)
                tracker = ObjectiveTracker(
                    self.space.objective,
                    self.space.direction,
                    self.space.budget,
                    first_trained_step=self.target.first_trained_step,
                )
                log = _ReportingLog(run, tracker, trial)
                try:
                    final = self.target.run(config, log)
                except optuna.TrialPruned:
                    record.update(state="PRUNED", pruned_at_step=log.pruned_at)
                    raise
                result = tracker.finish(final)
        except optuna.TrialPruned:
            record["finished"] = dt.datetime.now().isoformat(timespec="seconds")
            write_trial_record(directory, record)
            logger.info("trial %d pruned at step %s  %s", trial.number, record.get("pruned_at_step"), params)
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("error", message[:2000])
            record.update(state="FAILED", error=message, finished=dt.datetime.now().isoformat(timespec="seconds"))
            write_trial_record(directory, record)
            (directory / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            logger.warning("trial %d failed: %s (traceback: %s)", trial.number, message, directory / "error.txt")
            raise
        except BaseException:
            record.update(state="INTERRUPTED", finished=dt.datetime.now().isoformat(timespec="seconds"))
            write_trial_record(directory, record)
            raise
        self._record_result(trial, result)
        record.update(
            state="COMPLETE",
            value=result.value,
            objective_step=result.step,
            feasible=result.feasible,
            constraint_value=result.constraint_value,
            violation=result.violation,
            final_metrics=dict(final) if final else None,
            finished=dt.datetime.now().isoformat(timespec="seconds"),
        )
        write_trial_record(directory, record)
        budget = "" if self.space.budget is None else (" within budget" if result.feasible else " OVER budget")
        logger.info(
            "trial %d complete: %s = %.6g at step %d%s  %s",
            trial.number, self.space.objective, result.value, result.step, budget, params,
        )  # fmt: skip
        return result.value

    def trial_config(self, number: int, params: Mapping[str, ParamValue]) -> Any:
        """The base config with ``params`` set and the trial's run section (name, folder, threads)."""
        run_keys = {"run.output_dir": str(self.sweep_dir), "run.name": f"trial-{number:04d}"}
        if self.threads > 0:
            run_keys["run.threads"] = self.threads
        return apply_params(self.base_config, {**params, **run_keys}, source=f"trial {number}")

    def _record_result(self, trial: optuna.Trial, result: ObjectiveResult) -> None:
        trial.set_user_attr("objective_step", result.step)
        if self.space.budget is not None:
            assert result.violation is not None  # finish() only returns constrained points under a constraint
            trial.set_constraint(self.space.budget.metric, result.violation)
            trial.set_user_attr("constraint_value", result.constraint_value)
            trial.set_user_attr("feasible", result.feasible)
