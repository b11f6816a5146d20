"""Device, dtype, seeding and threads, resolved once per run and passed down explicitly.

Nothing else in backdrop calls ``.cuda()`` or picks a device: components receive a ``torch.device`` and a
``torch.dtype`` from :func:`setup_runtime`.
"""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import torch

from experiments.config import ConfigError, RunConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Runtime:
    """The resolved hardware and seed of a run."""

    device: torch.device
    dtype: torch.dtype
    """Dtype for frozen weights; trainable parameters stay float32."""
    seed: int
    threads: int
    """torch intra-op threads in effect."""

    def generator(self, offset: int = 0, device: torch.device | None = None) -> torch.Generator:
        """A fresh explicit generator seeded with ``seed + offset`` (one per consumer keeps streams apart)."""
        return make_generator(self.seed + offset, device or torch.device("cpu"))


def resolve_device(spec: str) -> torch.device:
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a device, refusing what this machine cannot do."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device = {spec!r}, but CUDA is not available here; use 'cpu' or 'auto'")
        index = 0
        if ":" in spec:
            tail = spec.split(":", 1)[1]
            if not tail.isdigit():
                raise ConfigError(f"run.device = {spec!r}: expected 'cuda:N' with an integer N")
            index = int(tail)
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"run.device = {spec!r}, but only {count} CUDA device(s) are visible (0..{count - 1})")
        return torch.device(f"cuda:{index}")
    raise ConfigError(f"run.device = {spec!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """Map a dtype name to ``torch.dtype``, refusing half precision where the device does not support it."""
    if spec == "float32":
        return torch.float32
    if spec == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(device)
            raise ConfigError(f"run.dtype = 'bfloat16', but {name} does not support bf16; use 'float16' or 'float32'")
        if device.type == "cpu" and not torch.backends.mkldnn.is_available():
            raise ConfigError(
                "run.dtype = 'bfloat16' needs oneDNN on CPU, which this torch build lacks; use 'float32'"
            )
        return torch.bfloat16
    if spec == "float16":
        if device.type != "cuda":
            raise ConfigError(f"run.dtype = 'float16' is only supported on CUDA, not {device.type}; use 'float32'")
        return torch.float16
    raise ConfigError(f"run.dtype = {spec!r}: expected 'float32', 'bfloat16' or 'float16'")


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """An explicit torch generator on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count (0 keeps the default) and return the count in effect."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def setup_runtime(run: RunConfig) -> Runtime:
    """Resolve device and dtype, seed every generator and set threads for one run."""
    device = resolve_device(run.device)
    dtype = resolve_dtype(run.dtype, device)
    seed_everything(run.seed)
    threads = set_threads(run.threads)
    return Runtime(device=device, dtype=dtype, seed=run.seed, threads=threads)
