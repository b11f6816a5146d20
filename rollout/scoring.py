"""Scoring images with any reward function, in batches, with the output checked.

rollout returns raw rewards; advantages (baselines, normalisation) belong to the learning algorithm in policy/.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from rollout.protocols import RewardFn
from rollout.request import InpaintRequest


def score_images(
    reward_fn: RewardFn,
    images: torch.Tensor,
    requests: Sequence[InpaintRequest],
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Rewards of ``images [B, 3, H, W]`` uint8 for the aligned ``requests``: ``[B]`` float32 on the CPU.

    Raises:
        ValueError: misaligned inputs, or a reward function returning the wrong shape or non-finite values
            (the message names the 0-based rows).
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {list(images.shape)}")
    if len(requests) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(requests)} requests")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rewards = []
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, desc="scoring", unit="batch", disable=not progress or len(starts) == 1):
        chunk = images[start : start + batch_size]
        out = reward_fn(chunk, requests[start : start + batch_size])
        if not isinstance(out, torch.Tensor) or out.shape != (chunk.shape[0],):
            found = f"{out.dtype} {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"reward function returned {found} for rows {start}..{start + len(chunk) - 1}, "
                             f"expected a tensor [{chunk.shape[0]}]")  # fmt: skip
        out = out.detach().float().cpu()
        bad = torch.nonzero(~torch.isfinite(out)).flatten()
        if bad.numel():
            rows = [start + int(i) for i in bad[:10]]
            raise ValueError(f"reward function returned non-finite rewards at row(s) {rows}")
        rewards.append(out)
    return torch.cat(rewards)
