"""Best-of-N reranking: score N candidates per request with any reward function, drop near-duplicates, keep the best.

Near-duplicates are found with the DCT perceptual hash of the ``imagehash`` package (``imagehash.phash``; Zauner
2010): luma resized to 32x32, 2-D DCT-II, the 8x8 lowest frequencies compared with their median, 64 bits; two
images are near-duplicates when their hashes differ in at most ``max_hamming`` bits. The candidates of one
request share the product, which would dominate the hash, so before hashing the product pixels are replaced by
the mean colour of the background (rounded to uint8): only the painted backgrounds are compared.

Selection is greedy in descending reward: a candidate is kept unless it is a near-duplicate of an already kept
one (so the best of a group of duplicates survives), until ``keep`` candidates are chosen per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
import torch
from PIL import Image

from rollout.protocols import RewardFn
from rollout.request import InpaintRequest
from rollout.scoring import score_images

HASH_SIDE = 8
"""pHash keeps HASH_SIDE x HASH_SIDE low DCT frequencies (64 bits)."""
RESIZE = 32
"""Side the luma is resized to before the DCT (4x HASH_SIDE, pHash's choice)."""


def perceptual_hash(images: torch.Tensor, product_masks: torch.Tensor | None = None) -> torch.Tensor:
    """64-bit perceptual hashes (``imagehash.phash``) of ``images [B, 3, H, W]`` uint8: ``[B, 64]`` bool.

    Args:
        images: the candidates.
        product_masks: ``[B, H, W]`` bool; where given, those pixels are set to the mean background colour
            first, so that the shared product does not dominate the hash.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {list(images.shape)}")
    if product_masks is not None:
        if product_masks.shape != (images.shape[0], *images.shape[2:]) or product_masks.dtype != torch.bool:
            raise ValueError(f"product_masks must be bool [B, H, W] matching images, got {list(product_masks.shape)}")
        background = (~product_masks)[:, None].double()
        total = (images.double() * background).sum(dim=(2, 3), keepdim=True)
        mean = (total / background.sum(dim=(2, 3), keepdim=True).clamp_min(1)).round().to(torch.uint8)
        images = torch.where(product_masks[:, None], mean, images)
    pictures = images.permute(0, 2, 3, 1).contiguous().numpy()
    hashes = [
        imagehash.phash(Image.fromarray(picture), hash_size=HASH_SIDE, highfreq_factor=RESIZE // HASH_SIDE).hash
        for picture in pictures
    ]
    return torch.from_numpy(np.stack(hashes).reshape(len(hashes), -1))


def hamming_distances(hashes: torch.Tensor) -> torch.Tensor:
    """Pairwise Hamming distances ``[B, B]`` int64 of bool hashes ``[B, bits]``."""
    if hashes.dtype != torch.bool or hashes.ndim != 2:
        raise ValueError(f"hashes must be bool [B, bits], got {hashes.dtype} {list(hashes.shape)}")
    return (hashes[:, None, :] != hashes[None, :, :]).sum(dim=2)


def select_distinct(scores: torch.Tensor, distances: torch.Tensor, keep: int, max_hamming: int) -> list[int]:
    """Greedy selection: indices of up to ``keep`` best-scoring candidates, none within ``max_hamming`` of another.

    Ties in score go to the lower index. Returns indices in descending score order.
    """
    if scores.ndim != 1 or distances.shape != (scores.shape[0], scores.shape[0]):
        raise ValueError(
            f"scores [N] and distances [N, N] expected, got {list(scores.shape)}, {list(distances.shape)}"
        )
    order = sorted(range(scores.shape[0]), key=lambda i: (-float(scores[i]), i))
    chosen: list[int] = []
    for index in order:
        if len(chosen) == keep:
            break
        if all(int(distances[index, other]) > max_hamming for other in chosen):
            chosen.append(index)
    return chosen


@dataclass(frozen=True, kw_only=True, eq=False)
class RerankResult:
    """The chosen candidates of every request, best first within a request."""

    images: torch.Tensor
    """``[K, 3, H, W]`` uint8: the chosen images (requests in order of first appearance)."""
    requests: tuple[InpaintRequest, ...]
    """The K requests the chosen images answer."""
    indices: tuple[int, ...]
    """K indices of the chosen images among the candidates."""
    scores: torch.Tensor
    """``[K]`` float32 rewards of the chosen images."""
    candidate_scores: torch.Tensor
    """``[N]`` float32 rewards of every candidate."""
    duplicates: tuple[int, ...]
    """Indices of candidates that were near-duplicates of a better candidate of their request (skipped)."""

    @property
    def filtered(self) -> int:
        """How many candidates the near-duplicate filter removed."""
        return len(self.duplicates)


def rerank(
    images: torch.Tensor,
    requests: Sequence[InpaintRequest],
    reward_fn: RewardFn,
    *,
    keep: int = 1,
    max_hamming: int = 6,
    batch_size: int = 64,
) -> RerankResult:
    """Best-of-N: score every candidate, and per request id keep the ``keep`` best that are not near-duplicates.

    Args:
        images: ``[N, 3, H, W]`` uint8 candidates (e.g. ``Rollout.images``).
        requests: the N requests they answer; candidates of one request share its ``request_id``.
        reward_fn: any :class:`~rollout.protocols.RewardFn`.
        keep: images to keep per request (fewer if its candidates are too alike).
        max_hamming: two candidates whose background hashes differ in at most this many of 64 bits are
            near-duplicates (0 removes exact duplicates only; a negative value disables the filter).
        batch_size: scoring batch size.

    Raises:
        ValueError: misaligned inputs or ``keep < 1``; the reward function's errors as in ``score_images``.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    scores = score_images(reward_fn, images, requests, batch_size=batch_size)
    masks = torch.stack([r.product_mask for r in requests])
    distances = hamming_distances(perceptual_hash(images, masks))
    groups: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(request.request_id, []).append(index)
    chosen: list[int] = []
    duplicates: list[int] = []
    for members in groups.values():
        member = torch.tensor(members)
        local_distances = distances[member][:, member]
        local = select_distinct(scores[member], local_distances, keep, max_hamming)
        chosen.extend(members[i] for i in local)
        # A candidate is a filtered duplicate if it is within max_hamming of a better-scoring candidate that was
        # considered before it (the kept one or another duplicate of it).
        order = sorted(range(len(members)), key=lambda i: (-float(scores[members[i]]), i))
        for rank, i in enumerate(order):
            if any(int(local_distances[i, j]) <= max_hamming for j in order[:rank] if j in local):
                duplicates.append(members[i])
    picked = torch.tensor(chosen, dtype=torch.long)
    return RerankResult(
        images=images[picked],
        requests=tuple(requests[i] for i in chosen),
        indices=tuple(chosen),
        scores=scores[picked],
        candidate_scores=scores,
        duplicates=tuple(sorted(duplicates)),
    )
