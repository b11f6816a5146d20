"""A trial's objective from its logged metrics: the best objective value over the steps within the budget.

Definition (what ``backdrop sweep`` optimises; on the studio world, gold engagement at a KL budget):

- An *evaluation point* is a logged step that carries the objective metric. Its constraint value is the
  constraint metric logged at the same step (in the same or another ``log_metrics`` call); when the trainer
  logs the constraint less often, the latest value logged at an earlier step is used.
- A point is *within budget* when its constraint value satisfies ``min <= value <= max``; without a
  constraint, every point is. A non-finite objective value never counts.
- The trial's objective is the best (max for maximize, min for minimize) objective value over the points within
  budget: early stopping at the budget. The value reported to the pruner at each point is that running best.
- A trial that never meets the budget is not failed and not given a made-up penalty: it completes with the
  objective of its least-violating point and the violation (> 0) is recorded with ``trial.set_constraint``.
  optuna then treats it as infeasible: ``study.best_trial`` skips it and TPE ranks it below every feasible trial,
  ordered by violation, which steers the search back into the budget. The summary lists it as infeasible.
- The final metrics returned by the run function count as one more point after the last logged step.
- Steps before the target's ``first_trained_step`` evaluate the untrained model (``policy train`` evaluates the
  base at epoch 0): they are seen but never the trial's objective, neither as its best nor as its least-violating
  point, so a sweep's "best" is never the base it started from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Literal

from experiments.sweep.space import ConstraintConfig


class ObjectiveMissingError(ValueError):
    """The trial never logged a finite objective (or never the constraint metric it needs)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObjectiveResult:
    """A finished trial's objective."""

    value: float
    """Best objective within budget, or (infeasible) the objective at the least-violating point."""
    step: int
    """The step that value was logged at."""
    feasible: bool
    """Whether any point was within budget (always True without a constraint)."""
    violation: float | None
    """Constraint value minus its bound at that step (<= 0 within budget); None without a constraint."""
    constraint_value: float | None
    """The constraint metric at that step; None without a constraint."""
    points: int
    """Evaluation points seen."""


@dataclasses.dataclass(frozen=True)
class _Point:
    step: int
    value: float
    constraint_value: float | None
    violation: float | None


class ObjectiveTracker:
    """Turns a trial's ``log_metrics`` stream into pruner reports and a final :class:`ObjectiveResult`.

    Feed it every ``(metrics, step)``; :meth:`update` returns the ``(step, running_best)`` pairs that became
    known, for ``trial.report``. A point is decided as soon as its step has both metrics, otherwise when a later
    step arrives (or at :meth:`finish`), so a constraint logged after the objective at the same step is used.
    """

    def __init__(
        self,
        objective: str,
        direction: Literal["maximize", "minimize"],
        constraint: ConstraintConfig | None,
        *,
        first_trained_step: int = 0,
    ) -> None:
        """``first_trained_step``: the first step logged after any training (earlier steps are the untrained
        model and never count; module docstring)."""
        self.objective = objective
        self.first_trained_step = int(first_trained_step)
        self.direction = direction
        self.constraint = constraint
        self._pending: dict[int, dict[str, float]] = {}
        self._decided: set[int] = set()
        self._constraint_by_step: dict[int, float] = {}
        self._points: list[_Point] = []
        self._best: _Point | None = None
        self._last_step = -1
        self.logged_names: set[str] = set()

    def update(self, metrics: Mapping[str, float | None], step: int) -> list[tuple[int, float]]:
        """Record one ``log_metrics`` call; return newly known ``(step, best value within budget so far)``."""
        self.logged_names.update(metrics)
        step = int(step)
        record = self._pending.setdefault(step, {})
        for name in (self.objective, self.constraint.metric if self.constraint else None):
            if name is not None and metrics.get(name) is not None:
                record[name] = float(metrics[name])
        if self.constraint is not None and self.constraint.metric in record:
            self._constraint_by_step[step] = record[self.constraint.metric]
        reports = []
        for pending_step in sorted(self._pending):
            complete = self.constraint is None or self.constraint.metric in self._pending[pending_step]
            if pending_step < step or (pending_step == step and complete):
                reports.extend(self._decide(pending_step))
        self._last_step = max(self._last_step, step)
        return reports

    def finish(self, final_metrics: Mapping[str, float | None] | None = None) -> ObjectiveResult:
        """Decide the remaining points (the final metrics count as a point after the last step) and return."""
        if final_metrics:
            self.update(final_metrics, self._last_step + 1)
        for step in sorted(self._pending):
            self._decide(step)
        finite = [p for p in self._points if math.isfinite(p.value) and p.step >= self.first_trained_step]
        if not finite:
            seen = ", ".join(sorted(self.logged_names)) or "nothing"
            what = "a finite value of" if self._points else "the objective metric"
            after = f" after training began (step >= {self.first_trained_step})" if self.first_trained_step else ""
            raise ObjectiveMissingError(f"the trial never logged {what} '{self.objective}'{after} (it logged: {seen})")
        if self.constraint is None:
            best = self._best
            assert best is not None  # a finite point without a constraint is always within budget
            return self._result(best, feasible=True, points=len(self._points))
        constrained = [p for p in finite if p.violation is not None]
        if not constrained:
            raise ObjectiveMissingError(
                f"the trial logged '{self.objective}' but never the constraint metric '{self.constraint.metric}' "
                "at or before those steps"
            )
        if self._best is not None:
            return self._result(self._best, feasible=True, points=len(self._points))
        least = min(constrained, key=lambda p: (p.violation, p.step))
        return self._result(least, feasible=False, points=len(self._points))

    def _result(self, point: _Point, *, feasible: bool, points: int) -> ObjectiveResult:
        return ObjectiveResult(
            value=point.value,
            step=point.step,
            feasible=feasible,
            violation=point.violation,
            constraint_value=point.constraint_value,
            points=points,
        )

    def _decide(self, step: int) -> list[tuple[int, float]]:
        record = self._pending.pop(step)
        if step in self._decided or self.objective not in record:
            return []
        self._decided.add(step)
        value = record[self.objective]
        constraint_value = violation = None
        if self.constraint is not None:
            constraint_value = record.get(self.constraint.metric, self._latest_constraint_before(step))
            violation = None if constraint_value is None else self.constraint.violation(constraint_value)
        point = _Point(step, value, constraint_value, violation)
        self._points.append(point)
        trained = step >= self.first_trained_step
        within = (
            trained
            and math.isfinite(value)
            and (self.constraint is None or (violation is not None and violation <= 0))
        )
        if within and (self._best is None or self._better(value, self._best.value)):
            self._best = point
        return [] if self._best is None else [(step, self._best.value)]

    def _latest_constraint_before(self, step: int) -> float | None:
        earlier = [s for s in self._constraint_by_step if s <= step]
        return self._constraint_by_step[max(earlier)] if earlier else None

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.direction == "maximize" else value < than
