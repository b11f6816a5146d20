"""Studio-world requests (products split like ``backdrop data split``) and their hidden gold."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch

from experiments.studio.requests import StudioGold, StudioRequestsConfig, studio_requests
from offline_data.simulator import SimulatorConfig, StudioWorld, WorldConfig
from offline_data.splits import assign
from rollout.gold import GoldFn


@pytest.fixture(scope="module")
def small_world() -> StudioWorld:
    return StudioWorld(SimulatorConfig(world=WorldConfig(products=40)))


def test_studio_requests_split_products_like_data_split(small_world: StudioWorld) -> None:
    config = StudioRequestsConfig(eval_products=2, prompts_per_product=2)
    requests = studio_requests(config, small_world)
    split = assign(pa.array(small_world.product_ids), config.split_fractions, config.split_seed)
    train_ids = {pid for pid, s in zip(small_world.product_ids, split) if s == 0}
    test_ids = [pid for pid, s in zip(small_world.product_ids, split) if s == 2][:2]
    assert set(requests.train_products) == train_ids and list(requests.eval_products) == test_ids
    assert len(requests.train) == 2 * len(train_ids) and len(requests.evaluation) == 2
    assert not {r.product_id for r in requests.train} & {r.product_id for r in requests.evaluation}
    assert len({r.request_id for r in requests.train}) == len(requests.train)
    assert [r.segment for r in requests.train[:4]] == ["warm", "cool", "minimal", "warm"]
    first = requests.evaluation[0]
    index = small_world.product_ids.index(first.product_id)
    # What a user of the logs has: the catalogue shot and the segmenter's (noisy) mask with its confidence.
    assert np.array_equal(first.product_mask.numpy(), small_world.noisy_masks[index])
    assert np.array_equal(first.product_rgb.permute(1, 2, 0).numpy(), small_world.products[index].photo())
    assert first.confidence is not None and first.prompt == small_world.product_prompts[index][0]


def test_studio_gold_uses_the_exact_mask_and_the_request_segment(small_world: StudioWorld) -> None:
    assert isinstance(StudioGold(small_world), GoldFn)
    requests = studio_requests(StudioRequestsConfig(eval_products=2), small_world).evaluation
    images = torch.stack([r.product_rgb for r in requests])
    got = StudioGold(small_world)(images, requests)
    indices = [small_world.product_ids.index(r.product_id) for r in requests]
    expected = small_world.gold(
        images.permute(0, 2, 3, 1).numpy(), small_world.exact_masks[indices], [r.prompt for r in requests],
        [r.segment for r in requests],
    )  # fmt: skip
    assert np.array_equal(got.numpy(), expected)
    stranger = dataclasses.replace(requests[0], product_id="not-a-studio-product")
    with pytest.raises(ValueError, match="not in the studio world"):
        StudioGold(small_world)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), [stranger])
