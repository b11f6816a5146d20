"""What the reward evaluation and audit read about a simulated world's hidden truth (EVALUATION ONLY).

The reward package never reads a simulator itself: the caller passes an object satisfying :class:`WorldTruth`
(the studio world's is ``experiments.studio.truth.StudioTruth``, over a ``backdrop simulate`` folder). Training
never sees it; :func:`reward.evaluation.evaluate` and :func:`reward.audit.audit_reward_model` use it to put each
metric beside its Bayes ceiling and to score edited images with the hidden gold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from reward.data import RewardData

GoldEngagement = Callable[[np.ndarray, np.ndarray, Sequence[str], Sequence[str]], np.ndarray]
"""``(images [N, H, W, 3] uint8, exact product masks [N, H, W] bool, prompts, segments) -> [N]`` hidden gold."""


class Ceilings(Protocol):
    """The Bayes ceilings of a set of judgements and impressions (the best any model of the logs can do)."""

    pairwise_accuracy: float
    """Expected accuracy of the Bayes predictor (pick the side with the larger true choice probability)."""
    pairwise_accuracy_realised: float
    """That predictor's accuracy on the choices actually drawn."""
    click_auc: float
    """AUC of the true click probabilities at telling clicked impressions from the rest."""

    def as_dict(self) -> dict[str, float]:
        """JSON-ready numbers."""
        ...


@dataclasses.dataclass(frozen=True, eq=False)
class AuditTruth:
    """The truth an audit reads for the rows of one folder of logs.

    Attributes:
        directory: where the truth came from (reported, never read again).
        click_probability: event_id -> true P(click).
        pair_probability: pair_id -> true (P(a chosen), P(b chosen)).
        image_gold: image_id -> {segment: hidden gold}.
        exact_masks: product_id -> [H, W] bool exact product mask.
        gold_engagement: the hidden gold of any composite (:data:`GoldEngagement`).
    """

    directory: Path
    click_probability: dict[str, float]
    pair_probability: dict[str, tuple[float, float]]
    image_gold: dict[str, dict[str, float]]
    exact_masks: dict[str, np.ndarray]
    gold_engagement: GoldEngagement


class WorldTruth(Protocol):
    """A simulated world's hidden truth, as the reward evaluation and audit read it."""

    @property
    def directory(self) -> Path:
        """The folder the truth is read from (reported in the metrics)."""
        ...

    def examination(self) -> np.ndarray:
        """True examination probability per slot, ``[S]`` float64."""
        ...

    def ceilings(self, *, pair_ids: Sequence[str] | None, event_ids: Sequence[str] | None) -> Ceilings:
        """Bayes ceilings over the given judgements and impressions (None: all of them)."""
        ...

    def choice_probabilities(self, pair_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """True ``(P(a chosen), P(b chosen))`` of each pair, two ``[n]`` float64 arrays in ``pair_ids`` order."""
        ...

    def image_gold(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Hidden gold of each image for every segment the world knows: ``{segment: [N] float64}``."""
        ...

    def audit_truth(self, data: RewardData) -> AuditTruth:
        """The per-row truth of ``data``'s impressions, pairs, images and products."""
        ...


def gold_function(
    truth: AuditTruth, data: RewardData, rows: Sequence[int], segments: Sequence[str]
) -> Callable[[np.ndarray], np.ndarray]:
    """``images [N, H, W, 3] uint8 -> [N]`` hidden gold of edited copies of the images ``rows`` of ``data``, each
    for its segment, with the exact product masks and the images' prompts."""
    exact = np.stack([truth.exact_masks[data.images.product_ids[r]] for r in rows])
    prompts = [data.images.prompts[r] or "" for r in rows]

    def gold(images: np.ndarray) -> np.ndarray:
        return truth.gold_engagement(images, exact, prompts, list(segments))

    return gold
