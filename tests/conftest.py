"""Test-wide settings: offline, headless, one torch thread per worker, seeded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

# Two xdist workers share two cores; one thread each is fastest and makes results independent of the
# worker count (thread count changes float reductions by ~1e-6).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Commands under test set torch's thread count from their [run] config; the next test gets one thread back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
