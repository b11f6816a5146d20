"""Pure numpy metrics the audit adds to ``reward.metrics``: censored concordance, D-calibration, slice tables.

- :func:`concordance_index`: Harrell's C for right-censored dwell (Harrell et al. 1982): over comparable pairs
  (the shorter time is an observed exit), the share whose predictions are ordered like the times;
- :func:`d_calibration`: distribution calibration of a censored dwell model (Haider et al. 2020, JMLR 21):
  the probability integral transform F(t) of observed dwells should be uniform; a censored row (T > c) spreads
  its unit mass uniformly over [F(c), 1]. Reported as the total variation distance of the PIT histogram from
  the uniform and as Pearson's chi-square test;
- :func:`dwell_cdf`: F(t) of the dwell head's log-normal or Weibull distribution;
- :func:`slice_table`: one metric per value of a slicing label, with the row counts, worst slice first;
- :func:`has_spread`: whether values vary enough to be a unit of measure (a near-constant feature has no SD to
  standardise by: dividing by a rounding-error SD reports shifts of millions of SDs).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.stats import chi2 as chi2_distribution
from scipy.stats import norm, spearmanr


def concordance_index(predicted: np.ndarray, time: np.ndarray, censored: np.ndarray) -> tuple[float, int]:
    """Harrell's C of ``predicted`` (higher = longer dwell) against right-censored ``time``.

    A pair (i, j) is comparable when t_i < t_j and row i is an observed exit (not censored): then T_i < T_j is
    known whatever j's censoring. It is concordant when predicted_i < predicted_j; prediction ties count one
    half. Pairs with equal times are not comparable.

    Args:
        predicted: [n] float, e.g. the dwell head's E[log dwell | click].
        time: [n] float, observed dwell (or the time at censoring).
        censored: [n] bool, True when the session ended before the shopper left.

    Returns:
        ``(C, comparable pairs)``; C is NaN when no pair is comparable.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    time = np.asarray(time, dtype=np.float64)
    censored = np.asarray(censored, dtype=bool)
    if not predicted.shape == time.shape == censored.shape or predicted.ndim != 1:
        raise ValueError(
            f"predicted, time and censored must be [n] of one shape, got {predicted.shape}, {time.shape}, "
            f"{censored.shape}"
        )
    events = np.flatnonzero(~censored)
    concordant, comparable = 0.0, 0
    # Rows i (observed exits) in chunks against every j: O(n^2) comparisons, O(chunk * n) memory.
    for start in range(0, events.size, 512):
        rows = events[start : start + 512]
        later = time[None, :] > time[rows, None]  # [m, n] T_j > t_i
        difference = predicted[None, :] - predicted[rows, None]
        comparable += int(later.sum())
        concordant += float(((difference > 0) & later).sum()) + 0.5 * float(((difference == 0) & later).sum())
    return (concordant / comparable if comparable else math.nan), comparable


def d_calibration(cdf: np.ndarray, censored: np.ndarray, bins: int = 10) -> dict[str, float | list[float]]:
    """Distribution calibration of a survival model from F(t) of each row (Haider et al. 2020, section 4.3).

    An observed exit adds 1 to the bin holding F(t). A censored row only says F(T) > F(c) = v; under a
    calibrated model F(T) is then uniform on [v, 1], so it adds (overlap of the bin with [v, 1]) / (1 − v) to
    each bin. A calibrated model gives every bin the share 1 / bins.

    Args:
        cdf: [n] float in [0, 1], F(t) at the observed time (or the time at censoring).
        censored: [n] bool.
        bins: equal-width bins on [0, 1].

    Returns:
        ``histogram`` (share per bin), ``tv`` = ½ Σ_b |share_b − 1/bins| (0 = calibrated), ``chi2`` and its
        ``p_value`` (bins − 1 degrees of freedom), ``rows``.
    """
    cdf = np.clip(np.asarray(cdf, dtype=np.float64), 0.0, 1.0)
    censored = np.asarray(censored, dtype=bool)
    if cdf.shape != censored.shape or cdf.ndim != 1 or cdf.size == 0:
        raise ValueError(f"cdf and censored must be non-empty [n] of one shape, got {cdf.shape}, {censored.shape}")
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.zeros(bins)
    observed = cdf[~censored]
    counts += np.bincount(np.clip((observed * bins).astype(np.int64), 0, bins - 1), minlength=bins)
    start = cdf[censored]
    nearly_one = start >= 1.0 - 1e-12
    counts[-1] += nearly_one.sum()  # no mass left above F(c): the event is beyond the last bin edge
    start = start[~nearly_one]
    if start.size:
        low, high = edges[:-1][None, :], edges[1:][None, :]
        overlap = np.clip(high - np.maximum(low, start[:, None]), 0.0, None)
        counts += (overlap / (1.0 - start[:, None])).sum(axis=0)
    share = counts / cdf.size
    expected = cdf.size / bins
    chi2 = float(((counts - expected) ** 2 / expected).sum())

    return {
        "histogram": share.tolist(),
        "tv": float(0.5 * np.abs(share - 1.0 / bins).sum()),
        "chi2": chi2,
        "p_value": float(chi2_distribution.sf(chi2, bins - 1)),
        "rows": int(cdf.size),
    }


def dwell_cdf(distribution: str, location: np.ndarray, log_spread: np.ndarray, dwell_ms: np.ndarray) -> np.ndarray:
    """F(t) of the dwell head's distribution at ``dwell_ms`` (all arrays broadcast).

    lognormal: location = μ, spread σ = exp(log_spread), F = Φ((log t − μ) / σ);
    weibull: location = log λ, shape k = exp(log_spread), F = 1 − exp(−(t / λ)^k).
    """
    location = np.asarray(location, dtype=np.float64)
    spread = np.exp(np.asarray(log_spread, dtype=np.float64))
    log_t = np.log(np.maximum(np.asarray(dwell_ms, dtype=np.float64), 1.0))
    if distribution == "lognormal":
        return norm.cdf((log_t - location) / spread)
    if distribution == "weibull":
        return -np.expm1(-np.exp(spread * (log_t - location)))
    raise ValueError(f"unknown dwell distribution {distribution!r}; expected lognormal or weibull")


def slice_table(
    labels: np.ndarray, metric: Callable[[np.ndarray], float], *, min_rows: int = 1
) -> dict[str, dict[str, float | int]]:
    """``metric(rows)`` for the rows of each label value, with the row count.

    Args:
        labels: [n] slice label of each row (strings or ints; rendered with ``str``).
        metric: maps a bool selection [n] to a number; it may raise ValueError (e.g. an AUC without both
            classes), which leaves the value NaN.
        min_rows: slices with fewer rows get NaN (still listed, with their count).

    Returns:
        {label: {"value": float, "rows": int}}, worst first: by value ascending (every audited slice metric is
        higher-is-better), NaN values last, ties by label.
    """
    text = np.array([str(v) for v in np.asarray(labels, dtype=object).tolist()], dtype=object)
    table: dict[str, dict[str, float | int]] = {}
    for label in sorted(set(text.tolist())):
        chosen = text == label
        rows = int(chosen.sum())
        value = math.nan
        if rows >= min_rows:
            try:
                value = float(metric(chosen))
            except ValueError:
                value = math.nan
        table[label] = {"value": value, "rows": rows}
    order = sorted(table, key=lambda k: (math.isnan(table[k]["value"]), table[k]["value"], k))
    return {label: table[label] for label in order}


SPREAD_RELATIVE_TOLERANCE = 1e-6
"""Below this SD relative to the values' scale (max(1, |mean|)), values are treated as constant."""


def has_spread(values: np.ndarray) -> bool:
    """Whether ``values`` [n] vary enough to standardise by their SD.

    False for fewer than 2 finite values, any non-finite value, or an SD at or below
    ``SPREAD_RELATIVE_TOLERANCE * max(1, |mean|)`` (float32 round-off of a constant is ~1e-7 of its size).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2 or not np.isfinite(values).all():
        return False
    return float(values.std()) > SPREAD_RELATIVE_TOLERANCE * max(1.0, abs(float(values.mean())))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (NaN with fewer than 3 rows or a constant input)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be [n] of one shape, got {x.shape}, {y.shape}")
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)
