"""Configuration of DDPO fine-tuning (section ``[trainer]`` of ``backdrop policy train``).

Sizes, per process (with several processes every count below is per process and the effective batch is
``num_processes`` times larger):

    samples per epoch   S = requests_per_epoch x samples_per_request
    trained steps       J = max(1, round(sampler.num_steps x optim.timestep_fraction)) per sample
    optimizer steps     inner_epochs x S / optim.samples_per_step per epoch
    UNet calls          each covers optim.rows_per_forward (sample, step) rows, x2 with guidance on

The objective of one optimizer step is the mean over its samples and their trained steps of

    max(-A r, -A clip(r, 1 - clip_range, 1 + clip_range)) + kl_coef * KL_t(pi_theta || pi_base)

with r the per-step probability ratio against the sampling policy, A the per-request normalised advantage, and
KL_t the closed-form Gaussian KL of step t averaged over background latent dims (``policy.losses``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from policy.acceleration_config import AccelerationConfig
from rollout.config import SamplerConfig


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """The LoRA optimiser and the clipped policy-gradient update."""

    learning_rate: float = 3e-3
    """AdamW learning rate of the LoRA weights (the only trainable weights). DDPO uses 3e-4 at SD scale; the tiny
    studio model needs ~10x more (the feasibility prototype: 3e-3 moved gold, 1e-3 barely did)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay of the LoRA weights (pulls the adapter, hence the policy, towards the base)."""
    clip_range: float = 1e-4
    """PPO ratio clip eps; tiny because the per-step log-prob is a mean over ~1000 latent dims, so per-step
    ratios stay within ~1e-3 of 1 (DDPO's value)."""
    advantage_clip: float = 5.0
    """Advantages are clipped to +-this after normalisation (DDPO: 5)."""
    max_grad_norm: float = 1.0
    """Global L2 norm the LoRA gradient is clipped to before each optimiser step; 0 disables clipping."""
    timestep_fraction: float = 1.0
    """Fraction of each chain's T steps that are trained on (a random subset per sample and inner epoch, as in
    DDPO); 1 trains on every step. Lower values save time at the cost of gradient noise."""
    inner_epochs: int = 1
    """Passes over one epoch's samples (PPO epochs). With 1 and samples_per_step = S the ratio is exactly 1."""
    samples_per_step: int = 32
    """Samples whose trained steps are accumulated into one optimiser step; must divide the samples per
    epoch. Gradient accumulation: the step's objective is the mean over all its rows, whatever
    rows_per_forward is."""
    rows_per_forward: int = 64
    """(sample, step) rows stacked into one UNet forward/backward (x2 with guidance). Only memory and speed
    depend on it, never the result beyond float rounding: bigger calls amortise per-call overhead on a CPU."""
    old_log_probs: Literal["sampler", "replay"] = "sampler"
    """What the ratio r is taken against. "sampler": the log-probs recorded while sampling (DDPO). "replay": the
    training forward's own log-prob, detached, so r = 1 exactly and the update is the unclipped policy gradient
    (+ KL). Allowed only when an epoch is one optimiser step (inner_epochs = 1, samples_per_step = the samples per
    epoch): the weights then have not moved since sampling, so both choices are the same objective in exact
    arithmetic. With bf16 frozen weights they are not the same in practice: the sampler's and the trainer's UNet
    calls have different shapes and kernels and round differently, and at SD scale 11 % (50 steps) to 70 % (10
    steps) of rows sat outside clip_range 1e-4 before any update (H200), silently dropping their gradient; "replay"
    removes that. ``policy/log_prob_gap`` reports the difference either way."""
    gradient: Literal["re_forward", "during_sampling"] = "re_forward"
    """How the update's gradient is obtained. "re_forward": after scoring, the trained rows are replayed through the
    UNet with grad (after a pass of the base (adapters off) for the KL), in calls of rows_per_forward rows.
    "during_sampling": at each trained step the sampler's own UNet call runs with grad on the LoRA weights; each
    sample's sum over its trained steps of grad log pi is kept (S x the adapter's size, float32), the KL gradient is
    summed from a base forward (adapters off) at the same states, and once the advantages are known the step takes
    (1 / rows) (-sum_i A_i g_i + kl_coef K), clipped as before (``policy.sampled_gradient``). The same update in
    exact arithmetic without the replay forward; each trained step costs one backward for the policy gradient and,
    when kl_coef > 0, one more for the KL. Needs one optimiser step per epoch (inner_epochs = 1, samples_per_step =
    the samples per epoch: the ratio is then exactly 1 and the clip inactive) and an uncompiled UNet (the per-sample
    gradients come from hooks on peft's LoRA factors); rows_per_forward is unused (the UNet calls are the
    sampler's, sampler.batch_size samples each, x2 with guidance). Peak memory is one sampling step's activations
    instead of a training call's. On a 2-core CPU it was slower than "re_forward" at sampler batches of 8 (0.76x
    with kl_coef 0.01) and faster only at batch 32 without a KL gradient (1.21x; README, Performance)."""

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1 and self.adam_eps > 0):
            raise ValueError("need 0 <= adam_beta1, adam_beta2 < 1 and adam_eps > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0, got {self.clip_range}")
        if not self.advantage_clip > 0:
            raise ValueError(f"advantage_clip must be > 0, got {self.advantage_clip}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.inner_epochs < 1 or self.samples_per_step < 1 or self.rows_per_forward < 1:
            raise ValueError("inner_epochs, samples_per_step and rows_per_forward must be >= 1")


@dataclass(frozen=True, kw_only=True)
class KLConfig:
    """The KL leash to the base model (the same UNet with its adapter disabled)."""

    coef: float = 0.01
    """kl_coef: weight of the per-step KL (mean over background latent dims) in the objective. The prototype
    measured 0.01 with lr 3e-3 as the setting that moved gold; 0.1 held the policy back."""
    target: float | None = None
    """Budget of the KL per denoising step (``policy/kl``, nats per background latent dim; not the KL per sample
    ``eval/kl_nats``). When set, kl_coef starts at ``coef`` and a proportional
    controller (Ziegler et al. 2019) adapts it every epoch to hold the measured KL near the target."""
    horizon: float = 10.0
    """Epochs over which a persistent 20 % KL error changes kl_coef by 20 % (controller only)."""

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"coef must be >= 0, got {self.coef}")
        if self.target is not None and not self.target > 0:
            raise ValueError(f"target must be > 0 or unset, got {self.target}")
        if self.target is not None and not self.coef > 0:
            raise ValueError("a KL target needs coef > 0: the controller scales the coefficient multiplicatively")
        if not self.horizon > 0:
            raise ValueError(f"horizon must be > 0, got {self.horizon}")


@dataclass(frozen=True, kw_only=True)
class RewardSignalConfig:
    """How the reward model's output becomes the scalar the advantages are computed from."""

    pessimism: float = 0.0
    """lambda of the pessimistic reward mean - lambda * ensemble std (0 = the plain mean). Penalises images the
    reward ensemble disagrees on, which are where over-optimisation finds its proxy gains."""
    certainty_weighting: bool = False
    """Multiply each sample's advantage by 1 / (1 + (std / certainty_scale)^2), renormalised to mean 1."""
    certainty_scale: float = 0.25
    """Ensemble std (reward units) at which a sample's advantage counts half (certainty_weighting only)."""

    def __post_init__(self) -> None:
        if self.pessimism < 0:
            raise ValueError(f"pessimism must be >= 0, got {self.pessimism}")
        if not self.certainty_scale > 0:
            raise ValueError(f"certainty_scale must be > 0, got {self.certainty_scale}")


@dataclass(frozen=True, kw_only=True)
class AdvantageConfig:
    """What a sample's reward becomes in the update: a per-request normalised advantage (DDPO's per-prompt stat
    tracker, keyed by request id) or the mark of its request's best samples (on-policy best-of-n distillation)."""

    kind: Literal["normalised", "best_of_n"] = "normalised"
    """"normalised": (r - mean) / std over the request's recent rewards (the buffer below; DDPO). "best_of_n":
    within each request's samples of the epoch (``samples_per_request`` of them, the n), the ``top_k`` highest
    rewards get advantage 1 and the rest 0 (RAFT run on-policy: maximum likelihood of the policy's own best
    trajectories, ``policy.advantages.best_of_n_advantages``). The objective is then the mean over the winners'
    trained rows of the clipped surrogate + kl_coef x KL: only the winners' rows are replayed and get base means, so
    an epoch costs its sampling plus top_k / samples_per_request of a DDPO update (``optim.gradient =
    "re_forward"`` only)."""
    top_k: int = 1
    """Winners per request ("best_of_n" only); must be below ``samples_per_request``."""

    buffer_size: int = 32
    """Most recent rewards kept per request."""
    min_count: int = 4
    """Rewards a request needs in its buffer before its own mean/std are used (else the batch's)."""

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or not 1 <= self.min_count <= self.buffer_size:
            raise ValueError(f"need 1 <= min_count <= buffer_size, got {self.min_count}, {self.buffer_size}")
        if self.kind not in ("normalised", "best_of_n"):
            raise ValueError(f"kind must be 'normalised' or 'best_of_n', got {self.kind!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")


@dataclass(frozen=True, kw_only=True)
class DDPOConfig:
    """Online fine-tuning: sample, score with the reward model, per-request advantages, clipped PG + KL."""

    epochs: int = 100
    """Epochs (sample -> score -> update rounds)."""
    cpu_budget_minutes: float | None = None
    """Stop after the epoch in which the process's CPU time (user + system, all threads) passes this many
    minutes; None runs all epochs. Wall time is not used because the machine may be shared."""
    requests_per_epoch: int = 8
    """Distinct requests sampled per epoch (drawn without replacement from the training pool)."""
    samples_per_request: int = 4
    """Samples per request per epoch; advantages compare them with each other through the stat tracker."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    """DDIM steps, eta, guidance and batch size of the training rollouts."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and clipped update."""
    kl: KLConfig = field(default_factory=KLConfig)
    """KL penalty to the base model."""
    reward: RewardSignalConfig = field(default_factory=RewardSignalConfig)
    """Pessimism and certainty weighting of the reward."""
    advantages: AdvantageConfig = field(default_factory=AdvantageConfig)
    """Per-request normalisation."""
    acceleration: AccelerationConfig = field(default_factory=AccelerationConfig)
    """How the UNet is run on a GPU (compile, CUDA graphs, LoRA arithmetic, attention kernel); all off by default.
    Applied to the policy when the trainer is built (policy.acceleration)."""
    shared_start_noise: bool = False
    """Start every sample of a request in an epoch from the same x_T (the start noise of its first sample; the
    DDIM step noise stays each sample's own), as DanceGRPO does. The per-request advantages then compare samples
    that differ only in the step noise the policy's log-probs are taken over, so the reward variance that comes
    from x_T (which no parameter controls) leaves the advantages; the objective is the same expected reward,
    over x_T drawn once per request instead of once per sample."""
    overlap_scoring: bool = True
    """Score a sampled chunk in a worker thread while the next chunk is being sampled (helps when the reward
    model and the UNet can run concurrently: a GPU, or spare CPU cores)."""
    eval_every: int = 10
    """Evaluate (gold, proxy, KL on held-out requests) every this many epochs, and after the last; 0 = never."""
    checkpoint_every: int = 10
    """Write a resumable checkpoint every this many epochs, and after the last; 0 = only after the last."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.cpu_budget_minutes is not None and not self.cpu_budget_minutes > 0:
            raise ValueError(f"cpu_budget_minutes must be > 0 or unset, got {self.cpu_budget_minutes}")
        if self.requests_per_epoch < 1 or self.samples_per_request < 1:
            raise ValueError("requests_per_epoch and samples_per_request must be >= 1")
        if self.samples_per_epoch % self.optim.samples_per_step:
            raise ValueError(
                f"optim.samples_per_step={self.optim.samples_per_step} must divide the samples per epoch "
                f"({self.requests_per_epoch} requests x {self.samples_per_request} = {self.samples_per_epoch})"
            )
        single_step = self.optim.inner_epochs == 1 and self.optim.samples_per_step == self.samples_per_epoch
        if self.optim.old_log_probs == "replay" and not single_step:
            raise ValueError(
                "optim.old_log_probs = 'replay' needs one optimiser step per epoch (inner_epochs = 1 and "
                f"samples_per_step = the samples per epoch, {self.samples_per_epoch}); got inner_epochs = "
                f"{self.optim.inner_epochs}, samples_per_step = {self.optim.samples_per_step}: later steps must "
                "compare with log-probs from before the first update"
            )
        if self.optim.gradient == "during_sampling":
            self._check_gradient_during_sampling(single_step)
        if self.advantages.kind == "best_of_n" and not self.advantages.top_k < self.samples_per_request:
            raise ValueError(
                f"advantages.kind = 'best_of_n' needs advantages.top_k ({self.advantages.top_k}) < "
                f"samples_per_request ({self.samples_per_request}): the winners are chosen among a request's samples"
            )
        if self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError("eval_every and checkpoint_every must be >= 0")

    def _check_gradient_during_sampling(self, single_step: bool) -> None:
        """optim.gradient = 'during_sampling' differentiates the sampling policy itself: the ratio must be 1."""
        if not single_step:
            raise ValueError(
                "optim.gradient = 'during_sampling' needs one optimiser step per epoch (inner_epochs = 1 and "
                f"samples_per_step = the samples per epoch, {self.samples_per_epoch}); got inner_epochs = "
                f"{self.optim.inner_epochs}, samples_per_step = {self.optim.samples_per_step}: after the first step "
                "the ratio is no longer 1 and gradients taken while sampling belong to a stale policy"
            )
        if self.advantages.kind == "best_of_n":
            raise ValueError(
                "optim.gradient = 'during_sampling' cannot train advantages.kind = 'best_of_n': its objective is a "
                "mean over the winners' rows, which are known only after sampling; use optim.gradient = 're_forward'"
            )
        if self.acceleration.compile:
            raise ValueError(
                "optim.gradient = 'during_sampling' needs acceleration.compile = false: the per-sample gradients "
                "are read by hooks on peft's LoRA factors, which a compiled UNet does not run"
            )

    @property
    def samples_per_epoch(self) -> int:
        """S = requests_per_epoch x samples_per_request (per process)."""
        return self.requests_per_epoch * self.samples_per_request

    @property
    def trained_steps(self) -> int:
        """J, the denoising steps trained per sample and inner epoch."""
        return max(1, round(self.sampler.num_steps * self.optim.timestep_fraction))
