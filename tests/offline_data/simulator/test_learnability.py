"""Slow: a small CNN can learn gold from pixels + prompt on held-out products (what reward models rely on).

Direct regression on panel gold (the easiest supervision a reward model could get) with a ~0.2 M-parameter
CNN whose features are modulated by the prompt's attributes. The within-product correlation on products never
seen in training is the number that matters: pairwise judgements mostly compare variants of one product.
Run with ``pytest -m slow tests/offline_data/simulator/test_learnability.py`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from offline_data.simulator import SimulatorConfig, StudioWorld, WorldConfig, parse_prompt
from offline_data.simulator.prompts import COLOURS, LIGHTINGS, MATERIALS, SCENES, SURFACES

ATTRIBUTES = (tuple(COLOURS), tuple(MATERIALS), tuple(SURFACES), tuple(LIGHTINGS), tuple(SCENES))


def _prompt_features(prompt: str) -> np.ndarray:
    spec = parse_prompt(prompt)
    values = (spec.colour, spec.material, spec.surface, spec.lighting, spec.scene)
    parts = [np.array([value == key for key in keys], dtype=np.float32) for value, keys in zip(values, ATTRIBUTES)]
    return np.concatenate(parts)


class _GoldNet(nn.Module):
    def __init__(self, context: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.SiLU(), nn.Conv2d(32, 48, 3, 1, 1), nn.SiLU(),
            nn.Conv2d(48, 64, 3, 2, 1), nn.SiLU(), nn.Conv2d(64, 96, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(96, 96, 3, 1, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.film = nn.Linear(context, 96)
        self.head = nn.Sequential(nn.Linear(96, 128), nn.SiLU(), nn.Linear(128, 1))

    def forward(self, images: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images) * (1.0 + self.film(context))).squeeze(-1)


def _within(values: np.ndarray, k: int) -> np.ndarray:
    grouped = values.reshape(-1, k)
    return (grouped - grouped.mean(axis=1, keepdims=True)).ravel()


@pytest.mark.slow
def test_a_small_cnn_learns_gold_on_held_out_products() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    world = StudioWorld(SimulatorConfig(world=WorldConfig(products=400)))
    variants = world.variants
    k = world.config.world.variants_per_product
    gold = world.variant_gold[:, world.segment_column("panel")].astype(np.float32)
    images = torch.tensor(variants.images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    context = torch.tensor(np.stack([_prompt_features(p) for p in variants.prompts]))
    target = torch.tensor(gold)
    held_out = variants.product_index >= 320
    train, test = np.flatnonzero(~held_out), np.flatnonzero(held_out)
    net = _GoldNet(context.shape[1])
    optimiser = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(20):
        net.train()
        order = rng.permutation(train)
        for start in range(0, order.size, 64):
            batch = order[start : start + 64]
            x = images[batch]
            if rng.uniform() < 0.5:
                x = x.flip(-1)  # gold is mirror-symmetric: every term is a region statistic
            loss = ((net(x, context[batch]) - target[batch]) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    net.eval()
    with torch.no_grad():
        predicted = net(images[test], context[test]).numpy()
    overall = np.corrcoef(predicted, gold[test])[0, 1]
    within = np.corrcoef(_within(predicted, k), _within(gold[test], k))[0, 1]
    assert overall > 0.7 and within > 0.7, (overall, within)
