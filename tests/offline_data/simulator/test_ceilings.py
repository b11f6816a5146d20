"""Bayes ceilings: AUC parity with scikit-learn, pairwise accuracy by hand, subsets of a simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from offline_data.simulator import bayes_ceilings, click_auc, pairwise_bayes_accuracy, read_truth_table


def test_click_auc_matches_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.uniform(size=2000), 1)  # many ties
    clicked = rng.uniform(size=2000) < scores
    assert click_auc(scores, clicked) == pytest.approx(roc_auc_score(clicked, scores), abs=1e-12)
    assert click_auc(np.array([0.1, 0.2, 0.3]), np.array([False, False, True])) == 1.0
    assert click_auc(np.array([0.5, 0.5]), np.array([False, True])) == 0.5
    with pytest.raises(ValueError, match="both clicked and unclicked"):
        click_auc(np.array([0.1, 0.2]), np.array([True, True]))


def test_pairwise_bayes_accuracy_by_hand() -> None:
    # max / (p_a + p_b): 0.6 / 0.8 = 0.75 and 0.45 / 0.9 = 0.5 -> mean 0.625
    assert pairwise_bayes_accuracy(np.array([0.6, 0.45]), np.array([0.2, 0.45])) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="non-empty"):
        pairwise_bayes_accuracy(np.array([]), np.array([]))


def test_ceilings_of_a_simulation_and_its_subsets(small_sim: Path) -> None:
    full = bayes_ceilings(small_sim)
    pairs = read_truth_table(small_sim, "preferences")
    non_tie = pairs["choice"] != "tie"
    expected = np.mean(np.maximum(pairs["p_a"], pairs["p_b"])[non_tie] / (pairs["p_a"] + pairs["p_b"])[non_tie])
    assert full.pairwise_accuracy == pytest.approx(expected)
    assert full.pairs == int(non_tie.sum())
    # The Bayes predictor knows the side bias; the gold oracle does not, so it can only be worse or equal.
    assert 0.5 < full.pairwise_gold_oracle <= full.pairwise_accuracy < 1.0
    impressions = pq.read_table(small_sim / "impressions.parquet").to_pandas()
    truth = read_truth_table(small_sim, "impressions")
    assert np.array_equal(truth["event_id"], impressions["event_id"].to_numpy())
    assert full.click_auc == pytest.approx(roc_auc_score(impressions["clicked"], truth["click_probability"]))

    subset_pairs = list(pairs["pair_id"][:500])
    subset_events = list(truth["event_id"][::3])
    part = bayes_ceilings(small_sim, pair_ids=subset_pairs, event_ids=subset_events)
    assert part.pairs == int(non_tie[:500].sum()) and part.impressions == len(subset_events)
    with pytest.raises(ValueError, match="1 of the 2 requested pair_ids are not in the simulation"):
        bayes_ceilings(small_sim, pair_ids=[subset_pairs[0], "nope"])
