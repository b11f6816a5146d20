"""Request-level bootstrap intervals (percentile and BCa) for statistics of per-request means.

Every estimate in :mod:`experiments.ope.evaluate` has the form θ = g(X̄) where X [n, m] holds per-request statistics
(request i's weighted rewards, weights, impression counts, ... one column each) and X̄ is their mean over the n
requests. Requests are the independent unit (slots of one page share the shopper and the context), so the
bootstrap resamples requests, never impressions (OBP resamples rounds the same way).

That form makes the bootstrap cheap and exactly vectorised: a resample is a count vector c [n] (multinomial,
Σ c = n), its means are c X / n, and one [B, n] @ [n, m] product gives every replicate of every statistic
that shares X, with common random numbers across them (so paired differences are resampled jointly). The
jackknife that BCa needs is closed-form too: the leave-one-out means are (n X̄ - X_i) / (n - 1).

References: Efron & Tibshirani (1993), "An Introduction to the Bootstrap", ch. 13 (percentile) and ch. 14
(BCa: bias correction z0 and acceleration a from the jackknife).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np
from scipy.special import ndtr, ndtri

CIMethod = Literal["percentile", "bca"]

CHUNK_ELEMENTS = 1 << 22
"""Cap on the entries of one block of resample counts ([chunk, n] float64 ≈ 32 MiB) to bound memory."""

MeanFunction = Callable[[np.ndarray], np.ndarray]
"""g: means [..., m] -> statistic [...], vectorised over leading axes."""


@dataclasses.dataclass(frozen=True)
class Interval:
    """A two-sided bootstrap confidence interval and how it was obtained."""

    low: float
    high: float
    method: CIMethod
    confidence: float
    n_resamples: int
    non_finite: int
    """Replicates that came out NaN/inf (e.g. a self-normalised ratio whose resampled denominator was 0); the
    interval uses the finite ones and reports this count rather than hiding it."""


def resample_means(columns: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``columns`` over ``n_resamples`` bootstrap resamples of its rows.

    Args:
        columns: [n, m] float64, one row per request.
        n_resamples: B.
        rng: the only source of randomness (seeded by the caller).

    Returns:
        [B, m] float64.
    """
    n = columns.shape[0]
    chunk = max(1, min(n_resamples, CHUNK_ELEMENTS // max(n, 1)))
    out = np.empty((n_resamples, columns.shape[1]))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        # Row b of `draws` is resample b's n request indices; offsetting by b * n lets one bincount produce
        # every count vector of the block.
        draws = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n)
        out[start : start + size] = counts @ columns / n
    return out


def jackknife_means(columns: np.ndarray) -> np.ndarray:
    """Leave-one-request-out means: row i is the mean of ``columns`` without row i. [n, m] float64."""
    n = columns.shape[0]
    if n < 2:
        raise ValueError(f"the jackknife needs at least 2 requests, got {n}")
    return (columns.sum(axis=0, keepdims=True) - columns) / (n - 1)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The (1 - confidence)/2 and (1 + confidence)/2 quantiles of the finite replicates [B]."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return np.nan, np.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def bca_interval(
    estimate: float, replicates: np.ndarray, jackknife: np.ndarray, confidence: float
) -> tuple[float, float]:
    """Bias-corrected and accelerated interval (Efron & Tibshirani 1993, eq. 14.9-14.15).

    z0 = Φ⁻¹(#{θ*_b < θ̂} / B + #{θ*_b = θ̂} / (2B)) corrects the median bias of the replicates;
    a = Σ_i (θ̄ - θ_(i))³ / (6 [Σ_i (θ̄ - θ_(i))²]^{3/2}) from the jackknife values θ_(i) corrects for the
    standard error changing with θ; the interval is the replicate quantiles at
    α_j = Φ(z0 + (z0 + z_j) / (1 - a (z0 + z_j))) for z_j = Φ⁻¹((1 ∓ confidence) / 2).

    The tie term keeps a degenerate statistic (all replicates equal θ̂) at z0 = 0. When every replicate falls on
    one side of θ̂ the bias proportion is clipped to [1/(2B), 1 - 1/(2B)] instead of giving an infinite z0.

    Args:
        estimate: θ̂ on the full sample.
        replicates: [B] bootstrap values θ*_b (non-finite ones are ignored).
        jackknife: [n] leave-one-out values θ_(i).
        confidence: nominal two-sided coverage.
    """
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0 or not np.isfinite(estimate):
        return np.nan, np.nan
    n_rep = finite.size
    proportion = (np.sum(finite < estimate) + 0.5 * np.sum(finite == estimate)) / n_rep
    z0 = ndtri(np.clip(proportion, 0.5 / n_rep, 1 - 0.5 / n_rep))
    jack = jackknife[np.isfinite(jackknife)]
    spread = jack.mean() - jack
    denominator = 6.0 * np.sum(spread**2) ** 1.5
    accel = float(np.sum(spread**3) / denominator) if denominator > 0 else 0.0
    tail = (1 - confidence) / 2
    z = ndtri(np.array([tail, 1 - tail]))
    alphas = ndtr(z0 + (z0 + z) / (1 - accel * (z0 + z)))
    low, high = np.quantile(finite, alphas)
    return float(low), float(high)


def bootstrap_intervals(
    columns: np.ndarray,
    statistics: dict[str, MeanFunction],
    *,
    n_resamples: int,
    confidence: float,
    method: CIMethod,
    seed: int,
) -> dict[str, Interval]:
    """Bootstrap intervals for several statistics of the same per-request columns, resampled jointly.

    Args:
        columns: [n, m] float64 per-request statistics.
        statistics: name -> g, each g mapping means [..., m] to values [...].
        n_resamples: B, replicates per statistic (the same resamples for all).
        confidence: nominal two-sided coverage, in (0, 1).
        method: ``percentile`` or ``bca``.
        seed: seeds the resampling; the same seed and inputs give the same intervals.

    Returns:
        name -> :class:`Interval`.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    columns = np.asarray(columns, dtype=np.float64)
    if columns.ndim != 2 or columns.shape[0] < 2:
        raise ValueError(f"columns must be [n, m] with n >= 2 requests, got shape {columns.shape}")
    rng = np.random.default_rng(seed)
    means = resample_means(columns, n_resamples, rng)
    full_means = columns.mean(axis=0)
    jack_means = jackknife_means(columns) if method == "bca" else None
    out: dict[str, Interval] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, g in statistics.items():
            replicates = np.asarray(g(means), dtype=np.float64)
            if method == "percentile":
                low, high = percentile_interval(replicates, confidence)
            elif method == "bca":
                estimate = float(g(full_means))
                low, high = bca_interval(estimate, replicates, np.asarray(g(jack_means)), confidence)
            else:
                raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}")
            out[name] = Interval(
                low=low,
                high=high,
                method=method,
                confidence=confidence,
                n_resamples=n_resamples,
                non_finite=int(np.sum(~np.isfinite(replicates))),
            )
    return out
