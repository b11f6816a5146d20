"""Small simulator worlds shared by the simulator tests (a dozen products, a few thousand impressions)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from offline_data.simulator import AnnotatorsConfig, LoggingConfig, SimulatorConfig, WorldConfig, simulate


def small_config(seed: int = 3, **sections: dict) -> SimulatorConfig:
    """A dozen products x 4 variants, 1,500 requests in 3 chunks, 2,000 pairs; ``sections`` override fields."""
    base = SimulatorConfig(
        seed=seed,
        world=WorldConfig(products=12, variants_per_product=4),
        logging=LoggingConfig(requests=1500, chunk_requests=700),
        annotators=AnnotatorsConfig(pairs=2000, annotators=6),
    )
    replaced = {name: dataclasses.replace(getattr(base, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(base, **replaced)


@pytest.fixture(scope="session")
def small_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small_sim")
    simulate(small_config(), out, progress=False)
    return out
