"""Resume survives kills: a DDPO run SIGKILLed at seeded random points (mid-epoch, mid-checkpoint, mid-metrics-line)
and resumed each time ends with the uninterrupted run's adapter, byte for byte, and its metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from experiments.tracking import Run
from policy.trainer import DDPOTrainer
from tests.policy.test_trainer import red_background, tiny_config, tiny_policy, tiny_requests
from tests.subprocess_kills import ROOT, child_env, kill_repeatedly

EPOCHS = 4

SCRIPT = """
import sys
from pathlib import Path
import torch
from experiments.policy_runs.train import truncate_metrics
from experiments.tracking import Run
from policy.checkpoint import CheckpointError, latest_checkpoint
from policy.trainer import DDPOTrainer
from tests.policy.test_trainer import red_background, tiny_config, tiny_policy, tiny_requests

torch.set_num_threads(1)
out = Path(sys.argv[1])
out.mkdir(exist_ok=True)
try:
    checkpoint = latest_checkpoint(out / "checkpoints")
except CheckpointError:
    checkpoint = None
epoch = 0 if checkpoint is None else int(checkpoint.name.split("-")[1])
truncate_metrics(out, epoch)
with Run(out) as run:
    trainer = DDPOTrainer(tiny_policy(), red_background, tiny_requests(4), tiny_config(epochs=EPOCHS,
                          checkpoint_every=1), seed=0, output_dir=out, log_metrics=run.log_metrics)
    if checkpoint is not None:
        trainer.resume(checkpoint)
    print("ready", flush=True)
    trainer.train()
""".replace("EPOCHS", str(EPOCHS))


def comparable(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in records]


def test_a_run_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    straight.mkdir()
    started = time.perf_counter()
    with Run(straight) as run:  # the same trainer in this process, uninterrupted (threads pinned to 1 here too)
        config = tiny_config(epochs=EPOCHS, checkpoint_every=1)
        trainer = DDPOTrainer(tiny_policy(), red_background, tiny_requests(4), config, seed=0, output_dir=straight,
                              log_metrics=run.log_metrics)  # fmt: skip
        trainer.train()
    duration = time.perf_counter() - started

    killed = tmp_path / "killed"
    command = [sys.executable, "-c", SCRIPT, str(killed)]
    # two kills at seeded random points of the remaining training, then a resume to the end
    kills = kill_repeatedly(lambda: command, times=2, window=duration, seed=17, ready_line=True)
    result = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

    assert kills >= 1  # at least one kill landed before the run could finish
    weights = "adapter/pytorch_lora_weights.safetensors"
    assert (killed / weights).read_bytes() == (straight / weights).read_bytes()
    assert comparable(killed) == comparable(straight)
    assert [r["step"] for r in comparable(killed)] == list(range(1, EPOCHS + 1))
