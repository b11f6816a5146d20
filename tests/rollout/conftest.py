"""Shared pieces of the rollout tests: a tiny inpainting policy and product requests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from policy.config import InpaintModelConfig, LoraConfig
from policy.model import InpaintPolicy
from rollout.request import InpaintRequest

PROMPTS = ("white marble tabletop, soft window light", "oak wood floor, golden hour light", "")


def build_policy(config: InpaintModelConfig | None = None, dtype: torch.dtype = torch.float32) -> InpaintPolicy:
    """The tiny model (default: 64 px, 16x16x4 latents) with a fresh rank-4 adapter (B = 0)."""
    words = [w for p in PROMPTS for w in p.replace(",", " ").split()]
    return InpaintPolicy.from_config(config or InpaintModelConfig(), lora=LoraConfig(), vocabulary=words, dtype=dtype)


@pytest.fixture(scope="session")
def policy() -> InpaintPolicy:
    """Shared by tests that only sample; tests that change the adapter build their own."""
    return build_policy()


def random_request(index: int, *, size: int = 64, seed: int = 0) -> InpaintRequest:
    """A random product image with a rectangular product of a random size and place."""
    generator = torch.Generator().manual_seed(seed * 1000 + index)
    rgb = torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
    top, left = (int(v) for v in torch.randint(0, size // 2, (2,), generator=generator))
    height, width = (int(v) for v in torch.randint(3, size // 2, (2,), generator=generator))
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return InpaintRequest(
        request_id=f"req-{seed}-{index}",
        product_id=f"prod-{index}",
        segment="all",
        prompt=PROMPTS[index % 2],
        product_rgb=rgb,
        product_mask=mask,
    )


@pytest.fixture
def make_request() -> Callable[..., InpaintRequest]:
    return random_request
