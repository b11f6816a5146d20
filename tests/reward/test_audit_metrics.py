"""Audit metrics by hand and against brute force: Harrell's C, D-calibration, dwell CDFs, slice tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from reward.audit_metrics import concordance_index, d_calibration, dwell_cdf, has_spread, slice_table, spearman


def brute_force_c(predicted, time, censored) -> tuple[float, int]:
    concordant, comparable = 0.0, 0
    for i in range(len(time)):
        for j in range(len(time)):
            if not censored[i] and time[i] < time[j]:
                comparable += 1
                if predicted[i] < predicted[j]:
                    concordant += 1
                elif predicted[i] == predicted[j]:
                    concordant += 0.5
    return concordant / comparable, comparable


def test_concordance_by_hand() -> None:
    # times 1 < 2 < 3, the row with t = 2 censored. Comparable: (0,1), (0,2) [row 0 observed]; row 1 is censored so
    # (1,2) is not comparable. Predictions order (0,1) right and (0,2) wrong -> C = 1/2.
    c, pairs = concordance_index(np.array([0.5, 0.9, 0.1]), np.array([1.0, 2.0, 3.0]), np.array([False, True, False]))
    assert pairs == 2
    assert c == 0.5
    perfect, _ = concordance_index(np.arange(5.0), np.arange(5.0) + 1, np.zeros(5, bool))
    reversed_, _ = concordance_index(-np.arange(5.0), np.arange(5.0) + 1, np.zeros(5, bool))
    tied, _ = concordance_index(np.zeros(5), np.arange(5.0) + 1, np.zeros(5, bool))
    assert (perfect, reversed_, tied) == (1.0, 0.0, 0.5)


def test_concordance_matches_brute_force_with_censoring_and_ties() -> None:
    rng = np.random.default_rng(3)
    n = 700  # more than one 512-row chunk of observed exits
    predicted = np.round(rng.normal(size=n), 1)  # ties in the predictions
    time = np.round(rng.exponential(size=n), 2)  # and in the times
    censored = rng.uniform(size=n) < 0.3
    c, pairs = concordance_index(predicted, time, censored)
    expected, expected_pairs = brute_force_c(predicted, time, censored)
    assert pairs == expected_pairs
    assert c == pytest.approx(expected, abs=1e-12)
    assert 0.4 < c < 0.6  # predictions unrelated to time


def test_concordance_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        concordance_index(np.zeros(3), np.zeros(4), np.zeros(3, bool))


def test_d_calibration_by_hand() -> None:
    # Four observed exits at the bin centres of 4 bins: exactly uniform.
    uniform = d_calibration(np.array([0.125, 0.375, 0.625, 0.875]), np.zeros(4, bool), bins=4)
    assert uniform["tv"] == 0.0 and uniform["histogram"] == [0.25] * 4
    # One censored row at F(c) = 0.5 spreads its unit over the upper half: 0.5 to each of bins 3 and 4.
    one = d_calibration(np.array([0.5]), np.array([True]), bins=4)
    assert one["histogram"] == [0.0, 0.0, 0.5, 0.5]
    # Censored at F(c) = 0.6 with 4 bins: bin 3 [0.5, 0.75) gets (0.75 - 0.6) / 0.4, bin 4 gets 0.25 / 0.4.
    partial = d_calibration(np.array([0.6]), np.array([True]), bins=4)
    assert partial["histogram"] == pytest.approx([0.0, 0.0, 0.375, 0.625])
    assert partial["tv"] == pytest.approx(0.5 * (0.25 + 0.25 + 0.125 + 0.375))


def test_d_calibration_separates_a_calibrated_from_a_miscalibrated_dwell_model() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    mu, sigma = rng.normal(9.6, 0.3, n), 0.6
    dwell = np.exp(mu + sigma * rng.normal(size=n))
    session = rng.exponential(60000.0, n)
    censored = session < dwell
    observed = np.minimum(dwell, session)
    good = d_calibration(dwell_cdf("lognormal", mu, math.log(sigma), observed), censored, bins=10)
    bad = d_calibration(dwell_cdf("lognormal", mu, math.log(sigma / 2), observed), censored, bins=10)
    assert censored.mean() > 0.1
    assert good["tv"] < 0.015 and good["p_value"] > 1e-3
    assert bad["tv"] > 0.1 and bad["p_value"] < 1e-6


def test_dwell_cdfs_match_scipy() -> None:
    t = np.array([500.0, 5000.0, 20000.0, 80000.0])
    location, log_spread = 9.2, math.log(0.7)
    assert dwell_cdf("lognormal", location, log_spread, t) == pytest.approx(
        stats.lognorm(s=0.7, scale=math.exp(location)).cdf(t)
    )
    assert dwell_cdf("weibull", location, math.log(1.5), t) == pytest.approx(
        stats.weibull_min(c=1.5, scale=math.exp(location)).cdf(t)
    )
    with pytest.raises(ValueError, match="unknown dwell distribution"):
        dwell_cdf("gamma", location, log_spread, t)


def test_slice_table_counts_and_failed_metrics() -> None:
    labels = np.array(["b", "a", "b", "c", "b"], dtype=object)
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])

    def mean_unless_single(rows: np.ndarray) -> float:
        if rows.sum() < 2:
            raise ValueError("needs two rows")
        return float(values[rows].mean())

    table = slice_table(labels, mean_unless_single)
    assert table["b"] == {"value": 3.0, "rows": 3}
    assert math.isnan(table["a"]["value"]) and table["a"]["rows"] == 1
    assert list(table) == ["b", "a", "c"]  # worst first; slices without a value last, by label
    assert math.isnan(slice_table(labels, mean_unless_single, min_rows=4)["b"]["value"])


def test_spearman_edge_cases() -> None:
    assert spearman(np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)))
    assert math.isnan(spearman(np.arange(2.0), np.arange(2.0)))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([1.0, 2.0, 3.0]), True),
        (np.full(5, 3.0), False),
        (np.array([1e6, 1e6 + 1e-3, 1e6]), False),  # float32-sized round-off of a large constant
        (np.array([0.0, 1e-3, 0.0]), True),
        (np.array([1.0, np.nan, 2.0]), False),
        (np.array([1.0]), False),
    ],
)
def test_has_spread(values: np.ndarray, expected: bool) -> None:
    assert has_spread(values) is expected


def test_slice_table_puts_the_worst_slice_first() -> None:
    labels = np.array(["a", "b", "c", "d", "d"], dtype=object)
    values = np.array([0.9, 0.3, 0.6, 0.1, 0.1])

    def mean_unless_single(rows: np.ndarray) -> float:
        if rows.sum() < 1 or labels[rows][0] == "c":
            raise ValueError("no value")
        return float(values[rows].mean())

    assert list(slice_table(labels, mean_unless_single)) == ["d", "b", "a", "c"]


def test_concordance_matches_lifelines() -> None:
    """Harrell's C as lifelines computes it (``lifelines.utils.concordance_index``; higher score = longer time).

    lifelines is not a dependency: its only release here pins pandas < 3 while backdrop needs pandas >= 3.1, so
    it is the reference of this test where it is installed, not the implementation."""
    lifelines_utils = pytest.importorskip("lifelines.utils")
    rng = np.random.default_rng(3)
    time = rng.permutation(np.arange(1.0, 301.0)) * 37.5  # distinct times: both definitions agree on ties then
    predicted = np.round(np.log(time) + rng.normal(0, 0.8, time.size), 1)  # rounded: prediction ties count 1/2
    censored = rng.random(time.size) < 0.3
    ours, pairs = concordance_index(predicted, time, censored)
    reference = lifelines_utils.concordance_index(time, predicted, event_observed=~censored)
    assert ours == pytest.approx(reference, abs=1e-12) and pairs > 0
