"""GPU assignment of sweep workers (experiments/sweep/devices.py): device pool, round-robin, spawn environment."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from experiments.sweep.devices import (
    DevicePoolError,
    describe_devices,
    parse_device_pool,
    shared_devices,
    spawn_environment,
    sweep_gpu_pool,
    worker_devices,
    worker_environment,
)


@pytest.mark.parametrize(
    ("visible", "count", "pool"),
    [
        (None, 0, []),  # no GPU
        ("", 0, []),  # CUDA_VISIBLE_DEVICES="" hides every GPU
        ("-1", 0, []),
        (None, 3, ["0", "1", "2"]),
        ("5,7", 2, ["5", "7"]),
        (" 5 , 7 ", 2, ["5", "7"]),
        ("2,1,bogus,3", 2, ["2", "1"]),  # CUDA stops at the first invalid entry; device_count says 2
        ("GPU-8f2a,MIG-1c3d", 2, ["GPU-8f2a", "MIG-1c3d"]),
    ],
)
def test_device_pool_follows_cuda_visible_devices(visible: str | None, count: int, pool: list[str]) -> None:
    assert parse_device_pool(visible, count) == pool


@pytest.mark.parametrize("visible", ["0", "0,,1"])
def test_device_pool_refuses_a_list_shorter_than_the_device_count(visible: str) -> None:
    with pytest.raises(DevicePoolError, match=f"CUDA_VISIBLE_DEVICES={visible!r} lists fewer devices than the 2 CUDA"):
        parse_device_pool(visible, 2)


@pytest.mark.parametrize(
    ("workers", "pool", "devices"),
    [
        (3, [], [None, None, None]),
        (1, ["4", "6"], ["4"]),
        (2, ["0", "1", "2", "3"], ["0", "1"]),
        (4, ["0", "1", "2", "3"], ["0", "1", "2", "3"]),
        (5, ["0", "1"], ["0", "1", "0", "1", "0"]),
    ],
)
def test_worker_devices_round_robin(workers: int, pool: list[str], devices: list[str | None]) -> None:
    assert worker_devices(workers, pool) == devices


def test_worker_devices_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1, got 0"):
        worker_devices(0, ["0"])


def test_shared_devices_and_the_log_text() -> None:
    assert shared_devices(["0", "1", "0", "1", "0"]) == {"0": [0, 2, 4], "1": [1, 3]}
    assert shared_devices(["0", "1"]) == {}
    assert shared_devices([None, None]) == {}
    assert describe_devices([None, None]) == ""
    assert describe_devices(["6", "3", "6"]) == ", worker GPUs (CUDA_VISIBLE_DEVICES): 6, 3, 6"


def test_worker_environment_sets_threads_and_the_gpu_only_when_given() -> None:
    threads = {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4"}
    assert worker_environment(4, None) == threads
    assert worker_environment(4, "GPU-8f2a") == {**threads, "CUDA_VISIBLE_DEVICES": "GPU-8f2a"}


def test_spawn_environment_restores_set_and_unset_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with spawn_environment({"CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "3"}):
        assert (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["OMP_NUM_THREADS"]) == ("1", "3")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1" and "OMP_NUM_THREADS" not in os.environ
    with pytest.raises(RuntimeError), spawn_environment({"CUDA_VISIBLE_DEVICES": "1"}):
        raise RuntimeError
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


@pytest.mark.parametrize(
    ("device", "pool"),
    [("auto", ["6", "3"]), ("cuda", ["6", "3"]), (" CUDA ", ["6", "3"]), ("cpu", []), ("cuda:1", [])],
)
def test_only_auto_and_cuda_are_spread(monkeypatch: pytest.MonkeyPatch, device: str, pool: list[str]) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6,3")
    assert sweep_gpu_pool(device) == pool


def test_no_gpu_means_no_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert worker_devices(2, sweep_gpu_pool("auto")) == [None, None]


def test_a_pinned_device_is_said_in_the_log(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with caplog.at_level(logging.INFO, logger="experiments.sweep.devices"):
        assert sweep_gpu_pool("cuda:1") == []
    assert "run.device = 'cuda:1': every worker trains on that device" in caplog.text
