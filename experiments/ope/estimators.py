"""The estimators of a candidate's value, written as functions of per-request means.

Notation: n requests i; slots k = 1..S; m_ik = 1 when request i shows slot k; r_ik the logged reward;
W̃_ik the (optionally clipped) importance weight of :mod:`experiments.ope.weights`; q̂_ik = q̂(x_i, k, a_ik) the
reward model's prediction for the logged action and q̄_ik = Σ_a π_e(a | x_i, k) q̂(x_i, k, a) its expected
reward under the candidate. The target is the candidate's value per slot, V_k = E_x[m_k E_{a ~ π_e}[r_k]],
and the page value V = Σ_k λ_k V_k with slot weights λ_k (1 by default, so V is the expected total reward per
request, e.g. clicks per page).

Per-slot estimators (Ê_n = mean over the n requests):

- DM, direct method:  V̂_k = Ê_n[m_ik q̄_ik]. No weights, so no variance from them; biased exactly as much
  as the reward model is wrong (and its bootstrap interval cannot see that bias).
- IPS, inverse propensity scoring (Horvitz & Thompson 1952):  V̂_k = Ê_n[m_ik W̃_ik r_ik]. Unbiased (unclipped,
  under the weighting's assumption); variance grows with the weights.
- SNIPS, self-normalised IPS (Swaminathan & Joachims 2015, "The self-normalized estimator for counterfactual
  learning"):  V̂_k = Ê_n[m_ik W̃_ik r_ik] / Ê_n[m_ik W̃_ik] · Ê_n[m_ik]. Uses E[W_k | slot shown] = 1 as a
  control variate: biased O(1/n), often far lower variance, and invariant to adding a constant to rewards.
- DR, doubly robust (Dudík, Langford & Li 2011, "Doubly robust policy evaluation and learning"):
  V̂_k = Ê_n[m_ik (q̄_ik + W̃_ik (r_ik - q̂_ik))]. DM plus an IPS correction of the model's residual: unbiased
  when either the weights or the model are right, and lower variance than IPS when q̂ is close to r. For
  cascade/slate weights this is the plain (not recursive) DR: still unbiased because E_π0[W_ik f(a_ik)] =
  E_πe[f(a_k)] for any f when both policies choose slots independently.
- on-policy: V̂_k = Ê_n[m_ik r_ik], the logging policy's own value (exact, no model and no weights).

Levels: ``request`` = Σ_k λ_k V̂_k (page value); ``impression`` = the page value / Ê_n[Σ_k λ_k m_ik] (the
λ-weighted reward per impression; the CTR when λ = 1 and rewards are clicks); ``slot{k}`` = V̂_k.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np

from experiments.ope.bootstrap import MeanFunction
from experiments.ope.data import CandidatePolicy, ImpressionLog

EstimatorName = Literal["dm", "ips", "snips", "dr"]
ESTIMATORS: tuple[EstimatorName, ...] = ("dm", "ips", "snips", "dr")
ON_POLICY = "on_policy"
"""The logging policy's own value, estimated by the plain mean of logged rewards."""

# Blocks of S columns each, in layout order; "dm" and "dr" need the reward model, "ips" and "weight" need
# the weights.
_BLOCKS = ("present", "reward", "ips", "weight", "dm", "dr")


@dataclasses.dataclass(frozen=True, eq=False)
class RequestColumns:
    """Per-request statistics of one candidate on one log; each estimator is a function of their means.

    Attributes:
        values: [n, m] float64; block b holds S columns (one per slot), then one column Σ_k λ_k m_ik.
        blocks: block name -> index of its first column (blocks the inputs cannot support are absent).
        slot_weights: [S] float64, λ_k.
        offset: where these columns start inside a wider matrix (a paired comparison concatenates two).
    """

    values: np.ndarray
    blocks: dict[str, int]
    slot_weights: np.ndarray
    offset: int = 0

    @property
    def n_slots(self) -> int:
        return int(self.slot_weights.shape[0])

    @property
    def width(self) -> int:
        return int(self.values.shape[1])

    def supports(self, estimator: str) -> bool:
        needs = {"dm": ("dm",), "ips": ("ips",), "snips": ("ips", "weight"), "dr": ("dr",), ON_POLICY: ("reward",)}
        return all(b in self.blocks for b in needs[estimator])

    def slot_values(self, estimator: str, means: np.ndarray) -> np.ndarray:
        """Per-slot estimates V̂_k from column means [..., total width] -> [..., S] (formulas: module doc)."""
        if not self.supports(estimator):
            raise ValueError(f"estimator {estimator!r} needs inputs this candidate does not have")

        def block(name: str) -> np.ndarray:
            start = self.offset + self.blocks[name]
            return means[..., start : start + self.n_slots]

        if estimator == "snips":
            with np.errstate(divide="ignore", invalid="ignore"):
                normalised = block("ips") / block("weight") * block("present")
            # A slot no request shows contributes 0 rather than 0/0.
            return np.where(block("present") > 0, normalised, 0.0)
        name = "reward" if estimator == ON_POLICY else estimator
        return block(name)

    def statistic(self, estimator: str, level: str) -> MeanFunction:
        """g(means) for ``estimator`` at ``level`` (``request``, ``impression`` or ``slot{k}``, k 1-based)."""
        if level == "request":
            return lambda means: self.slot_values(estimator, means) @ self.slot_weights
        if level == "impression":
            exposure = self.offset + self.width - 1
            return lambda means: (self.slot_values(estimator, means) @ self.slot_weights) / means[..., exposure]
        if level.startswith("slot") and level[4:].isdigit() and 1 <= int(level[4:]) <= self.n_slots:
            k = int(level[4:]) - 1
            return lambda means: self.slot_values(estimator, means)[..., k]
        raise ValueError(f"level must be 'request', 'impression' or 'slot1'..'slot{self.n_slots}', got {level!r}")


def request_columns(
    log: ImpressionLog,
    candidate: CandidatePolicy,
    weights: np.ndarray | None,
    slot_weights: np.ndarray,
) -> RequestColumns:
    """Lay out the per-request statistics every estimator needs.

    Args:
        log: the logged impressions.
        candidate: the candidate's propensities and reward-model predictions on them.
        weights: [n, S] float64 importance weights W̃ (clipped if requested), 0 where absent; None when the
            log has no propensities (then only DM and on-policy values are available).
        slot_weights: [S] float64 λ_k.
    """
    n, n_slots = log.present.shape
    if slot_weights.shape != (n_slots,):
        raise ValueError(f"slot_weights must have one weight per slot ({n_slots}), got shape {slot_weights.shape}")
    if weights is not None and weights.shape != (n, n_slots):
        raise ValueError(f"weights must be [n, S] = {(n, n_slots)}, got {weights.shape}")
    present = log.present.astype(np.float64)
    blocks: dict[str, np.ndarray] = {"present": present, "reward": present * log.reward}
    if weights is not None:
        blocks["ips"] = weights * log.reward
        blocks["weight"] = weights
    if candidate.dm_prediction is not None:
        blocks["dm"] = present * candidate.dm_prediction
        if weights is not None and candidate.dm_logged is not None:
            blocks["dr"] = present * candidate.dm_prediction + weights * (log.reward - candidate.dm_logged)
    ordered = [b for b in _BLOCKS if b in blocks]
    exposure = (present * slot_weights).sum(axis=1, keepdims=True)
    values = np.concatenate([blocks[b] for b in ordered] + [exposure], axis=1)
    return RequestColumns(
        values=values,
        blocks={b: i * n_slots for i, b in enumerate(ordered)},
        slot_weights=slot_weights,
    )


def difference(first: MeanFunction, second: MeanFunction, *, relative: bool = False) -> Callable:
    """g1 - g2 (``relative``: g1 / g2 - 1) on a shared mean vector, for paired comparisons."""
    if relative:
        return lambda means: first(means) / second(means) - 1.0
    return lambda means: first(means) - second(means)
