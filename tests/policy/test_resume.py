"""A tiny DDPO run killed midway and resumed from its checkpoint ends exactly where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from policy.checkpoint import latest_checkpoint
from policy.evaluation import EvaluationConfig, PolicyEvaluator
from policy.trainer import DDPOTrainer
from policy.trainer_config import KLConfig, OptimConfig

from .test_trainer import SAMPLER, red_background, tiny_config, tiny_policy, tiny_requests


class Killed(Exception):
    """Stands in for SIGKILL: raised from inside the loop, after an epoch is logged but before it is saved."""


def build(output_dir: Path, log_metrics=None) -> DDPOTrainer:
    evaluator = PolicyEvaluator(
        tiny_requests(2, offset=40),
        reward_fn=red_background,
        gold_fn=red_background,
        sampler=SAMPLER,
        config=EvaluationConfig(seeds_per_request=2),
    )
    config = tiny_config(
        epochs=4,
        eval_every=2,
        checkpoint_every=1,
        # Two optimiser steps and two inner epochs per epoch, an adaptive KL coefficient and a step subset:
        # every piece of state that a resume has to restore is exercised.
        optim=OptimConfig(samples_per_step=4, inner_epochs=2, timestep_fraction=0.5, rows_per_forward=6),
        kl=KLConfig(coef=0.05, target=1e-6, horizon=2.0),
    )
    return DDPOTrainer(
        tiny_policy(),
        red_background,
        tiny_requests(6),
        config,
        seed=11,
        evaluator=evaluator,
        log_metrics=log_metrics,
        output_dir=output_dir,
    )


def comparable(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in record.items() if not k.startswith("time/")} for record in history]


def adapter_state(trainer: DDPOTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.params]


def test_killed_and_resumed_run_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    torch.manual_seed(5)
    straight = build(tmp_path / "straight")
    expected = straight.train()
    expected_weights = adapter_state(straight)
    expected_optimizer = straight.optimizer.state_dict()

    def kill_in_epoch_three(metrics: dict, step: int) -> None:
        if step == 3:
            raise Killed

    torch.manual_seed(123)  # a different global RNG state: the checkpoint must restore what matters
    interrupted = build(tmp_path / "interrupted", log_metrics=kill_in_epoch_three)
    with pytest.raises(Killed):
        interrupted.train()
    folder = latest_checkpoint(tmp_path / "interrupted" / "checkpoints")
    assert folder.name == "epoch-000002"

    torch.manual_seed(999)
    resumed = build(tmp_path / "interrupted")
    resumed.resume(folder)
    assert resumed.epoch == 2 and resumed.optimizer_steps == 8
    history = resumed.train()

    assert comparable(history) == comparable(expected)
    for got, want in zip(adapter_state(resumed), expected_weights):
        assert torch.equal(got, want)
    got_optimizer = resumed.optimizer.state_dict()
    for index, state in expected_optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(got_optimizer["state"][index][name], value), (index, name)
    assert resumed.kl_controller.value == straight.kl_controller.value
    assert resumed.tracker.state_dict() == straight.tracker.state_dict()
    assert [h["epoch"] for h in history] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_resume_refuses_a_checkpoint_of_another_seed(tmp_path: Path) -> None:
    trainer = build(tmp_path / "a")
    trainer.run_epoch()
    trainer.epoch = 1
    folder = trainer.save_checkpoint()
    other = DDPOTrainer(tiny_policy(), red_background, tiny_requests(6), trainer.config, seed=12)
    with pytest.raises(ValueError, match="trained with seed 11, this trainer has 12"):
        other.resume(folder)
