"""Configuration of the inpainting policy: the model's architecture or checkpoint folder, and its LoRA adapter.

TOML layout (section names are the field names of the root config that composes :class:`PolicyConfig`)::

    [policy.model]            # pretrained = "path/to/sd-inpainting" or the tiny architecture below
    [policy.model.unet]
    [policy.model.vae]
    [policy.model.text]
    [policy.model.scheduler]
    [policy.lora]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """A 9-channel inpainting ``UNet2DConditionModel`` built from scratch (ignored when loading a checkpoint).

    Defaults: 1.41 M parameters, 16x16 latents -> 8x8 -> 4x4. Cross-attention (text conditioning) sits at the
    4x4 level, in the mid block and in the first up block; measured on 2 CPU cores one forward at batch 16
    (CFG doubles a batch of 8) takes ~15 ms, a LoRA forward+backward ~30 ms. Adding cross-attention at the
    8x8 level (``cross_attention_levels = [false, true, true]``, 1.69 M) roughly doubles both, which no longer
    fits a 1.5 s DDPO epoch (batch 8, 20 steps) on 2 cores; see experiments/bench/rollout.py.
    """

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """Channels per resolution level; each level after the first halves the spatial size."""
    cross_attention_levels: tuple[bool, ...] = (False, False, True)
    """Per level, whether its blocks carry a transformer with self- and cross-attention (same length as
    block_out_channels). The mid block always has one. LoRA targets live in these transformers."""
    layers_per_block: int = 1
    """ResNet (+ transformer) layers per down block; up blocks get one more, as in diffusers."""
    attention_head_dim: int = 8
    """Attention heads per transformer (diffusers' historical name for the head count)."""
    norm_num_groups: int = 8
    """GroupNorm groups; must divide every entry of block_out_channels."""

    def __post_init__(self) -> None:
        if not self.block_out_channels or any(c <= 0 for c in self.block_out_channels):
            raise ValueError(f"block_out_channels must be non-empty positive ints, got {self.block_out_channels}")
        if len(self.cross_attention_levels) != len(self.block_out_channels):
            raise ValueError(
                f"cross_attention_levels has {len(self.cross_attention_levels)} entries but block_out_channels has "
                f"{len(self.block_out_channels)}; give one bool per level"
            )
        if self.layers_per_block < 1 or self.attention_head_dim < 1 or self.norm_num_groups < 1:
            raise ValueError("layers_per_block, attention_head_dim and norm_num_groups must be >= 1")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every block_out_channels, not {bad}")

    @property
    def down_factor(self) -> int:
        """How much smaller the deepest level is than the latent (2 ** (levels - 1))."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """The ``AutoencoderKL`` built from scratch (ignored when loading a checkpoint).

    The downsampling factor is 2 ** (levels - 1): the default 3 levels map 64 px to a 16x16x4 latent.
    """

    block_out_channels: tuple[int, ...] = (16, 32, 64)
    """Channels per encoder level (the decoder mirrors them)."""
    layers_per_block: int = 1
    """ResNet layers per encoder block (the decoder has one more, as in diffusers)."""
    latent_channels: int = 4
    """Channels of the latent; the UNet then takes 2 * latent_channels + 1 input channels."""
    norm_num_groups: int = 8
    """GroupNorm groups; must divide every entry of block_out_channels."""
    scaling_factor: float = 1.0
    """Latents are multiplied by this after encoding so that they have roughly unit variance (SD: 0.18215).
    A freshly initialised VAE has no meaningful value; base-model pretraining should set it to 1 / std."""

    def __post_init__(self) -> None:
        if not self.block_out_channels or any(c <= 0 for c in self.block_out_channels):
            raise ValueError(f"block_out_channels must be non-empty positive ints, got {self.block_out_channels}")
        if self.layers_per_block < 1 or self.latent_channels < 1 or self.norm_num_groups < 1:
            raise ValueError("layers_per_block, latent_channels and norm_num_groups must be >= 1")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every block_out_channels, not {bad}")
        if not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {self.scaling_factor}")

    @property
    def scale_factor(self) -> int:
        """Pixels per latent position along each axis."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig:
    """The ``CLIPTextModel`` and its offline-built ``CLIPTokenizer`` (ignored when loading a checkpoint)."""

    hidden_size: int = 64
    """Width of the text encoder; also the UNet's cross_attention_dim."""
    num_layers: int = 2
    """Transformer layers of the text encoder."""
    num_heads: int = 4
    """Attention heads; must divide hidden_size."""
    intermediate_size: int = 128
    """MLP width inside each text-encoder layer."""
    max_length: int = 16
    """Tokens per prompt including start and end tokens (SD uses 77); prompts are padded or truncated to it.
    Longer sequences cost cross-attention time in every UNet forward."""

    def __post_init__(self) -> None:
        if min(self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size) < 1:
            raise ValueError("hidden_size, num_layers, num_heads and intermediate_size must be >= 1")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        if self.max_length < 3:
            raise ValueError(f"max_length must be >= 3 (start, one token, end), got {self.max_length}")


@dataclass(frozen=True, kw_only=True)
class NoiseScheduleConfig:
    """The ``DDIMScheduler`` of a model built from scratch; a checkpoint brings its own ``scheduler/`` config.

    Defaults are Stable Diffusion's. ``set_alpha_to_one`` is always false and ``clip_sample`` off, so that every
    DDIM step with eta > 0 has a strictly positive standard deviation and a finite log-prob.
    """

    num_train_timesteps: int = 1000
    """Length of the training noise schedule."""
    beta_start: float = 0.00085
    """First beta of the schedule."""
    beta_end: float = 0.012
    """Last beta of the schedule."""
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"
    """How betas go from beta_start to beta_end (squaredcos_cap_v2 ignores both)."""
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    """What the UNet predicts."""
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"
    """How sampling timesteps are spread over the schedule (diffusers' names)."""
    steps_offset: int = 1
    """Added to every sampling timestep with "leading" spacing (SD: 1)."""

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if not 0 <= self.steps_offset < self.num_train_timesteps:
            raise ValueError(f"steps_offset must be in [0, num_train_timesteps), got {self.steps_offset}")


@dataclass(frozen=True, kw_only=True)
class InpaintModelConfig:
    """Where the inpainting model comes from: a local diffusers-format folder, or a tiny model built here."""

    pretrained: Path | None = None
    """A local folder in diffusers' layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/, safetensors
    weights), e.g. a Stable Diffusion inpainting checkpoint or a folder written by InpaintPolicy.save_pretrained.
    When set, resolution and the unet/vae/text/scheduler sections are ignored. Nothing is downloaded.
    "studio_tiny" names the base model pretrained on the studio world and shipped in policy/weights/studio_tiny."""
    resolution: int = 64
    """Image side in pixels for a model built here; a multiple of the VAE factor times the UNet's down factor."""
    init_seed: int = 0
    """Seed of the random initialisation of a model built here (independent of run.seed)."""
    channels_last: bool = False
    """Run the UNet in channels_last memory format (faster convolutions on GPU; about neutral on CPU)."""
    unet: UNetConfig = field(default_factory=UNetConfig)
    """Architecture of the denoiser."""
    vae: VAEConfig = field(default_factory=VAEConfig)
    """Architecture of the autoencoder."""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """Architecture of the text encoder and the tokenizer's sequence length."""
    scheduler: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    """Noise schedule of the DDIM sampler."""

    def __post_init__(self) -> None:
        if self.init_seed < 0:
            raise ValueError(f"init_seed must be >= 0, got {self.init_seed}")
        multiple = self.vae.scale_factor * self.unet.down_factor
        if self.resolution <= 0 or self.resolution % multiple:
            raise ValueError(
                f"resolution={self.resolution} must be a positive multiple of {multiple} (VAE factor "
                f"{self.vae.scale_factor} x UNet down factor {self.unet.down_factor})"
            )


@dataclass(frozen=True, kw_only=True)
class StyleConfig:
    """The style adapter and its frozen encoder."""

    num_tokens: int = 4
    """K, extra conditioning tokens appended to the text tokens (each costs cross-attention time like a word)."""
    hidden_size: int = 128
    """Width of the adapter's MLP."""
    encoder_filters: int = 8
    """Filters of the encoder's fixed random bank; the embedding has 12 + 6 + F + F(F+1)/2 dimensions."""
    encoder_seed: int = 0
    """Seed of the random filter bank (the bank is also saved with the weights)."""

    def __post_init__(self) -> None:
        if self.num_tokens < 1 or self.hidden_size < 1 or self.encoder_filters < 1:
            raise ValueError(
                f"num_tokens, hidden_size and encoder_filters must be >= 1, got {self.num_tokens}, "
                f"{self.hidden_size}, {self.encoder_filters}"
            )
        if self.encoder_seed < 0:
            raise ValueError(f"encoder_seed must be >= 0, got {self.encoder_seed}")


@dataclass(frozen=True, kw_only=True)
class MaskDecoderConfig:
    """The context branch of :class:`MaskAwareDecoder` (the decoder itself mirrors the VAE's)."""

    context_channels: int = 16
    """Width of the context branch at full resolution; each coarser level doubles it (capped at 4x)."""

    def __post_init__(self) -> None:
        if self.context_channels < 1:
            raise ValueError(f"context_channels must be >= 1, got {self.context_channels}")


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """The trainable LoRA adapter on the UNet (peft), W x + (alpha / rank) B A x with B initialised to zero.

    Because B starts at zero, the adapted model equals the base model until the first update, so the KL to the
    base (adapters disabled) is exactly 0 at the start of training.
    """

    rank: int = 4
    """Rank r of each low-rank update (DDPO: 4)."""
    alpha: float = 4.0
    """Scale numerator: the update is multiplied by alpha / rank. Changing rank at fixed alpha changes the
    effective learning rate of the adapter."""
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """Module names (peft suffix match) that get an adapter: by default every attention projection."""
    dropout: float = 0.0
    """Dropout on the LoRA input; keep 0 for RL so that recomputed log-probs equal the sampled ones."""
    init: Literal["gaussian", "kaiming"] = "gaussian"
    """Initialisation of A (B is always zero): gaussian N(0, 1/r) as in diffusers' LoRA scripts, or kaiming
    uniform (peft's default)."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not self.target_modules or any(not m for m in self.target_modules):
            raise ValueError(f"target_modules must be non-empty module names, got {self.target_modules}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """The inpainting policy: the model and the adapter that is trained on top of it."""

    model: InpaintModelConfig = field(default_factory=InpaintModelConfig)
    """The base model (frozen)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """The trainable adapter."""
