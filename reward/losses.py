"""Negative log-likelihoods of the three heads: position-debiased clicks, censored dwell, pairwise preferences.

Small pure functions on tensors; every one returns per-row losses ``[N]`` float32 (the caller chooses the
reduction and the row weights, e.g. bootstrap weights), so the reduction is never hidden here.

Clicks (position-based model, Craswell et al. 2008; Chuklin et al., *Click Models for Web Search*, 2015):

    P(click | image, slot k) = θ_k · σ(f)

- :func:`pbm_click_nll`: the joint likelihood, with examination log-probabilities ``log θ_k`` learned next to
  the attractiveness logit ``f`` (or fixed, when θ is known);
- :func:`ips_click_nll`: the inverse-propensity-weighted likelihood of Saito et al. (2020, "Unbiased
  Recommender Learning from Missing-Not-At-Random Implicit Feedback"): with w = c / θ_k, the loss
  −[w log σ(f) + (1 − w) log(1 − σ(f))] has the full-information loss as its expectation over clicks;
- :func:`naive_click_nll`: plain binary cross-entropy on clicks, ignoring the slot (the biased baseline).

Dwell (:func:`lognormal_dwell_nll`, :func:`weibull_dwell_nll`): right-censored likelihoods; an observed row
contributes log f(t), a censored row log S(t) (the shopper was still reading when the session ended).

Preferences: Bradley-Terry (1952) on a log-odds ``d`` of 'a' over 'b' (utility difference, divided by the
annotator's temperature, plus the annotator's side bias), with ties by Davidson (1970) or Rao-Kupper (1967).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

CHOICE_A, CHOICE_B, CHOICE_TIE = 0, 1, 2
"""Integer codes of a preference choice."""

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
EULER_GAMMA = 0.5772156649015329


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if any(s != first or len(s) != 1 for s in shapes.values()):
        raise ValueError(f"expected 1-d tensors of one shape [N], got {shapes}")


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x ≤ 0, accurate near 0 and for very negative x (Mächler 2012).

    Args:
        x: [...] float, ≤ 0 (values above 0 are clamped to −1e-7: a probability of at most 1).
    """
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def pbm_click_nll(logits: Tensor, log_examination: Tensor, clicked: Tensor) -> Tensor:
    """−log P(click | slot) under the position-based model P = θ_k · σ(f).

    Args:
        logits: [N] attractiveness logits f.
        log_examination: [N] log θ of each row's slot (≤ 0; 0 for slot 1).
        clicked: [N] float or bool, 1 for a click.

    Returns:
        [N] float32 per-row negative log-likelihood.
    """
    _check_same_shape(logits=logits, log_examination=log_examination, clicked=clicked)
    log_p = log_examination + F.logsigmoid(logits)
    clicked = clicked.to(logits.dtype)
    return -(clicked * log_p + (1.0 - clicked) * log1mexp(log_p))


def ips_click_nll(logits: Tensor, examination: Tensor, clicked: Tensor, *, max_weight: float = 10.0) -> Tensor:
    """Inverse-propensity-weighted click loss −[w log σ(f) + (1 − w) log(1 − σ(f))], w = c / θ_k.

    Unbiased for the loss on (unobserved) attractiveness labels when θ is right, at the price of variance:
    w is clipped to ``max_weight`` (a biased but bounded estimator, as in Saito et al. 2020).

    Args:
        logits: [N] attractiveness logits f.
        examination: [N] θ of each row's slot, in (0, 1].
        clicked: [N] float or bool.
        max_weight: the largest weight c / θ used.
    """
    _check_same_shape(logits=logits, examination=examination, clicked=clicked)
    if max_weight < 1.0:
        raise ValueError(f"max_weight must be >= 1 (a click in slot 1 has weight 1), got {max_weight}")
    weight = (clicked.to(logits.dtype) / examination.clamp(min=1e-6)).clamp(max=max_weight)
    return -(weight * F.logsigmoid(logits) + (1.0 - weight) * F.logsigmoid(-logits))


def naive_click_nll(logits: Tensor, clicked: Tensor) -> Tensor:
    """Binary cross-entropy of σ(f) against clicks, slot ignored (the uncorrected baseline): [N]."""
    _check_same_shape(logits=logits, clicked=clicked)
    return F.binary_cross_entropy_with_logits(logits, clicked.to(logits.dtype), reduction="none")


def _log_time(dwell_ms: Tensor) -> Tensor:
    # Dwell is logged in whole milliseconds, so 0 means "under 1 ms": read it as half a millisecond.
    return torch.log(dwell_ms.to(torch.float32).clamp(min=0.5))


def lognormal_dwell_nll(mean_log: Tensor, log_sigma: Tensor, dwell_ms: Tensor, censored: Tensor) -> Tensor:
    """−log-likelihood of log-normal dwell with right-censoring.

    log T ~ N(μ, σ²). An observed row contributes log f(t) = log φ(z) − log σ − log t, a censored row
    log S(t) = log Φ(−z), with z = (log t − μ) / σ.

    Args:
        mean_log: [N] μ, mean log-dwell (ms).
        log_sigma: [N] or [] log σ.
        dwell_ms: [N] observed dwell (ms), the time at censoring for censored rows.
        censored: [N] bool.

    Returns:
        [N] float32.
    """
    _check_same_shape(mean_log=mean_log, dwell_ms=dwell_ms, censored=censored)
    log_t = _log_time(dwell_ms)
    sigma = log_sigma.exp()
    z = (log_t - mean_log) / sigma
    observed = -0.5 * z**2 - LOG_SQRT_2PI - log_sigma - log_t
    survival = torch.special.log_ndtr(-z)
    return -torch.where(censored.bool(), survival, observed)


def weibull_dwell_nll(log_scale: Tensor, log_shape: Tensor, dwell_ms: Tensor, censored: Tensor) -> Tensor:
    """−log-likelihood of Weibull dwell with right-censoring.

    S(t) = exp(−(t/λ)^k); an observed row contributes log f(t) = log k − log λ + (k − 1) log(t/λ) − (t/λ)^k,
    a censored row log S(t) = −(t/λ)^k.

    Args:
        log_scale: [N] log λ (ms).
        log_shape: [N] or [] log k.
        dwell_ms: [N]; censored: [N] bool.
    """
    _check_same_shape(log_scale=log_scale, dwell_ms=dwell_ms, censored=censored)
    log_ratio = _log_time(dwell_ms) - log_scale
    shape = log_shape.exp()
    hazard = torch.exp(shape * log_ratio)
    observed = log_shape - log_scale + (shape - 1.0) * log_ratio - hazard
    return -torch.where(censored.bool(), -hazard, observed)


def weibull_mean_log(log_scale: Tensor, log_shape: Tensor) -> Tensor:
    """E[log T] of a Weibull: log λ − γ / k (γ the Euler-Mascheroni constant)."""
    return log_scale - EULER_GAMMA / log_shape.exp()


def davidson_log_probs(log_odds: Tensor, log_tie: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(log P(a), log P(b), log P(tie)) of Davidson's model.

    With x = exp(d / 2): P(a) = x / (x + 1/x + ν), P(b) = (1/x) / (...), P(tie) = ν / (...), ν = exp(log_tie).
    At d = 0: P(tie) = ν / (2 + ν).

    Args:
        log_odds: [N] d, the log-odds of 'a' over 'b' among decisive outcomes.
        log_tie: [] or [N] log ν.
    """
    half = log_odds / 2.0
    log_tie = log_tie.expand_as(half)
    log_total = torch.logsumexp(torch.stack([half, -half, log_tie]), dim=0)
    return half - log_total, -half - log_total, log_tie - log_total


def rao_kupper_log_probs(log_odds: Tensor, log_threshold: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(log P(a), log P(b), log P(tie)) of Rao-Kupper's model: P(a) = σ(d − η), P(b) = σ(−d − η), the rest ties.

    η = exp(log_threshold) ≥ 0 is the threshold (θ = e^η in Rao and Kupper's notation).
    """
    eta = log_threshold.exp().expand_as(log_odds)
    log_a = F.logsigmoid(log_odds - eta)
    log_b = F.logsigmoid(-log_odds - eta)
    # P(tie) = 1 − P(a) − P(b) = σ(d + η) − σ(d − η) ≥ 0, computed in log space.
    log_tie = F.logsigmoid(log_odds + eta) + log1mexp(log_a - F.logsigmoid(log_odds + eta))
    return log_a, log_b, log_tie


def preference_nll(log_odds: Tensor, choice: Tensor, *, ties: str, log_tie: Tensor | None = None) -> Tensor:
    """−log P(choice) of each judgement.

    Args:
        log_odds: [N] d = (u_a − u_b) / T_annotator + bias_annotator.
        choice: [N] int64 codes :data:`CHOICE_A`, :data:`CHOICE_B`, :data:`CHOICE_TIE`.
        ties: "davidson", "rao_kupper", or "none" (plain Bradley-Terry: −log σ(±d); ties must be removed
            by the caller, a tie here raises).
        log_tie: log ν (Davidson) or log η (Rao-Kupper); unused for "none".

    Returns:
        [N] float32. Bradley-Terry at equal utilities is log 2.
    """
    _check_same_shape(log_odds=log_odds, choice=choice)
    if ties == "none":
        if bool((choice == CHOICE_TIE).any()):
            raise ValueError("ties='none' cannot score tie judgements; drop them or model ties")
        sign = torch.where(choice == CHOICE_A, 1.0, -1.0).to(log_odds.dtype)
        return -F.logsigmoid(sign * log_odds)
    if log_tie is None:
        raise ValueError(f"ties={ties!r} needs log_tie")
    if ties == "davidson":
        log_a, log_b, log_t = davidson_log_probs(log_odds, log_tie)
    elif ties == "rao_kupper":
        log_a, log_b, log_t = rao_kupper_log_probs(log_odds, log_tie)
    else:
        raise ValueError(f"ties must be 'davidson', 'rao_kupper' or 'none', got {ties!r}")
    table = torch.stack([log_a, log_b, log_t], dim=1)
    return -table.gather(1, choice.long()[:, None])[:, 0]
