"""Request-level bootstrap: parity with scipy.stats.bootstrap, closed-form pieces, and interval coverage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from experiments.ope import bootstrap as ope_bootstrap
from experiments.ope import synthetic as syn
from experiments.ope.bootstrap import (
    bca_interval,
    bootstrap_intervals,
    jackknife_means,
    percentile_interval,
    resample_means,
)
from experiments.ope.evaluate import OPEConfig, evaluate


def test_resample_means_are_means_of_resampled_rows() -> None:
    columns = np.arange(12, dtype=np.float64).reshape(6, 2)
    means = resample_means(np.c_[columns, np.ones(6)], 50, np.random.default_rng(0))
    assert means.shape == (50, 3)
    np.testing.assert_allclose(means[:, 2], 1.0)  # every resample has exactly n rows
    np.testing.assert_allclose(means[:, 1] - means[:, 0], 1.0)  # rows stay intact (column 1 = column 0 + 1)
    # Each mean is an average of 6 of the values 0, 2, ..., 10: a multiple of 2/6.
    np.testing.assert_allclose(np.round(means[:, 0] * 3) / 3, means[:, 0], atol=1e-12)


def test_resampling_in_chunks_gives_the_same_replicates(monkeypatch: pytest.MonkeyPatch) -> None:
    columns = np.random.default_rng(1).normal(size=(40, 3))
    whole = resample_means(columns, 30, np.random.default_rng(5))
    monkeypatch.setattr(ope_bootstrap, "CHUNK_ELEMENTS", 40 * 7)  # blocks of 7 resamples
    # The same count vectors (integers, exact), but the [chunk, n] @ [n, m] products go through BLAS with another
    # block shape, whose kernels may sum in another order on another CPU (5.5e-17 apart seen on an AMD EPYC): equal
    # to float64 rounding of a 40-term sum of N(0, 1) values, not bit for bit.
    np.testing.assert_allclose(resample_means(columns, 30, np.random.default_rng(5)), whole, rtol=0, atol=1e-13)


def test_jackknife_means_leave_one_row_out() -> None:
    columns = np.array([[1.0, 10.0], [2.0, 20.0], [6.0, 60.0]])
    np.testing.assert_allclose(jackknife_means(columns), [[4.0, 40.0], [3.5, 35.0], [1.5, 15.0]])


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_intervals_match_scipy_for_a_mean_and_a_ratio(method: str) -> None:
    # A skewed sample (BCa and percentile differ visibly on it) and a ratio of means (SNIPS' form). With many
    # resamples, both implementations' endpoints converge to the same bootstrap distribution's quantiles.
    rng = np.random.default_rng(0)
    x = rng.lognormal(0.0, 1.0, size=60)
    y = rng.uniform(0.5, 1.5, size=60)
    ours = bootstrap_intervals(
        np.c_[x, y],
        {"mean": lambda m: m[..., 0], "ratio": lambda m: m[..., 0] / m[..., 1]},
        n_resamples=40_000,
        confidence=0.9,
        method=method,
        seed=1,
    )
    scipy_method = "BCa" if method == "bca" else "percentile"
    ref_mean = stats.bootstrap(
        (x,), np.mean, confidence_level=0.9, n_resamples=40_000, method=scipy_method, rng=np.random.default_rng(2)
    ).confidence_interval
    ref_ratio = stats.bootstrap(
        (x, y),
        lambda a, b, axis=-1: np.mean(a, axis=axis) / np.mean(b, axis=axis),
        paired=True,
        confidence_level=0.9,
        n_resamples=40_000,
        method=scipy_method,
        rng=np.random.default_rng(3),
    ).confidence_interval
    for name, ref in (("mean", ref_mean), ("ratio", ref_ratio)):
        width = ref.high - ref.low
        assert ours[name].low == pytest.approx(ref.low, abs=0.02 * width), name
        assert ours[name].high == pytest.approx(ref.high, abs=0.02 * width), name
    if method == "bca":  # the skew really moves BCa away from the percentile interval
        pct = percentile_interval(resample_means(x[:, None], 40_000, np.random.default_rng(1))[:, 0], 0.9)
        assert ours["mean"].high - pct[1] > 0.05 * (pct[1] - pct[0])


def test_degenerate_statistics_give_point_intervals() -> None:
    columns = np.ones((10, 1))
    for method in ("percentile", "bca"):
        out = bootstrap_intervals(columns, {"c": lambda m: m[..., 0]}, n_resamples=100, confidence=0.9,
                                  method=method, seed=0)  # fmt: skip
        assert (out["c"].low, out["c"].high) == (1.0, 1.0)


def test_bca_with_every_replicate_on_one_side_stays_finite() -> None:
    low, high = bca_interval(0.0, np.linspace(1, 2, 101), np.linspace(-1, 1, 20), 0.9)
    assert 1.0 <= low <= high <= 2.0


def test_non_finite_replicates_are_counted_not_hidden() -> None:
    # A ratio whose denominator is 0 in some resamples (only row 0 has a non-zero denominator).
    columns = np.array([[1.0, 1.0]] + [[0.0, 0.0]] * 3)
    out = bootstrap_intervals(columns, {"r": lambda m: m[..., 0] / m[..., 1]}, n_resamples=400, confidence=0.9,
                              method="percentile", seed=0)  # fmt: skip
    expected_missing = 400 * (3 / 4) ** 4  # P(row 0 never drawn in 4 draws)
    assert abs(out["r"].non_finite - expected_missing) < 4 * np.sqrt(expected_missing)
    assert (out["r"].low, out["r"].high) == (1.0, 1.0)


def test_same_seed_same_interval_and_bad_arguments() -> None:
    columns = np.random.default_rng(0).normal(size=(30, 1))
    g = {"m": lambda m: m[..., 0]}
    first = bootstrap_intervals(columns, g, n_resamples=200, confidence=0.9, method="bca", seed=4)
    assert first == bootstrap_intervals(columns, g, n_resamples=200, confidence=0.9, method="bca", seed=4)
    with pytest.raises(ValueError, match="confidence must be in"):
        bootstrap_intervals(columns, g, n_resamples=200, confidence=1.0, method="bca", seed=4)
    with pytest.raises(ValueError, match="at least 2|n >= 2"):
        bootstrap_intervals(columns[:1], g, n_resamples=200, confidence=0.9, method="bca", seed=4)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_interval_coverage_is_near_nominal(method: str) -> None:
    # 200 independent logs of the known-truth world; each 90 % interval should cover the exact value about 90 %
    # of the time (binomial s.d. 2.1 %; the bound 85-95 % is ±2.4 s.d.).
    bandit = syn.make_slate_bandit(seed=21, slot_count_probs=np.array([0.2, 0.3, 0.5]))
    rng = np.random.default_rng(8)
    pi0 = syn.softmax_policy(rng.normal(size=bandit.shape), 1.0)
    pie = syn.softmax_policy(bandit.attractiveness, 0.2)
    truth = syn.true_value(bandit, pie)
    truth_lift = truth - syn.true_value(bandit, pi0)
    model_error = rng.normal(0.0, 0.05, size=bandit.shape)
    config = dataclasses.replace(OPEConfig(), confidence=0.9, n_bootstrap=400, ci_method=method)
    covered = {"ips": 0, "snips": 0, "dr": 0, "lift:dr": 0}
    for rep in range(200):
        draw = syn.draw_log(bandit, pi0, 400, rng)
        log = syn.impression_log(draw, pi0)
        report = evaluate(log, syn.candidate(bandit, draw, log, pie, error=model_error), config, seed=rep)
        for name in covered:
            res = report.result(name)
            target = truth_lift if name.startswith("lift") else truth
            covered[name] += res.ci_low <= target <= res.ci_high
    for name, hits in covered.items():
        assert 170 <= hits <= 190, (name, hits)
