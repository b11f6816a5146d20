"""The sweep objective: best value within the budget, pruner reports, infeasible trials, missing metrics."""

from __future__ import annotations

import math
import re

import pytest

from experiments.sweep.objective import ObjectiveMissingError, ObjectiveTracker
from experiments.sweep.space import ConstraintConfig

KL_BUDGET = ConstraintConfig(metric="policy/kl", max=0.05)


def feed(tracker: ObjectiveTracker, calls: list[tuple[dict, int]]) -> list[tuple[int, float]]:
    reports = []
    for metrics, step in calls:
        reports += tracker.update(metrics, step)
    return reports


def test_unconstrained_maximize_reports_running_best() -> None:
    tracker = ObjectiveTracker("gold/engagement", "maximize", None)
    reports = feed(
        tracker, [({"gold/engagement": 1.0}, 0), ({"gold/engagement": 3.0}, 1), ({"gold/engagement": 2.0}, 2)]
    )
    assert reports == [(0, 1.0), (1, 3.0), (2, 3.0)]
    result = tracker.finish()
    assert (result.value, result.step, result.feasible, result.violation) == (3.0, 1, True, None)


def test_unconstrained_minimize() -> None:
    tracker = ObjectiveTracker("eval/loss", "minimize", None)
    reports = feed(tracker, [({"eval/loss": 0.7}, 0), ({"eval/loss": 0.4}, 1), ({"eval/loss": 0.5}, 2)])
    assert reports == [(0, 0.7), (1, 0.4), (2, 0.4)]
    assert tracker.finish().value == 0.4


def test_best_within_kl_budget() -> None:
    # gold rises with KL; the step with KL 0.2 is over the 0.05 budget, so the objective is 2 (step 1), not 5.
    tracker = ObjectiveTracker("gold/engagement", "maximize", KL_BUDGET)
    calls = [
        ({"gold/engagement": 1.0, "policy/kl": 0.01}, 0),
        ({"gold/engagement": 2.0, "policy/kl": 0.04}, 1),
        ({"gold/engagement": 5.0, "policy/kl": 0.2}, 2),
    ]
    assert feed(tracker, calls) == [(0, 1.0), (1, 2.0), (2, 2.0)]
    result = tracker.finish()
    assert (result.value, result.step, result.feasible) == (2.0, 1, True)
    assert result.constraint_value == 0.04
    assert result.violation == pytest.approx(0.04 - 0.05)


def test_never_within_budget_is_infeasible_with_least_violation() -> None:
    tracker = ObjectiveTracker("gold/engagement", "maximize", KL_BUDGET)
    calls = [({"gold/engagement": 1.0, "policy/kl": 0.1}, 0), ({"gold/engagement": 0.5, "policy/kl": 0.07}, 1)]
    assert feed(tracker, calls) == []  # nothing within budget: nothing to report to the pruner
    result = tracker.finish()
    assert result.feasible is False
    assert (result.value, result.step) == (0.5, 1)  # the least-violating point, not the best objective
    assert result.violation == pytest.approx(0.02)


def test_constraint_logged_after_objective_at_the_same_step() -> None:
    tracker = ObjectiveTracker("gold/engagement", "maximize", KL_BUDGET)
    assert tracker.update({"gold/engagement": 1.0}, 0) == []  # waits for the step's KL
    assert tracker.update({"policy/kl": 0.01}, 0) == [(0, 1.0)]


def test_constraint_logged_less_often_is_carried_forward() -> None:
    tracker = ObjectiveTracker("gold/engagement", "maximize", KL_BUDGET)
    assert tracker.update({"gold/engagement": 1.0, "policy/kl": 0.01}, 0) == [(0, 1.0)]
    assert tracker.update({"gold/engagement": 4.0}, 1) == []  # step 1 may still get its own KL
    assert tracker.update({"gold/engagement": 3.0, "policy/kl": 0.9}, 2) == [(1, 4.0), (2, 4.0)]
    result = tracker.finish()
    assert (result.value, result.step, result.constraint_value) == (4.0, 1, 0.01)


def test_min_bound_and_violation_values() -> None:
    band = ConstraintConfig(metric="m", min=1.0, max=2.0)
    assert band.violation(1.5) == -0.5
    assert band.violation(0.25) == 0.75
    assert band.violation(3.0) == 1.0
    assert band.violation(math.nan) == math.inf
    tracker = ObjectiveTracker("score", "maximize", ConstraintConfig(metric="m", min=1.0))
    feed(tracker, [({"score": 9.0, "m": 0.5}, 0), ({"score": 3.0, "m": 1.5}, 1)])
    assert tracker.finish().value == 3.0


def test_non_finite_objective_never_counts() -> None:
    tracker = ObjectiveTracker("score", "maximize", None)
    assert feed(tracker, [({"score": math.nan}, 0), ({"score": 2.0}, 1), ({"score": math.inf}, 2)]) == [
        (1, 2.0),
        (2, 2.0),
    ]
    assert tracker.finish().value == 2.0


def test_final_metrics_count_as_a_point_after_the_last_step() -> None:
    tracker = ObjectiveTracker("score", "maximize", ConstraintConfig(metric="kl", max=1.0))
    feed(tracker, [({"score": 1.0, "kl": 0.5}, 3)])
    result = tracker.finish({"score": 2.0})
    assert (result.value, result.step, result.constraint_value) == (2.0, 4, 0.5)


@pytest.mark.parametrize(
    ("constraint", "calls", "message"),
    [
        (None, [({"loss": 1.0}, 0)], "never logged the objective metric 'score' (it logged: loss)"),
        (None, [({"score": math.nan}, 0)], "never logged a finite value of 'score'"),
        (KL_BUDGET, [({"score": 1.0}, 0)], "never the constraint metric 'policy/kl'"),
    ],
)
def test_missing_metrics_are_named(constraint, calls, message) -> None:
    tracker = ObjectiveTracker("score", "maximize", constraint)
    feed(tracker, calls)
    with pytest.raises(ObjectiveMissingError, match=re.escape(message)):
        tracker.finish()


def test_the_untrained_step_is_never_the_best() -> None:
    """policy train evaluates the base at epoch 0; a sweep whose training only hurt must not report the base."""
    tracker = ObjectiveTracker("gold/engagement", "maximize", None, first_trained_step=1)
    reports = feed(
        tracker, [({"gold/engagement": 0.9}, 0), ({"gold/engagement": 0.5}, 1), ({"gold/engagement": 0.6}, 2)]
    )
    assert reports == [(1, 0.5), (2, 0.6)]
    result = tracker.finish()
    assert (result.value, result.step, result.points) == (0.6, 2, 3)


def test_the_untrained_step_is_not_the_least_violating_point_either() -> None:
    tracker = ObjectiveTracker("gold/engagement", "maximize", KL_BUDGET, first_trained_step=1)
    feed(tracker, [({"gold/engagement": 0.9, "policy/kl": 0.0}, 0), ({"gold/engagement": 0.5, "policy/kl": 0.2}, 1)])
    result = tracker.finish()
    assert not result.feasible and result.step == 1


def test_a_trial_that_logged_only_the_untrained_step_is_missing_its_objective() -> None:
    tracker = ObjectiveTracker("gold/engagement", "maximize", None, first_trained_step=1)
    tracker.update({"gold/engagement": 0.9}, 0)
    with pytest.raises(ObjectiveMissingError, match=re.escape("after training began (step >= 1)")):
        tracker.finish()


def test_policy_train_target_declares_its_untrained_step() -> None:
    from experiments.sweep.targets import load_target

    assert load_target("policy train").first_trained_step == 1
    assert load_target("reward train").first_trained_step == 0
