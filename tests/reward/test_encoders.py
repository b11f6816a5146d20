"""Encoders: the fixed operations by reference implementations, the CNN's shape and mask handling,
EfficientNet-Lite0's real ImageNet weights on a photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reward.config import EncoderConfig
from reward.encoders import StudioCNN, build_encoder
from reward.features import (
    box_sums,
    chroma_harmony,
    dilate,
    edge_discontinuity,
    filter_bank,
    opponent,
    pool_regions,
    ring_regions,
)


def test_box_sums_and_dilation_match_pooling():
    x = torch.rand(2, 3, 13, 11, dtype=torch.float64)
    for radius, sums in zip([0, 1, 3], box_sums(x, [0, 1, 3])):
        reference = F.avg_pool2d(F.pad(x, (radius,) * 4), 2 * radius + 1, stride=1) * (2 * radius + 1) ** 2
        assert torch.allclose(sums, reference, atol=1e-12)
    mask = torch.zeros(1, 1, 13, 11)
    mask[0, 0, 5:7, 3] = 1
    assert torch.equal(dilate(mask, 2), F.max_pool2d(mask, 5, stride=1, padding=2))


def test_opponent_colours_by_hand():
    pixel = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)
    lab = opponent(pixel).flatten().tolist()
    assert lab == pytest.approx([0.299, 1 / np.sqrt(2), 1 / np.sqrt(6)], rel=1e-6)


def test_rings_partition_the_image():
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 10:20, 12:18] = True
    masks[1, 0:8, 0:8] = True  # touches the border: some rings are cut off
    regions = ring_regions(masks, (2, 4, 7))
    # Everything except the last region (the whole product again) covers each pixel exactly once.
    assert torch.allclose(regions[:, :-1].sum(dim=1), torch.ones(2, 32, 32))
    assert torch.equal(regions[:, -1].bool(), masks)
    pooled = pool_regions(torch.ones(2, 1, 32, 32), regions, prior=0.0)
    assert torch.allclose(pooled[regions.sum(dim=(2, 3)) > 0], torch.tensor(1.0))


def test_chroma_harmony_by_hand():
    # Product chroma along +a; regions along +a (analogous), −a (complementary), +b (90°), grey.
    mean_lab = torch.tensor([[[0.5, 0.2, 0.0], [0.5, -0.2, 0.0], [0.5, 0.0, 0.2], [0.5, 0.0, 0.0], [0.5, 0.2, 0.0]]])
    weight = 0.2 / 0.28
    assert chroma_harmony(mean_lab)[0].tolist() == pytest.approx([weight**2, weight**2, -(weight**2), 0.0], abs=1e-6)


def test_edge_discontinuity_sees_a_seam_but_not_a_flat_background():
    images = torch.full((2, 3, 48, 48), 120, dtype=torch.uint8)
    masks = torch.zeros(2, 48, 48, dtype=torch.bool)
    masks[:, 16:32, 18:30] = True
    images[:, :, 16:32, 18:30] = 30  # the product
    grown = dilate(masks.float()[:, None], 2)[:, 0].bool() & ~masks
    images[1][:, grown[1]] = 200  # a bright band hugging the product: a seam
    edges = edge_discontinuity(opponent(images), masks)
    assert edges[0, 0].item() == pytest.approx(0.0, abs=1e-3)
    assert edges[1, 0].item() > 0.2
    assert edges[1, 1].item() > 0.2  # signed luma step, near minus far


def test_studio_cnn_features():
    encoder = StudioCNN(channels=4, bands=(2, 4, 7, 12))
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[:, 20:50, 24:40] = True
    features = encoder.encode(images, masks)
    assert features.shape == (3, encoder.dim) and torch.isfinite(features).all()
    assert encoder.trainable and encoder.needs_mask and encoder.scene_dim == 7
    assert not StudioCNN(channels=0).trainable
    assert filter_bank(images).shape == (3, 17, 64, 64)
    with pytest.raises(ValueError, match="needs the product masks"):
        encoder.encode(images)
    with pytest.raises(ValueError, match=r"images must be a uint8 tensor \[B, 3, H, W\]"):
        encoder.encode(images.float(), masks)
    with pytest.raises(ValueError, match=r"masks must be a bool tensor \[3, 64, 64\]"):
        encoder.encode(images, masks[:, :32])


def test_efficientnet_lite0_recognises_grace_hopper():
    import matplotlib.cbook
    from PIL import Image

    from reward.encoders import IMAGENET_LITE_MEAN, IMAGENET_LITE_STD

    encoder = build_encoder(EncoderConfig(kind="efficientnet_lite0"))
    assert encoder.dim == 1280 and not encoder.trainable
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    photo = torch.from_numpy(np.array(Image.open(path).convert("RGB").resize((224, 224)))).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = encoder.network.logits((photo.float() - IMAGENET_LITE_MEAN) / IMAGENET_LITE_STD)
    assert int(logits.argmax()) == 652  # ImageNet "military uniform", the classic answer for this photo
    features = encoder.encode(photo)
    assert features.shape == (1, 1280) and bool((features >= 0).all())
    encoder.train()
    assert not encoder.network.training  # frozen: batch-norm statistics never update
