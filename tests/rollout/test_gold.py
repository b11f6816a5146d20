"""The optional gold protocol: any callable of the right shape is a GoldFn; its output is checked."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from rollout.gold import GoldFn, score_gold
from rollout.request import InpaintRequest


def brightness(images: torch.Tensor, requests: Sequence[InpaintRequest]) -> torch.Tensor:
    return images.double().mean(dim=(1, 2, 3)) / 255


def test_a_plain_function_is_a_gold_function_and_its_scores_come_back_float64(make_request) -> None:
    requests = [make_request(i) for i in range(3)]
    images = torch.stack([torch.full((3, 8, 8), 51 * i, dtype=torch.uint8) for i in range(3)])
    assert isinstance(brightness, GoldFn)
    gold = score_gold(brightness, images, requests)
    assert gold.dtype == torch.float64 and gold.tolist() == [0.0, 0.2, 0.4]


@pytest.mark.parametrize(
    ("gold_fn", "message"),
    [
        (lambda images, requests: torch.zeros(len(requests) + 1), "gold function returned 3 values for 2 images"),
        (lambda images, requests: torch.tensor([0.5, float("nan")]), r"non-finite values at row\(s\) \[1\]"),
    ],
)
def test_bad_gold_output_is_refused_by_name(make_request, gold_fn, message: str) -> None:
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=message):
        score_gold(gold_fn, images, [make_request(0), make_request(1)])
