"""Advantages: rewards normalised per request with a persistent stat tracker (or each request's best-of-n),
clipped, optionally weighted.

The baseline belongs to the learning algorithm (docs/architecture.md, "The pipeline"): rollout returns raw rewards.
DDPO normalises rewards per prompt string with a buffer of recent rewards of that prompt; backdrop keys the buffer
by request (one product, prompt and segment), because what a background is worth depends mostly on the product it
sits behind.

Adapted from kvablack/ddpo-pytorch, ``ddpo_pytorch/stat_tracking.py`` (``PerPromptStatTracker``, commit 1958463);
our rewrite. Modifications: keyed by any string (the request id); torch tensors in and out; the buffer and
its settings round-trip through JSON (``state_dict`` / ``load_state_dict``) for exact resume; the fallback to
batch statistics is recorded per call (``fallback_keys``); ``std`` has a floor instead of DDPO's +1e-6 alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

STATE_FORMAT = "backdrop.request_stat_tracker"


@dataclass(frozen=True, kw_only=True)
class Normalisation:
    """Advantages of one batch and how they were normalised."""

    advantages: torch.Tensor
    """``[B]`` float32: (r - mean_key) / (std_key + eps), before clipping."""
    means: torch.Tensor
    """``[B]`` float32: the baseline each sample was compared with."""
    stds: torch.Tensor
    """``[B]`` float32: the scale each sample was divided by (including the floor)."""
    fallback_keys: tuple[str, ...]
    """Keys whose buffer held fewer than ``min_count`` rewards, normalised with the batch's statistics."""


class RequestStatTracker:
    """Per-key running statistics of rewards over the last ``buffer_size`` rewards of that key.

    For each key k in a batch, its rewards are appended to k's buffer; if the buffer then holds at least
    ``min_count`` rewards, the advantage is (r - mean(buffer_k)) / (std(buffer_k) + eps), otherwise the whole
    batch's mean and std are used (DDPO's rule). ``std`` is the population std (numpy's default, as in DDPO).

    Args:
        buffer_size: rewards kept per key (oldest dropped first).
        min_count: rewards a key needs before its own statistics are trusted.
        eps: floor added to the std, in reward units.
    """

    def __init__(self, *, buffer_size: int = 32, min_count: int = 4, eps: float = 1e-6) -> None:
        if buffer_size < 1 or min_count < 1 or min_count > buffer_size:
            raise ValueError(
                f"need 1 <= min_count <= buffer_size, got min_count={min_count}, buffer_size={buffer_size}"
            )
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.eps = eps
        self._buffers: dict[str, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._buffers)

    def update(self, keys: Sequence[str], rewards: torch.Tensor) -> Normalisation:
        """Add a batch's rewards to the buffers and return its normalised advantages.

        Args:
            keys: B keys (request ids), aligned with ``rewards``.
            rewards: ``[B]`` float rewards.

        Raises:
            ValueError: misaligned inputs or non-finite rewards.
        """
        if rewards.ndim != 1 or len(keys) != rewards.shape[0]:
            raise ValueError(
                f"got {len(keys)} keys for rewards of shape {list(rewards.shape)}; expected [B] and B keys"
            )
        values = rewards.detach().double().cpu()
        if not bool(torch.isfinite(values).all()):
            raise ValueError("rewards must be finite")
        batch_mean = float(values.mean())
        batch_std = float(values.std(unbiased=False)) if values.numel() > 1 else 0.0
        means = torch.empty_like(values)
        stds = torch.empty_like(values)
        fallback = []
        order: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            order.setdefault(str(key), []).append(i)
        for key, rows in order.items():
            buffer = self._buffers.setdefault(key, deque(maxlen=self.buffer_size))
            buffer.extend(float(values[i]) for i in rows)
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
                fallback.append(key)
            else:
                stats = torch.tensor(list(buffer), dtype=torch.float64)
                mean, std = float(stats.mean()), float(stats.std(unbiased=False))
            means[rows] = mean
            stds[rows] = std + self.eps
        return Normalisation(
            advantages=((values - means) / stds).float(),
            means=means.float(),
            stds=stds.float(),
            fallback_keys=tuple(fallback),
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (settings and every buffer, oldest reward first)."""
        return {
            "format": STATE_FORMAT,
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "eps": self.eps,
            "buffers": {key: list(buffer) for key, buffer in self._buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict` (settings must match this tracker's).

        Raises:
            ValueError: wrong format, different settings, or malformed buffers.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a stat tracker state (expected format {STATE_FORMAT!r})")
        saved = (state.get("buffer_size"), state.get("min_count"), state.get("eps"))
        if saved != (self.buffer_size, self.min_count, self.eps):
            raise ValueError(
                f"stat tracker settings differ: saved (buffer_size, min_count, eps) = {saved}, this tracker "
                f"{(self.buffer_size, self.min_count, self.eps)}"
            )
        buffers = state.get("buffers")
        if not isinstance(buffers, dict):
            raise ValueError("stat tracker state has no 'buffers' mapping")
        restored: dict[str, deque[float]] = {}
        for key, values in buffers.items():
            if not isinstance(values, list) or len(values) > self.buffer_size:
                raise ValueError(f"stat tracker buffer {key!r}: expected a list of at most {self.buffer_size} floats")
            restored[str(key)] = deque((float(v) for v in values), maxlen=self.buffer_size)
        self._buffers = restored


def best_of_n_advantages(keys: Sequence[str], rewards: torch.Tensor, top_k: int) -> torch.Tensor:
    """Best-of-n distillation on the policy's own samples: 1 for the ``top_k`` best samples of each key, else 0.

    With the policy-gradient loss ``-A log pi`` this is maximum likelihood of each request's best trajectories
    (RAFT, Dong et al. 2023, "RAFT: Reward rAnked FineTuning", run on-policy: every epoch distils the current
    policy's best-of-n), so the policy moves towards its own best-of-n distribution, whose KL to the policy is at
    most log n - (n - 1) / n per round. Samples with advantage 0 contribute nothing to the policy gradient, which
    is what lets the trainer skip their training rows. Ties are broken by position (the first sample wins).

    Args:
        keys: B group keys (request ids), aligned with ``rewards``; a key's samples are its group.
        rewards: ``[B]`` finite rewards.
        top_k: winners per group (a group with fewer samples than ``top_k + 1`` is refused: every sample
            would win and nothing would be learnt from the comparison).

    Returns:
        ``[B]`` float32 of 0 and 1.

    Raises:
        ValueError: misaligned inputs, non-finite rewards, ``top_k < 1`` or a group of at most ``top_k`` samples.
    """
    if rewards.ndim != 1 or len(keys) != rewards.shape[0]:
        raise ValueError(f"got {len(keys)} keys for rewards of shape {list(rewards.shape)}; expected [B] and B keys")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    values = rewards.detach().double().cpu()
    if not bool(torch.isfinite(values).all()):
        raise ValueError("rewards must be finite")
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(str(key), []).append(i)
    out = torch.zeros(len(keys), dtype=torch.float32)
    for key, rows in groups.items():
        if len(rows) <= top_k:
            raise ValueError(
                f"request {key!r} has {len(rows)} samples in the batch: best-of-n with top_k = {top_k} needs at "
                "least top_k + 1 per request"
            )
        order = sorted(rows, key=lambda i: (-float(values[i]), i))
        out[order[:top_k]] = 1.0
    return out


def clip_advantages(advantages: torch.Tensor, limit: float) -> torch.Tensor:
    """``clamp(advantages, -limit, limit)`` (DDPO: 5); ``limit`` must be > 0."""
    if not limit > 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    return advantages.clamp(-limit, limit)


def certainty_weights(uncertainty: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-sample weights that shrink the advantages of samples the reward model is unsure about.

    ``w_i = 1 / (1 + (u_i / scale)^2)``, renormalised to mean 1 over the batch, so the overall step size is
    unchanged and only the relative influence moves towards samples whose reward the ensemble agrees on
    (u = ensemble std of the reward, in reward units; ``scale`` is the std at which a sample counts half).

    Args:
        uncertainty: ``[B]`` >= 0.
        scale: > 0, reward units.

    Returns:
        ``[B]`` float32, mean 1.
    """
    if uncertainty.ndim != 1:
        raise ValueError(f"uncertainty must be [B], got {list(uncertainty.shape)}")
    if bool((uncertainty < 0).any()) or not bool(torch.isfinite(uncertainty).all()):
        raise ValueError("uncertainty must be finite and >= 0")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    raw = 1.0 / (1.0 + (uncertainty.float() / scale) ** 2)
    return raw / raw.mean()
