"""``backdrop reward train --resume``: a run SIGKILLed at seeded random points and resumed ends with the
uninterrupted run's model, byte for byte, and its metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from experiments.cli import main
from tests.subprocess_kills import ROOT, child_env, kill_repeatedly

FAST = [
    "--set", "reward.train.epochs=2", "--set", "reward.ensemble.members=3", "--set", "run.threads=1",
    "--set", "run.tensorboard=false", "--no-progress",
]  # fmt: skip


def only_run(parent: Path) -> Path | None:
    runs = [p for p in (parent / "reward").glob("*") if (p / "config.toml").is_file()] if parent.is_dir() else []
    assert len(runs) <= 1, runs
    return runs[0] if runs else None


def comparable(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in records]


# ~25 s on one core (three process start-ups, four trainings of a 3-member ensemble); in the default suite, as
# the kill tests of policy train and sweep are.
def test_a_killed_reward_train_resumes_to_the_uninterrupted_model(small_splits: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    assert (
        main(["reward", "train", "--data", str(small_splits), "--set", f"run.output_dir={tmp_path / 'a'}", *FAST]) == 0
    )
    duration = time.perf_counter() - started
    straight = only_run(tmp_path / "a")

    out = tmp_path / "b"
    fresh = [sys.executable, "-m", "experiments.cli", "reward", "train", "--data", str(small_splits),
             "--set", f"run.output_dir={out}", *FAST]  # fmt: skip

    def command() -> list[str]:
        run = only_run(out)
        return fresh if run is None else [*fresh[:5], "--resume", str(run), "--no-progress"]

    # killed twice at seeded random points (after the ~5 s start-up), then resumed to the end
    kills = kill_repeatedly(command, times=2, window=duration, seed=5, ready_line=False, delay=5.0)
    result = subprocess.run(command(), cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert kills >= 1  # at least one kill landed before the run could finish
    resumed = only_run(out)
    assert (resumed / "model" / "model.safetensors").read_bytes() == (
        straight / "model" / "model.safetensors"
    ).read_bytes()
    assert sorted(comparable(resumed), key=json.dumps) == sorted(comparable(straight), key=json.dumps)


def test_finished_members_are_loaded_and_the_rest_trained_as_before(small_splits: Path, tmp_path: Path) -> None:
    import shutil

    import torch

    from reward.pipeline import fit_reward_model
    from tests.reward.conftest import fast_config

    config = fast_config(train={"epochs": 2})

    def fit() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        scorer, _ = fit_reward_model(
            config, small_splits / "train", small_splits / "validation", seed=0, device=torch.device("cpu"),
            progress=False, checkpoint_dir=tmp_path / "checkpoints",
        )  # fmt: skip
        return {f"{k}.{n}": v for k, m in enumerate(scorer.ensemble.members) for n, v in m.state_dict().items()}

    straight = fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["member-000", "member-001"]
    shutil.rmtree(tmp_path / "checkpoints" / "member-001")  # killed while member 1 trained
    resumed = fit()  # member 0 loaded (with torch's RNG after it), member 1 trained again
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
