"""On position-biased logs (ranked placement) the corrected click model recovers examination and
attractiveness; the uncorrected one is measurably worse (the correction matters)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from offline_data.simulator.truth import read_truth_table
from reward.data import load_reward_data
from reward.embeddings import write_embeddings
from reward.ensemble import score_rows
from reward.pipeline import fit_reward_model
from reward.train import index_data
from tests.reward.conftest import build_splits, fast_config, small_world

TRUE_EXAMINATION = (1.0, 0.72, 0.52, 0.38)
SEGMENTS = ("warm", "cool", "minimal")


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A world whose logging policy mostly ranks by its score (position correlates with quality), and the
    images' true gold per shopper segment as precomputed embeddings (the feature is right, so any error in
    attractiveness comes from how clicks are modelled)."""
    root = tmp_path_factory.mktemp("ranked")
    config = small_world(seed=11, placement="ranked", placement_epsilon=0.2)
    config = dataclasses.replace(config, logging=dataclasses.replace(config.logging, requests=12000))
    splits = build_splits(root, config)
    images = read_truth_table(root / "world", "images")
    gold = np.stack([images[f"gold_{s}"] for s in SEGMENTS], axis=1)
    embeddings = write_embeddings(root / "gold.parquet", list(images["image_id"]), gold)
    return splits, root / "world", embeddings


def _train(splits: Path, embeddings: Path, mode: str):
    config = fast_config(
        encoder={"kind": "precomputed", "embeddings": str(embeddings)},
        context={"prompt_dim": 0, "kind_dim": 0},
        model={"hidden": (32,), "dropout": 0.0},
        click={"mode": mode},
        train={
            "epochs": 8,
            "steps_per_epoch": 40,
            "patience": 0,
            "learning_rate": 1e-2,
            "loss_weights": {"click": 1.0},
            "batch_impressions": 2048,
        },
        ensemble={"members": 1},
    )
    scorer, _ = fit_reward_model(config, splits / "train", splits / "validation", seed=0,
                                 device=torch.device("cpu"), progress=False)  # fmt: skip
    return scorer


def _attractiveness_error(scorer, splits: Path, world: Path) -> float:
    """Mean absolute error of σ(f) against the true attractiveness, over test images x shopper segments."""
    data = load_reward_data(splits / "test", load_masks=False)
    ensemble = scorer.ensemble
    first = ensemble.members[0]
    features = ensemble.shared_encoder.encode(data.images.pixels, None, data.images.image_ids)
    indexed = index_data(data, ensemble.vocabulary, first.preference.annotators, features)
    truth = read_truth_table(world, "images")
    rows = np.array([list(truth["image_id"]).index(i) for i in data.images.image_ids])
    errors = []
    for segment in SEGMENTS:
        index = ensemble.vocabulary.segments.index([segment])[0]
        images = torch.arange(len(data.images))
        logits = score_rows(ensemble, indexed, images, index.repeat(len(images)))["click"].mean(dim=0).numpy()
        errors.append(np.abs(1 / (1 + np.exp(-logits)) - truth[f"attractiveness_{segment}"][rows]))
    return float(np.mean(errors))


def test_position_bias_correction_matters(ranked):
    splits, world, embeddings = ranked
    corrected = _train(splits, embeddings, "pbm")
    naive = _train(splits, embeddings, "none")
    theta = corrected.ensemble.examination().numpy()
    assert np.max(np.abs(theta - TRUE_EXAMINATION) / TRUE_EXAMINATION) < 0.1
    assert naive.ensemble.examination().tolist() == [1.0] * 4
    corrected_error = _attractiveness_error(corrected, splits, world)
    naive_error = _attractiveness_error(naive, splits, world)
    # Measured with seed 11: corrected 0.019, uncorrected 0.108 (it reads the top slots' examination as
    # attractiveness); examination within 7 % of the truth.
    assert corrected_error < 0.04
    assert naive_error > 3 * corrected_error
