"""Base-model pretraining on the studio world: VAE, mask-aware decoder, then two-stage inpainting with style.

The run, top to bottom (:func:`pretrain`):

1. render the data pools (``experiments.studio.pretrain.data``) from the data seed;
2. stage "vae": the autoencoder on crops, then its latent scaling factor (``experiments.studio.pretrain.autoencoder``);
3. stage "mask_decoder": the mask-aware decoder on composites;
4. stage "denoiser": the inpainting UNet, the text encoder and the style adapter, epsilon prediction,
   inpainting stage 1 (random masks on scenes) then stage 2 (mostly product masks on composites), one
   AdamW and one schedule over both; EMA weights kept if their held-out loss is lower.

Denoising loss of a sample with clean latent x0, known-region latent mask k (cells the sampler replaces),
masked-image latent m, timestep t ~ U{0..T-1} and noise ε ~ N(0, I):

    x_t = √ᾱ_t (k ? m : x0) + √(1 - ᾱ_t) ε          (known cells carry the noised masked image, as in sampling)
    ε̂ = UNet(cat[x_t, 1 - k, m], t, cat[text(prompt or "" w.p. p_drop), style tokens (masked w.p. 1 - p_style)])
    L = Σ w (ε̂ - ε)² / (C Σ w),   w = 1 on painted cells, known_weight on known cells

which is SD-inpainting's objective (Rombach et al. 2022) with prompt dropout for classifier-free guidance
(Ho & Salimans 2022). Style tokens switched off are removed from the cross-attention by its mask, which is
the same computation as not appending them: what the model does without style is trained as well.

Checkpoints (``pretrain.checkpoint``) are written every ``checkpoint_every`` steps and at each stage's
end; ``resume=`` continues from one, drawing the same batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from experiments.studio.pretrain.autoencoder import encode_latents, fit_scaling_factor, train_mask_decoder, train_vae
from experiments.studio.pretrain.checkpoint import Checkpointer, load_checkpoint, read_state
from experiments.studio.pretrain.config import DenoiserTrainConfig, PretrainConfig, PretrainDataConfig
from experiments.studio.pretrain.data import (
    VALIDATION_STREAM,
    ProductPool,
    ScenePool,
    composite,
    masked_images,
    random_known_masks,
    render_product_pool,
    render_scene_pool,
    to_unit_range,
)
from experiments.studio.pretrain.optim import WeightEMA, set_learning_rates, trainable
from experiments.studio.prompts import studio_vocabulary
from policy.config import InpaintModelConfig
from policy.model import InpaintPolicy
from policy.style import StyleConditioning
from policy.vae import MaskAwareDecoder
from rollout.masks import inpaint_mask_channel, latent_product_mask

logger = logging.getLogger(__name__)

LogMetrics = Callable[[Mapping[str, float], int], None]
STAGES = ("vae", "mask_decoder", "denoiser", "done")
"""Stage names in order; a checkpoint records the stage it was written in."""


@dataclass(frozen=True, eq=False)
class PretrainData:
    """Training and held-out pools (held-out products come from another stream of the data seed)."""

    scenes: ScenePool
    products: ProductPool
    validation_scenes: ScenePool
    validation_products: ProductPool


def render_data(config: PretrainDataConfig, size: int, *, progress: bool = False) -> PretrainData:
    """Render every pool of a run from ``config.seed`` (deterministic)."""
    scenes = render_scene_pool(
        config.scenes, size, config.seed, colour_probability=config.colour_probability, progress=progress
    )
    products = render_product_pool(config.products, size, config.seed)
    validation_scenes = render_scene_pool(
        config.validation, size, config.seed, stream=VALIDATION_STREAM, colour_probability=config.colour_probability
    )
    validation_products = render_product_pool(config.validation, size, config.seed, stream=VALIDATION_STREAM + 1)
    return PretrainData(scenes, products, validation_scenes, validation_products)


@dataclass(eq=False)
class PretrainResult:
    """The trained model and what the run measured on the way."""

    policy: InpaintPolicy
    """The base model, frozen, with its mask-aware decoder (if trained)."""
    style: StyleConditioning
    """The style encoder and the trained adapter."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall-clock seconds per stage in this process (a resumed stage counts only the resumed part)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Final held-out metrics of the training stages (the evaluation adds more)."""


@dataclass(frozen=True, eq=False)
class PoolCache:
    """Per-pool tensors computed once after the VAE is trained."""

    scene_latents: torch.Tensor
    """Scaled latents of the scenes ``[N, C, h, w]``."""
    product_latents: torch.Tensor
    """Scaled latents of the products' masked images (product on grey) ``[M, C, h, w]``."""
    style_embeddings: torch.Tensor
    """Style embeddings of the scenes ``[N, D_s]``."""
    prompt_ids: torch.Tensor
    """Token ids of the scenes' prompts ``[N, L]``."""


@dataclass(frozen=True, eq=False)
class DenoiserBatch:
    """One batch of the denoising objective (module docstring), on the model's device."""

    latents: torch.Tensor
    """x0 ``[B, C, h, w]``."""
    masked_latents: torch.Tensor
    """m ``[B, C, h, w]``."""
    known: torch.Tensor
    """k ``[B, 1, h, w]`` bool: cells the sampler would replace."""
    input_ids: torch.Tensor
    """``[B, L]`` prompt tokens (the empty prompt where dropped)."""
    style_embeddings: torch.Tensor
    """``[B, D_s]`` embeddings of the style images."""
    style_on: torch.Tensor
    """``[B]`` bool: whether the style tokens take part in the attention."""
    timesteps: torch.Tensor
    """``[B]`` int64."""
    noise: torch.Tensor
    """ε ``[B, C, h, w]``."""


def pretrain(
    model_config: InpaintModelConfig,
    config: PretrainConfig,
    *,
    seed: int,
    checkpoint_dir: Path,
    log_metrics: LogMetrics,
    resume: Path | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> PretrainResult:
    """Pretrain the tiny inpainting model (module docstring) and return it.

    Args:
        model_config: the architecture (``pretrained`` must be None: this builds the model from scratch).
        config: data, stages, checkpoints.
        seed: seeds batch sampling, noise and timesteps (the data pools follow ``config.data.seed``).
        checkpoint_dir: where checkpoints are written.
        log_metrics: ``log_metrics(metrics, step)`` (``experiments.tracking.Run.log_metrics``).
        resume: a checkpoint to continue from (``<run>/checkpoints/latest.safetensors``).
        device: where the model trains.
        progress: tqdm bars.
    """
    if model_config.pretrained is not None:
        raise ValueError("pretraining builds the model from the config; model.pretrained must not be set")
    device = torch.device(device)
    data = render_data(config.data, model_config.resolution, progress=progress)
    policy = InpaintPolicy.from_config(model_config, vocabulary=studio_vocabulary(), device=device)
    # The style adapter, then (after the VAE) the mask decoder's context branch, are initialised from one stream
    # seeded with `seed`, independent of whatever used the global generator before (exact resumes, repeat runs).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        style = StyleConditioning(config.denoiser.style, policy.text_encoder.config.hidden_size).to(device)
        init_state = torch.get_rng_state()
    modules: dict[str, torch.nn.Module] = {
        "vae": policy.vae, "unet": policy.unet, "text_encoder": policy.text_encoder, "style": style
    }  # fmt: skip
    checkpointer = Checkpointer(checkpoint_dir, modules, config.checkpoint_every)
    state = read_state(resume) if resume is not None else None
    position = STAGES.index(state.stage) if state is not None else 0
    if state is not None and position > 0:  # the VAE is trained: its scaling factor lives in the checkpoint
        policy.vae.register_to_config(scaling_factor=state.scaling_factor)
        checkpointer.scaling_factor = state.scaling_factor
    decoder = None
    if config.mask_decoder.steps > 0 and position >= STAGES.index("mask_decoder"):
        decoder = _new_mask_decoder(policy, config, init_state)
        modules["mask_decoder"] = decoder
    if state is not None:
        load_checkpoint(resume, modules)  # weights only; each stage restores its own optimiser below
    seconds: dict[str, float] = {}
    metrics: dict[str, float] = {}

    def stage_start(name: str) -> tuple[Path | None, int]:
        """The checkpoint to restore the stage's optimiser from, and the step to start at."""
        if state is not None and state.stage == name:
            return (resume if state.step > 0 else None), state.step
        return None, 0

    if position <= STAGES.index("vae"):
        started = time.perf_counter()
        resume_from, start = stage_start("vae")
        policy.vae.to(memory_format=torch.channels_last)
        train_vae(policy.vae, data.scenes, data.products, config.vae, generator=_generator(seed, "vae"),
                  checkpointer=checkpointer, log_metrics=log_metrics, resume=resume_from, start_step=start,
                  progress=progress)  # fmt: skip
        checkpointer.scaling_factor = fit_scaling_factor(policy.vae, data.scenes.images[:1024])
        logger.info("VAE latent scaling factor: %.4f", checkpointer.scaling_factor)
        if config.mask_decoder.steps > 0:
            decoder = _new_mask_decoder(policy, config, init_state)
            modules["mask_decoder"] = decoder
        checkpointer.save("mask_decoder", 0)
        seconds["vae"] = time.perf_counter() - started

    if config.mask_decoder.steps > 0 and position <= STAGES.index("mask_decoder"):
        started = time.perf_counter()
        resume_from, start = stage_start("mask_decoder")
        product_latents = _scaled_latents(policy, masked_images(data.products.rgb, data.products.masks))
        decoder.set_scaling_factor(policy.vae.config.scaling_factor)
        train_mask_decoder(decoder, policy.vae, data.scenes, data.products, product_latents, config.mask_decoder,
                           generator=_generator(seed, "mask_decoder"), checkpointer=checkpointer,
                           log_metrics=log_metrics, resume=resume_from, start_step=start,
                           progress=progress)  # fmt: skip
        checkpointer.save("denoiser", 0)
        seconds["mask_decoder"] = time.perf_counter() - started
    if decoder is not None:
        decoder.set_scaling_factor(policy.vae.config.scaling_factor)

    if position <= STAGES.index("denoiser"):
        started = time.perf_counter()
        resume_from, start = stage_start("denoiser")
        cache = build_cache(policy, style, data.scenes, data.products)
        validation = build_cache(policy, style, data.validation_scenes, data.validation_products)
        metrics |= train_denoiser(policy, style, data, cache, validation, config.denoiser, seed=seed,
                                  checkpointer=checkpointer, log_metrics=log_metrics, resume=resume_from,
                                  start_step=start, progress=progress)  # fmt: skip
        checkpointer.save("done", config.denoiser.steps)
        seconds["denoiser"] = time.perf_counter() - started
    # Tokenising with padding/truncation leaves those settings on the fast tokenizer, and tokenizer.json would
    # record them; reset them so the written folder does not depend on which stages ran in this process.
    policy.tokenizer.backend_tokenizer.no_truncation()
    policy.tokenizer.backend_tokenizer.no_padding()
    final = InpaintPolicy(
        unet=policy.unet, vae=policy.vae, text_encoder=policy.text_encoder, tokenizer=policy.tokenizer,
        scheduler=policy.scheduler, device=device, mask_decoder=decoder,
    )  # fmt: skip
    policy.vae.to(memory_format=torch.contiguous_format)
    return PretrainResult(policy=final, style=style.eval().requires_grad_(False), seconds=seconds, metrics=metrics)


def _new_mask_decoder(policy: InpaintPolicy, config: PretrainConfig, init_state: torch.Tensor) -> MaskAwareDecoder:
    """The mask-aware decoder, its context branch initialised from the global generator state ``init_state``."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(init_state)
        return MaskAwareDecoder.from_vae(policy.vae, config.mask_decoder.context)


def _generator(seed: int, stage: str) -> torch.Generator:
    """One batch generator per stage, so a stage draws the same batches whatever ran before it."""
    return torch.Generator().manual_seed(seed * 1_000 + STAGES.index(stage))


@torch.no_grad()
def _scaled_latents(policy: InpaintPolicy, images: torch.Tensor) -> torch.Tensor:
    latents = encode_latents(policy.vae, images.to(policy.device))
    return latents * policy.vae.config.scaling_factor


def _prompt_ids(policy: InpaintPolicy, prompts: list[str]) -> torch.Tensor:
    """Token ids ``[N, L]`` exactly as ``policy.text.PromptEncoder`` tokenises prompts for sampling."""
    length = policy.tokenizer.model_max_length
    ids = policy.tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return ids.input_ids


@torch.no_grad()
def build_cache(
    policy: InpaintPolicy, style: StyleConditioning, scenes: ScenePool, products: ProductPool
) -> PoolCache:
    """Latents, style embeddings and prompt tokens of the pools (once, after the VAE is trained)."""
    return PoolCache(
        scene_latents=_scaled_latents(policy, to_unit_range(scenes.images)).cpu(),
        product_latents=_scaled_latents(policy, masked_images(products.rgb, products.masks)).cpu(),
        style_embeddings=style.encoder.encode(scenes.images).cpu(),
        prompt_ids=_prompt_ids(policy, list(scenes.prompts)),
    )


def make_denoiser_batch(
    policy: InpaintPolicy,
    scenes: ScenePool,
    products: ProductPool,
    cache: PoolCache,
    config: DenoiserTrainConfig,
    *,
    batch_size: int,
    product_fraction: float,
    generator: torch.Generator,
    prompt_dropout: float,
) -> DenoiserBatch:
    """Draw a batch: scenes with random masks, and (``product_fraction``) composites with product masks."""
    factor = policy.vae_scale_factor
    picks = torch.randint(0, len(scenes), (batch_size,), generator=generator)
    with_product = torch.rand(batch_size, generator=generator) < product_fraction
    product_picks = torch.randint(0, len(products), (batch_size,), generator=generator)
    random_known = random_known_masks(batch_size, scenes.images.shape[-1], generator)
    known_pixels = torch.where(with_product[:, None, None], products.masks[product_picks], random_known)
    scene_images = scenes.images[picks]
    composites = composite(scene_images, products.rgb[product_picks], known_pixels & with_product[:, None, None])
    # One encoder pass: the composite (its target x0) for product samples, the masked scene (its m) for the rest.
    to_encode = torch.where(with_product[:, None, None, None], to_unit_range(composites),
                            masked_images(scene_images, known_pixels))  # fmt: skip
    encoded = _scaled_latents(policy, to_encode).cpu()
    selector = with_product[:, None, None, None]
    latents = torch.where(selector, encoded, cache.scene_latents[picks])
    masked = torch.where(selector, cache.product_latents[product_picks], encoded)
    style_partners = scenes.style_partners(picks, config.style_same_prompt, generator)
    dropped = torch.rand(batch_size, generator=generator) < prompt_dropout
    input_ids = torch.where(dropped[:, None], _prompt_ids(policy, [""]), cache.prompt_ids[picks])
    style_on = torch.rand(batch_size, generator=generator) < config.style_probability
    timesteps = torch.randint(0, policy.scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    device = policy.device
    return DenoiserBatch(
        latents=latents.to(device),
        masked_latents=masked.to(device),
        known=latent_product_mask(known_pixels, factor).to(device),
        input_ids=input_ids.to(device),
        style_embeddings=cache.style_embeddings[style_partners].to(device),
        style_on=style_on.to(device),
        timesteps=timesteps.to(device),
        noise=noise.to(device),
    )


def denoiser_loss(
    policy: InpaintPolicy, style: StyleConditioning, batch: DenoiserBatch, known_weight: float
) -> torch.Tensor:
    """The weighted epsilon-prediction MSE of the module docstring (a 0-d tensor)."""
    scheduler = policy.scheduler
    start = torch.where(batch.known, batch.masked_latents, batch.latents)
    noisy = scheduler.add_noise(start, batch.noise, batch.timesteps)
    model_input = torch.cat([noisy, inpaint_mask_channel(batch.known, noisy.dtype), batch.masked_latents], dim=1)
    text = policy.text_encoder(batch.input_ids)[0]
    tokens = style.adapter(batch.style_embeddings).to(text.dtype)
    hidden = torch.cat([text, tokens], dim=1)
    keep = torch.cat(
        [torch.ones(text.shape[:2], dtype=torch.bool, device=text.device),
         batch.style_on[:, None].expand(-1, tokens.shape[1])], dim=1,
    )  # fmt: skip
    prediction = policy.unet(model_input, batch.timesteps, encoder_hidden_states=hidden,
                             encoder_attention_mask=keep).sample  # fmt: skip
    weight = torch.where(batch.known, known_weight, 1.0).to(prediction.dtype)
    squared = (prediction.float() - batch.noise).pow(2)
    return (weight * squared).sum() / (weight.sum() * squared.shape[1]).clamp_min(1e-8)


def train_denoiser(
    policy: InpaintPolicy,
    style: StyleConditioning,
    data: PretrainData,
    cache: PoolCache,
    validation_cache: PoolCache,
    config: DenoiserTrainConfig,
    *,
    seed: int,
    checkpointer: Checkpointer,
    log_metrics: LogMetrics,
    resume: Path | None = None,
    start_step: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Stage "denoiser": both inpainting stages; returns the final held-out losses (raw, EMA, kept)."""
    parts = [policy.unet, style.adapter]
    for module in (policy.unet, policy.text_encoder, style.adapter):
        module.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(trainable(parts)), "lr": config.learning_rate, "peak_lr": config.learning_rate},
            {"params": list(trainable([policy.text_encoder])), "lr": config.text_learning_rate,
             "peak_lr": config.text_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )  # fmt: skip
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    ema = WeightEMA(parameters, config.ema_decay) if config.ema_decay > 0 else None
    generator = _generator(seed, "denoiser")
    if resume is not None:
        load_checkpoint(resume, checkpointer.modules, optimizer=optimizer,
                        ema=ema.shadow if ema else None, generator=generator)  # fmt: skip
    validation = make_denoiser_batch(
        policy, data.validation_scenes, data.validation_products, validation_cache, config,
        batch_size=128, product_fraction=0.5, generator=torch.Generator().manual_seed(seed + 99_991),
        prompt_dropout=0.0,
    )  # fmt: skip
    bar = tqdm(range(start_step, config.steps), desc="denoiser", unit="step", disable=not progress)
    for step in bar:
        stage = 1 if step < config.stage1.steps else 2
        stage_config = config.stage1 if stage == 1 else config.stage2
        set_learning_rates(optimizer, step, warmup_steps=config.warmup_steps, total_steps=config.steps)
        batch = make_denoiser_batch(
            policy, data.scenes, data.products, cache, config, batch_size=config.batch_size,
            product_fraction=stage_config.product_fraction, generator=generator, prompt_dropout=config.prompt_dropout,
        )  # fmt: skip
        loss = denoiser_loss(policy, style, batch, config.known_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(step)
        if step % 10 == 0 or step == config.steps - 1:
            log_metrics({"denoiser/loss": float(loss.detach()), "denoiser/grad_norm": float(grad_norm),
                         "denoiser/lr": optimizer.param_groups[0]["lr"], "denoiser/stage": stage}, step)  # fmt: skip
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", stage=stage)
        if (step + 1) % config.validate_every == 0:
            log_metrics({"denoiser/val_loss": _validation_loss(policy, style, validation, config)}, step)
        checkpointer.maybe_save("denoiser", step + 1, optimizer=optimizer, ema=ema.shadow if ema else None,
                                generator=generator)  # fmt: skip
    result = {"denoiser/val_loss": _validation_loss(policy, style, validation, config)}
    if ema is not None:
        with ema.swapped():
            result["denoiser/val_loss_ema"] = _validation_loss(policy, style, validation, config)
        use_ema = result["denoiser/val_loss_ema"] < result["denoiser/val_loss"]
        if use_ema:
            ema.swap()  # keep the EMA weights
        result["denoiser/kept_ema"] = float(use_ema)
        logger.info("held-out loss: trained %.4f, EMA %.4f -> keeping the %s weights",
                    result["denoiser/val_loss"], result["denoiser/val_loss_ema"],
                    "EMA" if use_ema else "trained")  # fmt: skip
    for module in (policy.unet, policy.text_encoder, style.adapter):
        module.eval().requires_grad_(False)
    log_metrics(result, config.steps)
    return result


@torch.no_grad()
def _validation_loss(
    policy: InpaintPolicy, style: StyleConditioning, batch: DenoiserBatch, config: DenoiserTrainConfig
) -> float:
    return float(denoiser_loss(policy, style, batch, config.known_weight))
