"""Gold: the optional ground truth an evaluation may score samples with (never a training signal).

A team with only its own logs has no gold: training, comparison and export then report the reward model's
held-out estimate, its pessimistic lower bound and the KL (``policy.evaluation``). A world that knows how
shoppers respond, such as the studio simulator (``experiments.studio.requests.StudioGold``) or a team's own
human-rated panel, provides a :class:`GoldFn`, which evaluation code takes as an argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from rollout.request import InpaintRequest


@runtime_checkable
class GoldFn(Protocol):
    """Hidden engagement of composites answering requests (evaluation only)."""

    def __call__(self, images: torch.Tensor, requests: Sequence[InpaintRequest]) -> torch.Tensor:
        """``images [B, 3, H, W]`` uint8 composites, B requests -> ``[B]`` float64 gold, one per image."""
        ...


def score_gold(gold_fn: GoldFn, images: torch.Tensor, requests: Sequence[InpaintRequest]) -> torch.Tensor:
    """``gold_fn(images, requests)`` as a ``[B]`` float64 CPU tensor, checked.

    Raises:
        ValueError: the gold function returned another number of values or a non-finite one (0-based rows named).
    """
    gold = torch.as_tensor(gold_fn(images, requests), dtype=torch.float64).detach().cpu().reshape(-1)
    if gold.numel() != len(requests):
        raise ValueError(f"gold function returned {gold.numel()} values for {len(requests)} images")
    bad = torch.nonzero(~torch.isfinite(gold)).flatten()
    if bad.numel():
        raise ValueError(f"gold function returned non-finite values at row(s) {bad[:10].tolist()}")
    return gold
