"""A tiny contextual slate bandit whose policy values are exact: the known truth the OPE estimators answer to.

World: a context x (shopper segment) is drawn from p(x); the page shows the first L slots (L ~ a fixed
distribution on 1..S, independent of everything else); in each shown slot k a policy π picks one of A actions
(image variants) independently given (x, k); the shopper clicks with the position-based-model probability

    P(click_k | x, a) = θ_k · clip(α(x, k, a_k) + γ 1[k > 1 and a_k = a_{k-1}], 0, 1)

with examination θ_k, attractiveness α and an optional slot-interaction bonus γ (γ = 0 is the pure PBM of the
studio world, where the independent-slot estimator is unbiased; γ != 0 makes slot k's reward depend on slot k-1,
which only the cascade and slate weightings handle). Because slots are chosen independently, the exact value is
a sum over adjacent action pairs, no enumeration of whole pages needed:

    V_k(π) = P(L >= k) Σ_x p(x) θ_k Σ_{a', a} π(a' | x, k-1) π(a | x, k) clip(α(x, k, a) + γ 1[a = a'], 0, 1)

(for k = 1 drop a' and the bonus), and the page value is V(π) = Σ_k λ_k V_k(π).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.ope.data import CandidatePolicy, ImpressionLog, build_candidate, build_impression_log


@dataclasses.dataclass(frozen=True, eq=False)
class SlateBandit:
    """Parameters of the world (shapes: C contexts, S slots, A actions per slot)."""

    context_probs: np.ndarray
    """[C] p(x)."""
    examination: np.ndarray
    """[S] θ_k, the probability a shopper looks at slot k."""
    attractiveness: np.ndarray
    """[C, S, A] α(x, k, a) in [0, 1]."""
    slot_count_probs: np.ndarray
    """[S] P(L = l) for l = 1..S: the page shows its first L slots."""
    interaction: float = 0.0
    """γ, added to slot k's attractiveness when it shows the same action as slot k-1."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.attractiveness.shape  # type: ignore[return-value]

    @property
    def slot_shown_probs(self) -> np.ndarray:
        """[S] P(L >= k)."""
        return self.slot_count_probs[::-1].cumsum()[::-1]


@dataclasses.dataclass(frozen=True, eq=False)
class SlateDraw:
    """One simulated log: n requests, dense by slot."""

    context: np.ndarray
    """[n] int context index."""
    actions: np.ndarray
    """[n, S] int chosen action (meaningless where not shown)."""
    shown: np.ndarray
    """[n, S] bool."""
    click_prob: np.ndarray
    """[n, S] float64, the exact click probability of the shown impression (0 where not shown)."""
    clicks: np.ndarray
    """[n, S] float64 0/1 clicks (0 where not shown)."""


def make_slate_bandit(
    *,
    n_contexts: int = 4,
    n_slots: int = 3,
    n_actions: int = 4,
    interaction: float = 0.0,
    slot_count_probs: np.ndarray | None = None,
    seed: int = 0,
) -> SlateBandit:
    """A random world: θ_k decaying with position, α ~ U(0.05, 0.6), p(x) ~ Dirichlet(2)."""
    rng = np.random.default_rng(seed)
    if slot_count_probs is None:
        slot_count_probs = np.eye(n_slots)[-1]
    slot_count_probs = np.asarray(slot_count_probs, dtype=np.float64)
    if slot_count_probs.shape != (n_slots,) or not np.isclose(slot_count_probs.sum(), 1):
        raise ValueError(f"slot_count_probs must be a distribution over 1..{n_slots}, got {slot_count_probs}")
    return SlateBandit(
        context_probs=rng.dirichlet(np.full(n_contexts, 2.0)),
        examination=1.0 / (1.0 + 0.5 * np.arange(n_slots)),
        attractiveness=rng.uniform(0.05, 0.6, size=(n_contexts, n_slots, n_actions)),
        slot_count_probs=slot_count_probs,
        interaction=interaction,
    )


def softmax_policy(scores: np.ndarray, temperature: float) -> np.ndarray:
    """π(a | x, k) ∝ exp(scores / temperature) over the last axis. [C, S, A] -> [C, S, A]."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = scores / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def true_slot_values(bandit: SlateBandit, policy: np.ndarray) -> np.ndarray:
    """Exact V_k(π) for every slot (module docstring). policy: [C, S, A]. Returns [S] float64."""
    _check_policy(bandit, policy)
    alpha, theta, gamma = bandit.attractiveness, bandit.examination, bandit.interaction
    values = np.empty(len(theta))
    for k in range(len(theta)):
        if k == 0 or gamma == 0:
            per_context = np.sum(policy[:, k] * alpha[:, k], axis=-1)
        else:
            # attract[x, a', a] = clip(α(x, k, a) + γ 1[a = a'])
            attract = np.clip(alpha[:, k, None, :] + gamma * np.eye(alpha.shape[-1])[None], 0.0, 1.0)
            per_context = np.einsum("xb,xa,xba->x", policy[:, k - 1], policy[:, k], attract)
        values[k] = bandit.slot_shown_probs[k] * theta[k] * np.dot(bandit.context_probs, per_context)
    return values


def true_value(bandit: SlateBandit, policy: np.ndarray, slot_weights: np.ndarray | None = None) -> float:
    """Exact page value V(π) = Σ_k λ_k V_k(π) (λ = 1 when not given)."""
    values = true_slot_values(bandit, policy)
    weights = np.ones_like(values) if slot_weights is None else np.asarray(slot_weights, dtype=np.float64)
    return float(values @ weights)


def draw_log(bandit: SlateBandit, logging_policy: np.ndarray, n_requests: int, rng: np.random.Generator) -> SlateDraw:
    """Simulate ``n_requests`` pages served by ``logging_policy`` [C, S, A]."""
    _check_policy(bandit, logging_policy)
    n_contexts, n_slots, _ = bandit.shape
    context = rng.choice(n_contexts, size=n_requests, p=bandit.context_probs)
    n_shown = rng.choice(n_slots, size=n_requests, p=bandit.slot_count_probs) + 1
    shown = np.arange(n_slots)[None, :] < n_shown[:, None]
    # Inverse-CDF sampling of each slot's action, all requests at once.
    cdf = np.cumsum(logging_policy[context], axis=-1)
    u = rng.random((n_requests, n_slots, 1))
    actions = np.minimum((u > cdf).sum(axis=-1), cdf.shape[-1] - 1)
    attract = bandit.attractiveness[context[:, None], np.arange(n_slots)[None, :], actions]
    if bandit.interaction:
        repeat = np.zeros_like(shown)
        repeat[:, 1:] = actions[:, 1:] == actions[:, :-1]
        attract = np.clip(attract + bandit.interaction * repeat, 0.0, 1.0)
    click_prob = np.where(shown, bandit.examination[None, :] * attract, 0.0)
    clicks = (rng.random(click_prob.shape) < click_prob).astype(np.float64)
    return SlateDraw(context=context, actions=actions, shown=shown, click_prob=click_prob, clicks=clicks)


def logged_propensity(draw: SlateDraw, policy: np.ndarray) -> np.ndarray:
    """π(a_ik | x_i, k) of each drawn action under ``policy`` [C, S, A]. Returns [n, S] float64."""
    n_slots = draw.actions.shape[1]
    return policy[draw.context[:, None], np.arange(n_slots)[None, :], draw.actions]


def model_predictions(
    bandit: SlateBandit, draw: SlateDraw, policy: np.ndarray, error: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A reward model q̂(x, k, a) = θ_k α(x, k, a) + error(x, k, a), seen on the drawn impressions.

    Exact (error None) under the PBM (γ = 0). Returns (dm_prediction, dm_logged), each [n, S] float64:
    Σ_a π(a | x, k) q̂(x, k, a) and q̂(x, k, a_ik).
    """
    q = bandit.examination[None, :, None] * bandit.attractiveness
    if error is not None:
        q = q + error
    n_slots = draw.actions.shape[1]
    slots = np.arange(n_slots)[None, :]
    dm_prediction = np.sum(policy * q, axis=-1)[draw.context]
    dm_logged = q[draw.context[:, None], slots, draw.actions]
    return dm_prediction, dm_logged


def impression_log(draw: SlateDraw, logging_policy: np.ndarray, *, reward: str = "clicks") -> ImpressionLog:
    """The draw as logs, through the same builder real logs use (one flat row per shown impression).

    ``reward`` is "clicks" (0/1 outcomes) or "click_prob" (the exact expected click, a noiseless engagement value).
    """
    request, slot = np.nonzero(draw.shown)
    rewards = {"clicks": draw.clicks, "click_prob": draw.click_prob}[reward]
    return build_impression_log(
        request_id=request,
        position=slot + 1,
        reward=rewards[request, slot],
        propensity=logged_propensity(draw, logging_policy)[request, slot],
        source="<synthetic>",
    )


def candidate(
    bandit: SlateBandit,
    draw: SlateDraw,
    log: ImpressionLog,
    policy: np.ndarray,
    *,
    name: str = "candidate",
    error: np.ndarray | None = None,
) -> CandidatePolicy:
    """``policy`` [C, S, A] as a candidate on ``log`` (built by :func:`impression_log` from ``draw``), with the
    reward model of :func:`model_predictions`."""
    request, slot = np.nonzero(draw.shown)
    dm_prediction, dm_logged = model_predictions(bandit, draw, policy, error)
    return build_candidate(
        log,
        logged_propensity(draw, policy)[request, slot],
        name=name,
        dm_prediction=dm_prediction[request, slot],
        dm_logged=dm_logged[request, slot],
        source="<synthetic>",
    )


def _check_policy(bandit: SlateBandit, policy: np.ndarray) -> None:
    if policy.shape != bandit.shape:
        raise ValueError(f"policy must be [C, S, A] = {bandit.shape}, got {policy.shape}")
    if not np.allclose(policy.sum(axis=-1), 1.0) or np.any(policy < 0):
        raise ValueError("policy rows must be probability distributions over actions")
