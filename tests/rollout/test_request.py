"""InpaintRequest validation, RGBA cut-outs and request expansion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rollout.request import InpaintRequest, expand_requests, request_from_rgba


def fields(**overrides: object) -> dict:
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:4, 2:4] = True
    base = {
        "request_id": "r1",
        "product_id": "p1",
        "segment": "all",
        "prompt": "white marble",
        "product_rgb": torch.zeros(3, 8, 8, dtype=torch.uint8),
        "product_mask": mask,
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"request_id": ""}, "request_id must be a non-empty string"),
        ({"segment": None}, "request 'r1': segment must be a non-empty string, got None"),
        ({"prompt": 3}, "prompt must be a string, got int"),
        ({"product_rgb": torch.zeros(3, 8, 8)}, r"product_rgb must be a uint8 tensor \[3, H, W\], got torch.float32"),
        ({"product_rgb": torch.zeros(8, 8, 3, dtype=torch.uint8)}, r"got torch.uint8 tensor of shape \[8, 8, 3\]"),
        ({"product_mask": torch.zeros(8, 8)}, r"product_mask must be a bool tensor \[8, 8\]"),
        ({"product_mask": torch.zeros(8, 7, dtype=torch.bool)}, r"product_mask must be a bool tensor \[8, 8\]"),
        ({"product_mask": torch.ones(8, 8, dtype=torch.bool)}, "covers the whole image"),
        ({"confidence": torch.ones(8, 8, dtype=torch.uint8)}, r"confidence must be a float tensor \[8, 8\]"),
        ({"confidence": torch.full((8, 8), 1.5)}, r"confidence must lie in \[0, 1\]"),
    ],
)
def test_bad_requests(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InpaintRequest(**fields(**overrides))


def test_valid_request() -> None:
    request = InpaintRequest(**fields(prompt="", confidence=torch.rand(8, 8)))
    assert request.size == (8, 8)


def test_request_from_rgba() -> None:
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 0] = 10
    rgba[..., 1] = np.arange(6)
    rgba[1, 1:3, 3] = 255
    rgba[1, 3, 3] = 127  # semi-transparent rim: not in the hard mask, confidence 127/255
    request = request_from_rgba(rgba, request_id="r", product_id="p", segment="s", prompt="oak")
    assert request.product_rgb.shape == (3, 4, 6)
    assert request.product_rgb[1, 0].tolist() == list(range(6)) and int(request.product_rgb[0].min()) == 10
    assert request.product_mask.nonzero().tolist() == [[1, 1], [1, 2]]
    assert request.confidence is not None and request.confidence[1, 3] == pytest.approx(127 / 255)
    looser = request_from_rgba(rgba, request_id="r", product_id="p", segment="s", prompt="oak", alpha_threshold=100)
    assert int(looser.product_mask.sum()) == 3
    with pytest.raises(ValueError, match=r"rgba must be uint8 \[H, W, 4\]"):
        request_from_rgba(rgba[..., :3], request_id="r", product_id="p", segment="s", prompt="oak")


def test_expand_requests() -> None:
    a, b = InpaintRequest(**fields(request_id="a")), InpaintRequest(**fields(request_id="b"))
    requests, seeds = expand_requests([a, b], 3, first_seed=10)
    assert [r.request_id for r in requests] == ["a", "a", "a", "b", "b", "b"]
    assert seeds == [10, 11, 12, 13, 14, 15]
    with pytest.raises(ValueError, match="samples_per_request must be >= 1"):
        expand_requests([a], 0, first_seed=0)
