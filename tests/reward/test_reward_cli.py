"""``backdrop reward train`` / ``eval`` end to end on a small world, and the default config file."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.cli import main
from experiments.commands.reward import DEFAULT_CONFIG
from experiments.config import load_config
from experiments.reward_fit import command_config_class

FAST = [
    "--set", "reward.train.epochs=2", "--set", "reward.ensemble.members=2", "--set", "run.threads=1",
    "--set", "run.tensorboard=false", "--no-progress",
]  # fmt: skip


def test_default_config_file_equals_the_built_in_defaults():
    cls = command_config_class()
    assert load_config(cls, DEFAULT_CONFIG) == cls()


def test_train_then_eval_with_truth(small_splits: Path, tmp_path: Path, capsys):
    code = main(["reward", "train", "--data", str(small_splits), "--set", f"run.output_dir={tmp_path}", *FAST])
    assert code == 0
    out = capsys.readouterr().out
    assert "evaluate: backdrop reward eval" in out
    run = next((tmp_path / "reward").iterdir())
    model = run / "model"
    assert {"model.safetensors", "reward.json", "metrics.json", "config.toml"} <= {p.name for p in model.iterdir()}
    metrics = json.loads((model / "metrics.json").read_text())
    assert "click_auc" in metrics["test"] and len(metrics["members"]) == 2
    world = small_splits.parent / "world"
    code = main(["reward", "eval", str(run), "--data", str(small_splits / "test"), "--truth", str(world),
                 "--out", str(tmp_path / "eval")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    truth = report["truth"]
    assert 0 < truth["pairwise_accuracy_ratio"] < 1.1 and 0 < truth["click_auc_ratio"] < 1.1
    assert len(truth["examination_relative_error"]) == 4
    assert set(truth["by_segment"]) >= {"warm", "cool", "minimal"}
    assert {p.name for p in (tmp_path / "eval").glob("*.png")} == {
        "reliability.png", "examination.png", "pairwise_accuracy.png"
    }  # fmt: skip
    assert "of Bayes ceiling" in capsys.readouterr().out


def test_bad_inputs_exit_with_a_message(tmp_path: Path, capsys):
    assert main(["reward", "train", "--data", str(tmp_path / "nope"), "--set", f"run.output_dir={tmp_path}"]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert main(["reward", "train", "--set", "reward.click.mode=ipss"]) == 2
    assert "did you mean 'ips'" in capsys.readouterr().err
    assert main(["reward", "eval", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "not found; is" in capsys.readouterr().err
