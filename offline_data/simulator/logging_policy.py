"""The logging policy: which generated variant each slot shows, in which slot, with exact propensities.

A request has a segment and S slots showing S distinct products (uniformly drawn from the catalogue). For
each product the policy picks one of its K variants from the production model's *logging score* (a noisy,
partly wrong score of the image, not gold), then places the S chosen images in slots:

    P(variant k | product)  uniform:         1 / K
                            epsilon_greedy:  (1 − ε) · 1[k = argmax score] + ε / K
                            softmax:         exp(score_k / τ) / Σ_j exp(score_j / τ)
    P(slot s | chosen set)  shuffle:         1 / S
                            ranked:          (1 − ε) · 1[s = rank of the image's score in the set] + ε / S

and records ``propensity = P(variant | product) · P(slot | chosen set)``: the probability that this image
was shown in this slot given the request (its segment and products) and the variants chosen for the other
slots. Scores are per image and do not depend on the segment, so P(variant | product) is the same for
every request.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

VariantPolicy = Literal["uniform", "epsilon_greedy", "softmax"]
Placement = Literal["shuffle", "ranked"]


def logging_scores(
    panel_gold: np.ndarray,
    spurious: np.ndarray,
    rng: np.random.Generator,
    *,
    gold_weight: float,
    spurious_weight: float,
    noise: float,
) -> np.ndarray:
    """The production model's score of each image: partly right, partly wrong, partly noise.

    ``score = gold_weight · panel_gold + spurious_weight · standardise(spurious) + noise · N(0, 1)``

    Args:
        panel_gold: [N] float64 panel gold of each image.
        spurious: [N] float64 an image statistic the old model wrongly rewards (colourfulness).
        rng: draws the per-image noise.

    Returns:
        [N] float64.
    """
    if panel_gold.shape != spurious.shape or panel_gold.ndim != 1:
        raise ValueError(f"panel_gold and spurious must be [N] of one shape, got {panel_gold.shape}, {spurious.shape}")
    spread = spurious.std()
    standard = (spurious - spurious.mean()) / (spread if spread > 0 else 1.0)
    return gold_weight * panel_gold + spurious_weight * standard + noise * rng.standard_normal(panel_gold.shape)


def variant_probabilities(
    scores: np.ndarray, policy: VariantPolicy, *, epsilon: float = 0.1, temperature: float = 1.0
) -> np.ndarray:
    """P(variant k | product) for every product (module docstring has the three rules).

    Args:
        scores: [P, K] float64 logging scores of each product's variants.
        policy: "uniform", "epsilon_greedy" or "softmax".

    Returns:
        [P, K] float64, rows sum to 1, every entry > 0 unless epsilon_greedy with epsilon = 0.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [P, K], got shape {scores.shape}")
    count = scores.shape[1]
    if policy == "uniform":
        return np.full(scores.shape, 1.0 / count)
    if policy == "epsilon_greedy":
        best = np.argmax(scores, axis=1)
        probabilities = np.full(scores.shape, epsilon / count)
        probabilities[np.arange(scores.shape[0]), best] += 1.0 - epsilon
        return probabilities
    if policy == "softmax":
        logits = scores / temperature
        logits = logits - logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)
    raise ValueError(f"unknown variant policy {policy!r}; expected uniform, epsilon_greedy or softmax")


def sample_products(requests: int, catalogue: int, slots: int, rng: np.random.Generator) -> np.ndarray:
    """S distinct products per request, uniformly (all S-subsets in random order equally likely).

    Returns:
        [requests, slots] int64 product indices, distinct within each row.
    """
    if slots > catalogue:
        raise ValueError(f"cannot show {slots} distinct products from a catalogue of {catalogue}")
    chosen = rng.integers(catalogue, size=(requests, slots))
    # Redraw rows with a repeat until none is left (fast: repeats are rare when catalogue >> slots).
    while True:
        ordered = np.sort(chosen, axis=1)
        bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        if bad.size == 0:
            return chosen
        chosen[bad] = rng.integers(catalogue, size=(bad.size, slots))


def sample_variants(
    probabilities: np.ndarray, products: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw each shown product's variant.

    Args:
        probabilities: [P, K] P(variant | product).
        products: [R, S] product indices.

    Returns:
        ``(variants [R, S] int64, p_variant [R, S] float64)``.
    """
    cumulative = np.cumsum(probabilities, axis=1)[products]
    draws = rng.uniform(size=products.shape)[..., None]
    variants = np.minimum((draws >= cumulative).sum(axis=-1), probabilities.shape[1] - 1)
    return variants.astype(np.int64), probabilities[products, variants]


def place(
    scores: np.ndarray, placement: Placement, rng: np.random.Generator, *, epsilon: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Assign the chosen images of each request to slots.

    Args:
        scores: [R, S] logging scores of the chosen images, in the order products were drawn.
        placement: "shuffle" or "ranked".
        epsilon: ranked only: probability of a uniform shuffle instead of the score order.

    Returns:
        ``(slot [R, S] int64 0-based slot of each image, p_slot [R, S] float64 = P(that slot | chosen set))``.
    """
    requests, slots = scores.shape
    shuffled = np.argsort(rng.uniform(size=(requests, slots)), axis=1)
    if placement == "shuffle":
        return shuffled.astype(np.int64), np.full(scores.shape, 1.0 / slots)
    if placement != "ranked":
        raise ValueError(f"unknown placement {placement!r}; expected shuffle or ranked")
    explore = rng.uniform(size=requests) < epsilon
    # rank[i, j] = 0-based position of image j when request i's images are sorted by descending score.
    rank = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1, kind="stable")
    slot = np.where(explore[:, None], shuffled, rank).astype(np.int64)
    p_slot = (1.0 - epsilon) * (slot == rank) + epsilon / slots
    return slot, p_slot
