"""What a sweep can drive: a registry of targets, each a root config class and an in-process run function.

A target is a :class:`SweepTarget`: the root config class of a command (the one its ``--config`` file fills)
and ``run(config, log_metrics) -> final metrics``, the command's training loop without the CLI around it. The
sweep builds one config per trial (base config + suggested params), opens the trial's run directory, and calls
``run`` with a ``log_metrics`` that also reports the objective to optuna; a pruned trial ends by an
``optuna.TrialPruned`` raised from inside that call, so a run function must let exceptions through (clean up
in ``finally``, never swallow).

Targets are registered by name -> ``"package.module:ATTRIBUTE"`` (a module-level :class:`SweepTarget`), not by
object, because ``--workers N`` starts fresh processes that import the target themselves. A space file may also
name such a reference directly (``target = "my_project.targets:TARGET"``).

Registration point for the trainers: when ``backdrop policy train`` (policy/trainer.py) and ``backdrop reward
train`` (reward/train.py) expose their in-process entry points, add them to :data:`BUILTIN_TARGETS`, e.g.
``"policy train": "experiments.sweep_targets:POLICY_TRAIN"`` with ``POLICY_TRAIN = SweepTarget(name="policy
train", config_class=PolicyTrainCommandConfig, run=train_policy)`` defined below. None exists yet, so the table is
empty and ``backdrop sweep`` lists that.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from experiments.config import ConfigError

LogMetrics = Callable[[Mapping[str, float], int], None]
"""``log_metrics(metrics, step)``: what every trainer receives instead of importing tracking."""


class RunFunction(Protocol):
    def __call__(self, config: Any, log_metrics: LogMetrics) -> Mapping[str, float] | None:
        """Train with ``config``, logging through ``log_metrics``; return the final metrics (or None)."""


@dataclasses.dataclass(frozen=True)
class SweepTarget:
    """A command the sweep can run in-process."""

    name: str
    """The command, as written in space files ("policy train")."""
    config_class: type
    """The command's root config dataclass; it must have a ``run: RunConfig`` section."""
    run: RunFunction
    """``run(config, log_metrics) -> final metrics``; must let ``optuna.TrialPruned`` propagate."""


class TargetError(ConfigError):
    """A space file names a target that is not registered or cannot be imported."""


BUILTIN_TARGETS: dict[str, str] = {}
"""Built-in targets: command name -> "module:ATTRIBUTE" of its SweepTarget (see the module docstring)."""

_registered: dict[str, str] = {}


def register_target(name: str, reference: str) -> None:
    """Make ``name`` usable as ``target = "<name>"``; ``reference`` is ``"package.module:ATTRIBUTE"``.

    Worker processes import ``reference`` themselves, so it must be importable from ``sys.path``.
    """
    if ":" not in reference:
        raise ValueError(f"target reference must be 'package.module:ATTRIBUTE', got {reference!r}")
    _registered[name] = reference


def unregister_target(name: str) -> None:
    """Remove a target added by :func:`register_target` (tests clean up with it)."""
    _registered.pop(name, None)


def available_targets() -> dict[str, str]:
    """Registered target names -> references (built-ins first)."""
    return {**BUILTIN_TARGETS, **_registered}


def target_reference(name: str) -> str:
    """The ``module:ATTRIBUTE`` behind a target name (a name that is already a reference is returned as is)."""
    targets = available_targets()
    if name in targets:
        return targets[name]
    if ":" in name:
        return name
    if targets:
        close = difflib.get_close_matches(name, list(targets), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; registered: {', '.join(sorted(targets))}"
    else:
        hint = (
            "; no trainer is registered yet (see experiments/sweep_targets.py); name an importable "
            "SweepTarget as 'package.module:ATTRIBUTE'"
        )
    raise TargetError(f"unknown sweep target '{name}'{hint}")


def load_target(name_or_reference: str) -> SweepTarget:
    """Import and return the :class:`SweepTarget` for a registered name or a ``module:ATTRIBUTE`` reference."""
    reference = target_reference(name_or_reference)
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"sweep target '{name_or_reference}': cannot import {module_name!r}: {exc}") from None
    target = getattr(module, attribute, None)
    if not isinstance(target, SweepTarget):
        found = "nothing" if target is None else type(target).__name__
        raise TargetError(f"sweep target '{name_or_reference}': {reference} is {found}, expected a SweepTarget")
    return target
