"""Weight diagnostics by hand, the refusals (ESS, support, mean weight, missing propensities), and bad inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments.config import ConfigError, from_dict
from experiments.ope import synthetic as syn
from experiments.ope.evaluate import (
    MissingPropensityError,
    OPEConfig,
    OverlapError,
    build_candidate,
    build_impression_log,
    evaluate,
    expected_reward,
    unsupported_mass,
)
from experiments.ope.weights import kish_ess
from offline_data.errors import BackdropError, InputUnreadableError, LogValidationError

# Weighting estimators only (these candidates have no reward model), no refusal thresholds unless a test sets one.
LENIENT = OPEConfig(
    estimators=("ips", "snips"), primary="ips", n_bootstrap=0, min_ess=0, min_ess_fraction=0,
    weight_mean_tolerance=float("inf"),
)  # fmt: skip
WEIGHTED = OPEConfig(estimators=("ips", "snips"), primary="ips", n_bootstrap=0)


def test_kish_ess_by_hand() -> None:
    assert kish_ess(np.ones(4)) == 4
    assert kish_ess(np.array([3.0, 0, 0, 0])) == 1
    assert kish_ess(np.array([1.0, 2.0, 3.0])) == pytest.approx(36 / 14)
    assert kish_ess(np.zeros(5)) == 0


def test_weight_diagnostics_by_hand() -> None:
    # 2 requests x 2 slots; weights (πe/π0): a: 0.2/0.1 = 2, 0/0.5 = 0; b: 0.5/0.005 = 100, 0.5/0.5 = 1
    log = build_impression_log(["a", "a", "b", "b"], [1, 2, 1, 2], [1.0, 0.0, 1.0, 0.0], [0.1, 0.5, 0.005, 0.5])
    cand = build_candidate(log, [0.2, 0.0, 0.5, 0.5])
    d = evaluate(log, cand, dataclasses.replace(LENIENT, clip=10.0)).diagnostics["weights"]["candidate"]
    assert d["weights/ess"] == pytest.approx(103**2 / (4 + 10_000 + 1))
    assert d["weights/ess_fraction"] == pytest.approx(d["weights/ess"] / 4)
    assert d["weights/mean"] == pytest.approx(103 / 4)
    # clustered s.e.: W = [2, 101], N = [2, 2], m̂ = 25.75; residuals W - m̂ N = [-49.5, 49.5]
    assert d["weights/mean_se"] == pytest.approx(np.sqrt(2 * 49.5**2 / 2) / 2)
    assert d["weights/max"] == 100 and d["weights/q50"] == pytest.approx(1.5)
    assert d["weights/zero_share"] == 0.25
    assert d["weights/tiny_propensity_share"] == 0.25  # π0 = 0.005 < 0.01 with πe > 0
    assert d["weights/clip"] == 10.0 and d["weights/clipped_share"] == 0.25
    assert d["weights/ess_slot1"] == pytest.approx(102**2 / 10_004)
    assert d["weights/ess_slot2"] == pytest.approx(1.0)


def test_clipping_uses_the_clipped_weights_and_reports_the_level() -> None:
    log = build_impression_log(["a", "b"], [1, 1], [1.0, 1.0], [0.1, 0.5])
    cand = build_candidate(log, [0.5, 0.5])  # weights 5 and 1
    plain = evaluate(log, cand, dataclasses.replace(LENIENT, estimators=("ips",), primary="ips"))
    clipped = evaluate(log, cand, dataclasses.replace(LENIENT, estimators=("ips",), primary="ips", clip=2.0))
    assert plain.result("ips").value == pytest.approx(3.0)
    assert clipped.result("ips").value == pytest.approx(1.5)
    assert clipped.result("ips").diagnostics["weights/clip"] == 2.0
    assert clipped.result("ips").ess == plain.result("ips").ess  # ESS judges the raw weights


def sim_log(pi0, pie, *, n=500, seed=0):
    bandit = syn.make_slate_bandit(seed=seed, n_slots=2, n_actions=4)
    draw = syn.draw_log(bandit, pi0(bandit), n, np.random.default_rng(seed))
    log = syn.impression_log(draw, pi0(bandit))
    return bandit, draw, log, syn.candidate(bandit, draw, log, pie(bandit))


def test_refuses_when_effective_sample_size_is_too_small() -> None:
    # The logger shows action 3 with probability 0.01; the candidate always shows it.
    rare = np.array([0.33, 0.33, 0.33, 0.01])
    _, _, log, cand = sim_log(
        lambda b: np.broadcast_to(rare, b.shape).copy(), lambda b: np.eye(4)[np.full(b.shape[:2], 3)]
    )
    with pytest.raises(OverlapError) as info:
        evaluate(log, cand, OPEConfig(n_bootstrap=0))
    message = str(info.value)
    assert "effective sample size: Kish ESS" in message
    assert "expected at least 30 and at least 1.00%" in message
    assert "candidate 'candidate'" in message and info.value.exit_code == 1
    # DM does not reweight anything: it still answers.
    dm_only = OPEConfig(n_bootstrap=0, estimators=("dm",), primary="dm")
    assert np.isfinite(evaluate(log, cand, dm_only).result("dm").value)


def test_refuses_support_violations_declared_by_unsupported_mass() -> None:
    log = build_impression_log(["a", "b", "c"], [1, 1, 1], [1.0, 0.0, 1.0], [0.5, 0.5, 0.5])
    cand = build_candidate(log, [0.5, 0.4, 0.5], unsupported_mass=[0.0, 0.1, 0.0])
    with pytest.raises(OverlapError) as info:
        evaluate(log, cand, LENIENT)
    assert "support: the candidate puts up to 0.1 of a slot's probability on actions the logging policy never " \
        "takes (π0 = 0); expected at most 1e-06" in str(info.value)  # fmt: skip


def test_refuses_logged_zero_propensity_that_the_candidate_would_show() -> None:
    # Row 2 was served outside the randomisation (π0 = 0): fine while the candidate never shows it...
    log = build_impression_log(["a", "b", "c"], [1, 1, 1], [1.0, 0.0, 1.0], [0.5, 0.0, 0.5])
    ok = evaluate(log, build_candidate(log, [0.5, 0.0, 0.5]), LENIENT)
    assert ok.result("ips").value == pytest.approx((1 + 0 + 1) / 3)
    # ...an infinite weight the moment it would.
    with pytest.raises(OverlapError, match=r"support: 1 logged impression\(s\) have logging propensity 0"):
        evaluate(log, build_candidate(log, [0.5, 0.2, 0.5]), LENIENT)


def undeclared_support_gap(b):
    """The logger never shows action 0; the candidate puts half its mass there (pi0, pie)."""
    pi0 = np.broadcast_to([0.0, 1 / 3, 1 / 3, 1 / 3], b.shape).copy()
    pie = np.broadcast_to([0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3], b.shape).copy()
    return pi0, pie


def test_a_mean_weight_far_from_one_warns_or_refuses() -> None:
    # Nobody declared the gap, so the logged weights simply average 0.5 instead of 1.
    _, _, log, cand = sim_log(lambda b: undeclared_support_gap(b)[0], lambda b: undeclared_support_gap(b)[1])
    report = evaluate(log, cand, WEIGHTED)
    (warning,) = report.diagnostics["warnings"]
    assert warning.startswith("candidate 'candidate': mean weight: 0.5000 ± 0.0000 (s.e.)")
    assert "expected within 0.1 of 1 or within 4 s.e." in warning
    with pytest.raises(OverlapError, match=r"1 check\(s\) failed\):\n  mean weight: 0.5000"):
        evaluate(log, cand, dataclasses.replace(WEIGHTED, weight_mean_check="refuse"))


def test_declared_support_gap_refuses() -> None:
    # With the full action distributions the support check names the cause directly.
    bandit, draw, log, _ = sim_log(lambda b: undeclared_support_gap(b)[0], lambda b: undeclared_support_gap(b)[1])
    pi0, pie = undeclared_support_gap(bandit)
    request, slot = np.nonzero(draw.shown)
    gap = unsupported_mass(pie[draw.context[request], slot], pi0[draw.context[request], slot])
    declared = build_candidate(log, np.full(len(request), 0.5 / 3), unsupported_mass=gap)
    with pytest.raises(OverlapError, match=r"1 check\(s\) failed\):\n  support: the candidate puts up to 0.5 "):
        evaluate(log, declared, WEIGHTED)


def test_correct_logs_raise_no_mean_weight_warning() -> None:
    # Correct propensities and full support, ESS ~ 10-20 % of 3,000 impressions: 30 logs, no warning.
    for seed in range(30):
        _, _, log, cand = sim_log(
            lambda b: syn.softmax_policy(np.random.default_rng(1).normal(size=b.shape), 0.5),
            lambda b: syn.softmax_policy(b.attractiveness, 0.2),
            n=1500,
            seed=seed,
        )
        report = evaluate(log, cand, WEIGHTED)
        assert report.diagnostics["warnings"] == [], seed
        assert report.diagnostics["weights"]["candidate"]["weights/ess_fraction"] < 0.5


def test_missing_propensities_leave_only_the_direct_method() -> None:
    log = build_impression_log(["a", "b", "c", "d"], [1, 1, 1, 1], [1.0, 0.0, 1.0, 0.0], [0.5, np.nan, 0.5, np.nan])
    cand = build_candidate(log, [0.5, 0.5, 0.5, 0.5], dm_prediction=[0.2, 0.4, 0.6, 0.8], dm_logged=[0.1] * 4)
    with pytest.raises(MissingPropensityError) as info:
        evaluate(log, cand, dataclasses.replace(LENIENT, estimators=("dm", "ips", "snips", "dr"), primary="dr"))
    message = str(info.value)
    assert "2 of 4 impressions have no logged propensity (rows 2, 4), so IPS/SNIPS/DR cannot be computed" in message
    assert "Only the direct method is possible" in message and 'estimators = ["dm"]' in message
    no_prop = build_impression_log(["a", "b", "c", "d"], [1, 1, 1, 1], [1.0, 0.0, 1.0, 0.0])
    cand2 = build_candidate(no_prop, [0.5] * 4, dm_prediction=[0.2, 0.4, 0.6, 0.8])
    dm = evaluate(no_prop, cand2, dataclasses.replace(LENIENT, estimators=("dm",), primary="dm"))
    assert dm.result("dm").value == pytest.approx(0.5)
    assert dm.result("lift:dm").value == pytest.approx(0.5 - 0.5)  # vs the logged on-policy mean 2/4


def test_missing_model_predictions_are_named() -> None:
    log = build_impression_log(["a", "b"], [1, 1], [1.0, 0.0], [0.5, 0.5])
    cand = build_candidate(log, [0.5, 0.5], dm_prediction=[0.1, 0.2])
    with pytest.raises(InputUnreadableError, match="candidate 'candidate' has no dm_logged column, which DR needs"):
        evaluate(log, cand, dataclasses.replace(LENIENT, estimators=("dm", "dr"), primary="dr"))
    with pytest.raises(InputUnreadableError, match="no dm_logged / dm_prediction column, which DM and DR need "):
        evaluate(log, build_candidate(log, [0.5, 0.5]), OPEConfig())


def test_a_second_candidate_is_checked_and_compared_jointly() -> None:
    log = build_impression_log(["a", "b", "c"], [1, 1, 1], [1.0, 0.0, 1.0], [0.5, 0.25, 0.8])
    first = build_candidate(log, [0.25, 0.5, 0.8], name="first")  # IPS (0.5 + 0 + 1) / 3
    second = build_candidate(log, [0.5, 0.25, 0.4], name="second")  # IPS (1 + 0 + 0.5) / 3
    config = dataclasses.replace(LENIENT, estimators=("ips",), primary="ips", n_bootstrap=200)
    report = evaluate(log, first, config, baseline=second)
    assert report.baseline == "second"
    assert report.result("lift:ips").value == pytest.approx(0.0)
    assert set(report.diagnostics["weights"]) == {"first", "second"}
    with pytest.raises(ValueError, match="candidate and baseline need different names, both are 'first'"):
        evaluate(log, first, config, baseline=dataclasses.replace(second, name="first"))
    one = build_impression_log(["a"], [1], [1.0], [0.5])
    with pytest.raises(
        LogValidationError, match="1 request; bootstrap intervals resample requests and need at least 2"
    ):
        evaluate(one, build_candidate(one, [0.5]), config)
    bad = build_candidate(log, [0.5, 0.25, 0.4], name="bad", unsupported_mass=[0.0, 0.5, 0.0])
    with pytest.raises(OverlapError, match="candidate 'bad'"):
        evaluate(log, first, config, baseline=bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"position": [1, 0, 2]},
            "<arrays>: 1 problem(s); first 1:\n  row 2, column 'position': expected integer >= 1, got 0",
        ),
        ({"position": [1, 1.5, 2]}, "row 2, column 'position': expected integer >= 1, got 1.5"),
        ({"reward": [1.0, np.inf, 0.0]}, "row 2, column 'reward': expected finite number, got inf"),
        (
            {"propensity": [0.5, 1.2, -0.1]},
            "row 2, column 'propensity': expected number in [0, 1] (or missing), got 1.2",
        ),
        ({"propensity": [0.5, 1.2, -0.1]}, "2 problem(s)"),
        ({"request_id": ["a", None, "b"]}, "row 2, column 'request_id': expected non-empty id, got None"),
        (
            {"request_id": ["a", "b", "a"], "position": [2, 1, 2]},
            "row 3: request_id 'a' already shows position 2 (row 1); expected one impression per (request_id, "
            "position)",
        ),
    ],
)
def test_bad_log_rows(kwargs: dict, message: str) -> None:
    arrays = {"request_id": ["a", "b", "c"], "position": [1, 1, 1], "reward": [1.0, 0.0, 1.0], "propensity": [0.5] * 3}
    arrays.update(kwargs)
    with pytest.raises(LogValidationError) as info:
        build_impression_log(**arrays)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"candidate_propensity": [0.5, 1.5]},
            "row 2, column 'candidate_propensity': expected number in [0, 1], got 1.5",
        ),
        ({"dm_prediction": [np.nan, 0.1]}, "row 1, column 'dm_prediction': expected finite number, got nan"),
        ({"unsupported_mass": [-0.1, 0.0]}, "row 1, column 'unsupported_mass': expected number in [0, 1], got -0.1"),
    ],
)
def test_bad_candidate_rows(kwargs: dict, message: str) -> None:
    log = build_impression_log(["a", "b"], [1, 1], [1.0, 0.0], [0.5, 0.5], source="logs/impressions.parquet")
    arrays = {"candidate_propensity": [0.5, 0.5]} | kwargs
    with pytest.raises(LogValidationError) as info:
        build_candidate(log, source="scores.csv", **arrays)
    assert str(info.value).startswith("scores.csv: 1 problem(s)") and message in str(info.value)


def test_shape_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="expected 1-D arrays of one length"):
        build_impression_log(["a", "b"], [1], [1.0, 0.0])
    with pytest.raises(ValueError, match="no impressions"):
        build_impression_log([], [], [])
    log = build_impression_log(["a", "b"], [1, 1], [1.0, 0.0])
    with pytest.raises(ValueError, match="one value per logged impression"):
        build_candidate(log, [0.5])
    with pytest.raises(ValueError, match="slot_weights has 2 entries but <arrays> shows 1 slot"):
        evaluate(log, build_candidate(log, [0.5, 0.5], dm_prediction=[0, 0]),
                 OPEConfig(estimators=("dm",), primary="dm", slot_weights=(1.0, 0.5)))  # fmt: skip


def test_action_level_helpers_by_hand() -> None:
    pe = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    p0 = np.array([[0.0, 0.5, 0.5], [0.4, 0.6, 0.0]])
    q = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 0.5]])
    np.testing.assert_allclose(expected_reward(pe, q), [1.5, 0.55])
    np.testing.assert_allclose(unsupported_mass(pe, p0), [0.5, 0.5])
    with pytest.raises(ValueError, match="row 2 sums to 0.9"):
        expected_reward(np.array([[1.0, 0.0], [0.5, 0.4]]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"row 1, action 1 holds 1.5"):
        unsupported_mass(np.array([[1.5, -0.5]]), np.array([[0.5, 0.5]]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"estimators": []}, "estimators must name at least one of dm, ips, snips, dr"),
        ({"estimators": ["dm", "ipw"]}, "expects one of 'dm', 'ips', 'snips', 'dr'"),
        ({"estimators": ["dm", "ips"]}, "primary 'dr' must be one of estimators ['dm', 'ips']"),
        ({"clip": 0}, "clip must be > 0"),
        ({"slot_weights": [1.0, -1.0]}, "slot_weights must be finite and >= 0"),
        ({"confidence": 95}, "confidence must be in (0, 1), got 95"),
        ({"n_bootstrap": 10}, "n_bootstrap must be 0 (no intervals) or >= 100, got 10"),
        ({"weighting": "pbm"}, "expects one of 'independent', 'cascade', 'slate'"),
        ({"ci_method": "bc"}, "did you mean 'bca'?"),
    ],
)
def test_config_errors(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(OPEConfig, data, source="ope.toml")
    assert message in str(info.value)


def test_errors_are_backdrop_errors() -> None:
    assert issubclass(OverlapError, BackdropError) and issubclass(MissingPropensityError, BackdropError)
