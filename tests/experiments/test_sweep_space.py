"""Search-space files: strict loading, checks against the target's config before any trial, suggestions."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import optuna
import pytest

from experiments.config import ConfigError, RunConfig
from experiments.sweep.space import (
    SECTION,
    ParamConfig,
    SweepSpaceError,
    apply_params,
    check_space,
    config_keys,
    load_space,
    suggest_params,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraSection:
    rank: int = 4
    """LoRA rank."""
    alpha: float = 4.0
    """LoRA alpha."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainerSection:
    kl_coef: float = 0.01
    """KL weight."""
    loss_weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"click": 1.0, "dwell": 0.5})
    """Per-head weights."""
    schedule: str = "cosine"
    """Learning-rate schedule."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicySection:
    lora: LoraSection = LoraSection()
    """Adapters."""
    trainer: TrainerSection = dataclasses.field(default_factory=TrainerSection)
    """Update."""
    warmup: LoraSection | None = None
    """An optional section."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyRootConfig:
    run: RunConfig = RunConfig()
    """Run directory."""
    policy: PolicySection = PolicySection()
    """The policy."""


SPACE_HEAD = 'target = "policy train"\nobjective = "gold/engagement"\n'


def write_space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_keys_lists_leaves_sections_and_dict_entries() -> None:
    keys = config_keys(ToyRootConfig())
    assert keys["policy"] is SECTION and keys["policy.lora"] is SECTION and keys["policy.warmup"] is SECTION
    assert keys["policy.lora.rank"] is int
    assert keys["policy.trainer.kl_coef"] is float
    assert keys["policy.trainer.loss_weights.dwell"] is float
    assert "policy.warmup.rank" in keys  # inside an optional section that is None in the base config
    assert "run.seed" in keys


def test_apply_params_sets_nested_keys_and_validates() -> None:
    config = apply_params(ToyRootConfig(), {"policy.lora.rank": 8, "policy.trainer.loss_weights.click": 2.0})
    assert config.policy.lora.rank == 8
    assert config.policy.trainer.loss_weights == {"click": 2.0, "dwell": 0.5}
    assert config.policy.trainer.kl_coef == 0.01  # untouched
    with pytest.raises(ConfigError, match=r"rank must be >= 1, got 0"):
        apply_params(ToyRootConfig(), {"policy.lora.rank": 0})


def test_example_space_loads(tmp_path: Path) -> None:
    path = write_space(
        tmp_path,
        SPACE_HEAD
        + 'constraint = { metric = "policy/kl", max = 0.05 }\n'
        + "[params]\n"
        + '"policy.trainer.kl_coef" = { type = "float", low = 1e-3, high = 1e-1, log = true }\n'
        + '"policy.lora.rank" = { type = "int", choices = [2, 4, 8] }\n'
        + '[pruner]\ntype = "hyperband"\nmax_resource = 20\n',
    )
    space = load_space(path)
    assert space.budget is not None and space.budget.max == 0.05
    assert space.params["policy.lora.rank"].choices == (2, 4, 8)
    assert space.params["policy.trainer.kl_coef"].log is True
    assert space.pruner.type == "hyperband"
    check_space(space, ToyRootConfig())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('target = "x"\nobjectve = "y"\n', "unknown key 'objectve' (did you mean 'objective'?)"),
        (SPACE_HEAD, "[params] is empty"),
        ('objective = "y"\n[params]\n"a" = { type = "float", low = 0, high = 1 }\n', "'target' is required"),
        (
            SPACE_HEAD + '[params]\n"a" = { type = "int", choises = [1, 2] }\n',
            "unknown key 'params.a.choises' (did you mean 'choices'?)",
        ),
        (SPACE_HEAD + '[params]\n"a" = { type = "float", low = 1 }\n', "needs low and high"),
        (
            SPACE_HEAD + '[params]\n"a" = { type = "float", low = 2, high = 1 }\n',
            "needs finite low < high, got low = 2.0, high = 1.0",
        ),
        (
            SPACE_HEAD + '[params]\n"a" = { type = "float", low = 0, high = 1, log = true }\n',
            "log = true needs low > 0, got 0.0",
        ),
        (
            SPACE_HEAD + '[params]\n"a" = { type = "int", low = 0.5, high = 3 }\n',
            "type = 'int' needs an integer low, got 0.5",
        ),
        (
            SPACE_HEAD + '[params]\n"a" = { type = "int", choices = [2, 4.5] }\n',
            "type = 'int' choices must all be integers",
        ),
        (SPACE_HEAD + '[params]\n"a" = { type = "categorical" }\n', "needs a non-empty choices list"),
        (
            SPACE_HEAD + '[params]\n"a" = { type = "bool", choices = [true] }\n',
            "expects one of 'float', 'int', 'categorical'",
        ),
        (
            SPACE_HEAD + 'direction = "max"\n[params]\n"a" = { type = "float", low = 0, high = 1 }\n',
            "key 'direction' expects one of 'maximize', 'minimize', got str 'max'",
        ),
        (
            SPACE_HEAD + 'constraint = { max = 0.1 }\n[params]\n"a" = { type = "float", low = 0, high = 1 }\n',
            "constraint.max / constraint.min need constraint.metric",
        ),
        (
            SPACE_HEAD + 'constraint = { metric = "kl" }\n[params]\n"a" = { type = "float", low = 0, high = 1 }\n',
            "constraint needs max, min or both",
        ),
        (
            SPACE_HEAD + '[params]\n"a" = { type = "float", low = 0, high = 1 }\n[pruner]\ntype = "medain"\n',
            "(did you mean 'median'?)",
        ),
    ],
)
def test_bad_space_files(tmp_path: Path, text: str, message: str) -> None:
    path = write_space(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_space(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("key", "param", "message"),
    [
        (
            "policy.lora.rnak",
            ParamConfig(type="int", choices=(2, 4)),
            "'policy.lora.rnak' is not a key of the ToyRootConfig config (did you mean 'policy.lora.rank', ",
        ),
        (
            "policy.trainer.klcoef",
            ParamConfig(type="float", low=0.1, high=1.0),
            "(did you mean 'policy.trainer.kl_coef', ",
        ),
        (
            "policy.lora",
            ParamConfig(type="int", choices=(2, 4)),
            "'policy.lora' is a section, not a value; search one of its keys: policy.lora.rank, policy.lora.alpha",
        ),
        (
            "run.output_dir",
            ParamConfig(type="categorical", choices=("a", "b")),
            "'run.output_dir' is set by the sweep for every trial",
        ),
        (
            "policy.lora.rank",
            ParamConfig(type="float", low=1.0, high=8.0),
            "key 'policy.lora.rank' expects int, got float 1.0",
        ),
        (
            "policy.lora.rank",
            ParamConfig(type="int", low=0, high=8),
            "params.policy.lora.rank = 0: policy.lora: rank must be >= 1, got 0",
        ),
        ("policy.trainer.schedule", ParamConfig(type="categorical", choices=("cosine", 3)), "expects str, got int 3"),
    ],
)
def test_check_space_fails_before_any_trial(key: str, param: ParamConfig, message: str, tmp_path: Path) -> None:
    path = write_space(
        tmp_path, SPACE_HEAD + '[params]\n"policy.trainer.kl_coef" = { type = "float", low = 0.001, high = 0.1 }\n'
    )
    space = dataclasses.replace(
        load_space(path), params={"policy.trainer.kl_coef": ParamConfig(type="float", low=0.001, high=0.1), key: param}
    )
    with pytest.raises(SweepSpaceError, match=re.escape(message)) as info:
        check_space(space, ToyRootConfig(), source=str(path))
    assert f"params.{key}" in str(info.value)


def test_check_space_needs_a_run_section(tmp_path: Path) -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class NoRun:
        lr: float = 0.1
        """Learning rate."""

    space = load_space(
        write_space(tmp_path, SPACE_HEAD + '[params]\n"lr" = { type = "float", low = 0.01, high = 1 }\n')
    )
    with pytest.raises(SweepSpaceError, match=r"has no \[run\] section"):
        check_space(space, NoRun())


def test_suggest_params_respects_types_and_ranges(tmp_path: Path) -> None:
    space = load_space(
        write_space(
            tmp_path,
            SPACE_HEAD
            + "[params]\n"
            + '"policy.trainer.kl_coef" = { type = "float", low = 1e-3, high = 1e-1, log = true }\n'
            + '"policy.lora.rank" = { type = "int", choices = [2, 4, 8] }\n'
            + '"policy.lora.alpha" = { type = "int", low = 2, high = 10, step = 4 }\n'
            + '"policy.trainer.schedule" = { type = "categorical", choices = ["cosine", "constant"] }\n',
        )
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = [suggest_params(study.ask(), space) for _ in range(30)]
    assert all(1e-3 <= p["policy.trainer.kl_coef"] <= 1e-1 for p in seen)
    assert {p["policy.lora.rank"] for p in seen} == {2, 4, 8}
    assert {p["policy.lora.alpha"] for p in seen} == {2, 6, 10}
    assert {p["policy.trainer.schedule"] for p in seen} == {"cosine", "constant"}
    assert all(type(p["policy.lora.alpha"]) is int for p in seen)
    # Log sampling puts about half the draws below the geometric mean 1e-2 (a uniform draw would put 9 %).
    assert 8 <= sum(p["policy.trainer.kl_coef"] < 1e-2 for p in seen) <= 22


CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*_space.toml")), ids=lambda p: p.name)
def test_shipped_space_files_load_and_fit_their_target(path: Path) -> None:
    from experiments.sweep.targets import available_targets, load_target

    space = load_space(path)
    if space.target in available_targets():
        target = load_target(space.target)
        check_space(space, target.config_class(), source=str(path))
