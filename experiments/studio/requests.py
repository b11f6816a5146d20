"""Requests and gold evaluation on the studio world (``offline_data.simulator``), the default for training.

Requests are what a user of the logs has: the product's catalogue shot, the noisy segmenter's mask (and its
confidence map for the optional edge band), a prompt and a shopper segment. Products are split into training
and held-out evaluation products with the same salted hash as ``backdrop data split`` (``offline_data.splits``),
so with the default split seed the evaluation products are also unseen by a reward model trained on the train
split of the logs. Gold engagement is the simulator's hidden model, scored with the EXACT mask; it is only ever
passed to evaluation, never to the trainer's loss.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from offline_data.simulator import SEGMENTS, SHOPPER_SEGMENTS, SimulatorConfig, StudioWorld
from offline_data.splits import assign
from rollout.request import InpaintRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class StudioRequestsConfig:
    """Which studio-world products, prompts and segments the policy is trained and evaluated on."""

    split_seed: int = 0
    """Salt of the product split (``backdrop data split``'s ``seed``); the default matches its default."""
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """(train, validation, test) shares of products, as in ``backdrop data split``. Training requests come from
    the train products, evaluation requests from the test products."""
    train_products: int = 0
    """Cap on training products (the first ones of the train split, in world order); 0 = all of them."""
    eval_products: int = 32
    """Held-out products evaluated (the first ones of the test split); each gives one evaluation request."""
    prompts_per_product: int = 2
    """Training prompts per product (the world's own prompts for it, in order)."""
    segments: tuple[str, ...] = SHOPPER_SEGMENTS
    """Shopper segments requests are for, dealt round-robin over (product, prompt)."""

    def __post_init__(self) -> None:
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ValueError(f"split_fractions must be three shares summing to 1, got {self.split_fractions}")
        if self.split_seed < 0 or self.train_products < 0 or self.eval_products < 1:
            raise ValueError("need split_seed >= 0, train_products >= 0 and eval_products >= 1")
        if self.prompts_per_product < 1:
            raise ValueError(f"prompts_per_product must be >= 1, got {self.prompts_per_product}")
        unknown = [s for s in self.segments if s not in SEGMENTS]
        if unknown or not self.segments:
            raise ValueError(f"segments must be a non-empty subset of {', '.join(SEGMENTS)}, got {unknown}")


@dataclass(frozen=True, kw_only=True, eq=False)
class StudioRequests:
    """Training and evaluation requests of one world."""

    world: StudioWorld
    train: tuple[InpaintRequest, ...]
    evaluation: tuple[InpaintRequest, ...]
    train_products: tuple[str, ...] = field(default=())
    eval_products: tuple[str, ...] = field(default=())


def split_products(world: StudioWorld, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Split index (0 train, 1 validation, 2 test) of every product of ``world``, as ``backdrop data split``."""
    return assign(pa.array(world.product_ids, type=pa.string()), fractions, seed)


def product_request(
    world: StudioWorld, index: int, *, prompt: str, segment: str, request_id: str | None = None
) -> InpaintRequest:
    """The request for product ``index`` of ``world``: catalogue shot, noisy mask + confidence, prompt, segment."""
    product = world.products[index]
    return InpaintRequest(
        request_id=request_id or f"{product.product_id}|{prompt}|{segment}",
        product_id=product.product_id,
        segment=segment,
        prompt=prompt,
        product_rgb=torch.from_numpy(np.ascontiguousarray(product.photo().transpose(2, 0, 1))),
        product_mask=torch.from_numpy(world.noisy_masks[index].copy()),
        confidence=torch.from_numpy(world.confidences[index].copy()),
    )


def studio_requests(config: StudioRequestsConfig, world: StudioWorld | None = None) -> StudioRequests:
    """Training requests (train products x prompts, segments round-robin) and held-out evaluation requests
    (test products, their first prompt, segments round-robin).

    Args:
        config: products, prompts and segments.
        world: the studio world (use the one the reward model's logs came from); None builds the default world.
    """
    world = world or StudioWorld(SimulatorConfig())
    split = split_products(world, config.split_fractions, config.split_seed)
    train_idx = np.flatnonzero(split == 0)
    eval_idx = np.flatnonzero(split == 2)
    if config.train_products:
        train_idx = train_idx[: config.train_products]
    if eval_idx.size < config.eval_products:
        logger.warning(
            "only %d of the requested %d evaluation products exist in the test split",
            eval_idx.size,
            config.eval_products,
        )
    eval_idx = eval_idx[: config.eval_products]
    if train_idx.size == 0 or eval_idx.size == 0:
        raise ValueError(
            f"the world's {len(world.products)} products split into {train_idx.size} training and {eval_idx.size} "
            "evaluation products; both must be non-empty (more products, or other split_fractions)"
        )
    segments = config.segments
    train, turn = [], 0
    for i in train_idx.tolist():
        prompts = world.product_prompts[i][: config.prompts_per_product]
        for prompt in prompts:
            train.append(product_request(world, i, prompt=prompt, segment=segments[turn % len(segments)]))
            turn += 1
    evaluation = [
        product_request(world, i, prompt=world.product_prompts[i][0], segment=segments[k % len(segments)])
        for k, i in enumerate(eval_idx.tolist())
    ]
    return StudioRequests(
        world=world,
        train=tuple(train),
        evaluation=tuple(evaluation),
        train_products=tuple(world.product_ids[i] for i in train_idx.tolist()),
        eval_products=tuple(world.product_ids[i] for i in eval_idx.tolist()),
    )


class StudioGold:
    """Hidden gold engagement of composites answering studio requests (evaluation only).

    Satisfies ``rollout.gold.GoldFn``: ``(images [B, 3, H, W] uint8, requests) -> [B] float64 tensor``,
    scored with the product's EXACT mask, the request's prompt and segment.
    """

    def __init__(self, world: StudioWorld) -> None:
        self.world = world
        self._index = {pid: i for i, pid in enumerate(world.product_ids)}

    def __call__(self, images: torch.Tensor, requests: Sequence[InpaintRequest]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8 or len(requests) != len(images):
            raise ValueError(
                f"expected uint8 images [B, 3, H, W] and B requests, got {images.dtype} {list(images.shape)} and "
                f"{len(requests)} requests"
            )
        missing = sorted({r.product_id for r in requests if r.product_id not in self._index})
        if missing:
            raise ValueError(f"product(s) {missing[:5]} are not in the studio world; gold is defined for its products")
        gold = self.world.gold_for_products(
            images.permute(0, 2, 3, 1).contiguous().numpy(),
            [self._index[r.product_id] for r in requests],
            [r.prompt for r in requests],
            [r.segment for r in requests],
        )
        return torch.from_numpy(np.asarray(gold, dtype=np.float64))
