"""Checkpoints are checked before use: the latest pointer stays in its folder, state.json has the shape the loader
reads, and an epoch past the configured count is refused by name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from policy.checkpoint import CheckpointError, latest_checkpoint, read_checkpoint_state, save_checkpoint
from policy.trainer import DDPOTrainer
from tests.policy.test_trainer import red_background, tiny_config, tiny_policy, tiny_requests


def checkpoint(directory: Path, epoch: int = 1) -> Path:
    trainer = DDPOTrainer(tiny_policy(), red_background, tiny_requests(4), tiny_config(epochs=3), seed=0)
    trainer.epoch = epoch
    return save_checkpoint(
        directory, f"epoch-{epoch:06d}", policy=trainer.policy, optimizer=trainer.optimizer,
        trainer_state=trainer.state_dict(),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("pointer", "message"),
    [
        ("../elsewhere", "'checkpoint' must name a folder in"),
        ("/tmp", "'checkpoint' must name a folder in"),
        ("..", "'checkpoint' must name a folder in"),
        ("link", "outside"),
    ],
)
def test_the_latest_pointer_never_leaves_the_checkpoint_folder(tmp_path: Path, pointer: str, message: str) -> None:
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", run / "link")
    (run / "latest.json").write_text(json.dumps({"checkpoint": pointer}))
    with pytest.raises(CheckpointError, match=message):
        latest_checkpoint(run)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("rng"), "'rng' must be a table, got NoneType"),
        (lambda s: s["optimizer"].update(param_groups={}), "'optimizer.param_groups' must be a list, got dict"),
        (lambda s: s["rng"].update(python=[1]), "'rng' does not hold python's and numpy's generator states"),
        (lambda s: s["trainer"].update(epoch="2"), "trainer.epoch is '2', not what a DDPO checkpoint holds"),
        (lambda s: s["trainer"].update(history={}), "trainer.history is {}, not what a DDPO checkpoint holds"),
        (lambda s: s["trainer"].update(epoch=7), "trainer.epoch = 7 is past this run's trainer.epochs = 3"),
    ],
)
def test_state_is_checked_before_anything_is_loaded(tmp_path: Path, change, message: str) -> None:
    folder = checkpoint(tmp_path)
    state = json.loads((folder / "state.json").read_text())
    change(state)
    (folder / "state.json").write_text(json.dumps(state))
    trainer = DDPOTrainer(tiny_policy(), red_background, tiny_requests(4), tiny_config(epochs=3), seed=0)
    before = [p.detach().clone() for p in trainer.policy.trainable_parameters()]
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        trainer.resume(folder)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.trainable_parameters()))  # nothing loaded


def test_a_valid_state_reads_back(tmp_path: Path) -> None:
    assert read_checkpoint_state(checkpoint(tmp_path, epoch=2))["trainer"]["epoch"] == 2
