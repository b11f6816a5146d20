"""Pixel -> latent product masks, SD's mask channel, and the soft edge band."""

from __future__ import annotations

import pytest
import torch

from rollout.config import EdgeBandConfig
from rollout.masks import edge_band, inpaint_mask_channel, latent_product_mask


def test_one_product_pixel_makes_its_latent_cell_product() -> None:
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 5, 2] = True  # cell (1, 0) with factor 4
    latent = latent_product_mask(mask, 4)
    assert latent.shape == (2, 1, 2, 2) and latent.dtype == torch.bool
    assert latent[0, 0].tolist() == [[False, False], [True, False]]
    assert not latent[1].any()
    assert torch.equal(latent_product_mask(mask[:, None], 4), latent)


def test_latent_mask_errors() -> None:
    with pytest.raises(ValueError, match="factor 3 must be >= 1 and divide the mask size 8x8"):
        latent_product_mask(torch.zeros(1, 8, 8, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match="product_mask must be bool"):
        latent_product_mask(torch.zeros(1, 8, 8), 4)
    with pytest.raises(ValueError, match=r"must be \[B, H, W\] or \[B, 1, H, W\]"):
        latent_product_mask(torch.zeros(8, 8, dtype=torch.bool), 4)


def test_inpaint_mask_channel_is_one_on_background() -> None:
    latent = torch.tensor([[[[True, False]]]])
    assert inpaint_mask_channel(latent, torch.float32).tolist() == [[[[0.0, 1.0]]]]


def test_edge_band_is_a_ring_outside_the_mask() -> None:
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 3:6, 3:6] = True
    confidence = torch.full((1, 9, 9), 0.5)
    confidence[0, 2, 2] = 0.01  # below min_confidence: fully generated
    weight = edge_band(mask, confidence, EdgeBandConfig(width=1, min_confidence=0.05))
    ring = torch.zeros(9, 9, dtype=torch.bool)
    ring[2:7, 2:7] = True
    ring[3:6, 3:6] = False
    ring[2, 2] = False
    assert torch.equal(weight[0] > 0, ring)  # 5x5 - 3x3 - 1 = 15 pixels
    assert int((weight > 0).sum()) == 15
    assert torch.all(weight[0][ring] == 0.5)
    assert not bool((weight[mask] > 0).any())  # never inside the hard mask, whatever the confidence there
    wide = edge_band(mask, torch.ones(1, 9, 9), EdgeBandConfig(width=2))
    assert int((wide > 0).sum()) == 7 * 7 - 9


def test_edge_band_off_without_width_or_confidence() -> None:
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 4, 4] = True
    assert not edge_band(mask, None, EdgeBandConfig(width=2)).any()
    assert not edge_band(mask, torch.ones(1, 9, 9), EdgeBandConfig(width=0)).any()
    with pytest.raises(ValueError, match=r"confidence must be \[1, 9, 9\]"):
        edge_band(mask, torch.ones(9, 9), EdgeBandConfig(width=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"width": -1}, "width must be >= 0"), ({"min_confidence": 0.0}, r"min_confidence must be in \(0, 1\]")],
)
def test_band_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EdgeBandConfig(**kwargs)
