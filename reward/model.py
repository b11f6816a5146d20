"""The multi-task reward model: image features + context embeddings -> shared trunk -> three heads.

    features = encoder(image, mask)                                  [B, D]  (normalised by batch-norm statistics)
    context  = [segment emb, mean of prompt-word embs, product-kind emb]
    agreement = ((s − r(prompt)) / w)², exp(−½ mean((s − r) / w)²)   prompt adherence, when the encoder exposes
                                                                      scene statistics s (``scene_dim`` > 0)
    hidden   = MLP([features, context, agreement])                   [B, H]  shared by the heads
    click logit f, dwell location μ, preference utility u            one linear head each (``heads.py``)

r(prompt) is the prompt reference (``reference.py``), fitted before the heads and frozen, so agreement measures
how far an image sits from what its prompt usually looks like.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reward.config import RewardConfig
from reward.heads import ClickHead, DwellHead, PreferenceHead
from reward.reference import PromptReference
from reward.vocabulary import PAD, ContextBatch, ContextVocabulary


class RewardModel(nn.Module):
    """Shared trunk and heads of one ensemble member.

    Args:
        config: the reward configuration.
        feature_dim: D of the encoder's features.
        scene_dim: leading feature columns that are scene statistics (0 = no prompt-agreement term).
        vocabulary: context vocabularies (their sizes fix the embedding tables).
        slots: S, slots of the click head's examination model.
        annotators: known annotator ids of the preference head.
        encoder: the trainable encoder, owned and trained by this model; None when features come from a frozen
            encoder outside it.
        training_images: images of the training table (size of the click head's per-image offsets).
    """

    def __init__(
        self,
        config: RewardConfig,
        *,
        feature_dim: int,
        scene_dim: int,
        vocabulary: ContextVocabulary,
        slots: int,
        annotators: Sequence[str],
        encoder: nn.Module | None = None,
        training_images: int = 0,
    ) -> None:
        super().__init__()
        if feature_dim < 1 or not 0 <= scene_dim <= feature_dim:
            raise ValueError(
                f"need feature_dim >= 1 and 0 <= scene_dim <= feature_dim, got {feature_dim}, {scene_dim}"
            )
        self.config = config
        self.feature_dim = feature_dim
        self.vocabulary = vocabulary
        self.encoder = encoder
        ctx = config.context
        self.normalise = nn.BatchNorm1d(feature_dim, affine=False)
        self.segment_embedding = nn.Embedding(vocabulary.segments.size, ctx.segment_dim) if ctx.segment_dim else None
        self.word_embedding = (
            nn.EmbeddingBag(vocabulary.words.size, ctx.prompt_dim, mode="mean", padding_idx=PAD)
            if ctx.prompt_dim
            else None
        )
        self.kind_embedding = nn.Embedding(vocabulary.kinds.size, ctx.kind_dim) if ctx.kind_dim else None
        self.scene_dim = scene_dim
        agreement_dim = 0
        if scene_dim and ctx.prompt_dim:
            self.reference: PromptReference | None = PromptReference(vocabulary.words.size, scene_dim)
            self.agreement_log_scale = nn.Parameter(torch.zeros(scene_dim))
            agreement_dim = scene_dim + 1
        else:
            self.reference = None
        layers: list[nn.Module] = []
        width = feature_dim + ctx.segment_dim + ctx.prompt_dim + ctx.kind_dim + agreement_dim
        for hidden in config.model.hidden:
            if config.model.dropout:
                layers.append(nn.Dropout(config.model.dropout))
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        self.trunk = nn.Sequential(*layers)
        self.click = ClickHead(width, slots, config.click, training_images=training_images)
        self.dwell = DwellHead(width, config.dwell)
        self.preference = PreferenceHead(width, annotators, config.preference)
        preference_segment = vocabulary.segments.index([ctx.preference_segment])[0]
        self.register_buffer("preference_segment", preference_segment[0].clone(), persistent=False)

    def normalised(self, features: Tensor) -> Tensor:
        """Batch-norm standardised features [N, D] (running statistics outside training)."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [N, {self.feature_dim}], got {list(features.shape)}")
        return self.normalise(features)

    def hidden(self, features: Tensor, scene: Tensor, context: ContextBatch) -> Tensor:
        """Trunk output [N, H] for normalised features [N, D], raw scene statistics [N, S] (S = scene_dim; [N, 0]
        without a prompt reference) and contexts."""
        if len(context) != features.shape[0] or scene.shape[0] != features.shape[0]:
            raise ValueError(
                f"got {features.shape[0]} feature rows, {scene.shape[0]} scene rows, {len(context)} contexts"
            )
        parts = [features]
        if self.segment_embedding is not None:
            parts.append(self.segment_embedding(context.segment))
        if self.word_embedding is not None:
            parts.append(self.word_embedding(context.words))
        if self.reference is not None:
            gap = (self.reference.standardise(scene) - self.reference(context.words)) / self.agreement_log_scale.exp()
            squared = gap**2
            parts += [squared, torch.exp(-0.5 * squared.mean(dim=1, keepdim=True))]
        if self.kind_embedding is not None:
            parts.append(self.kind_embedding(context.kind))
        return self.trunk(torch.cat(parts, dim=1))

    def encode(self, pixels: Tensor, masks: Tensor | None) -> Tensor:
        """Raw features of the trainable encoder this model owns: [U, D]."""
        if self.encoder is None:
            raise ValueError("this model has no trainable encoder; pass cached features")
        return self.encoder.encode(pixels, masks)

    def forward(self, batch: TrainingBatch) -> dict[str, Tensor]:
        """Per-row losses of one step (the trainer weights and reduces them).

        Returns:
            {"click": [n], "dwell": [m], "preference": [p] negative log-likelihoods, "prior": [] the annotator
            prior penalty, "effects_prior": [] the click image offsets' prior penalty}.
        """
        raw = batch.features if batch.features is not None else self.encode(batch.pixels, batch.masks)
        features = self.normalised(raw)
        scene = raw[:, : self.scene_dim].detach()

        def trunk(rows: Tensor, context: ContextBatch) -> Tensor:
            return self.hidden(features[rows], scene[rows], context)

        out: dict[str, Tensor] = {}
        logits = self.click.with_image_effects(
            self.click(trunk(batch.click_image, batch.click_context)), batch.click_table_image
        )
        out["click"] = self.click.nll(logits, batch.click_position, batch.click_clicked)
        out["dwell"] = self.dwell.nll(
            self.dwell(trunk(batch.dwell_image, batch.dwell_context)), batch.dwell_ms, batch.dwell_censored
        )
        utility_a = self.preference(trunk(batch.pair_a, batch.pair_context_a))
        utility_b = self.preference(trunk(batch.pair_b, batch.pair_context_b))
        out["preference"] = self.preference.nll(
            self.preference.log_odds(utility_a, utility_b, batch.pair_annotator), batch.pair_choice
        )
        out["prior"] = self.preference.prior_penalty()
        out["effects_prior"] = self.click.effects_penalty()
        return out

    def head_scores(self, raw: Tensor, context: ContextBatch) -> dict[str, Tensor]:
        """Head scores of raw encoder features [N, D]: click logit and dwell in the rows' own contexts,
        preference utility under the preference segment (panels judge for the population).

        Returns:
            {"click": [N] attractiveness logit, "dwell": [N] E[log dwell_ms | click], "preference": [N] utility}.
        """
        features = self.normalised(raw)
        scene = raw[:, : self.scene_dim]
        hidden = self.hidden(features, scene, context)
        panel = self.hidden(features, scene, context.with_segment(int(self.preference_segment)))
        return {
            "click": self.click(hidden),
            "dwell": self.dwell.expected_log_dwell(self.dwell(hidden)),
            "preference": self.preference(panel),
        }


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingBatch:
    """One optimisation step's rows, over U distinct images.

    Exactly one of ``features`` (a frozen encoder's cached features) and ``pixels`` (a trainable encoder) is set.

    Attributes:
        features: [U, D] float32 raw encoder features, or None.
        pixels: [U, 3, H, W] uint8, or None.
        masks: [U, H, W] bool, or None.
        click_image: [n] int64 index into the U images; click_table_image: [n] int64 row in the training image
            table (for the click head's per-image offsets; None outside training); click_context: their contexts;
            click_position: [n] 1-based slots; click_clicked: [n] bool.
        dwell_image, dwell_context: the clicked impressions with dwell ([m]); dwell_ms: [m] int64;
            dwell_censored: [m] bool.
        pair_a, pair_b: [p] int64 images of each judgement; pair_context_a / _b: their contexts (preference
            segment); pair_annotator: [p] int64 annotator index (0 = unseen); pair_choice: [p] int64.
    """

    features: Tensor | None
    pixels: Tensor | None
    masks: Tensor | None
    click_image: Tensor
    click_table_image: Tensor | None
    click_context: ContextBatch
    click_position: Tensor
    click_clicked: Tensor
    dwell_image: Tensor
    dwell_context: ContextBatch
    dwell_ms: Tensor
    dwell_censored: Tensor
    pair_a: Tensor
    pair_b: Tensor
    pair_context_a: ContextBatch
    pair_context_b: ContextBatch
    pair_annotator: Tensor
    pair_choice: Tensor
