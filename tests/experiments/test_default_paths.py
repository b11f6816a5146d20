"""Paths that modules compute from their own location point at files of the package (they moved with the modules)."""

from __future__ import annotations

from experiments.commands import demo, reward, simulate
from experiments.export import manifest
from experiments.policy_runs import offline, train
from experiments.reward_fit import WORLD_CONFIG


def test_default_configs_exist() -> None:
    for path in (train.DEFAULT_CONFIG, reward.DEFAULT_CONFIG, simulate.DEFAULT_CONFIG, WORLD_CONFIG):
        assert path.is_file(), path
    for folder in (offline.CONFIGS, demo.CONFIGS):
        assert (folder / "studio_ddpo.toml").is_file(), folder


def test_gate_validation_file_lives_under_the_benchmarks() -> None:
    assert manifest.GATE_TRUTH.parent.parent.name == "bench" and manifest.GATE_TRUTH.parent.parent.is_dir()
