"""``RewardScorer``: one scalar reward per image, with the per-head scores and the ensemble's uncertainty.

    RewardScorer(images, requests) -> RewardOutput(reward [B], heads {name: [B]}, uncertainty [B])

Head scores (means over the K members):

- ``click``: calibrated P(click | shown in slot 1) in the request's segment (``calibration.py``);
- ``dwell``: E[log dwell_ms | click] in the request's segment;
- ``preference``: Bradley-Terry utility (log-strength) as the pairwise panel judges it.

Combined reward, per member k, with weights w_h and the (mean, std) of each head over the training impressions
saved with the model (so rewards are comparable across batches, runs and policies):

    r_k = Σ_h w_h (head_h,k − mean_h) / std_h            reward = mean_k r_k − λ std_k r_k,  uncertainty = std_k r_k

λ = 0 by default; :meth:`RewardScorer.pessimistic` returns a scorer with λ > 0 (a lower-confidence reward that
an optimiser cannot push into regions where the members disagree without paying for it).

``requests`` are any objects with ``segment``, ``prompt`` and ``product_kind`` (:class:`RewardRequest`), plus
``product_mask`` ([H, W] bool) when the encoder is mask-aware (the small CNN) and no ``masks`` are passed. The
rollout package's requests carry a mask but no product kind: :meth:`RewardScorer.reward_fn` adapts them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from reward.calibration import Calibrator
from reward.checkpoint import load_parts, save_scorer
from reward.config import HEADS, RewardConfig
from reward.ensemble import RewardEnsemble
from reward.features import check_images


@runtime_checkable
class RewardRequest(Protocol):
    """What the scorer needs to know about the request an image answers."""

    segment: str
    """Shopper segment the image is shown to (unknown segments use the out-of-vocabulary embedding)."""
    prompt: str
    """Background prompt the image was made from."""
    product_kind: str | None
    """Product kind (assets.category), or None when unknown."""


@dataclasses.dataclass(frozen=True)
class ScoringRequest:
    """A plain :class:`RewardRequest` (with the optional mask)."""

    segment: str
    prompt: str
    product_kind: str | None = None
    product_mask: Tensor | None = None


@dataclasses.dataclass(frozen=True)
class RewardOutput:
    """Rewards of B images.

    Attributes:
        reward: [B] float32 combined reward (pessimistic when λ > 0).
        heads: {"click", "dwell", "preference"} -> [B] float32 ensemble-mean head scores.
        uncertainty: [B] float32 standard deviation of the combined reward across members (0 for one member).
        members: [K, B] float32 each member's combined reward (before pessimism), for estimators that resample
            the members (``experiments/export/direct.py``); None when not computed by :meth:`RewardScorer.combine`.
    """

    reward: Tensor
    heads: dict[str, Tensor]
    uncertainty: Tensor
    members: Tensor | None = None


class RewardScorer:
    """The trained reward (module docstring). Build with :meth:`load` or from ``train_ensemble`` output.

    Args:
        ensemble: the members (and their shared frozen encoder).
        config: the reward configuration it was trained with.
        calibrator: the click calibrator.
        normalisation: {head: (mean, std)} of the training impressions' head scores.
        product_kinds: product_id -> kind seen in training (for :meth:`reward_fn`).
        pessimism: λ.
    """

    def __init__(
        self,
        ensemble: RewardEnsemble,
        config: RewardConfig,
        calibrator: Calibrator,
        normalisation: Mapping[str, tuple[float, float]],
        product_kinds: Mapping[str, str] | None = None,
        *,
        pessimism: float = 0.0,
    ) -> None:
        if pessimism < 0:
            raise ValueError(f"pessimism must be >= 0, got {pessimism}")
        missing = [h for h in HEADS if h not in normalisation]
        if missing:
            raise ValueError(f"normalisation lacks head(s) {', '.join(missing)}")
        self.ensemble = ensemble
        self.config = config
        self.calibrator = calibrator
        self.normalisation = {h: (float(m), float(s)) for h, (m, s) in normalisation.items()}
        self.product_kinds = dict(product_kinds or {})
        self.pessimism = float(pessimism)
        self.oov_counts = {"segment": 0, "word": 0, "kind": 0}
        """Out-of-vocabulary context values seen by this scorer so far (reported, never silent)."""

    @property
    def device(self) -> torch.device:
        return next(self.ensemble.parameters()).device

    @property
    def members(self) -> int:
        return len(self.ensemble.members)

    def pessimistic(self, lam: float) -> RewardScorer:
        """The same scorer with reward = mean − ``lam`` · std across members (shares the weights)."""
        return RewardScorer(
            self.ensemble, self.config, self.calibrator, self.normalisation, self.product_kinds, pessimism=lam
        )

    def __call__(
        self,
        images: Tensor,
        requests: Sequence[RewardRequest],
        *,
        masks: Tensor | None = None,
        image_ids: Sequence[str] | None = None,
    ) -> RewardOutput:
        """Score images [B, 3, H, W] uint8 for the aligned ``requests``.

        Args:
            masks: [B, H, W] bool product masks; default: each request's ``product_mask`` (mask-aware encoders).
            image_ids: B ids, needed by precomputed embeddings (they cannot encode new pixels).

        Raises:
            ValueError: misaligned inputs, or a mask-aware encoder without masks.
        """
        check_images(images)
        if len(requests) != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {len(requests)} requests")
        if self.ensemble.needs_mask and masks is None:
            masks = self._request_masks(requests, images)
        if masks is not None:
            check_images(images, masks)
        context, oov = self.ensemble.vocabulary.encode(
            [r.segment for r in requests], [r.prompt for r in requests], [r.product_kind for r in requests]
        )
        for key, count in oov.items():
            self.oov_counts[key] += count
        device = self.device
        scores = self.ensemble.member_scores(
            images.to(device), masks.to(device) if masks is not None else None, context.to(device), image_ids=image_ids
        )
        return self.combine(scores)

    def embed(self, images: Tensor, *, masks: Tensor | None = None, image_ids: Sequence[str] | None = None) -> Tensor:
        """The reward model's image embedding (``RewardEnsemble.embed``): [B, 3, H, W] uint8 -> [B, D] float32 on
        the CPU. ``masks`` [B, H, W] bool are needed by mask-aware encoders, ``image_ids`` by precomputed ones.

        Raises:
            ValueError: a mask-aware encoder without masks, or misaligned inputs.
        """
        check_images(images)
        if masks is not None:
            check_images(images, masks)
        elif self.ensemble.needs_mask:
            raise ValueError("the reward's encoder is mask-aware: pass masks= [B, H, W] bool")
        device = self.device
        masks = masks.to(device) if masks is not None else None
        return self.ensemble.embed(images.to(device), masks, image_ids=image_ids).cpu()

    def combine(self, scores: Mapping[str, Tensor]) -> RewardOutput:
        """Calibrated heads and the combined reward from member head scores {head: [K, B]}."""
        click_logits = scores["click"].detach().cpu().double().numpy()
        click = torch.from_numpy(self.calibrator.probability(click_logits, 1.0)).float()
        heads = {
            "click": click,
            "dwell": scores["dwell"].detach().float().cpu(),
            "preference": scores["preference"].detach().float().cpu(),
        }
        weights = self.config.combination.weights
        combined = torch.zeros_like(heads["click"])
        for name in HEADS:
            weight = float(weights.get(name, 0.0))
            if weight:
                mean, std = self.normalisation[name]
                combined = combined + weight * (heads[name] - mean) / std
        spread = combined.std(dim=0, unbiased=False)
        reward = combined.mean(dim=0) - self.pessimism * spread
        return RewardOutput(
            reward=reward, heads={h: v.mean(dim=0) for h, v in heads.items()}, uncertainty=spread, members=combined
        )

    def _request_masks(self, requests: Sequence[RewardRequest], images: Tensor) -> Tensor:
        masks = []
        for i, request in enumerate(requests):
            mask = getattr(request, "product_mask", None)
            if not isinstance(mask, Tensor):
                raise ValueError(
                    f"request {i}: the reward's encoder is mask-aware and needs the product mask; pass masks= "
                    "[B, H, W] bool or give each request a product_mask"
                )
            masks.append(mask.to(torch.bool))
        stacked = torch.stack(masks)
        if stacked.shape != (images.shape[0], images.shape[2], images.shape[3]):
            raise ValueError(f"request masks are {list(stacked.shape)}, images {list(images.shape)}")
        return stacked

    def reward_fn(self, product_kinds: Mapping[str, str] | None = None) -> RewardFnAdapter:
        """An adapter with rollout's ``RewardFn`` signature: ``(images [B, 3, H, W] uint8, requests) -> [B] float32``.

        Rollout's requests have ``segment``, ``prompt``, ``product_id`` and ``product_mask`` but no product kind;
        the kind is looked up by product_id in ``product_kinds`` (default: the kinds seen in training; unknown
        products use the out-of-vocabulary kind).
        """
        return RewardFnAdapter(self, dict(self.product_kinds if product_kinds is None else product_kinds))

    def save(self, path: str | Path, *, metrics: Mapping | None = None) -> Path:
        """Write the model folder (``checkpoint.py`` has the layout)."""
        return save_scorer(self, Path(path), metrics=metrics)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> RewardScorer:
        """Load a model folder written by :meth:`save`.

        Raises:
            CheckpointError: missing or inconsistent files.
        """
        parts = load_parts(Path(path), torch.device(device))
        return cls(parts.ensemble, parts.config, parts.calibrator, parts.normalisation, parts.product_kinds)


@dataclasses.dataclass(frozen=True)
class RewardFnAdapter:
    """``RewardScorer`` as rollout's ``RewardFn`` (see :meth:`RewardScorer.reward_fn`)."""

    scorer: RewardScorer
    product_kinds: dict[str, str]

    def __call__(self, images: Tensor, requests: Sequence) -> Tensor:
        adapted = [
            ScoringRequest(
                segment=r.segment,
                prompt=r.prompt,
                product_kind=self.product_kinds.get(getattr(r, "product_id", None)),
                product_mask=getattr(r, "product_mask", None),
            )
            for r in requests
        ]
        return self.scorer(images, adapted).reward
