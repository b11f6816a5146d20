"""The logging policy: hand-computed probabilities, distinct products, and propensities that match frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from offline_data.simulator.logging_policy import (
    logging_scores,
    place,
    sample_products,
    sample_variants,
    variant_probabilities,
)

SCORES = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])


def test_uniform_epsilon_greedy_and_softmax_by_hand() -> None:
    np.testing.assert_allclose(variant_probabilities(SCORES, "uniform"), np.full((2, 3), 1 / 3))
    greedy = variant_probabilities(SCORES, "epsilon_greedy", epsilon=0.3)
    np.testing.assert_allclose(greedy, [[0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])
    soft = variant_probabilities(SCORES, "softmax", temperature=2.0)
    expected = np.exp(SCORES / 2.0) / np.exp(SCORES / 2.0).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(soft, expected)
    with pytest.raises(ValueError, match="unknown variant policy 'greedy'"):
        variant_probabilities(SCORES, "greedy")


def test_softmax_is_stable_for_large_scores() -> None:
    probabilities = variant_probabilities(np.array([[1000.0, 999.0]]), "softmax")
    np.testing.assert_allclose(probabilities, [[1 / (1 + np.exp(-1)), 1 - 1 / (1 + np.exp(-1))]])


def test_sample_products_are_distinct_within_requests() -> None:
    products = sample_products(5000, 6, 4, np.random.default_rng(0))
    assert products.shape == (5000, 4)
    assert all(len(set(row)) == 4 for row in products)
    counts = np.bincount(products.ravel(), minlength=6) / products.size
    np.testing.assert_allclose(counts, 1 / 6, atol=0.01)
    with pytest.raises(ValueError, match="cannot show 4 distinct products from a catalogue of 3"):
        sample_products(1, 3, 4, np.random.default_rng(0))


def test_sampled_variants_follow_their_probabilities() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    products = np.zeros((40000, 1), dtype=np.int64)
    variants, p = sample_variants(probabilities, products, np.random.default_rng(1))
    frequency = np.bincount(variants.ravel(), minlength=3) / variants.size
    np.testing.assert_allclose(frequency, probabilities[0], atol=4 * np.sqrt(0.25 / variants.size))
    np.testing.assert_allclose(p.ravel(), probabilities[0][variants.ravel()])


def test_shuffle_placement_is_uniform() -> None:
    slot, p_slot = place(np.zeros((20000, 4)), "shuffle", np.random.default_rng(2))
    assert np.all(np.sort(slot, axis=1) == np.arange(4))
    assert np.all(p_slot == 0.25)
    frequency = np.mean(slot[:, 0][:, None] == np.arange(4), axis=0)
    np.testing.assert_allclose(frequency, 0.25, atol=4 * np.sqrt(0.1875 / 20000))


def test_ranked_placement_orders_by_score_and_records_its_propensity() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]])
    slot, p_slot = place(scores, "ranked", np.random.default_rng(0), epsilon=0.0)
    assert slot.tolist() == [[2, 0, 1], [0, 2, 1]]
    assert np.all(p_slot == 1.0)
    # With exploration, the empirical frequency of (image, slot) matches the recorded propensity.
    many = np.repeat(scores[:1], 30000, axis=0)
    slot, p_slot = place(many, "ranked", np.random.default_rng(3), epsilon=0.4)
    for image in range(3):
        for s in range(3):
            hit = slot[:, image] == s
            expected = 0.6 * (s == [2, 0, 1][image]) + 0.4 / 3
            assert abs(hit.mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / hit.size)
            if hit.any():
                assert np.allclose(p_slot[hit, image], expected)


def test_logging_score_mixes_gold_spurious_and_noise() -> None:
    rng = np.random.default_rng(0)
    gold, spurious = rng.standard_normal(5000), rng.standard_normal(5000) * 3 + 1
    scores = logging_scores(gold, spurious, np.random.default_rng(1), gold_weight=0.6, spurious_weight=0.5, noise=0.6)
    noise = np.random.default_rng(1).standard_normal(5000)
    standard = (spurious - spurious.mean()) / spurious.std()
    np.testing.assert_allclose(scores, 0.6 * gold + 0.5 * standard + 0.6 * noise)
