"""A small simulated world, validated and split by product, shared by the reward tests (~3 s once)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from offline_data.io import find_table
from offline_data.simulator import AnnotatorsConfig, LoggingConfig, SimulatorConfig, WorldConfig, simulate
from offline_data.splits import SplitConfig, split_logs
from offline_data.validation import validate_logs
from reward.config import RewardConfig


def small_world(seed: int = 5, **logging) -> SimulatorConfig:
    """40 products x 4 variants, 3,000 requests (12,000 impressions), 3,000 pairs."""
    return SimulatorConfig(
        seed=seed,
        world=WorldConfig(products=40, variants_per_product=4),
        logging=LoggingConfig(requests=3000, **logging),
        annotators=AnnotatorsConfig(pairs=3000, annotators=6),
    )


def build_splits(root: Path, config: SimulatorConfig) -> Path:
    """Simulate, validate and split ``config`` under ``root``; returns the splits folder."""
    world = root / "world"
    simulate(config, world, progress=False)
    sources = {t: find_table(world, t) for t in ("assets", "impressions", "dwell", "preferences")}
    validate_logs(sources, world / "validated")
    splits = root / "splits"
    split_logs(world / "validated", splits, SplitConfig(fractions=(0.6, 0.2, 0.2)))
    # split_logs drops the asset root; point the split assets tables at the world's files.
    from experiments.reward_fit import record_asset_root

    record_asset_root(world / "validated", splits)
    return splits


@pytest.fixture(scope="session")
def small_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_splits(tmp_path_factory.mktemp("reward_world"), small_world())


def fast_config(**sections: dict) -> RewardConfig:
    """A reward config that trains in seconds; ``sections`` override fields per section."""
    base = RewardConfig()
    base = dataclasses.replace(
        base,
        train=dataclasses.replace(base.train, epochs=4, patience=0, batch_impressions=1024, batch_pairs=256),
        ensemble=dataclasses.replace(base.ensemble, members=2),
    )
    replaced = {name: dataclasses.replace(getattr(base, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(base, **replaced)
