"""Batch normalisation over the global batch of a multi-process run, each distinct image counted once.

In one process, :class:`reward.model.RewardModel` standardises a step's image features with ``BatchNorm1d``
(affine-free) over the distinct images of the step's rows. Under ``accelerate launch`` each process holds the
distinct images of its share of the rows, and an image can be in several shares (it was shown in several
impressions, or judged in several pairs). :class:`GlobalBatchNorm1d` computes the statistics of the union, as one
process would: every image is summed by exactly one process (the lowest-ranked one that holds it), the sums are
all-reduced with autograd (the gradient of every process's loss reaches every process's features through the
statistics, as in one process), and the running statistics are updated as ``BatchNorm1d`` updates them.
``torch.nn.SyncBatchNorm`` would count an image held by two processes twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn


def owned_images(shares: Sequence[Tensor], rank: int) -> tuple[Tensor, int]:
    """Which of process ``rank``'s distinct images it sums, and how many distinct images all processes hold.

    Args:
        shares: per process, its distinct image indices ([U_q] int64, sorted, as ``torch.unique`` returns them).
        rank: this process.

    Returns:
        ``(owned [U_rank] bool, total)``: owned marks the images no lower-ranked process holds; total = |union|.
    """
    if not 0 <= rank < len(shares):
        raise ValueError(f"rank {rank} is not one of the {len(shares)} processes")
    mine = shares[rank]
    earlier = torch.cat([mine[:0], *shares[:rank]])
    owned = ~torch.isin(mine, earlier)
    total = int(torch.unique(torch.cat(list(shares))).numel())
    return owned, total


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with its adjoint: the gradient of every process's copy of the sum, summed back."""

    @staticmethod
    def forward(ctx: object, tensor: Tensor) -> Tensor:
        summed = tensor.clone()
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        summed = grad.clone()
        dist.all_reduce(summed)
        return summed


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """``BatchNorm1d`` whose training statistics are those of the global batch's distinct images.

    Before each training forward, :meth:`set_ownership` says which rows of this process's input it sums and how
    many distinct rows the global batch has; without it (or in eval mode) it is a plain ``BatchNorm1d``. Sums are
    taken in float64 (the variance is E[x^2] - E[x]^2 of features whose mean can dwarf their spread).
    """

    def __init__(self, source: nn.BatchNorm1d) -> None:
        if source.momentum is None or not source.track_running_stats:
            raise ValueError("GlobalBatchNorm1d needs a BatchNorm1d with a momentum and running statistics")
        super().__init__(source.num_features, source.eps, source.momentum, source.affine, True)
        self.load_state_dict(source.state_dict())
        self.to(source.running_mean.device)
        self._owned: Tensor | None = None
        self._total = 0

    def set_ownership(self, owned: Tensor, total: int) -> None:
        """``owned``: [U] bool over the next input's rows; ``total``: distinct rows of the global batch (>= 2)."""
        if total < 2:
            raise ValueError(f"batch statistics need at least 2 distinct rows in the global batch, got {total}")
        self._owned, self._total = owned, total

    def to_batch_norm(self) -> nn.BatchNorm1d:
        """A plain ``BatchNorm1d`` with these running statistics (what a saved model holds)."""
        plain = nn.BatchNorm1d(self.num_features, self.eps, self.momentum, self.affine, True)
        plain.load_state_dict(self.state_dict())
        return plain.to(self.running_mean.device)

    def forward(self, x: Tensor) -> Tensor:
        """x: [U, D] float; returns [U, D] standardised with the global batch's mean and biased variance."""
        if not self.training or self._owned is None:
            return super().forward(x)
        owned, total = self._owned.to(x.device), self._total
        self._owned = None  # one forward per set_ownership: a stale mask must never be reused
        if owned.shape != (x.shape[0],):
            raise ValueError(f"ownership mask is {list(owned.shape)} for an input of {x.shape[0]} rows")
        mine = x.double()[owned]
        sums = _SumOverProcesses.apply(torch.cat([mine.sum(dim=0), (mine * mine).sum(dim=0)]))
        mean = sums[: self.num_features] / total
        variance = (sums[self.num_features :] / total - mean * mean).clamp(min=0.0)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach().to(self.running_mean.dtype))
            unbiased = variance.detach() * total / (total - 1)
            self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
            self.num_batches_tracked.add_(1)
        out = (x.double() - mean) / torch.sqrt(variance + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)
