"""Configuration of offline training from logs (section ``[offline]`` of ``backdrop policy offline``).

Both methods fine-tune the same LoRA adapter with the epsilon-prediction loss restricted to background latents,
on logged composites (never on samples of the policy itself):

- ``dpo``: Diffusion-DPO (Wallace et al. 2023) on pairwise preference logs; the base model (adapter disabled)
  is the paper's reference model.
- ``rwr``: reward-weighted regression on the images of the impression logs, each weighted by
  exp(r / temperature) with r the reward model's debiased click and dwell heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class DPOConfig:
    """Diffusion-DPO on pairwise judgements."""

    beta: float = 2000.0
    """KL weight of DPO (diffusers' train_diffusion_dpo.py uses 5000 for SD with a mean-reduced error). The
    errors here are means over background latent dims, so beta * (error change) ~ 1 at an error change of
    ~1e-3: larger beta keeps the adapter closer to the base."""
    ties: Literal["skip", "half"] = "half"
    """Tied judgements: "half" trains them as a label of 1/2 (pulls the margin to 0), "skip" drops them; both
    are counted and reported."""
    cross_product: Literal["skip", "use"] = "skip"
    """Pairs of two different products: DPO compares two images for the SAME condition, so by default they are
    skipped (and counted); "use" keeps them, each image under its own product and prompt."""

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


@dataclass(frozen=True, kw_only=True)
class RWRConfig:
    """Reward-weighted regression on logged images."""

    temperature: float = 1.0
    """tau in w = exp(z / tau), z the reward standardised over the training images (so tau is in units of
    the reward's standard deviation). Smaller tau concentrates the weight on the best images."""
    max_weight: float = 20.0
    """Weights are normalised to mean 1 over the training images and then clipped at this (a few images must
    not carry the whole loss)."""
    head_weights: dict[str, float] = field(default_factory=lambda: {"click": 1.0, "dwell": 0.5})
    """The reward r = sum_h w_h * z(head_h) over the reward model's head scores (z-scored over the training
    images); the debiased click and dwell heads by default."""

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.max_weight >= 1:
            raise ValueError(f"max_weight must be >= 1 (weights have mean 1), got {self.max_weight}")
        if not self.head_weights or not any(self.head_weights.values()):
            raise ValueError(f"head_weights needs at least one non-zero weight, got {self.head_weights}")


@dataclass(frozen=True, kw_only=True)
class OfflineConfig:
    """The offline fine-tuning loop shared by both methods."""

    method: Literal["dpo", "rwr"] = "dpo"
    """Which objective (``--method`` on the command line overrides it)."""
    steps: int = 400
    """Optimiser steps."""
    batch_size: int = 16
    """Pairs (dpo) or images (rwr) per optimiser step."""
    learning_rate: float = 1e-3
    """AdamW learning rate of the LoRA weights."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Gradient L2 norm clip; 0 disables it."""
    timesteps: Literal["sampling", "all"] = "sampling"
    """Where the noise level t of each example is drawn: "sampling" = uniformly among the DDIM timesteps the
    sampler visits (``[trainer.sampler] num_steps``), the ones that shape the policy's samples; "all" = uniformly
    over the whole training schedule, as the papers do."""
    eval_every: int = 50
    """Evaluate (gold, proxy, KL on held-out requests) every this many steps, and at the start and the end;
    0 = never. Each evaluation also saves the adapter under ``adapters/step-NNNNNN`` for matched-KL comparison."""
    encode_batch: int = 64
    """Images per VAE call when the logged images are encoded (once, before training)."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """Diffusion-DPO settings."""
    rwr: RWRConfig = field(default_factory=RWRConfig)
    """Reward-weighted regression settings."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.encode_batch < 1:
            raise ValueError("steps, batch_size and encode_batch must be >= 1")
        if not self.learning_rate > 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("need learning_rate > 0, weight_decay >= 0 and max_grad_norm >= 0")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
