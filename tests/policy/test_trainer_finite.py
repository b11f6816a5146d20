"""Finite or refused: a run whose rewards, gradients or weights go NaN/inf stops with NonFiniteError, named, and
leaves the last good checkpoint as the last thing it wrote."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from offline_data.finite import NonFiniteError
from policy.trainer import DDPOTrainer
from policy.trainer_config import OptimConfig
from rollout.request import InpaintRequest
from tests.policy.test_trainer import red_background, tiny_config, tiny_policy, tiny_requests


def test_a_nan_reward_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    calls = []

    def reward_going_nan(images: torch.Tensor, requests: Sequence[InpaintRequest]) -> torch.Tensor:
        calls.append(len(requests))
        reward = red_background(images, requests)
        return reward if len(calls) <= 2 else reward.fill_(math.nan)  # 2 chunks of 4 per epoch: epoch 2 goes NaN

    trainer = DDPOTrainer(
        tiny_policy(), reward_going_nan, tiny_requests(4), tiny_config(epochs=3, checkpoint_every=1), seed=0,
        output_dir=tmp_path,
    )  # fmt: skip
    checkpoint = tmp_path / "checkpoints" / "epoch-000001"
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    assert str(info.value) == (
        f"epoch 2: reward function output reward: non-finite at row(s) [0, 1, 2, 3]; training stopped; the last good "
        f"checkpoint is {checkpoint}"
    )
    assert NonFiniteError.exit_code == 6
    assert [record["epoch"] for record in trainer.history] == [1.0]  # epoch 2 was never logged
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-000001", "latest.json"]
    assert not (tmp_path / "adapter").exists()  # no final adapter from a diverged run
    weights = load_file(checkpoint / "adapter" / "pytorch_lora_weights.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.parametrize(
    ("samples_per_step", "message"),
    [
        # two optimiser steps per epoch: step 1 writes inf * 0 = NaN into A (its first gradient is 0 while B = 0),
        # step 2's gradient is NaN
        (4, "epoch 1: policy/grad_norm of optimiser step 2 is nan; training stopped"),
        # one step per epoch: the losses and gradients were finite, the weights after the step are not
        (8, "epoch 1, LoRA weights after the update (learning rate inf): "),
    ],
)
def test_an_infinite_learning_rate_stops_at_the_first_non_finite_value(samples_per_step: int, message: str) -> None:
    optim = OptimConfig(samples_per_step=samples_per_step, learning_rate=math.inf)
    trainer = DDPOTrainer(tiny_policy(), red_background, tiny_requests(4), tiny_config(optim=optim), seed=0)
    with pytest.raises(NonFiniteError, match="training stopped") as info:
        trainer.train()
    assert str(info.value).startswith(message)
    assert trainer.history == []


def test_offline_training_stops_at_the_first_non_finite_loss_and_keeps_its_snapshots(tmp_path: Path) -> None:
    from policy.evaluation import EvaluationConfig, PolicyEvaluator
    from policy.offline import OfflineTrainer, encode_logged_images
    from policy.offline_config import OfflineConfig, RWRConfig
    from policy.rwr import RWRObjective
    from tests.policy.test_offline import logged_images
    from tests.policy.test_trainer import SAMPLER

    policy = tiny_policy()
    encoded = encode_logged_images(policy, logged_images(8))
    objective = RWRObjective(encoded, torch.ones(8), RWRConfig())
    evaluator = PolicyEvaluator(
        tiny_requests(2, offset=60), reward_fn=red_background, gold_fn=red_background, sampler=SAMPLER,
        config=EvaluationConfig(seeds_per_request=2),
    )  # fmt: skip
    # inf x AdamW's first update (0 for A while B = 0, non-zero for B) is NaN or inf in every weight
    config = OfflineConfig(method="rwr", steps=4, batch_size=4, eval_every=2, learning_rate=math.inf)
    trainer = OfflineTrainer(
        policy, objective, config, seed=1, sampling_steps=SAMPLER.num_steps, evaluator=evaluator, output_dir=tmp_path
    )
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    snapshot = tmp_path / "adapters" / "step-000000"
    assert str(info.value) == (
        f"step 2: rwr/loss is nan; training stopped; the last good adapter snapshot is {snapshot}"
    )
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["step-000000"]
    assert not (tmp_path / "adapter").exists()
