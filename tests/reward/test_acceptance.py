"""The acceptance run: default studio world, fixed seed, train then evaluate against the hidden truth (slow:
20-40 minutes on 2 CPU cores). Run with ``pytest -m slow tests/reward/test_acceptance.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.cli import main


@pytest.mark.slow
def test_default_world_meets_the_acceptance_numbers(tmp_path: Path):
    assert (
        main(["reward", "train", "--no-progress", "--set", f"run.output_dir={tmp_path}", "--set", "run.threads=2"])
        == 0
    )
    run = next((tmp_path / "reward").iterdir())
    assert main(["reward", "eval", str(run), "--data", str(run / "splits" / "test"), "--truth", str(run / "world"),
                 "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    truth = json.loads((tmp_path / "eval" / "eval.json").read_text())["truth"]
    assert truth["pairwise_accuracy_ratio"] >= 0.97
    assert truth["click_auc_ratio"] >= 0.97
    assert truth["examination_max_relative_error"] <= 0.05
