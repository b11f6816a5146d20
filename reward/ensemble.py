"""An ensemble of K reward models, and training it: members differ by bootstrap resample and seed.

The spread of the members' rewards is the reward's uncertainty (Lakshminarayanan et al. 2017 use seeds;
bootstrap resampling, Efron 1979, adds the data's sampling noise). A frozen encoder is shared and run once;
a trainable encoder belongs to each member.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from reward.config import RewardConfig
from reward.data import RewardData, check_trainable
from reward.member_checkpoint import load_member, save_member
from reward.model import RewardModel
from reward.train import (
    IndexedData,
    LogMetrics,
    MemberResult,
    annotator_ids,
    build_model,
    build_vocabulary,
    encode_frozen,
    fit_reference,
    index_data,
    train_member,
)
from reward.vocabulary import ContextBatch, ContextVocabulary

logger = logging.getLogger(__name__)

SEED_STRIDE = 1009
"""Member k trains with seed + k * SEED_STRIDE."""


class RewardEnsemble(nn.Module):
    """K members and the frozen encoder they share (None when each member owns a trainable one).

    Args:
        members: trained :class:`RewardModel` s (same vocabulary, slots and feature width).
        encoder: the shared frozen encoder, or None.
    """

    def __init__(self, members: Sequence[RewardModel], encoder: nn.Module | None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.shared_encoder = encoder
        self.eval()

    @property
    def vocabulary(self) -> ContextVocabulary:
        return self.members[0].vocabulary

    @property
    def needs_mask(self) -> bool:
        encoder = self.shared_encoder if self.shared_encoder is not None else self.members[0].encoder
        return bool(encoder.needs_mask)

    def train(self, mode: bool = True) -> RewardEnsemble:
        # Always evaluated: members are trained one by one by ``train_member``, never through the ensemble.
        return super().train(False)

    @torch.no_grad()
    def member_scores(
        self,
        pixels: Tensor | None,
        masks: Tensor | None,
        context: ContextBatch,
        *,
        image_ids: Sequence[str] | None = None,
        features: Tensor | None = None,
        inverse: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Raw head scores of every member: {"click", "dwell", "preference"} -> [K, B].

        Args:
            pixels: [U, 3, H, W] uint8 (None when ``features`` is given).
            masks: [U, H, W] bool for mask-aware encoders.
            context: B indexed contexts.
            image_ids: U ids (precomputed embeddings).
            features: [U, D] precomputed features of the shared frozen encoder.
            inverse: [B] int64 image of each row among the U (None: U = B, row i is image i); each distinct
                image is encoded once.
        """
        if features is None and self.shared_encoder is not None:
            features = self.shared_encoder.encode(pixels, masks, image_ids)
        out: dict[str, list[Tensor]] = {"click": [], "dwell": [], "preference": []}
        for member in self.members:
            device = member.preference_segment.device
            raw = features.to(device) if features is not None else member.encode(pixels, masks)
            if inverse is not None:
                raw = raw[inverse.to(device)]
            for name, value in member.head_scores(raw, context).items():
                out[name].append(value)
        return {name: torch.stack(values) for name, values in out.items()}

    @torch.no_grad()
    def embed(self, pixels: Tensor | None, masks: Tensor | None, *, image_ids: Sequence[str] | None = None) -> Tensor:
        """The reward model's embedding of images: the encoder's features as the first member's trunk sees them
        (standardised by its batch-norm running statistics, so every feature has unit scale): [U, D] float32.

        The shared frozen encoder's features when there is one, else the first member's own (trainable) encoder:
        one fixed space in which image distances are comparable (``experiments/export/logged_correction.py``
        clusters logged images and assigns fresh samples in it).

        Args:
            pixels: [U, 3, H, W] uint8.
            masks: [U, H, W] bool for mask-aware encoders.
            image_ids: U ids (precomputed embeddings, which cannot embed new pixels).
        """
        member = self.members[0]
        if self.shared_encoder is not None:
            raw = self.shared_encoder.encode(pixels, masks, image_ids)
        else:
            raw = member.encode(pixels, masks)
        return member.normalised(raw.to(member.preference_segment.device)).float()

    def examination(self) -> Tensor:
        """θ per slot, averaged over members: [S]."""
        return torch.stack([m.click.examination().detach() for m in self.members]).mean(dim=0)


@dataclasses.dataclass
class EnsembleResult:
    """A trained ensemble, the indexed splits and what training reported."""

    ensemble: RewardEnsemble
    train: IndexedData
    validation: IndexedData
    members: list[MemberResult]
    product_kinds: dict[str, str]
    """product_id -> kind seen in training (lets the rollout adapter fill in a request's product kind)."""


def train_ensemble(
    config: RewardConfig,
    train: RewardData,
    validation: RewardData,
    encoder: nn.Module,
    *,
    seed: int,
    device: torch.device,
    log_metrics: LogMetrics | None = None,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
) -> EnsembleResult:
    """Train ``config.ensemble.members`` members on ``train``, early-stopped on ``validation``.

    Args:
        checkpoint_dir: each finished member is saved there (``reward.member_checkpoint``), and members found
            there are loaded instead of trained: a resumed run ends with the uninterrupted run's ensemble.

    Raises:
        RewardDataError: a split is empty or a weighted head has no labels.
    """
    weights = config.train.loss_weights
    check_trainable(train, weights, split="train")
    check_trainable(validation, weights, split="validation")
    vocabulary = build_vocabulary(train, config)
    annotators = annotator_ids(train)
    slots = int(train.impressions.position.max()) if len(train.impressions) else 1
    frozen = not encoder.trainable
    encoder = encoder.to(device) if isinstance(encoder, nn.Module) else encoder
    features = {}
    if frozen:
        for name, data in (("train", train), ("validation", validation)):
            features[name] = encode_frozen(encoder, data, progress=progress)
    indexed_train = index_data(train, vocabulary, annotators, features.get("train"))
    indexed_validation = index_data(validation, vocabulary, annotators, features.get("validation"))
    for name, indexed in (("train", indexed_train), ("validation", indexed_validation)):
        oov = {k: v for k, v in indexed.oov.items() if v and not (name == "train" and k == "annotator")}
        if oov:
            logger.info("%s split: out-of-vocabulary counts %s (mapped to the OOV embedding)", name, oov)
    reference = fit_reference(config, indexed_train, vocabulary, encoder, seed=seed)
    results = []
    for k in range(config.ensemble.members):
        model = build_model(
            config,
            feature_dim=encoder.dim,
            scene_dim=encoder.scene_dim,
            vocabulary=vocabulary,
            slots=slots,
            annotators=annotators,
            encoder=None if frozen else encoder,
            reference=reference,
            training_images=len(train.images),
        )
        restored = load_member(checkpoint_dir, k, model) if checkpoint_dir is not None else None
        if restored is not None:
            logger.info("member %d: loaded from %s (trained before the run was interrupted)", k, checkpoint_dir)
            results.append(restored)
            continue
        torch.manual_seed(seed + k * SEED_STRIDE)
        result = train_member(
            config,
            indexed_train,
            indexed_validation,
            model,
            seed=seed + k * SEED_STRIDE,
            device=device,
            bootstrap=config.ensemble.resample == "bootstrap" and config.ensemble.members > 1,
            log_metrics=log_metrics,
            member=k,
            progress=progress,
        )
        logger.info(
            "member %d: best epoch %d, validation loss %.4f", k, result.best_epoch, result.best_validation_loss
        )
        if checkpoint_dir is not None:
            save_member(checkpoint_dir, k, result)
        results.append(result)
    ensemble = RewardEnsemble([r.model.to(device) for r in results], encoder if frozen else None)
    kinds = {}
    for pid, kind in zip(train.images.product_ids, train.images.kinds):
        if kind is not None:
            kinds.setdefault(pid, kind)
    return EnsembleResult(ensemble, indexed_train, indexed_validation, results, kinds)


@torch.no_grad()
def score_rows(
    ensemble: RewardEnsemble, indexed: IndexedData, images: Tensor, segments: Tensor, *, batch_size: int = 512
) -> dict[str, Tensor]:
    """Member head scores of logged rows: image rows [n] of ``indexed``'s image table in segments [n].

    Returns:
        {"click", "dwell", "preference"} -> [K, n] float32 on the CPU.
    """
    data = indexed.data
    device = next(ensemble.parameters()).device
    out: dict[str, list[Tensor]] = {"click": [], "dwell": [], "preference": []}
    for start in range(0, len(images), batch_size):
        rows = images[start : start + batch_size]
        unique, inverse = torch.unique(rows, return_inverse=True)
        context = ContextBatch(
            segment=segments[start : start + batch_size],
            words=indexed.image_words[rows],
            kind=indexed.image_kind[rows],
        ).to(device)
        features = indexed.features[unique].to(device) if indexed.features is not None else None
        pixels = data.images.pixels[unique].to(device) if features is None else None
        masks = data.images.masks[unique].to(device) if features is None and data.images.masks is not None else None
        ids = [data.images.image_ids[i] for i in unique.tolist()]
        scores = ensemble.member_scores(pixels, masks, context, image_ids=ids, features=features, inverse=inverse)
        for name, value in scores.items():
            out[name].append(value.float().cpu())
    return {
        name: torch.cat(values, dim=1) if values else torch.zeros(len(ensemble.members), 0)
        for name, values in out.items()
    }


def head_statistics(values: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
    """(mean, std) of each head's ensemble-mean score over rows ({head: [K, n]}); std floored at 1e-6."""
    stats = {}
    for name, value in values.items():
        mean = value.mean(dim=0).double().numpy()
        stats[name] = (
            float(np.mean(mean)) if mean.size else 0.0,
            max(float(np.std(mean)) if mean.size else 1.0, 1e-6),
        )
    return stats
