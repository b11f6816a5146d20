"""The search space of ``backdrop sweep``: a strict TOML file naming the target, the objective and the params.

Example (``experiments/configs/policy_train_space.toml``)::

    target = "policy train"                    # which command's root config the keys belong to
    objective = "gold/engagement"              # metric name in the trial's metrics.jsonl
    direction = "maximize"
    constraint = { metric = "policy/kl", max = 0.05 }

    [params]
    "policy.trainer.kl_coef" = { type = "float", low = 1e-3, high = 1e-1, log = true }
    "policy.lora.rank" = { type = "int", choices = [2, 4, 8] }

The file is read with the same strict loader as every config (unknown keys fail with a suggestion). Params are
checked against the target's root config BEFORE the first trial (:func:`check_space`): a key that is not in the
config fails naming it, with a did-you-mean over the config's dotted keys, and every bound and choice is tried
on the base config so that a value its ``__post_init__`` rejects fails up front rather than in trial 7.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from experiments.config import ConfigError, from_dict, load_config, to_dict

ParamValue = bool | int | float | str

# Keys the sweep sets itself for every trial (where the trial writes, how many threads it may use).
RESERVED_KEYS = ("run.output_dir", "run.name", "run.threads")


class SweepSpaceError(ConfigError):
    """A search space does not fit the target's config (unknown key, wrong type, rejected bound)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParamConfig:
    """One searched config key: a float or int range, or a list of choices."""

    type: Literal["float", "int", "categorical"]
    """"float" (low..high), "int" (low..high, or choices), "categorical" (choices of any TOML scalars)."""
    low: float | None = None
    """Lower bound, inclusive (float and int ranges); must be > 0 with log = true."""
    high: float | None = None
    """Upper bound, inclusive (float and int ranges)."""
    log: bool = False
    """Sample the range uniformly in log space (learning rates, KL coefficients); excludes step."""
    step: float | None = None
    """Grid spacing of the range (int ranges: an integer >= 1, default 1; float ranges: none by default)."""
    choices: tuple[ParamValue, ...] | None = None
    """The values to choose from (categorical, or int choices such as LoRA ranks [2, 4, 8])."""

    def __post_init__(self) -> None:
        has_range = self.low is not None or self.high is not None
        if self.type == "categorical" or (self.type == "int" and self.choices is not None):
            if not self.choices:
                raise ValueError(f"type = {self.type!r} needs a non-empty choices list")
            if has_range or self.log or self.step is not None:
                raise ValueError("choices excludes low, high, log and step")
            if self.type == "int" and not all(type(c) is int for c in self.choices):
                raise ValueError(f"type = 'int' choices must all be integers, got {list(self.choices)}")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"choices must be distinct, got {list(self.choices)}")
            return
        if self.choices is not None:
            raise ValueError("choices is only for type = 'categorical' or 'int'")
        if self.low is None or self.high is None:
            raise ValueError(f"type = {self.type!r} needs low and high (or choices)")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or not self.low < self.high:
            raise ValueError(f"needs finite low < high, got low = {self.low}, high = {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.step is not None and not self.step > 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        if self.type == "int":
            for name, value in (("low", self.low), ("high", self.high), ("step", self.step)):
                if value is not None and not float(value).is_integer():
                    raise ValueError(f"type = 'int' needs an integer {name}, got {value}")

    @property
    def probe_values(self) -> tuple[ParamValue, ...]:
        """The values tried on the base config before the first trial: both bounds, or every choice."""
        if self.choices is not None:
            return self.choices
        if self.type == "int":
            return (int(self.low), int(self.high))  # type: ignore[arg-type]
        return (float(self.low), float(self.high))  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConstraintConfig:
    """A budget on a second metric: only logged steps within it count for the objective (e.g. a KL budget)."""

    metric: str = ""
    """Metric name in metrics.jsonl, e.g. "policy/kl"; empty (the default) means no budget."""
    max: float | None = None
    """Steps whose constraint metric is above this are outside the budget."""
    min: float | None = None
    """Steps whose constraint metric is below this are outside the budget."""

    def __post_init__(self) -> None:
        if not self.metric:
            if self.max is not None or self.min is not None:
                raise ValueError("constraint.max / constraint.min need constraint.metric")
            return
        if self.max is None and self.min is None:
            raise ValueError("constraint needs max, min or both")
        if self.max is not None and self.min is not None and not self.min <= self.max:
            raise ValueError(f"constraint needs min <= max, got min = {self.min}, max = {self.max}")

    def violation(self, value: float) -> float:
        """How far ``value`` is outside the budget: <= 0 inside it (optuna's feasibility convention)."""
        if math.isnan(value):
            return math.inf
        excess = -math.inf
        if self.max is not None:
            excess = max(excess, value - self.max)
        if self.min is not None:
            excess = max(excess, self.min - value)
        return excess


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrunerConfig:
    """Stops unpromising trials early on their intermediate objective values (section [pruner])."""

    type: Literal["median", "hyperband", "none"] = "median"
    """"median" (optuna MedianPruner), "hyperband" (HyperbandPruner) or "none"."""
    n_startup_trials: int = 5
    """median: no pruning until this many trials have finished."""
    n_warmup_steps: int = 0
    """median: no pruning of a trial before this step."""
    interval_steps: int = 1
    """median: check every this many steps."""
    min_resource: int = 1
    """hyperband: steps every trial gets before it can be stopped."""
    max_resource: int = 0
    """hyperband: the steps of a full trial; 0 = take it from the first finished trial ("auto")."""
    reduction_factor: int = 3
    """hyperband: keep 1 / reduction_factor of the trials at each rung."""

    def __post_init__(self) -> None:
        for name in ("n_startup_trials", "n_warmup_steps", "max_resource"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.interval_steps < 1 or self.min_resource < 1:
            raise ValueError("interval_steps and min_resource must be >= 1")
        if self.reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {self.reduction_factor}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepSpaceConfig:
    """A whole space file: target, objective, optional constraint, params, sampler, pruner and summary."""

    target: str = ""
    """A registered target ("reward train", "policy train"; ``experiments.sweep.targets.register_target``)."""
    objective: str = ""
    """Metric name (as logged to metrics.jsonl) that the sweep optimises."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether a larger or a smaller objective is better (the constraint is separate)."""
    constraint: ConstraintConfig = ConstraintConfig()
    """Optional budget; with it the objective is the best value over the steps within budget."""
    params: dict[str, ParamConfig] = dataclasses.field(default_factory=dict)
    """Dotted config key of the target -> its range or choices."""
    name: str = "sweep"
    """Sweep directory name: ``<run.output_dir>/<name>/<timestamp>`` (run.output_dir of the base config)."""
    trials: int = 20
    """Trials to finish (complete, pruned or failed with an error) unless --trials says otherwise."""
    sampler: Literal["tpe", "random"] = "tpe"
    """optuna sampler: TPE (with the constant liar for parallel workers) or uniform random."""
    seed: int = 0
    """Sampler seed; each worker and each resumed session offsets it so they never repeat each other."""
    pruner: PrunerConfig = PrunerConfig()
    """Early stopping on intermediate values."""
    importance: Literal["fanova", "ped-anova", "mdi"] = "fanova"
    """Parameter-importance evaluator of the summary: fANOVA, PED-ANOVA (optuna's default) or MDI."""
    top_k: int = 5
    """Rows of the best-trials table."""

    @property
    def budget(self) -> ConstraintConfig | None:
        """The constraint, or None when the space sets none."""
        return self.constraint if self.constraint.metric else None

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("'target' is required, e.g. target = \"policy train\"")
        if not self.objective:
            raise ValueError("'objective' is required, e.g. objective = \"gold/engagement\"")
        if not self.params:
            raise ValueError("[params] is empty: name at least one config key to search")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"name must be a folder name without '/', got {self.name!r}")
        if self.trials < 1 or self.top_k < 1 or self.seed < 0:
            raise ValueError("trials and top_k must be >= 1 and seed >= 0")


def load_space(path: str | Path) -> SweepSpaceConfig:
    """Read a space file strictly (unknown keys fail with a suggestion; values are type-checked)."""
    return load_config(SweepSpaceConfig, path)


# ----------------------------------------------------------------------------------------------------------
# Checking a space against the target's config

SECTION = "<section>"


def config_keys(config: Any) -> dict[str, Any]:
    """Every dotted key of a config instance -> its annotation (``SECTION`` for nested dataclasses).

    Keys inside ``dict[str, T]`` fields are listed for the entries the instance has
    (``reward.train.loss_weights.click``).
    """
    keys: dict[str, Any] = {}
    _walk(type(config), config, "", keys)
    return keys


def _walk(cls: type, value: Any, prefix: str, keys: dict[str, Any]) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        key = f"{prefix}{field.name}"
        annotation = hints[field.name]
        current = getattr(value, field.name, None) if value is not None else None
        section = type(current) if dataclasses.is_dataclass(current) else _dataclass_in(annotation)
        if section is not None:
            keys[key] = SECTION
            _walk(section, current, f"{key}.", keys)
            continue
        keys[key] = annotation
        if typing.get_origin(annotation) is dict and isinstance(current, Mapping):
            for entry in current:
                keys[f"{key}.{entry}"] = typing.get_args(annotation)[1]


def _dataclass_in(annotation: Any) -> type | None:
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def apply_params(config: Any, params: Mapping[str, ParamValue], *, source: str = "<sweep>") -> Any:
    """A new config: ``config`` with each dotted key in ``params`` set, validated like a file would be."""
    data = to_dict(config)
    for key, value in params.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return from_dict(type(config), data, source=source)


def check_space(space: SweepSpaceConfig, base_config: Any, *, source: str = "space") -> None:
    """Fail before the first trial if a param does not fit the target's config.

    Checks that every param key is a leaf of the config (did-you-mean over its dotted keys), is not one the
    sweep sets itself (``run.output_dir``, ``run.name``, ``run.threads``), and that each bound or choice is
    accepted by the config (its type and the component's ``__post_init__``) when set alone on the base config.

    Raises:
        SweepSpaceError: naming the space file, the param and what was wrong.
    """
    keys = config_keys(base_config)
    leaves = [k for k, v in keys.items() if v is not SECTION]
    if not hasattr(base_config, "run"):
        raise SweepSpaceError(
            f"{source}: target config {type(base_config).__name__} has no [run] section; a sweep target's root "
            "config needs run: RunConfig (trials write their run directories through it)"
        )
    for key, param in space.params.items():
        where = f"{source}: params.{key}"
        if key not in keys:
            close = difflib.get_close_matches(key, leaves, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise SweepSpaceError(f"{where}: '{key}' is not a key of the {type(base_config).__name__} config{hint}")
        if keys[key] is SECTION:
            options = ", ".join(k for k in leaves if k.startswith(f"{key}."))
            raise SweepSpaceError(f"{where}: '{key}' is a section, not a value; search one of its keys: {options}")
        if key in RESERVED_KEYS:
            raise SweepSpaceError(f"{where}: '{key}' is set by the sweep for every trial and cannot be searched")
        for value in param.probe_values:
            try:
                apply_params(base_config, {key: value}, source=f"{where} = {value!r}")
            except ConfigError as exc:
                raise SweepSpaceError(f"the base config rejects a value of the search space: {exc}") from None


def suggest_params(trial: Any, space: SweepSpaceConfig) -> dict[str, ParamValue]:
    """Ask an optuna trial for one value of every param (``trial.suggest_*``), keyed by dotted config key."""
    params: dict[str, ParamValue] = {}
    for key, param in space.params.items():
        if param.choices is not None:
            params[key] = trial.suggest_categorical(key, list(param.choices))
        elif param.type == "int":
            step = int(param.step) if param.step is not None else 1
            params[key] = trial.suggest_int(key, int(param.low), int(param.high), step=step, log=param.log)
        else:
            params[key] = trial.suggest_float(key, param.low, param.high, step=param.step, log=param.log)
    return params
