"""score_images: batching any reward function and checking what it returns."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from rollout.protocols import RewardFn
from rollout.request import InpaintRequest
from rollout.scoring import score_images

from .conftest import random_request


class MeanBrightness:
    """Reward = mean pixel value / 255; records the batch sizes it was called with."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, images: torch.Tensor, requests: Sequence[InpaintRequest]) -> torch.Tensor:
        assert len(requests) == images.shape[0]
        self.batches.append(images.shape[0])
        return images.float().mean(dim=(1, 2, 3)) / 255.0


def test_scores_in_batches_in_order() -> None:
    images = torch.arange(5, dtype=torch.uint8)[:, None, None, None].expand(5, 3, 4, 4).contiguous()
    requests = [random_request(i) for i in range(5)]
    reward = MeanBrightness()
    assert isinstance(reward, RewardFn)
    scores = score_images(reward, images, requests, batch_size=2)
    assert reward.batches == [2, 2, 1]
    assert scores.dtype == torch.float32 and torch.allclose(scores, torch.arange(5.0) / 255.0)


def test_bad_reward_outputs_are_named() -> None:
    images = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    requests = [random_request(i) for i in range(3)]
    with pytest.raises(ValueError, match=r"returned torch.float32 \[2, 1\] for rows 0..1, expected a tensor \[2\]"):
        score_images(lambda x, r: torch.zeros(x.shape[0], 1), images, requests, batch_size=2)
    with pytest.raises(ValueError, match=r"returned list for rows 0..2"):
        score_images(lambda x, r: [0.0] * len(r), images, requests)
    with pytest.raises(ValueError, match=r"non-finite rewards at row\(s\) \[2\]"):
        score_images(lambda x, r: torch.tensor([0.0, 1.0, float("nan")])[: len(r)], images, requests)
    with pytest.raises(ValueError, match="got 3 images but 2 requests"):
        score_images(MeanBrightness(), images, requests[:2])
    with pytest.raises(ValueError, match=r"images must be uint8 \[B, 3, H, W\]"):
        score_images(MeanBrightness(), images.float(), requests)
