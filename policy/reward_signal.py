"""The reward the policy is trained on: a reward model's output made pessimistic and certainty-weighted.

The policy package never imports ``reward`` (docs/architecture.md, "Import contracts"). It accepts any callable
``(images [B, 3, H, W] uint8, requests) -> output`` where output is either a ``[B]`` tensor (a plain
``rollout.protocols.RewardFn``, uncertainty 0) or an object with ``reward [B]``, ``uncertainty [B]`` (ensemble
std) and optionally ``heads {name: [B]}`` attributes, as ``reward``'s ``RewardScorer`` returns. Which heads
make up ``reward`` is the scorer's configuration (``reward.combination``), set where the scorer is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from offline_data.finite import NonFiniteError
from policy.advantages import certainty_weights
from policy.trainer_config import RewardSignalConfig
from rollout.request import InpaintRequest


@runtime_checkable
class ScoredOutput(Protocol):
    """What a reward model with uncertainty returns (``reward.RewardOutput`` satisfies it)."""

    reward: torch.Tensor
    """``[B]`` combined reward (ensemble mean)."""
    uncertainty: torch.Tensor
    """``[B]`` ensemble standard deviation of the combined reward (0 for a single model)."""


RewardModelFn = Callable[[torch.Tensor, Sequence[InpaintRequest]], "torch.Tensor | ScoredOutput"]
"""A reward function: a plain ``rollout.protocols.RewardFn`` or a scorer returning :class:`ScoredOutput`."""


@dataclass(frozen=True, kw_only=True, eq=False)
class RewardSignal:
    """Rewards of B samples, ready for advantage computation (all ``[B]`` float32 on the CPU)."""

    proxy: torch.Tensor
    """The reward model's combined reward (ensemble mean): what evaluation reports as the proxy."""
    uncertainty: torch.Tensor
    """Ensemble std of the combined reward (zeros for a plain reward function)."""
    reward: torch.Tensor
    """What advantages are computed from: proxy - pessimism * uncertainty."""
    weights: torch.Tensor
    """Per-sample multipliers of the advantages (ones unless certainty weighting is on)."""
    heads: Mapping[str, torch.Tensor]
    """Per-head scores when the scorer reports them (for logging), else empty."""

    @classmethod
    def concat(cls, parts: Sequence[RewardSignal]) -> RewardSignal:
        """The signals of several chunks in order (weights are recomputed by :func:`reward_signal`)."""
        names = set.intersection(*(set(p.heads) for p in parts)) if parts else set()
        return cls(
            proxy=torch.cat([p.proxy for p in parts]),
            uncertainty=torch.cat([p.uncertainty for p in parts]),
            reward=torch.cat([p.reward for p in parts]),
            weights=torch.cat([p.weights for p in parts]),
            heads={n: torch.cat([p.heads[n] for p in parts]) for n in sorted(names)},
        )


def score_rewards(
    reward_fn: RewardModelFn, images: torch.Tensor, requests: Sequence[InpaintRequest]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Call ``reward_fn`` and return (proxy [B], uncertainty [B], heads), float32 on the CPU, checked.

    Raises:
        ValueError: a wrong type or shape.
        NonFiniteError: NaN or infinite values (naming the output and the 0-based rows).
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {list(images.shape)}")
    batch = images.shape[0]
    if len(requests) != batch:
        raise ValueError(f"got {batch} images but {len(requests)} requests")
    with torch.no_grad():  # rewards are constants to the policy (and the worker thread has grad on by default)
        out: Any = reward_fn(images, requests)
    if isinstance(out, torch.Tensor):
        proxy, uncertainty, heads = out, torch.zeros(batch), {}
    elif isinstance(out, ScoredOutput):
        proxy, uncertainty = out.reward, out.uncertainty
        heads = dict(getattr(out, "heads", None) or {})
    else:
        raise ValueError(
            f"reward function returned {type(out).__name__}; expected a [B] tensor or an object with reward and "
            "uncertainty tensors"
        )
    checked = {"reward": proxy, "uncertainty": uncertainty, **{f"heads[{k!r}]": v for k, v in heads.items()}}
    for name, value in checked.items():
        if not isinstance(value, torch.Tensor) or value.shape != (batch,):
            found = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"reward function output {name}: expected a tensor [{batch}], got {found}")
        bad = torch.nonzero(~torch.isfinite(value.detach().float().cpu())).flatten()
        if bad.numel():
            raise NonFiniteError(f"reward function output {name}: non-finite at row(s) {bad[:10].tolist()}")
    if bool((uncertainty < 0).any()):
        raise ValueError("reward function output uncertainty: must be >= 0 (an ensemble std)")
    cpu = lambda t: t.detach().float().cpu()  # noqa: E731
    return cpu(proxy), cpu(uncertainty), {k: cpu(v) for k, v in heads.items()}


def pessimistic_reward(proxy: torch.Tensor, uncertainty: torch.Tensor, pessimism: float) -> torch.Tensor:
    """The ensemble's lower confidence bound ``proxy - pessimism * uncertainty`` (elementwise, same shape).

    What the trainer optimises (:attr:`RewardSignalConfig.pessimism` = lambda) and what evaluation reports as the
    pessimistic proxy; with a plain reward function (uncertainty 0) it is the proxy itself.
    """
    return proxy - pessimism * uncertainty


def reward_signal(
    reward_fn: RewardModelFn,
    images: torch.Tensor,
    requests: Sequence[InpaintRequest],
    config: RewardSignalConfig,
) -> RewardSignal:
    """Score ``images`` and apply pessimism (mean - lambda std) and, if configured, certainty weights.

    Certainty weights are normalised over this call's batch; :func:`reweight` recomputes them over a whole
    epoch after chunks are concatenated.
    """
    proxy, uncertainty, heads = score_rewards(reward_fn, images, requests)
    signal = RewardSignal(
        proxy=proxy,
        uncertainty=uncertainty,
        reward=pessimistic_reward(proxy, uncertainty, config.pessimism),
        weights=torch.ones_like(proxy),
        heads=heads,
    )
    return reweight(signal, config)


def reweight(signal: RewardSignal, config: RewardSignalConfig) -> RewardSignal:
    """``signal`` with its certainty weights computed over all of its samples (ones when weighting is off)."""
    weights = (
        certainty_weights(signal.uncertainty, config.certainty_scale)
        if config.certainty_weighting
        else torch.ones_like(signal.proxy)
    )
    return RewardSignal(
        proxy=signal.proxy, uncertainty=signal.uncertainty, reward=signal.reward, weights=weights, heads=signal.heads
    )
