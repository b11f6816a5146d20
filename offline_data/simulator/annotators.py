"""The pairwise panel: Bradley-Terry on panel gold with annotator noise, side bias and Davidson ties.

Annotator j judging image a (shown first) against image b chooses by the Davidson (1970) extension of
Bradley-Terry, with strengths π_a = exp(g_a / T_j + β_j) and π_b = exp(g_b / T_j):

    P(a)   = π_a / (π_a + π_b + ν √(π_a π_b))
    P(b)   = π_b / (π_a + π_b + ν √(π_a π_b))
    P(tie) = ν √(π_a π_b) / (π_a + π_b + ν √(π_a π_b))

where g is panel gold, T_j the annotator's temperature (reliability: lower is sharper), β_j a log-odds bias
toward the image shown as 'a', and ν ≥ 0 the tie strength. Dividing through by √(π_a π_b) with
x = exp(d / 2), d = (g_a − g_b) / T_j + β_j, gives the numerically safe form P(a) = x / (x + 1/x + ν).
ν is calibrated so that the expected tie rate over the drawn pairs equals the configured target.

Pairs are mostly two variants of the same product (what preference-based policy training needs) plus a
configurable share of cross-product pairs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize


@dataclasses.dataclass(frozen=True, eq=False)
class Panel:
    """The annotators' hidden parameters.

    Attributes:
        annotator_ids: A ids.
        temperatures: [A] float64 T_j > 0.
        side_biases: [A] float64 β_j (log-odds toward 'a').
    """

    annotator_ids: tuple[str, ...]
    temperatures: np.ndarray
    side_biases: np.ndarray


def sample_panel(
    count: int,
    rng: np.random.Generator,
    *,
    temperature: float,
    temperature_spread: float,
    side_bias_mean: float,
    side_bias_sd: float,
) -> Panel:
    """Draw ``count`` annotators: T_j = temperature · spread^u (u ~ U[−1, 1]), β_j ~ N(mean, sd)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    exponent = rng.uniform(-1.0, 1.0, count)
    return Panel(
        annotator_ids=tuple(f"ann{j:03d}" for j in range(count)),
        temperatures=temperature * temperature_spread**exponent,
        side_biases=rng.normal(side_bias_mean, side_bias_sd, count),
    )


def davidson_probabilities(
    gold_a: np.ndarray, gold_b: np.ndarray, temperature: np.ndarray, side_bias: np.ndarray, tie_strength: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P(a), P(b), P(tie)) of the Davidson model in the module docstring; each [n] float64, summing to 1."""
    if tie_strength < 0:
        raise ValueError(f"tie_strength must be >= 0, got {tie_strength}")
    d = (np.asarray(gold_a, dtype=np.float64) - gold_b) / temperature + side_bias
    half = np.clip(d / 2.0, -350.0, 350.0)
    x, inv_x = np.exp(half), np.exp(-half)
    total = x + inv_x + tie_strength
    return x / total, inv_x / total, tie_strength / total


def calibrate_tie_strength(log_odds: np.ndarray, target_rate: float) -> float:
    """ν such that the mean P(tie) over pairs with log-odds ``d`` ([n]) equals ``target_rate``.

    The mean tie probability rises monotonically from 0 (ν = 0) toward 1 (ν → ∞), so the root is unique.
    """
    if target_rate <= 0.0:
        return 0.0
    if not 0.0 < target_rate < 1.0:
        raise ValueError(f"target_rate must be in [0, 1), got {target_rate}")
    if log_odds.size == 0:
        raise ValueError("cannot calibrate ties without any pair")
    half = np.clip(np.asarray(log_odds, dtype=np.float64) / 2.0, -350.0, 350.0)
    base = np.exp(half) + np.exp(-half)

    def excess(log_nu: float) -> float:
        nu = np.exp(log_nu)
        return float(np.mean(nu / (base + nu)) - target_rate)

    return float(np.exp(optimize.brentq(excess, -40.0, 40.0, xtol=1e-12)))


@dataclasses.dataclass(frozen=True, eq=False)
class PairDesign:
    """Which images each judgement compares (indices into the flattened variant table).

    Attributes:
        image_a: [n] int64 image shown as 'a'.
        image_b: [n] int64 image shown as 'b' (never equal to image_a).
        annotator: [n] int64 index into the panel.
        cross_product: [n] bool, True when a and b show different products.
    """

    image_a: np.ndarray
    image_b: np.ndarray
    annotator: np.ndarray
    cross_product: np.ndarray


def sample_pairs(
    count: int,
    products: int,
    variants_per_product: int,
    annotators: int,
    rng: np.random.Generator,
    *,
    cross_product_fraction: float,
) -> PairDesign:
    """Draw ``count`` pairs: same-product pairs of two distinct variants, or cross-product pairs.

    Image index = product · K + variant (the ``StudioWorld.variants`` order). Which image is shown as 'a' is
    uniformly random because both sides are drawn symmetrically.
    """
    k = variants_per_product
    cross = rng.uniform(size=count) < cross_product_fraction
    if products < 2:
        cross[:] = False
    product_a = rng.integers(products, size=count)
    # A different product for cross pairs: shift by 1..P-1 so it can never coincide.
    product_b = np.where(
        cross, (product_a + rng.integers(1, max(products, 2), size=count)) % max(products, 1), product_a
    )
    variant_a = rng.integers(k, size=count)
    # Same product: a different variant (shift by 1..K-1); cross product: any variant.
    variant_b = np.where(cross, rng.integers(k, size=count), (variant_a + rng.integers(1, k, size=count)) % k)
    return PairDesign(
        image_a=(product_a * k + variant_a).astype(np.int64),
        image_b=(product_b * k + variant_b).astype(np.int64),
        annotator=rng.integers(annotators, size=count).astype(np.int64),
        cross_product=cross,
    )


def sample_choices(p_a: np.ndarray, p_b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw 'a', 'b' or 'tie' per pair: [n] object array of str."""
    u = rng.uniform(size=p_a.shape)
    return np.where(u < p_a, "a", np.where(u < p_a + p_b, "b", "tie")).astype(object)
