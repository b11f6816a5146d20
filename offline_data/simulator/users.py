"""Shoppers: position-based clicks and censored log-normal dwell.

Clicks follow the position-based model (Craswell et al. 2008; Chuklin et al., *Click Models for Web
Search*, 2015):

    P(click | image i in slot k, segment s) = θ_k · σ(α0 + α1 · gold_s(i))

θ_k is the probability that slot k is examined. Clicks only identify θ up to a common factor (scaling θ
down and attractiveness up gives the same clicks), so θ_1 is fixed to 1 and the others are relative to it.

Dwell after a click is log-normal in gold and right-censored by the end of the session:

    log D = μ0 + β · gold_s(i) + σ ε,   ε ~ N(0, 1)           (true dwell, ms)
    R ~ Exponential(mean = λ)                                 (time left in the session, ms)
    dwell_ms = min(D, R),   censored = D > R

The session scale λ is calibrated so that the expected censoring rate over clicked impressions equals the
configured target: P(censored | gold) = E_ε[1 − exp(−D / λ)], integrated by Gauss-Hermite quadrature and
averaged over a pilot sample of clicked golds, then solved for λ by bisection (it is monotone in λ).
"""

from __future__ import annotations

import numpy as np


def attractiveness(gold: np.ndarray, intercept: float, slope: float) -> np.ndarray:
    """σ(α0 + α1 · gold), elementwise, float64."""
    return 1.0 / (1.0 + np.exp(-(intercept + slope * np.asarray(gold, dtype=np.float64))))


def click_probability(examination: np.ndarray, slot: np.ndarray, attract: np.ndarray) -> np.ndarray:
    """θ_slot · attractiveness.

    Args:
        examination: [S] θ per 0-based slot.
        slot: [...] int 0-based slots.
        attract: [...] attractiveness, same shape as ``slot``.
    """
    examination = np.asarray(examination, dtype=np.float64)
    if slot.shape != attract.shape:
        raise ValueError(f"slot {slot.shape} and attract {attract.shape} must have one shape")
    return examination[slot] * attract


_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(40)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()  # probabilists' Hermite: E[f(ε)] = Σ w_j f(x_j) for ε ~ N(0, 1)


def censoring_probability(
    gold: np.ndarray, *, log_mean: float, gold_slope: float, log_sd: float, session_scale_ms: float | None
) -> np.ndarray:
    """P(censored | gold) = E_ε[1 − exp(−D / λ)] for each gold value ([n] float64); 0 when λ is None."""
    gold = np.asarray(gold, dtype=np.float64)
    if session_scale_ms is None:
        return np.zeros_like(gold)
    log_dwell = log_mean + gold_slope * gold[..., None] + log_sd * _NODES
    return (-np.expm1(-np.exp(log_dwell) / session_scale_ms)) @ _WEIGHTS


def calibrate_session_scale(
    clicked_gold: np.ndarray, target_rate: float, *, log_mean: float, gold_slope: float, log_sd: float
) -> float | None:
    """The session scale λ (ms) whose expected censoring rate over ``clicked_gold`` is ``target_rate``.

    Returns:
        λ in ms, or None when ``target_rate`` is 0 (no session ends during a visit).
    """
    if target_rate <= 0.0:
        return None
    if not 0.0 < target_rate < 1.0:
        raise ValueError(f"target_rate must be in [0, 1), got {target_rate}")
    if clicked_gold.size == 0:
        raise ValueError("cannot calibrate censoring without any clicked impression in the pilot")

    def rate(log_scale: float) -> float:
        kwargs = {"log_mean": log_mean, "gold_slope": gold_slope, "log_sd": log_sd}
        return float(censoring_probability(clicked_gold, session_scale_ms=float(np.exp(log_scale)), **kwargs).mean())

    # Bisection in log λ: the rate falls from 1 to 0 as λ grows.
    low, high = log_mean - 30.0, log_mean + 30.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if rate(middle) > target_rate:
            low = middle
        else:
            high = middle
        if high - low < 1e-10:
            break
    return float(np.exp(0.5 * (low + high)))


def sample_dwell(
    gold: np.ndarray,
    rng: np.random.Generator,
    *,
    log_mean: float,
    gold_slope: float,
    log_sd: float,
    session_scale_ms: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw dwell for clicked impressions.

    Args:
        gold: [n] gold of the clicked images for their request's segment.

    Returns:
        ``(dwell_ms [n] int64 observed, censored [n] bool, true_dwell_ms [n] float64, session_left_ms [n]
        float64 (inf when there is no censoring))``.
    """
    gold = np.asarray(gold, dtype=np.float64)
    true_dwell = np.exp(log_mean + gold_slope * gold + log_sd * rng.standard_normal(gold.shape))
    if session_scale_ms is None:
        session_left = np.full(gold.shape, np.inf)
        rng.standard_exponential(gold.shape)  # keep the stream aligned with the censored case
    else:
        session_left = session_scale_ms * rng.standard_exponential(gold.shape)
    censored = true_dwell > session_left
    observed = np.where(censored, session_left, true_dwell)
    return np.floor(observed).astype(np.int64), censored, true_dwell, session_left
