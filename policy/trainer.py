"""Online DDPO fine-tuning of the inpainting policy against a learned reward, with a KL leash to the base model.

One epoch, top to bottom (:meth:`DDPOTrainer.run_epoch`):

1. draw the epoch's requests from the training pool and one seed per sample (derived from (seed, epoch), so an
   epoch is reproducible on its own and a resumed run draws what the uninterrupted run drew); with several
   processes these are drawn for the global batch and each process takes its contiguous share;
2. sample trajectories with the current policy (background-only latents and log-probs; the sampler composites
   and verifies the product pixels; with ``shared_start_noise`` a request's samples share x_T) while a worker
   thread scores finished chunks with the reward model;
3. stop with ``PreservationError`` if any product pixel changed;
4. per-request advantages from the persistent stat tracker (gathered over processes), clipped, optionally
   multiplied by the reward's certainty weights (a NaN or infinite reward stops the run, ``NonFiniteError``);
5. the base model's Gaussian means mu_base of every trained (sample, step) row, once, without grad;
6. ``inner_epochs`` passes over the samples in minibatches of ``samples_per_step``: for each, the rows' current
   log-probs and means (stacked ``rows_per_forward`` at a time), the clipped surrogate + kl_coef x Gaussian KL,
   gradients accumulated over the minibatch, summed over processes, clipped, one AdamW step on the LoRA
   weights (with ``optim.gradient = "during_sampling"``, 5-6 are replaced by the one step whose gradient was
   accumulated while sampling, ``policy.sampled_gradient``);
7. the KL controller sees the epoch's KL (over all processes); metrics go to ``log_metrics``.

A non-finite reward, gradient norm, loss, KL or LoRA weight stops the run with ``NonFiniteError`` (naming the value
and the optimiser step) before the epoch is logged or checkpointed, so the last checkpoint on disk is the last good
one and no adapter, summary or gain of a diverged run is written. The checks read values the epoch reads anyway
(the gradient norms and loss sums once per epoch), so the inner loop still never waits for the device.

Every ``eval_every`` epochs the held-out evaluation (``policy.evaluation``) runs on every process, each on its block
of the held-out (request, seed) samples, with the per-sample results gathered.

Several processes (``accelerate launch``) train exactly what one process trains with the same global batch
(``requests_per_epoch`` and ``samples_per_step`` x the number of processes), up to float rounding: requests,
seeds and the minibatch plan are drawn for the global batch; a process samples only its share and trains the
rows of each global minibatch that belong to its samples, each row weighted by 1 / (rows in the global
minibatch), and the gradients are summed over processes; metrics are reduced over processes. A process's share
of a minibatch is random (the global shuffle), so its work varies between optimiser steps.

Adapted from kvablack/ddpo-pytorch, ``scripts/train.py`` (commit 1958463); our rewrite. Modifications: per-request
instead of per-prompt statistics; a closed-form KL penalty to the base model (adapters disabled) with an optional
adaptive coefficient; rows of several timesteps per UNet call instead of a loop over timesteps (same gradient);
the base means computed once per epoch; pessimistic / certainty-weighted rewards; product preservation checked
every epoch; gradients reduced across processes explicitly (the UNet is not wrapped in DDP, so the model the
sampler uses is the one that trains) with a global batch that does not depend on the process count; checkpoints
hold every RNG and optimiser state for exact resume.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from offline_data.errors import PreservationError
from offline_data.finite import NonFiniteError, check_finite, check_finite_tensors
from policy.acceleration import accelerate
from policy.advantages import RequestStatTracker, best_of_n_advantages, clip_advantages
from policy.checkpoint import (
    CheckpointError,
    latest_checkpoint,
)
from policy.evaluation import EvaluationProcesses, PolicyEvaluator, plot_overoptimisation
from policy.kl_control import KLController
from policy.lora import named_lora_parameters
from policy.losses import clipped_policy_loss, gaussian_kl
from policy.model import InpaintPolicy
from policy.replay import StepRows, base_means, plan_rows, replay_rows, trained_mask
from policy.resumable import ResumableTrainer
from policy.reward_signal import RewardModelFn, RewardSignal, reward_signal, reweight
from policy.sampled_gradient import SampledGradient
from policy.trainer_config import DDPOConfig
from rollout.request import InpaintRequest
from rollout.sampler import sample_trajectories
from rollout.trajectory import Trajectory

logger = logging.getLogger(__name__)

LogMetrics = Callable[[Mapping[str, float], int], None]
LogImage = Callable[[str, np.ndarray, int], None]
"""``log_image(tag, image [H, W, 3] uint8, step)``, e.g. ``experiments.tracking.Run.log_image``."""
_STREAM_REQUESTS, _STREAM_SEEDS, _STREAM_SHUFFLE = 1, 2, 3


def _no_logging(metrics: Mapping[str, float], step: int) -> None:
    return None


class DDPOTrainer(ResumableTrainer):
    """DDPO with per-request advantages and a KL penalty to the base model (module docstring).

    Args:
        policy: the inpainting policy with a LoRA adapter attached (its weights are the only ones trained).
        reward_fn: reward model (a ``RewardFn`` or a scorer with uncertainty, ``policy.reward_signal``).
        requests: the training pool; each epoch draws ``config.requests_per_epoch`` of them.
        config: the trainer configuration.
        seed: root of every random choice (requests, sampling noise, shuffles).
        evaluator: held-out evaluation (gold, proxy, KL), or None.
        log_metrics: ``(metrics, step)`` sink, e.g. ``experiments.tracking.Run.log_metrics``; step = epoch.
        log_image: ``(tag, image, step)`` sink for each evaluation's before/after contact sheet (tag
            ``eval/before_after``, ``PolicyEvaluator.before_after_sheet``), or None.
        output_dir: where checkpoints (``checkpoints/``), the final adapter (``adapter/``) and the
            over-optimisation plot go; None writes nothing.
        accelerator: an ``accelerate.Accelerator`` when several processes train together; None = one process.
        progress: tqdm bar over epochs.
    """

    def __init__(
        self,
        policy: InpaintPolicy,
        reward_fn: RewardModelFn,
        requests: Sequence[InpaintRequest],
        config: DDPOConfig,
        *,
        seed: int,
        evaluator: PolicyEvaluator | None = None,
        log_metrics: LogMetrics | None = None,
        log_image: LogImage | None = None,
        output_dir: str | Path | None = None,
        accelerator: Any | None = None,
        progress: bool = False,
    ) -> None:
        if not policy.has_adapter:
            raise ValueError("the policy has no LoRA adapter to train; build it with lora=LoraConfig(...)")
        processes = 1 if accelerator is None else int(accelerator.num_processes)
        if len(requests) < config.requests_per_epoch * processes:
            raise ValueError(
                f"the training pool has {len(requests)} request(s) but requests_per_epoch = "
                f"{config.requests_per_epoch} x {processes} process(es); lower it or add products"
            )
        if len({r.request_id for r in requests}) != len(requests):
            raise ValueError("request ids must be unique: advantages are normalised per request id")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.policy = policy
        self.reward_fn = reward_fn
        self.requests = tuple(requests)
        self.config = config
        self.seed = seed
        self.evaluator = evaluator
        self.log_metrics = log_metrics or _no_logging
        self.log_image = log_image
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.accelerator = accelerator
        self.progress = progress
        accelerate(policy, config.acceleration)  # no-op with the defaults (the CPU path)
        self.params = policy.trainable_parameters()
        optim = config.optim
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=optim.learning_rate,
            betas=(optim.adam_beta1, optim.adam_beta2),
            eps=optim.adam_eps,
            weight_decay=optim.weight_decay,
        )
        self.tracker = RequestStatTracker(
            buffer_size=config.advantages.buffer_size, min_count=config.advantages.min_count
        )
        self.kl_controller = KLController(config.kl.coef, target=config.kl.target, horizon=config.kl.horizon)
        self.epoch = 0
        """Completed epochs."""
        self.optimizer_steps = 0
        self.history: list[dict[str, float]] = []
        """Every logged record (training and evaluation metrics), with its ``epoch``."""
        self.train_cpu_seconds = 0.0
        """Process CPU time spent in training epochs (evaluation and checkpointing excluded)."""
        self._preservation: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------------
    # Processes

    @property
    def num_processes(self) -> int:
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    @property
    def process_index(self) -> int:
        return 0 if self.accelerator is None else int(self.accelerator.process_index)

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.num_processes == 1:
            return tensor
        return self.accelerator.gather(tensor.to(self.policy.device)).cpu()

    def _sum_over_processes(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of ``values`` over processes (float64 on the CPU, the values themselves with one)."""
        if self.num_processes == 1:
            return [float(v) for v in values]
        local = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.policy.device)
        return [float(v) for v in self.accelerator.reduce(local, reduction="sum").cpu()]

    def _gather_signal(self, signal: RewardSignal) -> RewardSignal:
        """Every process's rewards, in process order (the global batch's order)."""
        if self.num_processes == 1:
            return signal
        return RewardSignal(
            proxy=self._gather(signal.proxy),
            uncertainty=self._gather(signal.uncertainty),
            reward=self._gather(signal.reward),
            weights=self._gather(signal.weights),
            heads={name: self._gather(value) for name, value in signal.heads.items()},
        )

    def _gather_keys(self, keys: Sequence[str]) -> list[str]:
        if self.num_processes == 1:
            return list(keys)
        return list(gather_object(list(keys)))

    def _sum_gradients(self) -> None:
        """Sum of the LoRA gradients over processes (one all-reduce of the flattened gradients); each process's
        rows are already weighted by 1 / (rows of the global minibatch)."""
        if self.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="sum")
        offset = 0
        for param, grad in zip(self.params, grads):
            param.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    # ------------------------------------------------------------------------------------------------------
    # The loop

    def train(self) -> list[dict[str, float]]:
        """Run epochs until ``config.epochs`` (or the CPU budget) is reached; returns :attr:`history`."""
        config = self.config
        if self.epoch == 0 and self.evaluator is not None and config.eval_every:
            self._log({"epoch": 0.0, **self._evaluate()})
        bar = tqdm(total=config.epochs, initial=self.epoch, desc="ddpo", unit="epoch", disable=not self.progress)
        while self.epoch < config.epochs:
            cpu_start = time.process_time()
            metrics = self.run_epoch()
            self.train_cpu_seconds += time.process_time() - cpu_start
            self.epoch += 1
            metrics["time/train_cpu_minutes"] = self.train_cpu_seconds / 60.0
            over_budget = (
                config.cpu_budget_minutes is not None and self.train_cpu_seconds >= 60.0 * config.cpu_budget_minutes
            )
            last = self.epoch == config.epochs or over_budget
            if self.evaluator is not None and config.eval_every and (self.epoch % config.eval_every == 0 or last):
                metrics |= self._evaluate()
            self._log({"epoch": float(self.epoch), **metrics})
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl_step=f"{metrics['policy/kl']:.2e}")
            if self.output_dir is not None and (
                last or (config.checkpoint_every and self.epoch % config.checkpoint_every == 0)
            ):
                self.save_checkpoint()
            if over_budget and self.epoch < config.epochs:
                logger.info(
                    "stopping after epoch %d: %.1f training CPU-minutes reached the budget of %.1f",
                    self.epoch, self.train_cpu_seconds / 60.0, config.cpu_budget_minutes,
                )  # fmt: skip
                break
        bar.close()
        self._finish()
        return self.history

    def run_epoch(self) -> dict[str, float]:
        """One sample -> score -> update round (module docstring); returns its metrics."""
        config, policy = self.config, self.policy
        started = time.perf_counter()

        # 1-2. requests, seeds, rollouts and rewards (and, during_sampling, the update's gradient terms)
        requests, seeds = self._epoch_requests(self.epoch)
        plan = self._plan_rows(len(requests), config.sampler.num_steps)
        gradient = None
        if config.optim.gradient == "during_sampling":
            kl_gradient = self.kl_controller.value > 0
            gradient = SampledGradient(policy, self.params, self._trained_mask(plan), kl_gradient=kl_gradient)
        # 3. (inside) a changed product pixel stops the run with PreservationError, a NaN reward with NonFiniteError
        try:
            with gradient if gradient is not None else contextlib.nullcontext():  # the per-sample gradient hooks
                trajectory, signal = self._sample_and_score(requests, seeds, gradient)
        except NonFiniteError as exc:
            raise NonFiniteError(f"epoch {self.epoch + 1}: {exc}; training stopped{self._last_good()}") from None
        sampled = time.perf_counter()

        # 4. per-request advantages over every process's samples, then this process's share
        keys = self._gather_keys(trajectory.request_ids)
        # certainty weights are normalised over the global batch, so they are recomputed on the gathered signal
        everyone = reweight(self._gather_signal(signal), config.reward)
        normalised = self.tracker.update(keys, everyone.reward)
        share = slice(self.process_index * trajectory.batch_size, (self.process_index + 1) * trajectory.batch_size)
        if config.advantages.kind == "best_of_n":  # winners 1, the rest 0; only the winners' rows are trained
            winners = best_of_n_advantages(keys, everyone.reward, config.advantages.top_k)
            plan = self._plan_rows(len(requests), config.sampler.num_steps, keep=winners > 0)
            mine = winners[share]
        else:
            mine = normalised.advantages[share]
        advantages = clip_advantages(mine, config.optim.advantage_clip) * everyone.weights[share]

        if gradient is not None:  # 5-6. one step with the gradient accumulated while sampling
            referenced = sampled
            totals = self._apply_sampled_gradient(gradient, advantages)
            trained = time.perf_counter()
        else:
            # 5. which (sample, step) rows of this process each inner epoch trains on, and their base means
            wanted = torch.nonzero(self._trained_mask(plan))
            wanted_rows = StepRows(sample=wanted[:, 0].contiguous(), step=wanted[:, 1].contiguous())
            batch, steps = trajectory.batch_size, trajectory.num_steps
            base_table = torch.zeros(batch, steps, *trajectory.latents.shape[2:], device=policy.device)
            base_table[wanted_rows.sample, wanted_rows.step] = base_means(
                policy, trajectory, wanted_rows, 2 * config.optim.rows_per_forward
            )
            referenced = time.perf_counter()

            # 6. clipped policy gradient + KL on the LoRA weights
            totals = self._update(trajectory, advantages.to(policy.device), base_table, plan)
            trained = time.perf_counter()

        # 7. KL coefficient and metrics (over every process's samples)
        kl_coef_used = self.kl_controller.value
        self.kl_controller.update(totals["policy/kl"])
        log_prob_sum, log_prob_count = self._sum_over_processes(
            [trajectory.log_probs.double().sum(), trajectory.log_probs.numel()]
        )
        all_advantages = normalised.advantages
        metrics = {
            "reward/mean": float(everyone.proxy.mean()),
            "reward/std": float(everyone.proxy.std()) if everyone.proxy.numel() > 1 else 0.0,
            "reward/pessimistic_mean": float(everyone.reward.mean()),
            "reward/uncertainty_mean": float(everyone.uncertainty.mean()),
            **{f"reward/head/{name}": float(value.mean()) for name, value in everyone.heads.items()},
            "advantages/abs_mean": float(all_advantages.abs().mean()),
            "advantages/clipped_frac": float((all_advantages.abs() > config.optim.advantage_clip).float().mean()),
            "advantages/fallback_requests": float(len(normalised.fallback_keys)),
            "rollout/log_prob_mean": log_prob_sum / log_prob_count,
            **totals,
            "policy/kl_coef": kl_coef_used,
            "policy/kl_coef_next": self.kl_controller.value,
            "policy/optimizer_steps": float(self.optimizer_steps),
            **self._reduce_preservation(),
            "time/sample_score_s": sampled - started,
            "time/reference_s": referenced - sampled,
            "time/update_s": trained - referenced,
            "time/epoch_s": trained - started,
        }
        check_finite_tensors(
            named_lora_parameters(self.policy.unet),
            f"epoch {self.epoch + 1}, LoRA weights after the update (learning rate {self.config.optim.learning_rate})",
            after=self._last_good(),
        )
        return metrics

    # ------------------------------------------------------------------------------------------------------
    # Steps of an epoch

    def _epoch_key(self, epoch: int) -> list[int]:
        """Root of the epoch's draws. The trailing 0 stands where the process index once was: draws are global
        now, and one-process runs keep the streams they had."""
        return [self.seed, epoch, 0]

    def _epoch_requests(self, epoch: int) -> tuple[list[InpaintRequest], list[int]]:
        """This process's share of the epoch's requests (drawn for the global batch without replacement, each
        repeated samples_per_request times) and seeds: the contiguous block ``process_index``."""
        config = self.config
        key = self._epoch_key(epoch)
        rng = np.random.default_rng([*key, _STREAM_REQUESTS])
        chosen = rng.choice(len(self.requests), size=config.requests_per_epoch * self.num_processes, replace=False)
        requests = [self.requests[int(i)] for i in chosen for _ in range(config.samples_per_request)]
        seeds = np.random.SeedSequence([*key, _STREAM_SEEDS]).generate_state(len(requests), dtype=np.uint32)
        share = slice(
            self.process_index * config.samples_per_epoch, (self.process_index + 1) * config.samples_per_epoch
        )
        return requests[share], [int(s) for s in seeds[share]]

    @staticmethod
    def _start_seeds(requests: Sequence[InpaintRequest], seeds: Sequence[int]) -> list[int]:
        """Each sample's start seed: the seed of the epoch's first sample of its request (a process's share holds
        whole requests: they are repeated consecutively and shares are whole multiples of samples_per_request)."""
        first: dict[str, int] = {}
        return [first.setdefault(r.request_id, s) for r, s in zip(requests, seeds, strict=True)]

    def _sample_and_score(
        self, requests: list[InpaintRequest], seeds: list[int], gradient: SampledGradient | None = None
    ) -> tuple[Trajectory, RewardSignal]:
        """Sample in chunks of ``sampler.batch_size``; each finished chunk is scored (in a worker thread when
        ``overlap_scoring``) while the next one is sampled. With ``gradient``, each trained step of the sampling
        also accumulates the update's gradient terms (``policy.sampled_gradient``).

        Raises:
            PreservationError: a chunk changed a product pixel (the sampler checks every image; the trainer
                stops the run rather than learn from it).
        """
        config = self.config
        chunk = config.sampler.batch_size
        starts = self._start_seeds(requests, seeds) if config.shared_start_noise else None
        trajectories: list[Trajectory] = []
        signals: list[Any] = []
        self._preservation = {}
        pool = ThreadPoolExecutor(max_workers=1) if config.overlap_scoring else None
        try:
            for start in range(0, len(requests), chunk):
                step_fn = None if gradient is None else gradient.step_fn(start)
                part = sample_trajectories(
                    self.policy,
                    requests[start : start + chunk],
                    seeds[start : start + chunk],
                    config.sampler,
                    step_fn=step_fn,
                    start_seeds=None if starts is None else starts[start : start + chunk],
                )
                if not part.preservation.ok:
                    raise PreservationError(
                        f"epoch {self.epoch + 1}, samples {start}..{start + len(part.requests) - 1}: product pixels "
                        f"changed: {part.preservation.describe()}; training stopped"
                    )
                self._add_preservation(part.preservation.metrics())
                trajectories.append(part.trajectory)
                args = (self.reward_fn, part.images, part.requests, config.reward)
                signals.append(pool.submit(reward_signal, *args) if pool is not None else reward_signal(*args))
            if pool is not None:
                signals = [future.result() for future in signals]
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        trajectory = trajectories[0] if len(trajectories) == 1 else Trajectory.concat(trajectories)
        return trajectory, reweight(RewardSignal.concat(signals), config.reward)

    def _reduce_preservation(self) -> dict[str, float]:
        """The epoch's preservation metrics over every process (max of the maxima, sums of the counts)."""
        names = sorted(self._preservation)
        if self.num_processes == 1 or not names:
            return dict(self._preservation)
        values = self._gather(torch.tensor([[self._preservation[n] for n in names]], dtype=torch.float64))
        return {
            n: float(values[:, i].max() if n.endswith("max_abs_diff") else values[:, i].sum())
            for i, n in enumerate(names)
        }

    def _add_preservation(self, metrics: Mapping[str, float]) -> None:
        """Accumulate a chunk's preservation metrics over the epoch (max of the max, sums of the counts)."""
        for key, value in metrics.items():
            combine = max if key.endswith("max_abs_diff") else (lambda a, b: a + b)
            self._preservation[key] = combine(self._preservation.get(key, 0.0), value)

    def _plan_rows(self, batch: int, steps: int, keep: torch.Tensor | None = None) -> list[list[tuple[StepRows, int]]]:
        """This epoch's :func:`policy.replay.plan_rows` for this process (drawn from the epoch's shuffle stream)."""
        config = self.config
        seed = np.random.SeedSequence([*self._epoch_key(self.epoch), _STREAM_SHUFFLE]).generate_state(1)[0]
        return plan_rows(
            torch.Generator().manual_seed(int(seed)), batch=batch, steps=steps, trained=config.trained_steps,
            inner_epochs=config.optim.inner_epochs, samples_per_step=config.optim.samples_per_step,
            num_processes=self.num_processes, process_index=self.process_index, keep=keep,
        )  # fmt: skip

    def _trained_mask(self, plan: list[list[tuple[StepRows, int]]]) -> torch.Tensor:
        """``[S, T]`` bool: the (sample, step) rows of this process that some minibatch of ``plan`` trains on."""
        return trained_mask(plan, self.config.samples_per_epoch, self.config.sampler.num_steps)

    def _apply_sampled_gradient(self, gradient: SampledGradient, advantages: torch.Tensor) -> dict[str, float]:
        """The epoch's one optimiser step from the gradient accumulated while sampling; returns the same row-weighted
        means as :meth:`_update` (ratio 1, clipfrac 0 on every row)."""
        kl_coef = self.kl_controller.value
        global_rows = self.config.samples_per_epoch * self.num_processes * self.config.trained_steps
        self.optimizer.zero_grad(set_to_none=True)
        for param, grad in zip(self.params, gradient.gradients(advantages, kl_coef, global_rows)):
            param.grad = grad
        grad_norm = self._optimizer_step()
        return self._reduce_totals(gradient.metric_sums(advantages, kl_coef), gradient.rows, [grad_norm])

    def _optimizer_step(self) -> torch.Tensor:
        """Sum the gradients over processes, clip them to ``max_grad_norm``, step; returns the norm before clipping."""
        max_grad_norm = self.config.optim.max_grad_norm
        self._sum_gradients()
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm if max_grad_norm > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer_steps += 1
        return norm.detach()

    def _reduce_totals(
        self, sums: Mapping[str, torch.Tensor], rows_seen: int, grad_norms: Sequence[torch.Tensor]
    ) -> dict[str, float]:
        """Row-weighted sums of this process -> means over every process's rows, and the mean gradient norm."""
        names = sorted(sums)
        *summed, rows_seen = self._sum_over_processes([*(float(sums[n]) for n in names), rows_seen])
        totals = {name: value / rows_seen for name, value in zip(names, summed)}
        norms = [float(norm) for norm in grad_norms]
        first_step = self.optimizer_steps - len(norms) + 1
        # Gradient norms first: they name the optimiser step; the losses and KL are epoch means.
        check_finite(
            {f"policy/grad_norm of optimiser step {first_step + i}": norm for i, norm in enumerate(norms)},
            f"epoch {self.epoch + 1}",
            after=self._last_good(),
        )
        check_finite(
            {name: totals[name] for name in ("policy/loss", "policy/pg_loss", "policy/kl") if name in totals},
            f"epoch {self.epoch + 1}",
            after=self._last_good(),
        )
        totals["policy/grad_norm"] = float(np.mean(norms))
        return totals

    def _update(
        self,
        trajectory: Trajectory,
        advantages: torch.Tensor,
        base_table: torch.Tensor,
        plan: list[list[tuple[StepRows, int]]],
    ) -> dict[str, float]:
        """The optimiser steps of one epoch; returns row-weighted means (over every process's rows) of the losses
        and diagnostics."""
        config, policy = self.config.optim, self.policy
        kl_coef = self.kl_controller.value
        replay_old = config.old_log_probs == "replay"
        policy.scheduler.set_timesteps(trajectory.num_steps, device=policy.device)
        device = trajectory.latents.device
        # Running sums stay on the device (float64: the same arithmetic as Python floats) and are read once per
        # epoch, so the inner loop never waits for the device.
        sums: dict[str, torch.Tensor] = {}
        rows_seen = 0
        grad_norms: list[torch.Tensor] = []

        def add(name: str, value: torch.Tensor, weight: int) -> None:
            term = value.double() * weight
            sums[name] = sums[name] + term if name in sums else term

        for minibatches in plan:
            for rows, global_rows in minibatches:
                if global_rows == 0:  # every sample of this minibatch was dropped (best-of-n's losers)
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                for part in rows.chunks(config.rows_per_forward):
                    sample, step = part.sample.to(device), part.step.to(device)
                    out = replay_rows(policy, trajectory, part)
                    sampled = trajectory.log_probs[sample, step]
                    old = out.log_prob.detach() if replay_old else sampled
                    pg = clipped_policy_loss(out.log_prob, old, advantages[sample], config.clip_range)
                    kl = gaussian_kl(out.mean, base_table[sample, step], out.std, trajectory.background[sample]).mean()
                    loss = pg.loss + kl_coef * kl
                    (loss * (len(part) / global_rows)).backward()  # the global minibatch's mean
                    for name, value in (
                        ("policy/loss", loss), ("policy/pg_loss", pg.loss), ("policy/kl", kl),
                        ("policy/ratio_mean", pg.ratio_mean), ("policy/clipfrac", pg.clipfrac),
                        ("policy/approx_kl", pg.approx_kl),
                        ("policy/log_prob_gap", (out.log_prob.detach() - sampled).abs().mean()),
                    ):  # fmt: skip
                        add(name, value.detach(), len(part))
                    rows_seen += len(part)
                grad_norms.append(self._optimizer_step())
        return self._reduce_totals(sums, rows_seen, grad_norms)

    # ------------------------------------------------------------------------------------------------------
    # Evaluation, logging, checkpoints

    def _evaluate(self) -> dict[str, float]:
        """Held-out metrics, CPU time not charged to training. Every process samples and replays its share of the
        evaluation's (request, seed) samples; the per-sample tables are gathered (:meth:`_gather`) and every process
        computes the same metrics from them (``policy.evaluation``), so every rank's history holds them."""
        if self.evaluator is None:
            return {}
        processes = EvaluationProcesses(
            index=self.process_index,
            count=self.num_processes,
            gather=self._gather if self.num_processes > 1 else None,
        )
        started = time.perf_counter()
        metrics = self.evaluator.evaluate(self.policy, processes)
        metrics["time/eval_s"] = time.perf_counter() - started
        if self.log_image is not None and self.is_main_process:
            sheet = self.evaluator.before_after_sheet()
            if sheet is not None:
                self.log_image("eval/before_after", sheet, self.epoch)
        return metrics

    def _last_good(self) -> str:
        """The tail of a :class:`NonFiniteError` message: where the last checkpoint (all finite) is."""
        if self.output_dir is None:
            return ""
        try:
            return f"; the last good checkpoint is {latest_checkpoint(self.output_dir / 'checkpoints')}"
        except CheckpointError:
            return "; no checkpoint was written before it"

    def _log(self, record: dict[str, float]) -> None:
        self.history.append(record)
        if self.is_main_process:
            self.log_metrics({k: v for k, v in record.items() if k != "epoch"}, int(record["epoch"]))

    def _finish(self) -> None:
        if self.output_dir is None or not self.is_main_process:
            return
        self.policy.save_adapter(self.output_dir / "adapter")
        if any("eval/kl_nats" in h for h in self.history):
            plot_overoptimisation(self.history, self.output_dir / "overoptimisation.png")
