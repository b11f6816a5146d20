"""Reward-weighted regression on logged images (Peters & Schaal 2007; for diffusion models: Lee et al. 2023,
"Aligning Text-to-Image Models using Human Feedback", which weights the denoising loss by a learned reward).

Every image shown in the impression logs is scored by the reward model's debiased click and dwell heads; the
reward r = sum_h w_h z(head_h) (heads z-scored over the images) becomes a weight w = exp(z(r) / tau), normalised
to mean 1 and clipped, and the policy minimises the weighted epsilon-prediction loss on those images, restricted
to background latents. The result is a policy pulled towards the well-rewarded part of the LOGGED distribution;
its KL to the base grows with training length, which is how it is matched against the online methods.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from policy.losses import weighted_denoising_loss
from policy.model import InpaintPolicy
from policy.offline import EncodedImages, noise_prediction_errors, sample_noise
from policy.offline_config import RWRConfig


def combine_heads(heads: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """r = sum_h w_h (head_h - mean) / std over the images: ``[N]`` float32.

    Raises:
        ValueError: a weighted head is missing, shapes differ, or a head is constant (its z-score is undefined).
    """
    missing = [h for h, w in weights.items() if w and h not in heads]
    if missing:
        raise ValueError(f"the reward model reports heads {sorted(heads)}, not {missing}")
    total = None
    for name, weight in weights.items():
        if not weight:
            continue
        values = heads[name].double()
        std = float(values.std())
        if not std > 0:
            raise ValueError(f"head {name!r} is constant over the images; it cannot weight them")
        term = weight * (values - values.mean()) / std
        if total is not None and term.shape != total.shape:
            raise ValueError(f"head {name!r} has shape {list(term.shape)}, others {list(total.shape)}")
        total = term if total is None else total + term
    return total.float()


def rwr_weights(rewards: torch.Tensor, temperature: float, max_weight: float) -> torch.Tensor:
    """w = exp(z / tau) with z the standardised reward, normalised to mean 1, then clipped at ``max_weight``.

    Args:
        rewards: ``[N]`` rewards (N >= 2, not all equal).
        temperature: tau > 0 (in reward standard deviations).
        max_weight: >= 1.

    Returns:
        ``[N]`` float32 weights in (0, max_weight].
    """
    if rewards.ndim != 1 or rewards.numel() < 2:
        raise ValueError(f"rewards must be [N] with N >= 2, got {list(rewards.shape)}")
    if not temperature > 0 or not max_weight >= 1:
        raise ValueError(f"need temperature > 0 and max_weight >= 1, got {temperature}, {max_weight}")
    values = rewards.double()
    std = float(values.std())
    if not std > 0:
        raise ValueError("rewards are all equal: reward-weighted regression has nothing to weight by")
    z = (values - values.mean()) / std
    weights = torch.exp((z - z.max()) / temperature)  # shifted for overflow safety; normalised next
    weights = weights / weights.mean()
    return weights.clamp(max=max_weight).float()


class RWRObjective:
    """The weighted denoising loss on random minibatches of logged images (an ``OfflineObjective``)."""

    name = "rwr"

    def __init__(self, encoded: EncodedImages, weights: torch.Tensor, config: RWRConfig) -> None:
        if weights.shape != (len(encoded),):
            raise ValueError(f"weights must be [{len(encoded)}] (one per encoded image), got {list(weights.shape)}")
        self.encoded = encoded
        self.weights = weights.float()
        self.config = config

    def summary(self) -> dict[str, float]:
        weights = self.weights
        return {
            "images": float(len(weights)),
            "weight_max": float(weights.max()),
            "clipped": float((weights >= self.config.max_weight).sum()),
            # Kish's effective sample size: how many equally weighted images the weighting is worth.
            "effective_images": float(weights.sum() ** 2 / (weights**2).sum()),
        }

    def loss(
        self, policy: InpaintPolicy, generator: torch.Generator, batch_size: int, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        pick = torch.randint(len(self.weights), (batch_size,), generator=generator)
        t, noise = sample_noise(generator, batch_size, self.encoded.latents.shape[1:], timesteps)
        errors = noise_prediction_errors(policy, self.encoded, pick, t, noise)
        weights = self.weights[pick].to(errors.device)
        loss = weighted_denoising_loss(errors, weights)
        return loss, {"rwr/loss": float(loss.detach()), "rwr/error": float(errors.detach().mean())}
