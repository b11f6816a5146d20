"""Replaying stored denoising transitions under a model: log-probs, Gaussian means and KLs of (sample, step) rows.

Training, the base pass of the KL and evaluation all score transitions x_t -> x_t' stored in a
``rollout.trajectory.Trajectory`` with ``rollout.denoise.denoise_step`` (the function the sampler used), so the
log-prob the trainer computes is the one the sampler recorded. A "row" is one (sample, step) pair; rows of
different samples and steps are stacked into one UNet call (the DDIM step takes per-row timesteps), which costs
the same arithmetic as DDPO's loop over timesteps but far fewer calls. :func:`plan_rows` draws which rows an epoch
trains, in which minibatches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policy.losses import gaussian_kl
from policy.model import InpaintPolicy
from rollout.ddim_logprob import DDIMStepOutput
from rollout.denoise import DenoisingConditioning, denoise_step, prepare_conditioning
from rollout.trajectory import Trajectory


@dataclass(frozen=True, kw_only=True, eq=False)
class StepRows:
    """N (sample, step) pairs of a trajectory: ``sample [N]`` and ``step [N]`` int64 on the CPU."""

    sample: torch.Tensor
    step: torch.Tensor

    def __post_init__(self) -> None:
        if self.sample.shape != self.step.shape or self.sample.ndim != 1:
            raise ValueError(
                f"sample and step must both be [N], got {list(self.sample.shape)}, {list(self.step.shape)}"
            )
        if self.sample.dtype != torch.int64 or self.step.dtype != torch.int64:
            raise ValueError("sample and step must be int64")

    def __len__(self) -> int:
        return int(self.sample.shape[0])

    def chunks(self, size: int) -> list[StepRows]:
        """Consecutive slices of at most ``size`` rows."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        return [
            StepRows(sample=self.sample[i : i + size], step=self.step[i : i + size]) for i in range(0, len(self), size)
        ]

    def select(self, index: torch.Tensor) -> StepRows:
        """The rows at ``index``."""
        return StepRows(sample=self.sample[index], step=self.step[index])

    @classmethod
    def every(cls, batch: int, steps: int) -> StepRows:
        """All B x T rows, step-major (every sample's step 0, then every sample's step 1, ...)."""
        step, sample = torch.meshgrid(torch.arange(steps), torch.arange(batch), indexing="ij")
        return cls(sample=sample.reshape(-1), step=step.reshape(-1))


def rows_conditioning(trajectory: Trajectory, rows: StepRows, dtype: torch.dtype) -> DenoisingConditioning:
    """The UNet conditioning of each row (its sample's prompt, mask and masked-image latents, same guidance)."""
    index = rows.sample.to(trajectory.latents.device)
    return prepare_conditioning(
        prompt_embeds=trajectory.prompt_embeds[index],
        negative_prompt_embeds=trajectory.negative_prompt_embeds[index],
        latent_product=trajectory.latent_product[index],
        masked_image_latents=trajectory.masked_image_latents[index],
        guidance_scale=trajectory.guidance_scale,
        dtype=dtype,
    )


def replay_rows(
    policy: InpaintPolicy, trajectory: Trajectory, rows: StepRows, target: torch.Tensor | None = None
) -> DDIMStepOutput:
    """Score the stored transitions of ``rows`` under ``policy`` as it is now (grad follows the caller's mode).

    ``target`` [N, C, h, w] replaces the stored next latents x_{t-1} as the point the log-prob is taken at (the
    exporter scores the posterior mean); None scores the transitions that were sampled.

    ``policy.scheduler.set_timesteps(trajectory.num_steps)`` must have been called (the step size of t -> t').

    Returns:
        :class:`~rollout.ddim_logprob.DDIMStepOutput` over the N rows: ``log_prob [N]`` (mean over background
        latent dims), ``mean [N, C, h, w]``, ``std [N, 1, 1, 1]``.
    """
    device = trajectory.latents.device
    sample, step = rows.sample.to(device), rows.step.to(device)
    conditioning = rows_conditioning(trajectory, rows, policy.dtype)
    return denoise_step(
        policy,
        trajectory.latents[sample, step],
        trajectory.timesteps[step],
        conditioning,
        eta=trajectory.eta,
        prev_sample=trajectory.latents[sample, step + 1] if target is None else target,
    )


@torch.no_grad()
def base_means(policy: InpaintPolicy, trajectory: Trajectory, rows: StepRows, chunk: int) -> torch.Tensor:
    """mu_base of every row: the base model's Gaussian means (adapters disabled), ``[N, C, h, w]`` float32.

    The base never changes and a stored x_t does not either, so these are computed once per epoch and
    reused by every inner epoch and minibatch: the update itself then needs no base forward.
    """
    policy.scheduler.set_timesteps(trajectory.num_steps, device=policy.device)
    with policy.as_base():
        return torch.cat([replay_rows(policy, trajectory, part).mean for part in rows.chunks(chunk)])


@torch.no_grad()
def stepwise_kl(policy: InpaintPolicy, trajectory: Trajectory, chunk: int) -> torch.Tensor:
    """KL(pi_theta || pi_base) of every step of every stored chain: ``[B, T]`` float32, mean over background dims.

    Evaluates ``policy`` twice per row (adapters on, then off); summing over T and multiplying by each sample's
    number of background latent dims (:func:`background_dims`) gives the trajectory KL in nats.
    """
    rows = StepRows.every(trajectory.batch_size, trajectory.num_steps)
    policy.scheduler.set_timesteps(trajectory.num_steps, device=policy.device)
    values = []
    for part in rows.chunks(chunk):
        out = replay_rows(policy, trajectory, part)
        with policy.as_base():
            base = replay_rows(policy, trajectory, part)
        background = trajectory.background[part.sample.to(trajectory.latents.device)]
        values.append(gaussian_kl(out.mean, base.mean, out.std, background))
    kl = torch.empty(trajectory.batch_size, trajectory.num_steps, dtype=torch.float32)
    kl[rows.sample, rows.step] = torch.cat(values).float().cpu()
    return kl


def background_dims(trajectory: Trajectory) -> torch.Tensor:
    """C x (number of background latent positions) of each sample: ``[B]`` float32 on the CPU."""
    channels = trajectory.latents.shape[2]
    return trajectory.background.flatten(1).sum(dim=1).float().cpu() * channels


def plan_rows(
    generator: torch.Generator,
    *,
    batch: int,
    steps: int,
    trained: int,
    inner_epochs: int,
    samples_per_step: int,
    num_processes: int = 1,
    process_index: int = 0,
    keep: torch.Tensor | None = None,
) -> list[list[tuple[StepRows, int]]]:
    """Per inner epoch, its minibatches: this process's rows of each and the rows of the global minibatch.

    The plan is drawn for the global batch (``batch`` x processes samples, minibatches of ``samples_per_step``
    x processes): samples shuffled, then ``trained`` random steps of the ``steps`` per sample (DDPO's per-sample
    timestep permutation), step-major within a minibatch; a process keeps the rows of its own samples (renumbered
    from 0). ``keep`` (``[batch x processes]`` bool, global sample order) drops the other samples' rows after the
    same draws, so a minibatch may be empty (row count 0: no optimiser step).
    """
    total, per_step = batch * num_processes, samples_per_step * num_processes
    first = process_index * batch
    plan = []
    for _ in range(inner_epochs):
        order = torch.randperm(total, generator=generator)
        step_order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(total)])[:, :trained]
        minibatches = []
        for start in range(0, total, per_step):
            samples = order[start : start + per_step]
            if keep is not None:
                samples = samples[keep[samples]]
            chosen = step_order[samples]  # [m, J]
            rows = StepRows(sample=samples[None, :].expand(trained, -1).reshape(-1), step=chosen.T.reshape(-1))
            own = (rows.sample >= first) & (rows.sample < first + batch)
            mine = StepRows(sample=rows.sample[own] - first, step=rows.step[own])
            minibatches.append((mine, len(rows)))
        plan.append(minibatches)
    return plan


def trained_mask(plan: list[list[tuple[StepRows, int]]], samples: int, steps: int) -> torch.Tensor:
    """``[samples, steps]`` bool: the (sample, step) rows that some minibatch of ``plan`` trains on."""
    needed = torch.zeros(samples, steps, dtype=torch.bool)
    for minibatches in plan:
        for rows, _ in minibatches:
            needed[rows.sample, rows.step] = True
    return needed
