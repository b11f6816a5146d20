"""Sampling backgrounds for product images: DDIM (eta > 0) with classifier-free guidance and per-step log-probs.

For each chunk of ``config.batch_size`` samples:

1. prompts -> text embeddings (cached by the model), the empty prompt for the unconditional branch;
2. product images -> the masked image (background zeroed, product kept, SD-inpainting's convention) -> its
   latents (encoded once per distinct request object of the chunk); the pixel mask -> the latent product mask
   (max-pool);
3. all the noise of a sample is drawn up front from its own seed (a CPU ``torch.Generator``), so a sample is
   reproducible and independent of the batch it is in: ``noise[:, 0]`` starts the chain and also forward-noises
   the product latents, ``noise[:, i + 1]`` is the DDIM noise of step i (with ``start_seeds``, ``noise[:, 0]``
   comes from the start seed instead, so a group of samples can share x_T);
4. the loop: product latents replaced (preservation 1), one guided UNet forward, one DDIM step with its
   log-prob (``rollout.denoise.denoise_step``, shared with training); no host synchronisation inside;
5. decode, composite the original product pixels (preservation 2), verify them (preservation 3).

``StableDiffusionInpaintPipeline`` run on the same model differs from this sampler: it neither replaces the
product latents during denoising nor composites/verifies the product pixels, samples the masked-image latents
from the VAE posterior (we take its mode), and draws its noise from one generator for the whole batch.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from offline_data.errors import AssetError
from rollout.config import SamplerConfig
from rollout.ddim_logprob import ddim_step_std
from rollout.denoise import denoise_step, prepare_conditioning
from rollout.masks import edge_band, latent_product_mask
from rollout.preservation import (
    PreservationReport,
    composite_product,
    noise_product_latents,
    replace_product_latents,
    replacement_alphas,
    verify_preservation,
)
from rollout.protocols import DenoisingStepFn, InpaintingModel
from rollout.request import InpaintRequest
from rollout.trajectory import Trajectory

logger = logging.getLogger(__name__)


class ImageSizeError(AssetError, ValueError):
    """A request's image the model cannot take: a size not a multiple of its VAE factor, or no latent to paint."""


@dataclass(frozen=True, kw_only=True, eq=False)
class Rollout:
    """Sampled images for a list of requests, with their trajectories and the preservation check."""

    images: torch.Tensor
    """``[B, 3, H, W]`` uint8 on the CPU: composited outputs, product pixels bit-identical to the inputs."""
    trajectory: Trajectory
    """The denoising chains (on the model's device)."""
    preservation: PreservationReport
    """Product-pixel check over all B images (``ok`` is True unless enforcement was off and it failed)."""
    requests: tuple[InpaintRequest, ...]
    """The B requests, aligned with ``images``."""


@torch.no_grad()
def sample_trajectories(
    model: InpaintingModel,
    requests: Sequence[InpaintRequest],
    seeds: Sequence[int],
    config: SamplerConfig,
    *,
    progress: bool = False,
    step_fn: DenoisingStepFn | None = None,
    start_seeds: Sequence[int] | None = None,
) -> Rollout:
    """Paint a background for every request, one sample per (request, seed) pair.

    Args:
        model: the inpainting model (``policy.model.InpaintPolicy``); its adapter state decides which policy
            samples.
        requests: B requests of one image size; repeat a request (``rollout.request.expand_requests``) to get
            several samples of it.
        seeds: B non-negative seeds; a seed fixes all the noise of its sample.
        config: steps, eta, guidance, chunk size, edge band, enforcement.
        progress: show a progress bar over chunks and steps.
        step_fn: runs each denoising step instead of ``rollout.denoise.denoise_step`` (e.g. to differentiate the
            step's log-prob while sampling, ``policy.sampled_gradient``); it must return what ``denoise_step`` would
            and detached tensors. None samples plainly.
        start_seeds: B non-negative seeds of the start noise x_T (which also forward-noises the product latents):
            sample i starts from the x_T that a sample with seed ``start_seeds[i]`` would start from, and takes
            its DDIM step noise from ``seeds[i]``. Samples sharing a start seed share x_T and differ only in
            their step noise (DanceGRPO's shared initial noise). None: each sample's own seed fixes both.

    Raises:
        ValueError: mismatched lengths, mixed image sizes, a size the model cannot take, a request whose product
            covers every latent position, or a schedule with a zero-variance step.
        PreservationError: ``config.enforce_preservation`` and a product pixel changed.
    """
    if len(requests) != len(seeds):
        raise ValueError(f"got {len(requests)} requests but {len(seeds)} seeds; give one seed per sample")
    if not requests:
        raise ValueError("no requests to sample")
    try:
        seeds = [operator.index(s) for s in seeds]
    except TypeError:
        raise ValueError(f"seeds must be integers, got {list(seeds)[:10]}") from None
    if min(seeds) < 0:
        raise ValueError(f"seeds must be >= 0, got {min(seeds)}")
    if start_seeds is not None:
        start_seeds = [operator.index(s) for s in start_seeds]
        if len(start_seeds) != len(seeds) or min(start_seeds) < 0:
            raise ValueError(f"start_seeds must be {len(seeds)} non-negative integers, got {start_seeds[:10]}")
    size = requests[0].size
    for i, request in enumerate(requests):
        if request.size != size:
            raise ValueError(
                f"request {i} ({request.request_id!r}) is {request.size[0]}x{request.size[1]} but request 0 is "
                f"{size[0]}x{size[1]}; sample different sizes in separate calls"
            )
    factor = model.vae_scale_factor
    if size[0] % factor or size[1] % factor:
        raise ImageSizeError(
            f"request {requests[0].request_id!r}: image size {size[0]}x{size[1]} is not a multiple of the VAE "
            f"factor {factor}; crop or pad the photo to a multiple of {factor}, or drop --native"
        )

    scheduler = model.scheduler
    scheduler.set_timesteps(config.num_steps, device=model.device)
    timesteps = scheduler.timesteps.long()
    stds = ddim_step_std(scheduler, timesteps, config.eta)
    if not bool((stds > 0).all()):  # once per call, before the loop
        raise ValueError(
            f"the schedule has a DDIM step with zero variance (std {stds.tolist()}); log-probs need every "
            "sigma_t > 0: use a scheduler with set_alpha_to_one = false"
        )
    alphas = replacement_alphas(scheduler, timesteps)

    chunks = range(0, len(requests), config.batch_size)
    images, trajectories, reports = [], [], []
    for start in tqdm(chunks, desc="sampling", unit="batch", disable=not progress or len(chunks) == 1):
        stop = start + config.batch_size
        chunk_starts = None if start_seeds is None else start_seeds[start:stop]
        rollout = _sample_chunk(
            model,
            requests[start:stop],
            seeds[start:stop],
            config,
            timesteps,
            alphas,
            progress,
            start,
            step_fn,
            chunk_starts,
        )
        images.append(rollout.images)
        trajectories.append(rollout.trajectory)
        reports.append(rollout.preservation)
    report = _merge_reports(reports)
    logger.debug("sampled %d image(s); preservation: %s", len(requests), report.describe())
    return Rollout(
        images=torch.cat(images),
        trajectory=Trajectory.concat(trajectories),
        preservation=report,
        requests=tuple(requests),
    )


def _sample_chunk(
    model: InpaintingModel,
    requests: Sequence[InpaintRequest],
    seeds: Sequence[int],
    config: SamplerConfig,
    timesteps: torch.Tensor,
    alphas: torch.Tensor,
    progress: bool,
    offset: int,
    step_fn: DenoisingStepFn | None,
    start_seeds: Sequence[int] | None = None,
) -> Rollout:
    device, dtype = model.device, model.dtype
    batch, steps = len(requests), config.num_steps
    original = torch.stack([r.product_rgb for r in requests])  # [B, 3, H, W] uint8, CPU
    product_mask = torch.stack([r.product_mask for r in requests])  # [B, H, W] bool, CPU

    latent_product = latent_product_mask(product_mask, model.vae_scale_factor)
    no_background = (~latent_product).flatten(1).any(dim=1).logical_not()
    if bool(no_background.any()):
        bad = [requests[i].request_id for i in torch.nonzero(no_background).flatten().tolist()]
        raise ImageSizeError(
            f"request(s) {bad}: the product touches every latent position; nothing left to paint (give the photo "
            "more background around the product, or drop --native)"
        )
    latent_product = latent_product.to(device)

    pixels = original.to(device=device, dtype=torch.float32) / 127.5 - 1.0
    masked_image = pixels * product_mask.to(device)[:, None]  # background -> 0 (mid-grey), product kept
    # One VAE encoding per distinct request: the trainer repeats each request samples_per_request times.
    first: dict[int, int] = {}  # id of each distinct request object -> index of its first occurrence
    for i, request in enumerate(requests):
        first.setdefault(id(request), i)
    if len(first) == batch:
        masked_image_latents = model.encode_images(masked_image)
    else:
        slot = {key: n for n, key in enumerate(first)}
        index = torch.tensor([slot[id(r)] for r in requests], device=device)
        masked_image_latents = model.encode_images(masked_image[list(first.values())])[index]
    prompt_embeds = model.encode_prompts([r.prompt for r in requests])
    negative_prompt_embeds = model.encode_prompts([""]).expand(batch, -1, -1)
    conditioning = prepare_conditioning(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        latent_product=latent_product,
        masked_image_latents=masked_image_latents,
        guidance_scale=config.guidance_scale,
        dtype=dtype,
    )

    shape = (steps + 1, *masked_image_latents.shape[1:])
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
    if start_seeds is not None:  # x_T of the sample whose own seed is the start seed (step noise kept)
        drawn = {s: torch.randn(shape, generator=torch.Generator().manual_seed(s))[0] for s in set(start_seeds)}
        noise[:, 0] = torch.stack([drawn[s] for s in start_seeds]).to(device)
    start_noise = noise[:, 0]
    latents = noise[:, 0] * model.scheduler.init_noise_sigma
    latents = replace_product_latents(
        latents, latent_product, noise_product_latents(masked_image_latents, start_noise, alphas[0])
    )
    chain, log_probs = [latents], []
    for i in tqdm(range(steps), desc="denoising", unit="step", leave=False, disable=not progress):
        if step_fn is None:
            out = denoise_step(
                model, latents, timesteps[i], conditioning, eta=config.eta, variance_noise=noise[:, i + 1]
            )
        else:
            out = step_fn(
                offset, i, latents, timesteps[i], conditioning, eta=config.eta, variance_noise=noise[:, i + 1]
            )
        # The log-prob above covers background positions only; the product positions of the sample are
        # overwritten here, so the stored chain holds exactly what the UNet sees at the next step.
        replacement = noise_product_latents(masked_image_latents, start_noise, alphas[i + 1])
        latents = replace_product_latents(out.prev_sample, latent_product, replacement)
        chain.append(latents)
        log_probs.append(out.log_prob)

    decoded = model.decode_latents(latents, masked_image=masked_image, product_mask=product_mask.to(device))
    generated = ((decoded.float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    confidence = [r.confidence for r in requests]
    band_weight = None
    if config.band.width > 0 and any(c is not None for c in confidence):
        maps = [c.float() if c is not None else torch.zeros(r.size) for c, r in zip(confidence, requests)]
        band_weight = edge_band(product_mask, torch.stack(maps), config.band)
    images = composite_product(generated, original, product_mask, band_weight)
    report = verify_preservation(
        original, images, product_mask, band_weight=band_weight, enforce=config.enforce_preservation
    )
    trajectory = Trajectory(
        latents=torch.stack(chain, dim=1),
        timesteps=timesteps,
        log_probs=torch.stack(log_probs, dim=1),
        prompt_embeds=prompt_embeds.float(),
        negative_prompt_embeds=negative_prompt_embeds.float().contiguous(),
        masked_image_latents=masked_image_latents,
        latent_product=latent_product,
        product_mask=product_mask.to(device),
        request_ids=tuple(r.request_id for r in requests),
        product_ids=tuple(r.product_id for r in requests),
        prompts=tuple(r.prompt for r in requests),
        seeds=tuple(seeds),
        eta=config.eta,
        guidance_scale=config.guidance_scale,
    )
    return Rollout(images=images, trajectory=trajectory, preservation=report, requests=tuple(requests))


def _merge_reports(reports: Sequence[PreservationReport]) -> PreservationReport:
    offsets, violating, total = [], [], 0
    for report in reports:
        offsets.append(total)
        total += report.samples
    for offset, report in zip(offsets, reports):
        violating.extend(offset + i for i in report.violating_samples)
    return PreservationReport(
        samples=total,
        mask_pixels=sum(r.mask_pixels for r in reports),
        max_abs_diff=max(r.max_abs_diff for r in reports),
        differing_pixels=sum(r.differing_pixels for r in reports),
        violating_samples=tuple(violating),
        band_pixels=sum(r.band_pixels for r in reports),
        band_pixels_in_mask=sum(r.band_pixels_in_mask for r in reports),
    )
