"""Finite or refused: reward training stops at the first non-finite loss or gradient norm, named, before the step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from offline_data.finite import NonFiniteError
from reward.pipeline import fit_reward_model
from tests.reward.conftest import fast_config


def test_an_infinite_learning_rate_stops_at_the_first_non_finite_step(small_splits: Path) -> None:
    # AdamW's first update is lr x m / sqrt(v) = inf: every weight it touches is inf or NaN, so step 2's loss is.
    config = fast_config(train={"learning_rate": math.inf, "epochs": 2, "steps_per_epoch": 3})
    with pytest.raises(NonFiniteError) as info:
        fit_reward_model(
            config, small_splits / "train", small_splits / "validation", seed=0, device=torch.device("cpu"),
            progress=False,
        )  # fmt: skip
    assert str(info.value).startswith("member 0, epoch 1 of 2, step 2 of 3: train/")
    assert str(info.value).endswith("training stopped") and NonFiniteError.exit_code == 6
