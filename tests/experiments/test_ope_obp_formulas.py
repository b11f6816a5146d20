"""Our OPE estimators against Open Bandit Pipeline's published formulas, on obp-like synthetic bandit data.

obp (st-tech/zr-obp) does not install on this Python, so its estimators are written here from its documentation
(docs/estimators.rst and ``obp.ope.estimators``), for one slot, n rounds t, logged action a_t ~ π_b(· | x_t),
reward r_t, w_t = π_e(a_t | x_t) / π_b(a_t | x_t) and a reward model q̂:

- IPW (obp ``InverseProbabilityWeighting``):           V̂ = E_D[w_t r_t]
- SNIPW (``SelfNormalizedInverseProbabilityWeighting``): V̂ = E_D[w_t r_t] / E_D[w_t]
- DM (``DirectMethod``):                               V̂ = E_D[Σ_a π_e(a | x_t) q̂(x_t, a)]
- DR (``DoublyRobust``):                               V̂ = E_D[Σ_a π_e(a | x_t) q̂(x_t, a) + w_t (r_t − q̂(x_t, a_t))]

The data follow obp's ``SyntheticBanditDataset`` (contexts x ~ N(0, I); expected reward q(x, a) = σ(x·θ_a + b_a),
obp's logistic reward function; a softmax behaviour policy over a noisy copy of q's logits; Bernoulli rewards)
and the evaluation policy is a sharper softmax, as in obp's quickstart. Our estimators run through
``experiments.ope.evaluate.evaluate`` on the same rounds as a one-slot impression log, each round its own request.
"""

from __future__ import annotations

import numpy as np
import pytest

from experiments.ope.evaluate import OPEConfig, build_candidate, build_impression_log, evaluate

POINT = OPEConfig(n_bootstrap=0, min_ess=0, min_ess_fraction=0, weight_mean_tolerance=float("inf"))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def obp_like_bandit(n_rounds: int = 4000, n_actions: int = 10, dim_context: int = 5, seed: int = 12345) -> dict:
    """Logged bandit feedback in the shape of obp's ``obtain_batch_bandit_feedback`` plus π_e and q̂."""
    rng = np.random.default_rng(seed)
    context = rng.normal(size=(n_rounds, dim_context))
    theta, bias = rng.normal(size=(dim_context, n_actions)), rng.normal(size=n_actions)
    logits = context @ theta + bias
    expected_reward = 1.0 / (1.0 + np.exp(-logits))  # obp.dataset.logistic_reward_function
    pi_b = _softmax(0.3 * (logits + rng.normal(scale=1.0, size=logits.shape)))
    action = (pi_b.cumsum(axis=1) > rng.random((n_rounds, 1))).argmax(axis=1)
    reward = (rng.random(n_rounds) < expected_reward[np.arange(n_rounds), action]).astype(np.float64)
    pi_e = _softmax(1.0 * logits)
    q_hat = 1.0 / (1.0 + np.exp(-(logits + rng.normal(scale=0.2, size=logits.shape))))  # an imperfect model
    return {"action": action, "reward": reward, "pi_b": pi_b, "pi_e": pi_e, "q_hat": q_hat, "q": expected_reward}


def obp_estimates(data: dict) -> dict[str, float]:
    """The four estimators as obp's documentation writes them (module docstring)."""
    rounds = np.arange(data["action"].size)
    w = data["pi_e"][rounds, data["action"]] / data["pi_b"][rounds, data["action"]]
    r = data["reward"]
    q_pi_e = (data["pi_e"] * data["q_hat"]).sum(axis=1)
    q_factual = data["q_hat"][rounds, data["action"]]
    return {
        "ips": float(np.mean(w * r)),
        "snips": float(np.mean(w * r) / np.mean(w)),
        "dm": float(np.mean(q_pi_e)),
        "dr": float(np.mean(q_pi_e + w * (r - q_factual))),
    }


def our_estimates(data: dict) -> dict[str, float]:
    rounds = np.arange(data["action"].size)
    log = build_impression_log(
        rounds, np.ones_like(rounds), data["reward"], data["pi_b"][rounds, data["action"]], source="obp-like"
    )
    candidate = build_candidate(
        log,
        data["pi_e"][rounds, data["action"]],
        dm_prediction=(data["pi_e"] * data["q_hat"]).sum(axis=1),
        dm_logged=data["q_hat"][rounds, data["action"]],
        name="pi_e",
    )
    report = evaluate(log, candidate, POINT)
    return {e: report.result(e).value for e in ("ips", "snips", "dm", "dr")}


@pytest.mark.parametrize("seed", [12345, 7])
def test_estimators_equal_obps_formulas(seed: int) -> None:
    data = obp_like_bandit(seed=seed)
    ours, reference = our_estimates(data), obp_estimates(data)
    for name in ("ips", "snips", "dm", "dr"):
        assert ours[name] == pytest.approx(reference[name], rel=1e-12, abs=1e-12), name


def test_obp_like_data_make_the_estimators_land_near_the_truth() -> None:
    """A sanity check of the synthetic setting itself: with overlap and a good model every estimator is within
    a few standard errors of the true value of π_e (so the equality above is not between two degenerate numbers)."""
    data = obp_like_bandit(n_rounds=20000, seed=3)
    truth = float(np.mean((data["pi_e"] * data["q"]).sum(axis=1)))
    ours = our_estimates(data)
    assert abs(ours["dm"] - truth) < 0.01
    for name in ("ips", "snips", "dr"):
        assert abs(ours[name] - truth) < 0.03, (name, ours[name], truth)
