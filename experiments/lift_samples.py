"""Paired samples for the direct lift: the base's samples of the evaluation requests, and every member's reward.

The export gate (``experiments/export.py``) and its validation (``experiments/bench/gate_truth.py``) both need,
for a candidate and the base (the same policy with its adapters disabled, ``policy.reference()``), each reward
member's combined reward of the samples of R requests x K seeds, laid out [M, R, K] for
``experiments.export_direct.direct_lift``. Samples are request-major (sample i = r K + k, seed ``first_seed + i``,
``rollout.request.expand_requests``), so the candidate's and the base's sample i share their noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def sample_base(policy: Any, expanded: Sequence[Any], seeds: Sequence[int], sampler: Any) -> torch.Tensor:
    """[R K, 3, H, W] uint8 images of the base model (``policy`` with its adapters disabled) for the same
    ``expanded`` requests and ``seeds`` the candidate was sampled with."""
    from rollout.sampler import sample_trajectories

    with policy.reference(), torch.no_grad():
        return sample_trajectories(policy, list(expanded), list(seeds), sampler).images


def member_rewards(
    reward_fn: Any, images: torch.Tensor, expanded: Sequence[Any], seeds_per_request: int, batch_size: int = 32
) -> np.ndarray:
    """[M, R, K] float64 each member's combined reward (reward units) of the request-major ``images``.

    Args:
        reward_fn: ``experiments.policy_train.StudioRewardFn`` (or any callable returning a
            ``reward.scorer.RewardOutput`` with ``members``).
        images: [R K, 3, H, W] uint8.
        expanded: the R K requests the images answer (request-major).
        seeds_per_request: K.
        batch_size: images scored per call.

    Raises:
        ValueError: the count is not a multiple of K, or the scorer does not return per-member rewards.
    """
    total = images.shape[0]
    if total != len(expanded) or total % seeds_per_request:
        raise ValueError(f"{total} images for {len(expanded)} requests, K = {seeds_per_request}")
    chunks = []
    for start in range(0, total, batch_size):
        output = reward_fn(images[start : start + batch_size], list(expanded[start : start + batch_size]))
        if getattr(output, "members", None) is None:
            raise ValueError("the reward function returned no per-member rewards (RewardOutput.members)")
        chunks.append(output.members.double().cpu().numpy())
    members = np.concatenate(chunks, axis=1)  # [M, R K]
    return members.reshape(members.shape[0], total // seeds_per_request, seeds_per_request)
