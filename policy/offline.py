"""Offline fine-tuning from logs: logged images encoded once, noised, and a LoRA loop over an objective.

The objectives live in ``policy.dpo`` (Diffusion-DPO on preference pairs) and ``policy.rwr`` (reward-weighted
regression on impression images); both score noise predictions with :func:`noise_prediction_errors`, which builds
the UNet input exactly as the sampler does (``rollout.denoise``: the mask channel, the masked-image latents, the
prompt) and averages the squared error over the BACKGROUND latent dims only: product positions are never part of
what the policy is trained to paint. The clean latent x0 of a logged image takes its product positions from the
masked-image latents, as the sampler's replacement does.

:class:`OfflineTrainer` runs the optimiser steps, evaluates with the same ``PolicyEvaluator`` as DDPO (so gold,
proxy and KL are comparable across methods) and saves the adapter at every evaluation, so that a comparison can
pick the step whose KL matches another method's. A NaN or infinite loss or gradient norm (checked every step,
before the optimiser step) or LoRA weight (checked before every snapshot) stops the run with
``offline_data.finite.NonFiniteError``; the snapshots already written are the good ones, and no final adapter is
written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from offline_data.finite import check_finite, check_finite_tensors
from policy.evaluation import PolicyEvaluator, plot_overoptimisation
from policy.lora import named_lora_parameters
from policy.losses import noise_prediction_error
from policy.model import InpaintPolicy
from policy.offline_config import OfflineConfig
from rollout.denoise import predict_guided_noise, prepare_conditioning
from rollout.masks import latent_product_mask

logger = logging.getLogger(__name__)

LogMetrics = Callable[[Mapping[str, float], int], None]


@dataclass(frozen=True, kw_only=True, eq=False)
class LoggedImages:
    """Logged composites with what generated them (validated on construction)."""

    image_ids: tuple[str, ...]
    """N image ids (assets.image_id)."""
    product_ids: tuple[str, ...]
    """N product ids."""
    prompts: tuple[str, ...]
    """N prompts the images were generated for."""
    pixels: torch.Tensor
    """``[N, 3, H, W]`` uint8 composites."""
    masks: torch.Tensor
    """``[N, H, W]`` bool product masks (the ones the logs have: a segmenter's)."""

    def __post_init__(self) -> None:
        count = len(self.image_ids)
        if self.pixels.dtype != torch.uint8 or self.pixels.ndim != 4 or self.pixels.shape[:2] != (count, 3):
            raise ValueError(
                f"pixels must be uint8 [{count}, 3, H, W], got {self.pixels.dtype} {list(self.pixels.shape)}"
            )
        if self.masks.dtype != torch.bool or self.masks.shape != (count, *self.pixels.shape[2:]):
            raise ValueError(
                f"masks must be bool [{count}, {self.pixels.shape[2]}, {self.pixels.shape[3]}], got "
                f"{self.masks.dtype} {list(self.masks.shape)}"
            )
        if len(self.product_ids) != count or len(self.prompts) != count:
            raise ValueError(
                f"expected {count} product ids and prompts, got {len(self.product_ids)}, {len(self.prompts)}"
            )
        empty = torch.nonzero(~self.masks.flatten(1).any(dim=1)).flatten()
        if empty.numel():
            raise ValueError(f"image {self.image_ids[int(empty[0])]!r} has an empty product mask")
        full = torch.nonzero(self.masks.flatten(1).all(dim=1)).flatten()
        if full.numel():
            raise ValueError(f"image {self.image_ids[int(full[0])]!r}: the product mask covers the whole image")

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass(frozen=True, kw_only=True, eq=False)
class EncodedImages:
    """Latents and conditioning of N logged images, on the policy's device."""

    latents: torch.Tensor
    """``[N, C, h, w]`` float32 clean latents x0 (product positions from the masked-image latents)."""
    masked_image_latents: torch.Tensor
    """``[N, C, h, w]`` float32 latents of the image with its background zeroed (the UNet's conditioning)."""
    latent_product: torch.Tensor
    """``[N, 1, h, w]`` bool product latent positions."""
    prompt_index: torch.Tensor
    """``[N]`` int64 row of each image's prompt in ``prompt_embeds``."""
    prompt_embeds: torch.Tensor
    """``[P, L, D]`` text conditioning of the P distinct prompts (model dtype)."""

    def __len__(self) -> int:
        return int(self.latents.shape[0])


@torch.no_grad()
def encode_logged_images(
    policy: InpaintPolicy, images: LoggedImages, *, batch_size: int = 64, progress: bool = False
) -> EncodedImages:
    """Encode every logged image and its masked version with the policy's VAE (posterior mode), once."""
    factor = policy.vae_scale_factor
    if images.pixels.shape[2] % factor or images.pixels.shape[3] % factor:
        raise ValueError(f"images of {list(images.pixels.shape[2:])} px are not a multiple of the VAE factor {factor}")
    latents, masked = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="encoding", unit="batch", disable=not progress):
        pixels = images.pixels[start : start + batch_size].to(policy.device, torch.float32) / 127.5 - 1.0
        mask = images.masks[start : start + batch_size].to(policy.device)
        latents.append(policy.encode_images(pixels))
        masked.append(policy.encode_images(pixels * mask[:, None]))  # the sampler's masked image
    latent_product = latent_product_mask(images.masks, factor).to(policy.device)
    masked_latents = torch.cat(masked)
    prompts = sorted(set(images.prompts))
    lookup = {p: i for i, p in enumerate(prompts)}
    return EncodedImages(
        latents=torch.where(latent_product, masked_latents, torch.cat(latents)),
        masked_image_latents=masked_latents,
        latent_product=latent_product,
        prompt_index=torch.tensor([lookup[p] for p in images.prompts], dtype=torch.int64, device=policy.device),
        prompt_embeds=policy.encode_prompts(prompts),
    )


def noise_prediction_errors(
    policy: InpaintPolicy,
    encoded: EncodedImages,
    index: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Background-mean squared error of the policy's noise prediction on noised logged images: ``[n]`` float32.

    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise (the forward process), the UNet input is built as the sampler
    builds it (without guidance: the conditional branch), and the target is the noise (epsilon prediction) or
    v (v-prediction). Grad follows the caller's mode.

    Args:
        policy: the model (wrap in ``policy.as_base()`` for the base).
        encoded: the encoded images.
        index: ``[n]`` rows of ``encoded``.
        timesteps: ``[n]`` int64 training timesteps.
        noise: ``[n, C, h, w]`` standard normal.
    """
    if index.ndim != 1 or timesteps.shape != index.shape or noise.shape != (len(index), *encoded.latents.shape[1:]):
        raise ValueError(
            f"index and timesteps must be [n] and noise [n, C, h, w], got {list(index.shape)}, "
            f"{list(timesteps.shape)}, {list(noise.shape)}"
        )
    scheduler = policy.scheduler
    device = encoded.latents.device
    index, timesteps, noise = index.to(device), timesteps.to(device), noise.to(device)
    x0 = encoded.latents[index]
    noisy = scheduler.add_noise(x0, noise, timesteps)
    embeds = encoded.prompt_embeds[encoded.prompt_index[index]]
    conditioning = prepare_conditioning(
        prompt_embeds=embeds,
        negative_prompt_embeds=embeds,  # unused: guidance is off when training on logged images
        latent_product=encoded.latent_product[index],
        masked_image_latents=encoded.masked_image_latents[index],
        guidance_scale=1.0,
        dtype=policy.dtype,
    )
    prediction = predict_guided_noise(policy, noisy, timesteps, conditioning)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, timesteps)
    elif scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        raise ValueError(
            f"offline training supports epsilon and v_prediction, not {scheduler.config.prediction_type!r}"
        )
    return noise_prediction_error(prediction, target, conditioning.background)


class OfflineObjective(Protocol):
    """One offline method: a loss on a random minibatch of its data."""

    name: str
    """Metric namespace (``dpo``, ``rwr``)."""

    def loss(
        self, policy: InpaintPolicy, generator: torch.Generator, batch_size: int, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The minibatch loss (with grad) and its diagnostics; ``timesteps`` are the t to draw from."""
        ...

    def summary(self) -> dict[str, float]:
        """Counts describing the data (used, skipped, ties...), logged once."""
        ...


def sample_noise(
    generator: torch.Generator, count: int, shape: Sequence[int], timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` timesteps drawn uniformly from ``timesteps`` and standard normal noise ``[count, *shape]``."""
    picked = timesteps[torch.randint(len(timesteps), (count,), generator=generator)]
    return picked, torch.randn((count, *shape), generator=generator)


class OfflineTrainer:
    """Optimiser steps on an :class:`OfflineObjective`, with held-out evaluation and adapter snapshots.

    Args:
        policy: the policy with a fresh (or loaded) LoRA adapter.
        objective: what to minimise.
        config: steps, batch, optimiser, evaluation cadence, timestep range.
        seed: seeds every minibatch draw (step s uses a generator seeded from (seed, s)).
        sampling_steps: T of the sampler (the timesteps drawn with ``config.timesteps = "sampling"``).
        evaluator: held-out evaluation, or None.
        log_metrics: ``(metrics, step)`` sink.
        output_dir: where ``adapters/step-NNNNNN``, the final ``adapter/`` and the over-optimisation plot go.
    """

    def __init__(
        self,
        policy: InpaintPolicy,
        objective: OfflineObjective,
        config: OfflineConfig,
        *,
        seed: int,
        sampling_steps: int,
        evaluator: PolicyEvaluator | None = None,
        log_metrics: LogMetrics | None = None,
        output_dir: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        if not policy.has_adapter:
            raise ValueError("the policy has no LoRA adapter to train; build it with lora=LoraConfig(...)")
        self.policy = policy
        self.objective = objective
        self.config = config
        self.seed = seed
        self.evaluator = evaluator
        self.log_metrics = log_metrics or (lambda metrics, step: None)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.progress = progress
        self.params = policy.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)
        scheduler = policy.scheduler
        if config.timesteps == "sampling":
            scheduler.set_timesteps(sampling_steps)
            self.timesteps = scheduler.timesteps.long().cpu()
        else:
            self.timesteps = torch.arange(scheduler.config.num_train_timesteps, dtype=torch.int64)
        self.history: list[dict[str, float]] = []
        self._last_snapshot: Path | None = None

    def train(self) -> list[dict[str, float]]:
        """Run ``config.steps`` optimiser steps; returns every logged record (with its ``step``)."""
        config = self.config
        summary = {f"{self.objective.name}/data/{k}": v for k, v in self.objective.summary().items()}
        self._record(0, {**summary, **self._evaluate(0)})
        running: dict[str, list[float]] = {}
        started = time.perf_counter()
        for step in tqdm(range(1, config.steps + 1), desc=self.objective.name, unit="step", disable=not self.progress):
            generator = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, step]).generate_state(1)[0])
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss, metrics = self.objective.loss(self.policy, generator, config.batch_size, self.timesteps)
            loss.backward()
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
            metrics["policy/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
            check_finite(
                {f"{self.objective.name}/loss": loss.detach(), "policy/grad_norm": metrics["policy/grad_norm"]},
                f"step {step}",
                after=self._last_good(),
            )
            self.optimizer.step()
            for key, value in metrics.items():
                running.setdefault(key, []).append(value)
            due = config.eval_every and step % config.eval_every == 0
            if due or step == config.steps:
                record = {key: float(np.mean(values)) for key, values in running.items()}
                record["time/train_s"] = time.perf_counter() - started
                self._record(step, {**record, **self._evaluate(step)})
                running = {}
        if self.output_dir is not None:
            self.policy.save_adapter(self.output_dir / "adapter")
            if any("eval/kl_nats" in h for h in self.history):
                plot_overoptimisation(
                    [{**h, "epoch": h["step"]} for h in self.history],
                    self.output_dir / "overoptimisation.png",
                    title=f"{self.objective.name}: proxy vs gold (labels: step)",
                )
        return self.history

    def _evaluate(self, step: int) -> dict[str, float]:
        check_finite_tensors(
            named_lora_parameters(self.policy.unet), f"step {step}, LoRA weights", after=self._last_good()
        )
        if self.evaluator is None or not self.config.eval_every:
            return {}
        metrics = self.evaluator.evaluate(self.policy)
        if self.output_dir is not None:
            self._last_snapshot = self.output_dir / "adapters" / f"step-{step:06d}"
            self.policy.save_adapter(self._last_snapshot)
        return metrics

    def _last_good(self) -> str:
        """The tail of a ``NonFiniteError`` message: the last adapter snapshot written (all finite)."""
        if self._last_snapshot is None:
            return "; no adapter snapshot was written before it"
        return f"; the last good adapter snapshot is {self._last_snapshot}"

    def _record(self, step: int, metrics: dict[str, float]) -> None:
        self.history.append({"step": float(step), **metrics})
        self.log_metrics(metrics, step)
