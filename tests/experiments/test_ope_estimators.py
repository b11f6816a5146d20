"""OPE estimators: hand-computed values on tiny logs, exact identities, and unbiasedness against exact truth.

The known-truth world is experiments/ope/synthetic.py: a contextual slate bandit whose policy values are
computed exactly. "Unbiased" is checked as: over 200 independent logs, the mean estimate is within 3 standard
errors (of that mean) of the truth.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments.ope import synthetic as syn
from experiments.ope.evaluate import OPEConfig, build_candidate, build_impression_log, estimate, evaluate

# Point estimates only, and no refusal thresholds: the hand examples are far too small for them.
POINT = OPEConfig(n_bootstrap=0, min_ess=0, min_ess_fraction=0, weight_mean_tolerance=float("inf"))


def three_rows():
    """3 requests x 1 slot: w = πe/π0 = [0.5, 2, 1]."""
    log = build_impression_log(["a", "b", "c"], [1, 1, 1], [1.0, 0.0, 1.0], [0.5, 0.25, 0.8])
    cand = build_candidate(log, [0.25, 0.5, 0.8], dm_prediction=[0.3, 0.6, 0.9], dm_logged=[0.2, 0.4, 0.7], name="c1")
    return log, cand


def test_three_rows_by_hand() -> None:
    log, cand = three_rows()
    report = evaluate(log, cand, POINT)
    value = {e: report.result(e).value for e in ("dm", "ips", "snips", "dr", "on_policy")}
    assert value["dm"] == pytest.approx((0.3 + 0.6 + 0.9) / 3)
    assert value["ips"] == pytest.approx((0.5 * 1 + 2 * 0 + 1 * 1) / 3)  # 0.5
    assert value["snips"] == pytest.approx(1.5 / 3.5)  # Σ w r / Σ w
    # DR terms q̄ + w (r - q̂): 0.3 + 0.5 * 0.8, 0.6 + 2 * (-0.4), 0.9 + 1 * 0.3
    assert value["dr"] == pytest.approx((0.7 - 0.2 + 1.2) / 3)
    assert value["on_policy"] == pytest.approx(2 / 3)
    assert report.result("lift:ips").value == pytest.approx(0.5 - 2 / 3)
    assert report.result("relative_lift:dr").value == pytest.approx((1.7 / 3) / (2 / 3) - 1)
    # One slot: per impression equals per request equals the slot's value.
    for e in ("dm", "ips", "snips", "dr"):
        assert report.result(e, "impression").value == pytest.approx(value[e])
        assert report.result(e, "slot1").value == pytest.approx(value[e])
    assert report.result("ips").ess == pytest.approx(3.5**2 / (0.25 + 4 + 1))


def two_by_two():
    """2 requests x 2 slots; per-slot weights A: [0.5, 2], B: [2, 0.5]; rewards A: [1, 0], B: [0, 1]."""
    log = build_impression_log(["A", "A", "B", "B"], [1, 2, 1, 2], [1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.25, 0.8])
    cand = build_candidate(log, [0.25, 1.0, 0.5, 0.4])
    return log, cand


@pytest.mark.parametrize(
    ("weighting", "slots"),
    [
        # independent: slot1 (0.5*1 + 2*0)/2, slot2 (2*0 + 0.5*1)/2
        ("independent", (0.25, 0.25)),
        # cascade: slot2 weights A 0.5*2 = 1, B 2*0.5 = 1 -> (0 + 1)/2
        ("cascade", (0.25, 0.5)),
        # slate: every slot of A and B has the page weight 1
        ("slate", (0.5, 0.5)),
    ],
)
def test_slot_weightings_by_hand(weighting: str, slots: tuple[float, float]) -> None:
    log, cand = two_by_two()
    config = dataclasses.replace(POINT, estimators=("ips",), primary="ips", weighting=weighting)
    report = evaluate(log, cand, config)
    assert report.result("ips", "slot1").value == pytest.approx(slots[0])
    assert report.result("ips", "slot2").value == pytest.approx(slots[1])
    assert report.result("ips").value == pytest.approx(sum(slots))
    assert report.result("ips", "impression").value == pytest.approx(sum(slots) / 2)  # 2 impressions / request
    weighted = dataclasses.replace(config, slot_weights=(1.0, 0.25))
    page = evaluate(log, cand, weighted)
    assert page.result("ips").value == pytest.approx(slots[0] + 0.25 * slots[1])
    assert page.result("ips", "impression").value == pytest.approx((slots[0] + 0.25 * slots[1]) / 1.25)


def test_per_slot_snips_normalises_within_each_slot() -> None:
    log, cand = two_by_two()
    report = evaluate(log, cand, dataclasses.replace(POINT, estimators=("snips",), primary="snips"))
    # slot1: Σ w r / Σ w = 0.5 / 2.5; slot2: 0.5 / 2.5
    assert report.result("snips", "slot1").value == pytest.approx(0.2)
    assert report.result("snips").value == pytest.approx(0.4)


def test_absent_slots_count_as_zero_reward_per_request() -> None:
    # Request "b" shows only slot 1: slot 2's value per request averages over both requests.
    log = build_impression_log(["a", "a", "b"], [1, 2, 1], [1.0, 1.0, 0.0], [0.5, 0.5, 0.5])
    cand = build_candidate(log, [0.5, 1.0, 0.5])
    report = evaluate(log, cand, dataclasses.replace(POINT, estimators=("ips", "snips"), primary="ips"))
    assert report.result("ips", "slot2").value == pytest.approx(2 * 1 / 2)
    # SNIPS slot 2: (Σ w r / Σ w) * share of requests showing slot 2 = 1 * 1/2
    assert report.result("snips", "slot2").value == pytest.approx(0.5)
    assert report.result("on_policy", "impression").value == pytest.approx(2 / 3)


def small_world(seed: int, slot_count_probs: list[float], temperature: float, n_requests: int):
    """A world, a random logger, a candidate favouring attractive actions, and one drawn log."""
    bandit = syn.make_slate_bandit(seed=seed, slot_count_probs=np.array(slot_count_probs))
    rng = np.random.default_rng(seed + 100)
    pi0 = syn.softmax_policy(rng.normal(size=bandit.shape), 1.0)
    pie = syn.softmax_policy(bandit.attractiveness, temperature)
    return bandit, pi0, pie, syn.draw_log(bandit, pi0, n_requests, rng)


def test_on_policy_candidate_reproduces_the_logged_mean() -> None:
    bandit, pi0, _, draw = small_world(3, [0.2, 0.3, 0.5], 1.0, 400)
    log = syn.impression_log(draw, pi0)
    same = syn.candidate(bandit, draw, log, pi0)
    for weighting in ("independent", "cascade", "slate"):
        config = dataclasses.replace(OPEConfig(n_bootstrap=200), weighting=weighting)
        report = evaluate(log, same, config)
        expected = draw.clicks.sum() / 400
        for e in ("ips", "snips"):
            assert report.result(e).value == pytest.approx(expected, abs=1e-12)
            lift = report.result(f"lift:{e}")
            assert lift.value == pytest.approx(0.0, abs=1e-12)
            assert lift.ci_low == pytest.approx(0.0, abs=1e-12) and lift.ci_high == pytest.approx(0.0, abs=1e-12)
        assert report.result("on_policy").value == pytest.approx(expected)
        assert report.diagnostics["weights"]["candidate"]["weights/ess_fraction"] == pytest.approx(1.0)


def test_dr_is_exact_with_an_exact_model_and_noiseless_rewards() -> None:
    # Rewards are the exact expected click (an engagement value without noise) and q̂ is exact: the IPS
    # correction vanishes row by row, so DR = DM = the candidate's true value on the drawn contexts.
    bandit, pi0, pie, draw = small_world(5, [0.0, 0.5, 0.5], 0.1, 300)
    log = syn.impression_log(draw, pi0, reward="click_prob")
    cand = syn.candidate(bandit, draw, log, pie)
    per_context = (bandit.examination * np.sum(pie * bandit.attractiveness, axis=-1))[draw.context]  # [n, S]
    truth_on_contexts = np.sum(per_context * draw.shown) / 300
    for weighting in ("independent", "cascade", "slate"):
        config = dataclasses.replace(POINT, weighting=weighting)
        report = evaluate(log, cand, config)
        assert report.result("dr").value == pytest.approx(truth_on_contexts, abs=1e-12)
        assert report.result("dm").value == pytest.approx(truth_on_contexts, abs=1e-12)


def repeated_estimates(bandit, pi0, pie, config, *, n_requests, draws=200, error=None, seed=0):
    """Estimates at the request level over ``draws`` independent logs: {estimator: [draws]}."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {e: [] for e in config.estimators}
    for _ in range(draws):
        draw = syn.draw_log(bandit, pi0, n_requests, rng)
        log = syn.impression_log(draw, pi0)
        report = evaluate(log, syn.candidate(bandit, draw, log, pie, error=error), config)
        for e in config.estimators:
            out[e].append(report.result(e).value)
    return {e: np.asarray(v) for e, v in out.items()}


def z_score(estimates: np.ndarray, truth: float) -> float:
    """(mean - truth) in standard errors of the mean."""
    return float((estimates.mean() - truth) / (estimates.std(ddof=1) / np.sqrt(len(estimates))))


@pytest.fixture(scope="module")
def pbm_world():
    bandit = syn.make_slate_bandit(seed=11, slot_count_probs=np.array([0.1, 0.3, 0.6]))
    rng = np.random.default_rng(7)
    pi0 = syn.softmax_policy(rng.normal(size=bandit.shape), 1.0)
    pie = syn.softmax_policy(bandit.attractiveness, 0.15)
    return bandit, pi0, pie


def test_estimators_are_unbiased_in_the_pbm_world(pbm_world) -> None:
    bandit, pi0, pie = pbm_world
    truth = syn.true_value(bandit, pie)
    assert abs(truth - syn.true_value(bandit, pi0)) > 0.05  # the candidate really differs from the logger
    rng = np.random.default_rng(3)
    wrong_model = rng.normal(0.0, 0.05, size=bandit.shape) + 0.04  # a biased reward model
    estimates = repeated_estimates(bandit, pi0, pie, POINT, n_requests=300, error=wrong_model)
    for e in ("ips", "snips", "dr"):  # DR stays unbiased with the wrong model: the weights are right
        assert abs(z_score(estimates[e], truth)) < 3, e
    # ...while DM inherits the model's bias (the check above can fail).
    assert z_score(estimates["dm"], truth) > 10
    exact = repeated_estimates(bandit, pi0, pie, POINT, n_requests=300, seed=1)
    assert abs(z_score(exact["dm"], truth)) < 3 and abs(z_score(exact["dr"], truth)) < 3
    # With an exact model DR's only noise is the residual's; it beats IPS.
    assert exact["dr"].std() < 0.9 * exact["ips"].std()


def test_clipping_trades_bias_for_variance(pbm_world) -> None:
    bandit, pi0, pie = pbm_world
    truth = syn.true_value(bandit, pie)
    config = dataclasses.replace(POINT, estimators=("ips",), primary="ips")
    plain = repeated_estimates(bandit, pi0, pie, config, n_requests=300, draws=100)["ips"]
    clipped = repeated_estimates(bandit, pi0, pie, dataclasses.replace(config, clip=1.5), n_requests=300, draws=100)
    assert z_score(clipped["ips"], truth) < -5  # clipped weights under-count the candidate's favourite actions
    assert clipped["ips"].std() < plain.std()


def test_only_slot_aware_weightings_survive_slot_interactions() -> None:
    # Slot k's click depends on whether it repeats slot k-1's action: the independent (PBM) estimator is biased,
    # the cascade and slate estimators, whose weights cover slot k-1, are not.
    bandit = syn.make_slate_bandit(seed=2, n_slots=2, n_actions=3, interaction=0.35)
    rng = np.random.default_rng(4)
    pi0 = syn.softmax_policy(rng.normal(size=bandit.shape), 2.0)
    # The candidate repeats action 0 much more often than the logger.
    pie = syn.softmax_policy(np.where(np.arange(3) == 0, 2.0, 0.0) * np.ones(bandit.shape), 0.5)
    truth = syn.true_value(bandit, pie)
    z = {}
    for weighting in ("independent", "cascade", "slate"):
        config = dataclasses.replace(POINT, estimators=("ips",), primary="ips", weighting=weighting)
        z[weighting] = z_score(repeated_estimates(bandit, pi0, pie, config, n_requests=400)["ips"], truth)
    assert z["independent"] < -4, z
    assert abs(z["cascade"]) < 3 and abs(z["slate"]) < 3, z


def test_estimate_returns_one_result() -> None:
    log, cand = three_rows()
    result = estimate(log, cand, "snips", level="impression", config=POINT)
    assert (result.estimator, result.level) == ("snips", "impression")
    assert result.value == pytest.approx(1.5 / 3.5)
    assert result.n == 3 and np.isnan(result.ci_low)
    payload = result.to_dict()
    assert payload["ci_low"] is None and payload["diagnostics"]["weights/ess"] == pytest.approx(result.ess)


def test_snips_shifts_exactly_with_the_rewards_and_ips_does_not() -> None:
    # Adding c to every reward adds c * Ê[Σ_k m_ik] (c per shown slot) to SNIPS, whatever the weights; IPS
    # instead adds c * Ê[Σ_k m_ik W_ik], which is only that in expectation.
    _, pi0, pie, draw = small_world(9, [0.3, 0.3, 0.4], 0.2, 300)
    request, slot = np.nonzero(draw.shown)
    propensity = syn.logged_propensity(draw, pi0)[request, slot]
    target = syn.logged_propensity(draw, pie)[request, slot]
    config = dataclasses.replace(POINT, estimators=("ips", "snips"), primary="snips")
    values = {}
    for shift in (0.0, 3.0):
        log = build_impression_log(request, slot + 1, draw.clicks[request, slot] + shift, propensity)
        report = evaluate(log, build_candidate(log, target), config)
        values[shift] = {e: report.result(e).value for e in ("ips", "snips")}
    slots_per_request = draw.shown.sum() / 300
    assert values[3.0]["snips"] - values[0.0]["snips"] == pytest.approx(3.0 * slots_per_request, abs=1e-12)
    assert abs(values[3.0]["ips"] - values[0.0]["ips"] - 3.0 * slots_per_request) > 1e-3
