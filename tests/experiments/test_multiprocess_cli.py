"""``backdrop reward train`` and ``backdrop policy train`` under ``accelerate launch`` with 2 CPU processes.

Each is run twice through the CLI: once in this process, once as ``accelerate launch --multi_gpu --num_processes 2
-m experiments ...`` (on a machine without GPUs the multi-GPU launcher starts CPU processes and the commands join a
gloo group; ``--cpu`` alone would start a single process). The launch must write one run directory, from process
0, holding the model the single process writes (the policy run gets half the requests and samples per step per
process: the same global batch), to float rounding.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from experiments.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "experiments" / "configs"

REWARD = [
    "reward", "train", "--no-progress", "--config", str(CONFIGS / "reward.toml"), "--set", "run.device=cpu",
    "--set", "run.threads=1", "--set", "run.tensorboard=false", "--set", "reward.train.epochs=2",
    "--set", "reward.ensemble.members=2", "--set", "reward.model.dropout=0.0",  # dropout masks are per process
    "--set", "reward.train.batch_impressions=1024", "--set", "reward.train.batch_pairs=256",
]  # fmt: skip
POLICY = [
    "policy", "train", "--no-progress", "--config", str(CONFIGS / "studio_ddpo.toml"), "--set", "run.device=cpu",
    "--set", "run.threads=1", "--set", "run.tensorboard=false", "--set", "requests.split_fractions=[0.6, 0.2, 0.2]",
    "--set", "requests.eval_products=1", "--set", "eval.seeds_per_request=2", "--set", "trainer.epochs=2",
    "--set", "trainer.eval_every=2", "--set", "trainer.checkpoint_every=0", "--set", "trainer.samples_per_request=2",
    "--set", "trainer.sampler.num_steps=2", "--set", "trainer.sampler.batch_size=4",
    "--set", "trainer.overlap_scoring=false",
]  # fmt: skip


def launch_two(argv: list[str]) -> None:
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "-m", "experiments", *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


def only_run(parent: Path) -> Path:
    runs = [p for p in parent.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # process 0 alone made a run directory
    return runs[0]


def assert_same_weights(got: Path, expected: Path, *, atol: float) -> None:
    one, two = load_file(expected), load_file(got)
    assert two.keys() == one.keys()
    for name, value in one.items():
        assert (two[name] - value).abs().max() <= atol, name


@pytest.fixture(scope="module")
def reward_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.reward.conftest import build_splits, small_world

    root = tmp_path_factory.mktemp("multiprocess")
    splits = build_splits(root, small_world())
    argv = [*REWARD, "--data", str(splits)]
    assert main([*argv, "--set", f"run.output_dir={root / 'one'}"]) == 0
    launch_two([*argv, "--set", f"run.output_dir={root / 'two'}"])
    return {"one": only_run(root / "one" / "reward"), "two": only_run(root / "two" / "reward"), "root": root}


@pytest.mark.slow
def test_reward_train_in_two_processes_writes_the_model_of_one(reward_runs: dict[str, Path]) -> None:
    one, two = reward_runs["one"], reward_runs["two"]
    assert_same_weights(two / "model" / "model.safetensors", one / "model" / "model.safetensors", atol=2e-5)
    metrics = [json.loads((run / "reward_train.json").read_text()) for run in (one, two)]
    assert [m["best_epoch"] for m in metrics[1]["members"]] == [m["best_epoch"] for m in metrics[0]["members"]]
    for key in ("click_auc", "pairwise_accuracy", "click_ece"):
        assert metrics[1]["test"][key] == pytest.approx(metrics[0]["test"][key], abs=1e-4), key


@pytest.mark.slow
def test_policy_train_in_two_processes_trains_the_adapter_of_one(reward_runs: dict[str, Path]) -> None:
    root = reward_runs["root"]
    argv = [*POLICY, "--reward", str(reward_runs["one"] / "model")]
    per_process = ["--set", "trainer.requests_per_epoch=2", "--set", "trainer.optim.samples_per_step=2"]
    assert main([*argv, "--set", "trainer.requests_per_epoch=4", "--set", "trainer.optim.samples_per_step=4",
                 "--set", f"run.output_dir={root / 'policy_one'}"]) == 0  # fmt: skip
    launch_two([*argv, *per_process, "--set", f"run.output_dir={root / 'policy_two'}"])
    one, two = only_run(root / "policy_one" / "policy_train"), only_run(root / "policy_two" / "policy_train")
    adapter = Path("adapter") / "pytorch_lora_weights.safetensors"
    assert_same_weights(two / adapter, one / adapter, atol=3e-5)
    records = [[json.loads(line) for line in (run / "metrics.jsonl").open()] for run in (one, two)]
    assert [r["step"] for r in records[1]] == [r["step"] for r in records[0]]
    for got, expected in zip(records[1], records[0]):
        for name in ("reward/mean", "policy/kl", "policy/optimizer_steps", "gold/engagement", "eval/kl_nats"):
            if name in expected:
                assert got[name] == pytest.approx(expected[name], rel=1e-3, abs=1e-6), (expected["step"], name)
