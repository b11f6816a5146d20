"""Configuration of base-model pretraining on the studio world (``backdrop policy pretrain``).

Stages, in order (each section below configures one):

1. ``[pretrain.vae]``: the autoencoder, reconstruction (L1 + image-gradient L1) + a little KL, on random crops
   of scenes and composites; then the latent scaling factor is set to 1 / std of the latents.
2. ``[pretrain.mask_decoder]``: the mask-aware decoder (``policy.vae``) on composites, decoding the latents the
   sampler ends with (product cells from the masked image).
3. ``[pretrain.denoiser]`` stage 1 then stage 2: the 9-channel UNet (+ text encoder + style adapter), epsilon
   prediction, with random masks on scenes, then mostly product masks on composites.

The configs of the parts this builds (:class:`~policy.config.StyleConfig` of ``policy.style``,
:class:`~policy.config.MaskDecoderConfig` of ``policy.vae``) live in ``policy.config`` (loading a config never
imports torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from policy.config import MaskDecoderConfig, StyleConfig


@dataclass(frozen=True, kw_only=True)
class PretrainDataConfig:
    """The studio-world training data: a pool of rendered scenes and products, fixed by ``seed``."""

    seed: int = 0
    """Data seed: every scene, product, held-out image and mask of the run derives from it (not run.seed)."""
    scenes: int = 8192
    """Training scenes rendered up front (~1.3 ms each); prompts are drawn with the simulator's sample_prompt."""
    products: int = 2048
    """Training products rendered up front (all PRODUCT_KINDS in turn)."""
    validation: int = 256
    """Held-out scenes and products (separate random streams) for losses, PSNR and seam metrics."""
    colour_probability: float = 0.6
    """Probability that a sampled prompt names a colour (the simulator's default)."""

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.scenes < 16 or self.products < 8 or self.validation < 8:
            raise ValueError(
                f"need scenes >= 16, products >= 8, validation >= 8; got {self.scenes}, {self.products}, "
                f"{self.validation}"
            )
        if not 0 <= self.colour_probability <= 1:
            raise ValueError(f"colour_probability must be in [0, 1], got {self.colour_probability}")


@dataclass(frozen=True, kw_only=True)
class VAETrainConfig:
    """Stage 1: the autoencoder (loss in ``pretrain.autoencoder``'s docstring; means per element)."""

    steps: int = 600
    """Optimiser steps (0 keeps the VAE as built, e.g. to resume a denoiser on a trained VAE)."""
    batch_size: int = 32
    """Crops per step."""
    learning_rate: float = 1e-3
    """AdamW peak learning rate (linear warmup over warmup_steps, then cosine to 10 %)."""
    warmup_steps: int = 50
    """Linear warmup of the learning rate."""
    crop: int = 32
    """Side of the random training crops in pixels (a multiple of the VAE factor); convolutions generalise to
    the full 64 px image, and a 32 px crop costs a quarter of a full image."""
    composite_fraction: float = 0.35
    """Fraction of crops taken from scenes with a product composited on them (products must survive too)."""
    gradient_weight: float = 0.5
    """Weight of the L1 loss on horizontal and vertical pixel differences: keeps fine texture, fights blur."""
    kl_weight: float = 1e-4
    """Weight of the KL(q(z|x) || N(0, I)) term, averaged over latent elements."""
    colour_weight: float = 0.0
    """Weight of an MSE between 4x4-average-pooled input and reconstruction: the colour of regions. L1's
    gradient does not grow with the error, and rare saturated colours (blush, terracotta) were reconstructed
    desaturated without it."""

    def __post_init__(self) -> None:
        _check_optimiser(self.steps, self.batch_size, self.learning_rate, self.warmup_steps)
        if self.crop < 8:
            raise ValueError(f"crop must be >= 8 pixels, got {self.crop}")
        if not 0 <= self.composite_fraction <= 1:
            raise ValueError(f"composite_fraction must be in [0, 1], got {self.composite_fraction}")
        if self.gradient_weight < 0 or self.kl_weight < 0 or self.colour_weight < 0:
            raise ValueError("gradient_weight, kl_weight and colour_weight must be >= 0")


@dataclass(frozen=True, kw_only=True)
class MaskDecoderTrainConfig:
    """Stage 2: the mask-aware decoder, trained to reconstruct composites from the sampler's final latents.

    loss = mean over background pixels of w |x - x̂| + gradient_weight |∇x - ∇x̂|, with w = 1 + band_weight
    within ``band`` pixels of the product (where the halo would be) and 1 elsewhere.
    """

    steps: int = 300
    """Optimiser steps (0 skips the mask-aware decoder: the model decodes with the VAE's decoder)."""
    batch_size: int = 16
    """Composites per step (full images: the context needs the whole product)."""
    learning_rate: float = 5e-4
    """AdamW peak learning rate (warmup, then cosine to 10 %)."""
    warmup_steps: int = 20
    """Linear warmup of the learning rate."""
    band: int = 4
    """Width in pixels of the ring outside the product that gets the extra weight."""
    band_weight: float = 4.0
    """Extra loss weight in that ring."""
    gradient_weight: float = 0.5
    """Weight of the image-gradient L1 term."""
    context: MaskDecoderConfig = field(default_factory=MaskDecoderConfig)
    """The context branch's architecture."""

    def __post_init__(self) -> None:
        if self.steps:
            _check_optimiser(self.steps, self.batch_size, self.learning_rate, self.warmup_steps)
        if self.band < 1 or self.band_weight < 0 or self.gradient_weight < 0:
            raise ValueError("band must be >= 1, band_weight and gradient_weight >= 0")


@dataclass(frozen=True, kw_only=True)
class DenoiserStageConfig:
    """One inpainting stage of the UNet."""

    steps: int
    """Optimiser steps of this stage."""
    product_fraction: float
    """Fraction of samples with a product mask (a product composited on the scene is the known region); the
    rest get random masks (boxes, blobs, strokes, or the whole image) on plain scenes."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not 0 <= self.product_fraction <= 1:
            raise ValueError(f"product_fraction must be in [0, 1], got {self.product_fraction}")


@dataclass(frozen=True, kw_only=True)
class DenoiserTrainConfig:
    """Stages 3 and 4: the inpainting UNet, with the text encoder and the style adapter, epsilon-prediction MSE.

    Both stages share one AdamW optimiser and one learning-rate schedule (warmup, cosine over the total steps).
    """

    stage1: DenoiserStageConfig = field(default_factory=lambda: DenoiserStageConfig(steps=900, product_fraction=0.0))
    """Random masks on procedural scenes."""
    stage2: DenoiserStageConfig = field(default_factory=lambda: DenoiserStageConfig(steps=1200, product_fraction=0.7))
    """Mostly product masks: the product is the known region, the background is painted."""
    batch_size: int = 48
    """Samples per step."""
    learning_rate: float = 1e-3
    """AdamW peak learning rate for the UNet and the style adapter."""
    text_learning_rate: float = 3e-4
    """AdamW peak learning rate for the text encoder (trained jointly: a random CLIP separates prompts poorly)."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warmup of the learning rate."""
    grad_clip: float = 1.0
    """Clip of the global gradient norm."""
    prompt_dropout: float = 0.1
    """Probability that a sample's prompt is replaced by "" (the unconditional branch of CFG)."""
    known_weight: float = 0.1
    """Loss weight of latent positions the sampler never paints (it replaces them); painted positions weigh 1."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the trained weights (with the usual (1 + n) / (10 + n) warmup);
    at the end the EMA weights are kept if their validation loss is lower. 0 disables the EMA."""
    style_probability: float = 0.5
    """Probability that a sample gets style tokens; otherwise they are masked out of the attention (which equals
    having none), so the model also learns the style-free behaviour."""
    style_same_prompt: float = 0.5
    """Probability that the style image shares the sample's whole prompt; otherwise only its family (material)."""
    style: StyleConfig = field(default_factory=StyleConfig)
    """The style adapter and its frozen encoder."""
    validate_every: int = 200
    """Steps between validation losses on the held-out batch (fixed masks, noise and timesteps)."""

    def __post_init__(self) -> None:
        _check_optimiser(self.steps, self.batch_size, self.learning_rate, self.warmup_steps)
        if not self.text_learning_rate >= 0 or not self.grad_clip > 0 or self.weight_decay < 0:
            raise ValueError("text_learning_rate and weight_decay must be >= 0 and grad_clip > 0")
        for name in ("prompt_dropout", "known_weight", "style_probability", "style_same_prompt"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.validate_every < 1:
            raise ValueError(f"validate_every must be >= 1, got {self.validate_every}")

    @property
    def steps(self) -> int:
        """Total optimiser steps of both stages."""
        return self.stage1.steps + self.stage2.steps


@dataclass(frozen=True, kw_only=True)
class PretrainEvalConfig:
    """The evaluation written into the manifest: samples, prompt adherence, seams, style effect."""

    samples: int = 96
    """Samples drawn with the final model (held-out products and prompts)."""
    num_steps: int = 20
    """DDIM steps per sample."""
    guidance_scale: float = 5.0
    """Classifier-free guidance of the evaluation samples."""
    classifier_scenes: int = 2048
    """Rendered composites used to fit the nearest-prompt attribute classifiers."""

    def __post_init__(self) -> None:
        if self.samples < 8 or self.num_steps < 1 or self.classifier_scenes < 64:
            raise ValueError("need samples >= 8, num_steps >= 1 and classifier_scenes >= 64")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Base-model pretraining: data, the four stages, checkpoints and the final evaluation."""

    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    """Training and held-out data."""
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)
    """Autoencoder stage."""
    mask_decoder: MaskDecoderTrainConfig = field(default_factory=MaskDecoderTrainConfig)
    """Mask-aware decoder stage."""
    denoiser: DenoiserTrainConfig = field(default_factory=DenoiserTrainConfig)
    """Inpainting stages of the UNet."""
    evaluation: PretrainEvalConfig = field(default_factory=PretrainEvalConfig)
    """Final evaluation."""
    checkpoint_every: int = 200
    """Steps between checkpoints (also written at the end of every stage); a run resumes from the latest."""
    weights_dtype: Literal["float32", "float16"] = "float16"
    """Dtype of the written UNet, VAE, text-encoder and decoder weights; float16 halves the shipped size, and
    loading casts back to the compute dtype. The evaluation runs on the weights as written."""

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")


def _check_optimiser(steps: int, batch_size: int, learning_rate: float, warmup_steps: int) -> None:
    if steps < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0 and batch_size >= 1, got {steps}, {batch_size}")
    if not learning_rate > 0 or warmup_steps < 0:
        raise ValueError(f"need learning_rate > 0 and warmup_steps >= 0, got {learning_rate}, {warmup_steps}")
