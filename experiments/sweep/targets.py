"""What a sweep can drive: a registry of targets, each a root config class and an in-process run function.

A target is a :class:`SweepTarget`: the root config class of a command (the one its ``--config`` file fills)
and ``run(config, log_metrics) -> final metrics``, the command's training loop without the CLI around it. The
sweep builds one config per trial (base config + suggested params), opens the trial's run directory, and calls
``run`` with a ``log_metrics`` that also reports the objective to optuna; a pruned trial ends by an
``optuna.TrialPruned`` raised from inside that call, so a run function must let exceptions through (clean up
in ``finally``, never swallow).

Targets are registered by name -> ``"package.module:ATTRIBUTE"`` (a module-level :class:`SweepTarget`), not by
object, because ``--workers N`` starts fresh processes that import the target themselves. A space file names a
registered target only: a ``module:ATTRIBUTE`` there is refused (it would import any module a file names).

Built-in targets (:data:`BUILTIN_TARGETS`), defined lazily by this module's ``__getattr__`` so that importing the
registry does not import torch:

- ``"policy train"``: :data:`POLICY_TRAIN`, root config ``experiments.policy_runs.train.PolicyTrainCommandConfig`` (a
  file like experiments/configs/studio_ddpo.toml with ``[reward] model_dir`` set), run =
  ``experiments.policy_runs.train.train_policy`` without checkpoints; returns the last held-out evaluation
  (``gold/engagement``, ``eval/kl_nats``, ...).
- ``"reward train"``: :data:`REWARD_TRAIN`, root config ``RewardSweepConfig`` (:func:`reward_sweep_config_class`:
  the ``backdrop reward train`` config, e.g. experiments/configs/reward.toml, whose ``[data]`` also takes ``logs``,
  the folder ``--data`` would name), run = the command's in-process training
  (``experiments.reward_fit.fit_from_logs``); returns the test-split metrics (``test/pairwise_accuracy``,
  ``test/click_auc``, ...).

Neither writes a model: a trial's run directory keeps its config.toml and metrics; retrain the best trial's
config with the command itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from experiments.config import ConfigError
from reward.config import RewardDataConfig

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
    first_trained_step: int = 0
    """The first logged step that follows some training; earlier steps evaluate the untrained model and never
    count as the trial's objective (``policy train`` logs the base's evaluation at epoch 0, so 1 there)."""


class TargetError(ConfigError):
    """A space file names a target that is not registered or cannot be imported."""


BUILTIN_TARGETS: dict[str, str] = {
    "policy train": "experiments.sweep.targets:POLICY_TRAIN",
    "reward train": "experiments.sweep.targets:REWARD_TRAIN",
}
"""Built-in targets: command name -> "module:ATTRIBUTE" of its SweepTarget (see the module docstring)."""

_registered: dict[str, str] = {}


def register_target(name: str, import_path: str) -> None:
    """Make ``name`` usable as ``target = "<name>"``; ``import_path`` is ``"package.module:ATTRIBUTE"``.

    Worker processes import ``import_path`` themselves, so it must be importable from ``sys.path``.
    """
    if ":" not in import_path:
        raise ValueError(f"target import path must be 'package.module:ATTRIBUTE', got {import_path!r}")
    _registered[name] = import_path


def unregister_target(name: str) -> None:
    """Remove a target added by :func:`register_target` (tests clean up with it)."""
    _registered.pop(name, None)


def available_targets() -> dict[str, str]:
    """Registered target names -> import paths (built-ins first)."""
    return {**BUILTIN_TARGETS, **_registered}


def target_import_path(name: str) -> str:
    """The ``module:ATTRIBUTE`` behind a registered target name.

    Only registered names are accepted: a space file is input, and naming a module in it would import (run)
    whatever that module is. A project registers its own targets with :func:`register_target` first.

    Raises:
        TargetError: ``name`` is not registered (a ``module:ATTRIBUTE`` import path included).
    """
    targets = available_targets()
    if name in targets:
        return targets[name]
    registered = ", ".join(f"'{n}'" for n in sorted(targets)) or "none"
    if ":" in name:
        raise TargetError(
            f"sweep target '{name}': a space file names a registered target, never a module to import "
            f"(registered: {registered}); register yours with experiments.sweep.targets.register_target(name, "
            "'package.module:ATTRIBUTE') before running the sweep"
        )
    close = difflib.get_close_matches(name, list(targets), n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; registered: {registered}"
    raise TargetError(f"unknown sweep target '{name}'{hint}")


def load_target(name: str) -> SweepTarget:
    """Import and return the :class:`SweepTarget` registered as ``name``."""
    return import_target(target_import_path(name), name)


def import_target(import_path: str, name: str | None = None) -> SweepTarget:
    """Import the :class:`SweepTarget` at ``import_path`` (``module:ATTRIBUTE``).

    Only for import paths that came from the registry: the one a sweep recorded in its own sweep.json when it
    was created, which its worker processes (fresh interpreters without the creator's registrations) import.
    """
    label = name or import_path
    module_name, _, attribute = import_path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"sweep target '{label}': cannot import {module_name!r}: {exc}") from None
    target = getattr(module, attribute, None)
    if not isinstance(target, SweepTarget):
        found = "nothing" if target is None else type(target).__name__
        raise TargetError(f"sweep target '{label}': {import_path} is {found}, expected a SweepTarget")
    return target


# ----------------------------------------------------------------------------------------------------------
# Built-in targets (built on first access: the trainers import torch)


class _MetricsOnlyRun:
    """The run handle ``train_policy`` writes through, reduced to the sweep's ``log_metrics``: no directory, so no
    checkpoints or adapter (the trial's run directory already holds its config and metrics)."""

    dir = None

    def __init__(self, log_metrics: LogMetrics) -> None:
        self.log_metrics = log_metrics

    def write_json(self, name: str, payload: Any) -> None:
        return None


def run_policy_train(config: Any, log_metrics: LogMetrics) -> dict[str, float]:
    """``backdrop policy train`` in-process: DDPO against ``[reward] model_dir``; returns the last evaluation.

    Raises:
        RewardModelMissingError: ``[reward] model_dir`` is unset or missing (every trial would fail the same way).
    """
    # heavy (torch, diffusers): the targets are built on first use, so importing the registry stays light
    from experiments.policy_runs.train import resolve_reward_dir, train_policy

    history = train_policy(
        config, reward_dir=resolve_reward_dir(config, None), run=_MetricsOnlyRun(log_metrics), progress=False
    )
    evaluations = [h for h in history if "gold/engagement" in h]
    final = evaluations[-1] if evaluations else history[-1]
    return {k: float(v) for k, v in final.items() if k != "epoch"}


def run_reward_train(config: Any, log_metrics: LogMetrics) -> dict[str, float]:
    """``backdrop reward train`` in-process on ``[data] logs`` (simulated when unset); returns test metrics.

    Raw or validated logs are split into a temporary folder per trial; give a folder that already holds
    train/validation/test (``backdrop data split``) to skip that work.
    """
    # heavy (torch, diffusers): the targets are built on first use, so importing the registry stays light
    from experiments.reward_fit import fit_from_logs

    with tempfile.TemporaryDirectory(prefix="reward-trial-") as work:
        result = fit_from_logs(config, config.data.logs, Path(work), log_metrics=log_metrics, progress=False)
    return {f"test/{k}": float(v) for k, v in result.test_metrics.items() if isinstance(v, float)}


@functools.cache
def reward_sweep_config_class() -> type:
    """The root config of the ``reward train`` target: the command's, with ``[data] logs`` (what --data names)."""
    # heavy (torch, diffusers): the targets are built on first use, so importing the registry stays light
    from experiments.reward_fit import command_config_class

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class RewardSweepDataConfig(RewardDataConfig):
        """[data] of a reward sweep: ``backdrop reward train``'s, plus the logs every trial trains on."""

        logs: Path | None = None
        """Folder of logs (raw, validated, or with train/validation/test splits); unset = simulate
        ``world_config`` into each trial's temporary folder (slow: simulate once and point here instead)."""

    command = command_config_class()
    fields = [
        (f.name, RewardSweepDataConfig, dataclasses.field(default=RewardSweepDataConfig()))
        if f.name == "data"
        else (f.name, f.type, dataclasses.field(default=f.default))
        for f in dataclasses.fields(command)
    ]
    config_class = dataclasses.make_dataclass("RewardSweepConfig", fields, frozen=True, kw_only=True)
    config_class.__doc__ = f"{command.__doc__} As a sweep target, [data] also takes logs (the folder of --data)."
    return config_class


def __getattr__(name: str) -> SweepTarget:
    """``POLICY_TRAIN`` and ``REWARD_TRAIN``, built on first access (module ``__getattr__``, PEP 562)."""
    if name == "POLICY_TRAIN":
        # heavy (torch, diffusers): the targets are built on first use, so importing the registry stays light
        from experiments.policy_runs.train import PolicyTrainCommandConfig

        return SweepTarget(
            name="policy train", config_class=PolicyTrainCommandConfig, run=run_policy_train, first_trained_step=1
        )
    if name == "REWARD_TRAIN":
        return SweepTarget(name="reward train", config_class=reward_sweep_config_class(), run=run_reward_train)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
