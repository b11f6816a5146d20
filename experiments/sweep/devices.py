"""Which GPU and how many threads each ``backdrop sweep`` worker process gets (experiments/sweep/study.py spawns them).

On a GPU node, worker i is spawned with ``CUDA_VISIBLE_DEVICES`` set to the i-th device of the pool (round-robin;
the pool is the parent's own ``CUDA_VISIBLE_DEVICES`` list, else 0..n-1), so a trial's run.device "auto"/"cuda"
resolves to its own GPU as cuda:0; "cuda:N" pins every worker to N and "cpu" uses none. The thread-pool variables
are set for every worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from offline_data.errors import BackdropError

logger = logging.getLogger(__name__)


class DevicePoolError(BackdropError):
    """``CUDA_VISIBLE_DEVICES`` cannot be split among the workers (it lists fewer devices than CUDA reports)."""

    exit_code = 2


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Thread-pool variables a spawned worker reads when it first imports numpy (via optuna, before any trial) and
torch (whose intra-op default follows OMP_NUM_THREADS); the trial config's run.threads repeats it for
setup_runtime."""


def worker_environment(threads: int, device: str | None) -> dict[str, str]:
    """The variables a worker process is spawned with: its thread pools and, on a GPU node, its one GPU.

    Args:
        threads: torch/BLAS threads of the worker.
        device: the worker's ``CUDA_VISIBLE_DEVICES`` entry (an index, ``GPU-<uuid>`` or ``MIG-<uuid>``), or None
            to leave the variable as this process has it (no GPU, or run.device pins a device).
    """
    variables = {name: str(threads) for name in THREAD_VARIABLES}
    if device is not None:
        variables["CUDA_VISIBLE_DEVICES"] = device
    return variables


@contextlib.contextmanager
def spawn_environment(variables: dict[str, str]) -> Iterator[None]:
    """Set ``variables`` in os.environ while a worker is spawned (it inherits the environment), then restore."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def parse_device_pool(visible: str | None, count: int) -> list[str]:
    """The GPUs this process may hand to workers, as ``CUDA_VISIBLE_DEVICES`` entries.

    Args:
        visible: this process's ``CUDA_VISIBLE_DEVICES`` (None: unset).
        count: ``torch.cuda.device_count()`` in this process.

    Returns:
        ``[]`` without devices; the first ``count`` entries of ``visible`` when it is set (CUDA ignores the entries
        after the first invalid one, and ``count`` already reflects that); else ``["0", ..., str(count - 1)]``.
    """
    if count <= 0:
        return []
    if visible is None:
        return [str(index) for index in range(count)]
    entries = [entry.strip() for entry in visible.split(",")]
    if len(entries) < count or any(not entry for entry in entries[:count]):
        raise DevicePoolError(
            f"CUDA_VISIBLE_DEVICES={visible!r} lists fewer devices than the {count} CUDA reports; "
            "set it to a comma-separated list of device indices or UUIDs"
        )
    return entries[:count]


def sweep_gpu_pool(device: str) -> list[str]:
    """The GPUs to spread workers over for a base config with run.device = ``device``.

    Only "auto" and "cuda" are spread: "cpu" uses no GPU, and "cuda:N" pins every trial to device N (which a
    worker seeing one GPU would not have), so both keep the parent's environment.
    """
    spec = device.strip().lower()
    if spec.startswith("cuda:") and len(spec) > len("cuda:"):
        logger.info(
            "run.device = %r: every worker trains on that device (set 'auto' or 'cuda' to give each its own)", device
        )
    if spec not in ("auto", "cuda"):
        return []
    import torch  # heavy: only a sweep that spreads workers over GPUs asks torch how many there are

    return parse_device_pool(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())


def worker_devices(workers: int, pool: list[str]) -> list[str | None]:
    """Round-robin: worker i gets ``pool[i % len(pool)]``; all None when the pool is empty (no GPU).

    >>> worker_devices(3, ["4", "6"])
    ['4', '6', '4']
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not pool:
        return [None] * workers
    return [pool[index % len(pool)] for index in range(workers)]


def describe_devices(devices: list[str | None]) -> str:
    """The log line's device part: ``", worker GPUs (CUDA_VISIBLE_DEVICES): 0, 1"``, or "" when none is assigned."""
    if all(device is None for device in devices):
        return ""
    return ", worker GPUs (CUDA_VISIBLE_DEVICES): " + ", ".join(str(device) for device in devices)


def shared_devices(devices: list[str | None]) -> dict[str, list[int]]:
    """The GPUs given to more than one worker, with the indices of those workers."""
    holders: dict[str, list[int]] = {}
    for index, device in enumerate(devices):
        if device is not None:
            holders.setdefault(device, []).append(index)
    return {device: indices for device, indices in holders.items() if len(indices) > 1}


def warn_shared_devices(devices: list[str | None]) -> None:
    shared = shared_devices(devices)
    if shared:
        gpus = len({device for device in devices if device is not None})
        pairs = "; ".join(f"GPU {device}: workers {indices}" for device, indices in shared.items())
        logger.warning(
            "%d worker(s) on %d GPU(s): workers share GPUs (memory and compute) round-robin (%s)",
            len(devices), gpus, pairs,
        )  # fmt: skip
