"""Optimisation pieces shared by the pretraining stages: the learning-rate schedule and the weight EMA."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn


def learning_rate_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, floor: float = 0.1) -> float:
    """Linear warmup to ``peak`` over ``warmup_steps``, then cosine decay to ``floor * peak`` at ``total_steps``.

    ``step`` is the 0-based index of the step about to be taken. Stateless, so resuming needs no scheduler state.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_learning_rates(optimizer: torch.optim.Optimizer, step: int, *, warmup_steps: int, total_steps: int) -> None:
    """Set every param group's ``lr`` from its ``peak_lr`` with :func:`learning_rate_at`."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate_at(step, peak=group["peak_lr"], warmup_steps=warmup_steps, total_steps=total_steps)


class WeightEMA:
    """Exponential moving average of parameters: s <- d s + (1 - d) p with d = min(decay, (1 + n) / (10 + n)).

    The warmup of d (as in diffusers' ``EMAModel``) keeps the first updates from dragging the shadow towards
    the random initialisation.
    """

    def __init__(self, parameters: Sequence[nn.Parameter], decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.parameters = list(parameters)
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self, updates_done: int) -> None:
        """Blend the current parameters in, after optimiser step number ``updates_done`` (0-based)."""
        decay = min(self.decay, (1 + updates_done) / (10 + updates_done))
        for shadow, param in zip(self.shadow, self.parameters):
            shadow.lerp_(param.detach(), 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the parameters and the shadow (call twice to undo)."""
        for shadow, param in zip(self.shadow, self.parameters):
            current = param.detach().clone()
            param.copy_(shadow)
            shadow.copy_(current)

    def swapped(self) -> _Swapped:
        """Context manager: the EMA weights inside the block, the trained ones after it."""
        return _Swapped(self)


class _Swapped:
    def __init__(self, ema: WeightEMA) -> None:
        self.ema = ema

    def __enter__(self) -> WeightEMA:
        self.ema.swap()
        return self.ema

    def __exit__(self, *exc: object) -> None:
        self.ema.swap()


def trainable(modules: Sequence[nn.Module]) -> Iterator[nn.Parameter]:
    """The parameters of ``modules`` that require grad, in module order."""
    for module in modules:
        yield from (p for p in module.parameters() if p.requires_grad)
