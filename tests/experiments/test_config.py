"""Strict TOML configs: precedence, unknown keys with suggestions, type errors, --set syntax, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from experiments.config import ConfigError, RunConfig, dump_toml, from_dict, load_config, parse_override


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = ("to_q", "to_k")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    lora: LoraConfig = LoraConfig()
    mode: Literal["online", "offline"] = "online"
    kl_budget: float | None = None
    learning_rate: float = 1e-3
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"click": 1.0})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Root:
    run: RunConfig = RunConfig()
    policy: PolicyConfig = PolicyConfig()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_file_then_set_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "[policy.lora]\nrank = 8\nalpha = 2\n[run]\nname = 'exp'\n")
    cfg = load_config(Root, path, ["policy.lora.rank=16"])
    assert cfg.policy.lora.rank == 16  # --set beats the file
    assert cfg.policy.lora.alpha == 2.0 and isinstance(cfg.policy.lora.alpha, float)  # file beats default
    assert cfg.policy.lora.targets == ("to_q", "to_k")  # default survives
    assert cfg.run.name == "exp"


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("[policy.lora]\nrnak = 3\n", [], "unknown key 'policy.lora.rnak' (did you mean 'rank'?)"),
        ("[polcy]\n", [], "unknown key 'polcy' (did you mean 'policy'?)"),
        ("[policy.lora]\nrank = 'four'\n", [], "key 'policy.lora.rank' expects int, got str 'four'"),
        ("[policy.lora]\nrank = 2.5\n", [], "key 'policy.lora.rank' expects int, got float 2.5"),
        ("[policy.lora]\nrank = true\n", [], "key 'policy.lora.rank' expects int, got bool True"),
        (
            "[policy]\nmode = 'onlin'\n",
            [],
            "expects one of 'online', 'offline', got str 'onlin' (did you mean 'online'?)",
        ),
        (
            "[policy]\nkl_budget = 'x'\n",
            [],
            "key 'policy.kl_budget' expects float or nothing (omit the key), got str 'x'",
        ),
        ("[policy.lora]\ntargets = 'to_q'\n", [], "key 'policy.lora.targets' expects list of str, got str 'to_q'"),
        ("[policy.lora]\nrank = 0\n", [], "policy.lora: rank must be >= 1, got 0"),
        ("[policy]\nlora = 3\n", [], "key 'policy.lora' expects table [LoraConfig], got int 3"),
        ("[policy.weights]\nclick = 'high'\n", [], "key 'policy.weights.click' expects float, got str 'high'"),
        ("", ["policy.lora.rank"], "bad --set 'policy.lora.rank': expected KEY=VALUE"),
        ("", ["=3"], "bad --set '=3'"),
        ("", ["policy..rank=3"], "bad --set 'policy..rank=3'"),
        ("", ["policy.lora.rank=3", "policy.lora.rank.x=1"], "'policy.lora.rank' is a value, not a section"),
        ("", ["policy.lora.rank=x"], "key 'policy.lora.rank' expects int, got str 'x'"),
        ("[run]\nthreads = -1\n", [], "run: threads must be >= 0"),
        # finite or refused, by key, whatever the field's type and wherever it sits
        ("[policy.lora]\nalpha = nan\n", [], "key 'policy.lora.alpha' must be a finite number, got nan"),
        ("", ["policy.kl_budget=inf"], "key 'policy.kl_budget' must be a finite number, got inf"),
        ("", ["policy.weights.click=-inf"], "key 'policy.weights.click' must be a finite number, got -inf"),
        ("", ["policy.lora.alpha=1e300"], "key 'policy.lora.alpha' must be at most 1e+12 in magnitude, got 1e+300"),
        ("", ["policy.learning_rate=1e300"], "key 'policy.learning_rate' must be at most 1e+12 in magnitude"),
        ("", ["policy.learning_rate=3"], "key 'policy.learning_rate' must be in (0, 1] (an AdamW step"),
        ("", ["policy.learning_rate=0"], "key 'policy.learning_rate' must be in (0, 1]"),
        ("[policy\n", [], "invalid TOML"),
    ],
)
def test_config_errors_name_key_expected_and_found(
    tmp_path: Path, text: str, overrides: list[str], message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(Root, path, overrides)
    assert message in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        load_config(Root, tmp_path / "nope.toml")


def test_parse_override_reads_toml_values_and_bare_strings() -> None:
    assert parse_override("a.b=16") == (["a", "b"], 16)
    assert parse_override("a=0.5") == (["a"], 0.5)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("run.name=exp-1") == (["run", "name"], "exp-1")
    assert parse_override('h=["click", "dwell"]') == (["h"], ["click", "dwell"])


def test_integers_keep_their_full_range() -> None:
    assert load_config(Root, None, ["run.seed=9007199254740993"]).run.seed == 9007199254740993


def test_shipped_command_refuses_a_non_finite_learning_rate(capsys: pytest.CaptureFixture) -> None:
    from experiments.cli import main

    for value, message in (
        ("inf", "must be a finite number, got inf"),
        ("1e300", "must be at most 1e+12 in magnitude"),
    ):
        assert main(["policy", "train", "--set", f"trainer.optim.learning_rate={value}"]) == 2
        assert f"key 'trainer.optim.learning_rate' {message}" in capsys.readouterr().err


def test_dump_toml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(Root, None, ["policy.lora.rank=7", "policy.kl_budget=0.5", "policy.weights.dwell=0.25"])
    text = dump_toml(cfg)
    again = load_config(Root, write(tmp_path, text))
    assert again == cfg
    assert "kl_budget = 0.5" in text


def test_from_dict_rejects_non_table() -> None:
    with pytest.raises(ConfigError, match="expects table"):
        from_dict(Root, {"run": [1, 2]})


@dataclasses.dataclass(frozen=True, kw_only=True)
class CustomDefaults:
    run: RunConfig = RunConfig(name="ope", seed=3)
    policy: PolicyConfig = PolicyConfig(lora=LoraConfig(rank=8))


def test_partial_section_keeps_the_fields_own_default_instance(tmp_path: Path) -> None:
    cfg = load_config(CustomDefaults, write(tmp_path, "[run]\nthreads = 1\n"), ["policy.lora.alpha=2"])
    assert (cfg.run.name, cfg.run.seed, cfg.run.threads) == ("ope", 3, 1)
    assert (cfg.policy.lora.rank, cfg.policy.lora.alpha) == (8, 2.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptionalSection:
    lora: LoraConfig | None = None


def test_optional_section_reports_the_sections_own_error(tmp_path: Path) -> None:
    assert load_config(OptionalSection, None, ["lora.rank=2"]).lora == LoraConfig(rank=2)
    assert load_config(OptionalSection).lora is None
    with pytest.raises(ConfigError, match="lora: rank must be >= 1, got 0"):
        load_config(OptionalSection, None, ["lora.rank=0"])
    with pytest.raises(ConfigError, match=r"unknown key 'lora.rnak' \(did you mean 'rank'\?\)"):
        load_config(OptionalSection, None, ["lora.rnak=2"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSection:
    pretrained: Path | None = None
    kl_budget: float | None = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class RootWithNonNoneDefault:
    model: ModelSection = ModelSection(pretrained=Path("studio_tiny"))


def test_none_survives_the_round_trip_where_the_default_is_not_none(tmp_path: Path) -> None:
    cfg = RootWithNonNoneDefault(model=ModelSection(pretrained=None, kl_budget=None))
    text = dump_toml(cfg)
    assert text.startswith('_unset = ["model.pretrained", "model.kl_budget"]')
    assert load_config(RootWithNonNoneDefault, write(tmp_path, text)) == cfg
    assert load_config(RootWithNonNoneDefault).model.pretrained == Path("studio_tiny")


def test_unset_of_a_key_that_cannot_be_none_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key 'policy.lora.rank' is listed in '_unset' but expects int"):
        load_config(Root, write(tmp_path, '_unset = ["policy.lora.rank"]\n'))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Param:
    low: float | None = 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Space:
    params: dict[str, Param] = dataclasses.field(default_factory=dict)


def test_unset_keys_inside_tables_with_dotted_names(tmp_path: Path) -> None:
    cfg = Space(params={"policy.lr": Param(low=None), "rank": Param()})
    text = dump_toml(cfg)
    assert '_unset = ["params.\\"policy.lr\\".low"]' in text
    assert load_config(Space, write(tmp_path, text)) == cfg


def test_environment_profile_sits_between_file_and_set_and_skips_foreign_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from experiments.config import ENVIRONMENT_PROFILE, environment_profile

    profile = tmp_path / "smoke.toml"
    # One profile serves every command: [trainer] and policy.lora.dropout belong to other commands' configs.
    profile.write_text("[policy.lora]\nrank = 2\ndropout = 0.1\n[trainer]\nepochs = 1\n[run]\nthreads = 1\n")
    monkeypatch.setenv(ENVIRONMENT_PROFILE, str(profile))
    assert environment_profile(Root) == {"policy": {"lora": {"rank": 2}}, "run": {"threads": 1}}
    path = write(tmp_path, "[policy.lora]\nrank = 8\nalpha = 2\n")
    cfg = load_config(Root, path, profile=environment_profile(Root))
    assert (cfg.policy.lora.rank, cfg.policy.lora.alpha, cfg.run.threads) == (2, 2.0, 1)  # profile beats file
    cfg = load_config(Root, path, ["policy.lora.rank=16"], profile=environment_profile(Root))
    assert cfg.policy.lora.rank == 16  # --set beats the profile
    monkeypatch.setenv(ENVIRONMENT_PROFILE, str(tmp_path / "nowhere.toml"))
    with pytest.raises(ConfigError, match=f"{ENVIRONMENT_PROFILE}=.*nowhere.toml: profile file not found"):
        environment_profile(Root)
    monkeypatch.setenv(ENVIRONMENT_PROFILE, "")
    assert environment_profile(Root) == {}


def test_shipped_smoke_profile_values_are_valid_for_every_command_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command's config accepts the smoke profile's keys it has (values checked by each config)."""
    from experiments.config import ENVIRONMENT_PROFILE, environment_profile
    from experiments.export.config import ExportCommandConfig
    from experiments.policy_runs.offline import PolicyOfflineCommandConfig
    from experiments.policy_runs.train import PolicyTrainCommandConfig
    from experiments.reward_fit import command_config_class
    from offline_data.simulator import SimulatorConfig
    from reward.audit_config import AuditCommandConfig

    monkeypatch.setenv(
        ENVIRONMENT_PROFILE, str(Path(__file__).resolve().parents[2] / "experiments/configs/smoke.toml")
    )
    for cls in (SimulatorConfig, command_config_class(), AuditCommandConfig, PolicyTrainCommandConfig,
                PolicyOfflineCommandConfig, ExportCommandConfig):  # fmt: skip
        profile = environment_profile(cls)
        assert profile, cls.__name__
        load_config(cls, profile=profile)
