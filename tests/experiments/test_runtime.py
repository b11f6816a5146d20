"""Device / dtype resolution, seeding and run directories."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.config import ConfigError, RunConfig, load_config
from experiments.runtime import make_generator, resolve_device, resolve_dtype, seed_everything
from experiments.tracking import new_run_dir, read_metrics, start_run


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ConfigError, match="expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available here"):
            resolve_device("cuda:0")


def test_resolve_dtype_refuses_unsupported() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) is torch.float32
    with pytest.raises(ConfigError, match="'float16' is only supported on CUDA"):
        resolve_dtype("float16", cpu)


def test_seed_everything_is_reproducible() -> None:
    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b
    g1, g2 = make_generator(5), make_generator(5)
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))


def test_run_dirs_are_never_overwritten(tmp_path: Path) -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    first = new_run_dir(tmp_path, "exp", now)
    second = new_run_dir(tmp_path, "exp", now)
    assert first.name == "20260102-030405"
    assert second.name == "20260102-030405-1"


def test_start_run_writes_config_environment_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under `accelerate launch --num_processes 2`
    run_cfg = RunConfig(name="exp", output_dir=str(tmp_path), tensorboard=False)
    with start_run(run_cfg, run_cfg, command="test") as run:
        run.log_metrics({"policy/kl": 0.5, "reward/mean": torch.tensor(2.0)}, step=1)
        run.log_metrics({"policy/kl": 0.25}, step=2)
    assert (run.dir / "log.txt").exists()
    env = json.loads((run.dir / "environment.json").read_text())
    assert env["command"] == "test" and env["packages"]["torch"].startswith("2.13")
    assert env["processes"] == 2
    assert load_config(RunConfig, run.dir / "config.toml") == run_cfg
    records = read_metrics(run.dir)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["reward/mean"] == 2.0
