"""Best-of-N reranking: picks the maximum, and the pHash filter removes near-duplicates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rollout.request import InpaintRequest
from rollout.rerank import hamming_distances, perceptual_hash, rerank, select_distinct


def scene(seed: int, size: int = 64) -> torch.Tensor:
    """A random smooth background ``[3, H, W]`` uint8 (blurred noise, so low frequencies differ by seed)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=generator)
    return (torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")[0].clamp(0, 1) * 255).to(
        torch.uint8
    )


def request(request_id: str, product_seed: int = 0) -> InpaintRequest:
    rgb = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(product_seed), dtype=torch.uint8)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[24:56, 20:44] = True
    return InpaintRequest(request_id=request_id, product_id="p", segment="panel", prompt="marble", product_rgb=rgb,
                          product_mask=mask)  # fmt: skip


def with_product(background: torch.Tensor, req: InpaintRequest) -> torch.Tensor:
    return torch.where(req.product_mask[None], req.product_rgb, background)


class TableReward:
    """Rewards looked up by the image's mean pixel value (a reward function that knows nothing of the order)."""

    def __init__(self, images: torch.Tensor, rewards: list[float]) -> None:
        self.table = {float(img.float().mean()): r for img, r in zip(images, rewards)}

    def __call__(self, images: torch.Tensor, requests) -> torch.Tensor:
        return torch.tensor([self.table[float(img.float().mean())] for img in images])


def test_hash_is_imagehash_phash_of_the_background() -> None:
    import imagehash
    from PIL import Image

    a = request("a", product_seed=1)
    image = with_product(scene(3), a)
    expected = imagehash.phash(Image.fromarray(image.permute(1, 2, 0).numpy())).hash.reshape(-1)
    assert np.array_equal(perceptual_hash(image[None])[0].numpy(), expected)
    background = ~a.product_mask
    mean = (image.double() * background).sum(dim=(1, 2)) / background.sum()
    filled = torch.where(a.product_mask[None], mean.round().to(torch.uint8)[:, None, None], image)
    expected = imagehash.phash(Image.fromarray(filled.permute(1, 2, 0).numpy())).hash.reshape(-1)
    assert np.array_equal(perceptual_hash(image[None], a.product_mask[None])[0].numpy(), expected)


def test_hash_properties() -> None:
    images = torch.stack([scene(0), scene(0), scene(1)])
    noisy = images[0].int() + torch.randint(-3, 4, images[0].shape, generator=torch.Generator().manual_seed(0))
    images = torch.cat([images, noisy.clamp(0, 255).to(torch.uint8)[None]])
    hashes = perceptual_hash(images)
    assert hashes.shape == (4, 64) and hashes.dtype == torch.bool
    distances = hamming_distances(hashes)
    assert distances[0, 1] == 0 and distances[0, 3] <= 4  # identical; faint noise
    assert distances[0, 2] >= 16  # a different background
    assert torch.equal(distances, distances.T) and bool((distances.diagonal() == 0).all())
    # The same background behind two different products hashes the same once the product is masked out.
    a, b = request("a", product_seed=1), request("b", product_seed=2)
    pair = torch.stack([with_product(scene(5), a), with_product(scene(5), b)])
    masks = torch.stack([a.product_mask, b.product_mask])
    assert hamming_distances(perceptual_hash(pair, masks))[0, 1] == 0
    assert hamming_distances(perceptual_hash(pair))[0, 1] > 0


def test_select_distinct_by_hand() -> None:
    scores = torch.tensor([0.1, 0.9, 0.8, 0.5])
    distances = torch.tensor([[0, 30, 30, 30], [30, 0, 2, 30], [30, 2, 0, 30], [30, 30, 30, 0]])
    assert select_distinct(scores, distances, keep=2, max_hamming=6) == [1, 3]  # 2 is a duplicate of 1
    assert select_distinct(scores, distances, keep=2, max_hamming=1) == [1, 2]
    assert select_distinct(scores, distances, keep=9, max_hamming=-1) == [1, 2, 3, 0]
    assert select_distinct(torch.tensor([1.0, 1.0]), torch.full((2, 2), 40), keep=1, max_hamming=6) == [0]


def test_rerank_picks_the_maximum_per_request_and_filters_duplicates() -> None:
    req_a, req_b = request("a"), request("b")
    backgrounds = [scene(10), scene(11), scene(10), scene(12), scene(13), scene(14)]
    # Candidate 2 is candidate 0 with one pixel changed: a near-duplicate of the best candidate of request a.
    backgrounds[2] = backgrounds[2].clone()
    backgrounds[2][:, 0, 0] = backgrounds[2][:, 0, 0] // 2
    requests = [req_a, req_a, req_a, req_b, req_b, req_b]
    images = torch.stack([with_product(bg, r) for bg, r in zip(backgrounds, requests)])
    rewards = [0.9, 0.1, 0.8, 0.3, 0.7, 0.5]
    result = rerank(images, requests, TableReward(images, rewards), keep=2, max_hamming=6)
    assert result.indices == (0, 1, 4, 5)  # a: best (0), then 1 since 2 duplicates 0; b: 4 then 5
    assert result.duplicates == (2,) and result.filtered == 1
    torch.testing.assert_close(result.scores, torch.tensor([0.9, 0.1, 0.7, 0.5]))
    torch.testing.assert_close(result.candidate_scores, torch.tensor(rewards))
    assert torch.equal(result.images, images[[0, 1, 4, 5]])
    assert [r.request_id for r in result.requests] == ["a", "a", "b", "b"]
    best = rerank(images, requests, TableReward(images, rewards), keep=1, max_hamming=-1)
    assert best.indices == (0, 4) and best.filtered == 0


def test_rerank_errors() -> None:
    req = request("a")
    images = torch.stack([with_product(scene(0), req)])
    with pytest.raises(ValueError, match="keep must be >= 1"):
        rerank(images, [req], TableReward(images, [1.0]), keep=0)
    with pytest.raises(ValueError, match="got 1 images but 2 requests"):
        rerank(images, [req, req], TableReward(images, [1.0]))
    with pytest.raises(ValueError, match="uint8"):
        perceptual_hash(images.float())
