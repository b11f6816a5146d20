"""``InpaintPolicy``: a 9-channel SD-inpainting UNet, a VAE, a CLIP text encoder and a DDIM scheduler, with LoRA.

One class serves the tiny studio model and a real Stable Diffusion inpainting checkpoint: ``from_config``
either builds the diffusers components at the configured (tiny) sizes or loads them from a local
diffusers-format folder, and both go through the same constructor. ``save_pretrained`` writes that folder
layout (safetensors), so a tiny model round-trips and ``StableDiffusionInpaintPipeline.from_pretrained`` loads it.

Dtypes: frozen weights (UNet, VAE, text encoder) run in the run dtype; LoRA weights are float32; the
noise prediction, the latents and everything the sampler derives from them are returned as float32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

from offline_data.errors import AssetError
from offline_data.integrity import require_finite_weights, verify_weights, write_checksums
from policy.config import InpaintModelConfig, LoraConfig, NoiseScheduleConfig, UNetConfig, VAEConfig
from policy.lora import (
    adapters_disabled,
    add_lora,
    has_lora,
    load_lora,
    lora_config_of,
    lora_parameters,
    save_lora,
)
from policy.text import PromptEncoder, build_clip_tokenizer, build_text_encoder, save_tokenizer
from policy.vae import MaskAwareDecoder

logger = logging.getLogger(__name__)

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
"""Subfolders of a diffusers-format inpainting checkpoint."""
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
MASK_DECODER = "mask_decoder"
"""Optional subfolder with a :class:`~policy.vae.MaskAwareDecoder` (diffusers' loaders ignore it)."""
STUDIO_TINY = Path(__file__).resolve().parent / "weights" / "studio_tiny"
"""The tiny base model pretrained on the studio world and shipped with the package (see its manifest.json)."""
STUDIO_TINY_NAME = "studio_tiny"
"""A ``pretrained`` value that names :data:`STUDIO_TINY` when no folder of that name exists."""


class UNetRunnerHook(Protocol):
    """How :meth:`InpaintPolicy.predict_noise` and :meth:`InpaintPolicy.as_base` run the UNet when a runner is
    installed (``policy.acceleration.UNetRunner``)."""

    def __call__(
        self, latent_input: torch.Tensor, timestep: torch.Tensor, prompt_embeds: torch.Tensor
    ) -> torch.Tensor:
        """``sample [B, C, h, w]``; every argument and the result in the model dtype."""
        ...

    def as_base(self) -> contextlib.AbstractContextManager[None]:
        """A context in which the UNet computes the base model (the adapter's contribution exactly zero)."""
        ...


class InpaintPolicy:
    """The inpainting model the policy trains (satisfies ``rollout.protocols.InpaintingModel``).

    Attributes:
        unet: ``UNet2DConditionModel`` with ``in_channels = 2 * latent_channels + 1`` (SD-inpainting input
            ``cat([noisy_latents, mask, masked_image_latents])``), frozen, optionally with a LoRA adapter.
        vae: ``AutoencoderKL``, frozen.
        text_encoder: ``CLIPTextModel``, frozen.
        tokenizer: ``CLIPTokenizer``.
        scheduler: ``DDIMScheduler`` (a checkpoint's scheduler config is converted to DDIM).
        mask_decoder: optional :class:`~policy.vae.MaskAwareDecoder`, frozen; :meth:`decode_latents` uses it when
            given the masked image and the product mask (it removes the halo at the product edge).
    """

    def __init__(
        self,
        *,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        mask_decoder: MaskAwareDecoder | None = None,
    ) -> None:
        latent = vae.config.latent_channels
        if unet.config.in_channels != 2 * latent + 1:
            raise ValueError(
                f"not an inpainting UNet: in_channels={unet.config.in_channels}, expected 2 * {latent} + 1 = "
                f"{2 * latent + 1} (noisy latents, mask, masked-image latents)"
            )
        if unet.config.out_channels != latent:
            raise ValueError(f"UNet out_channels={unet.config.out_channels} differs from VAE latent_channels={latent}")
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
            raise ValueError(
                f"UNet cross_attention_dim={unet.config.cross_attention_dim} differs from the text encoder's "
                f"hidden_size={text_encoder.config.hidden_size}"
            )
        self._device = torch.device(device)
        self._dtype = dtype
        if mask_decoder is not None and mask_decoder.shape.latent_channels != latent:
            raise ValueError(
                f"mask_decoder takes {mask_decoder.shape.latent_channels} latent channels, the VAE has {latent}"
            )
        modules = (unet, vae, text_encoder) if mask_decoder is None else (unet, vae, text_encoder, mask_decoder)
        for module in modules:
            module.requires_grad_(False)
            module.eval()  # no dropout anywhere: recomputed log-probs must equal the sampled ones
            module.to(self._device)
            if module.dtype != dtype and getattr(module, "_keep_in_fp32_modules", None):
                module.to(dtype=dtype)  # diffusers warns that those modules lose float32
            elif module.dtype != dtype:
                # diffusers 0.42's ModelMixin.to warns on every dtype cast, even with nothing to keep in float32.
                torch.nn.Module.to(module, dtype=dtype)
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.mask_decoder = mask_decoder
        self.unet_runner: UNetRunnerHook | None = None
        """Replaces the plain UNet call in :meth:`predict_noise` (``policy.acceleration.accelerate`` installs a
        compiled one); None calls ``self.unet`` eagerly."""
        self._prompts = PromptEncoder(tokenizer, text_encoder)

    # ------------------------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_config(
        cls,
        config: InpaintModelConfig,
        *,
        lora: LoraConfig | None = None,
        vocabulary: Sequence[str] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> InpaintPolicy:
        """Build the tiny model of ``config`` (random init, seeded by ``init_seed``) or load ``config.pretrained``.

        Args:
            config: architecture, or ``pretrained`` folder.
            lora: attach a fresh adapter (B = 0) with this configuration; None leaves the UNet without one.
            vocabulary: words the tokenizer of a model built here encodes as single tokens (required then; the
                studio world's is ``experiments.studio.prompts.studio_vocabulary()``). Ignored when loading a
                checkpoint: a model folder carries its tokenizer.
            device, dtype: where the frozen weights live and their dtype.

        Raises:
            ValueError: no ``vocabulary`` for a model built from its config.
        """
        if config.pretrained is not None:
            return cls.from_pretrained(
                resolve_model_folder(config.pretrained),
                lora=lora,
                device=device,
                dtype=dtype,
                channels_last=config.channels_last,
            )
        if vocabulary is None:
            raise ValueError(
                "a model built from its config needs vocabulary=[...], the words its tokenizer encodes as single "
                "tokens (or set pretrained to a model folder, which carries its tokenizer)"
            )
        words = list(vocabulary)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            tokenizer = build_clip_tokenizer(words, config.text.max_length)
            text_encoder = build_text_encoder(config.text, tokenizer)
            vae = build_vae(config.vae, config.resolution)
            unet = build_unet(
                config.unet,
                sample_size=config.resolution // config.vae.scale_factor,
                latent_channels=config.vae.latent_channels,
                cross_attention_dim=config.text.hidden_size,
            )
        policy = cls(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=build_scheduler(config.scheduler),
            device=device,
            dtype=dtype,
            channels_last=config.channels_last,
        )
        if lora is not None:
            policy.add_lora(lora)
        return policy

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        lora: LoraConfig | None = None,
        adapter: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> InpaintPolicy:
        """Load a local diffusers-format inpainting checkpoint (safetensors only; nothing is downloaded).

        Args:
            folder: holds unet/, vae/, text_encoder/, tokenizer/ and scheduler/, and optionally mask_decoder/
                (a :class:`~policy.vae.MaskAwareDecoder`, loaded when present).
            lora: attach a fresh adapter with this configuration.
            adapter: a folder written by :meth:`save_adapter` to load (with ``lora`` given, its config must match).

        Raises:
            AssetError: a missing folder or component, weights that are not safetensors, or a non-inpainting UNet.
            WeightIntegrityError: weights that do not match the folder's ``SHA256SUMS`` (a folder without one, e.g.
                a user's own SD checkpoint, loads with a warning that it is unverified), or NaN/inf weights.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise AssetError(f"{folder}: model folder not found")
        missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
        if missing:
            raise AssetError(
                f"{folder}: not a diffusers inpainting checkpoint, missing subfolder(s) {missing} "
                f"(expected {list(COMPONENTS)})"
            )
        verify_weights(folder, required=False, what="base model")
        try:
            unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True)
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True)
            text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=True)
            tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
            scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise AssetError(f"{folder}: cannot load the checkpoint (safetensors weights required): {exc}") from None
        for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
            require_finite_weights(module.state_dict(), str(folder / name))
        mask_decoder = MaskAwareDecoder.load(folder / MASK_DECODER) if (folder / MASK_DECODER).is_dir() else None
        try:
            policy = cls(
                unet=unet,
                vae=vae,
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                scheduler=scheduler,
                device=device,
                dtype=dtype,
                channels_last=channels_last,
                mask_decoder=mask_decoder,
            )
        except ValueError as exc:
            raise AssetError(f"{folder}: {exc}") from None
        if lora is not None:
            policy.add_lora(lora)
        if adapter is not None:
            policy.load_adapter(adapter)
        return policy

    @classmethod
    def studio_base(
        cls,
        *,
        lora: LoraConfig | None = None,
        adapter: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> InpaintPolicy:
        """The tiny base model pretrained on the studio world, shipped in ``policy/weights/studio_tiny``.

        Reproduced by ``backdrop policy pretrain --config experiments/configs/pretrain_studio.toml``; its
        manifest.json records the command, training time, data seed and metrics. In a config, write
        ``pretrained = "studio_tiny"``.
        """
        return cls.from_pretrained(STUDIO_TINY, lora=lora, adapter=adapter, device=device, dtype=dtype)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the base model (without the adapter) in diffusers' layout, all weights as safetensors.

        The result loads with :meth:`from_pretrained` and with ``StableDiffusionInpaintPipeline.from_pretrained``.
        Use :meth:`save_adapter` for the LoRA weights. A ``SHA256SUMS`` of every weight file is written last.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.to_pipeline().save_config(folder)  # model_index.json: which class each subfolder holds
        self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        self.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        save_tokenizer(self.tokenizer, folder / "tokenizer")
        self.scheduler.save_pretrained(folder / "scheduler")
        unet_folder = folder / "unet"
        unet_folder.mkdir(exist_ok=True)
        self.unet.save_config(unet_folder)
        # Not unet.save_pretrained: with an adapter attached peft renames the wrapped weights
        # (to_q.weight -> to_q.base_layer.weight) and adds the LoRA tensors; write the base layout instead.
        save_file(_base_state_dict(self.unet), str(unet_folder / UNET_WEIGHTS), metadata={"format": "pt"})
        if self.mask_decoder is not None:
            self.mask_decoder.save(folder / MASK_DECODER)
        write_checksums(folder)

    def to_pipeline(self) -> StableDiffusionInpaintPipeline:
        """A diffusers ``StableDiffusionInpaintPipeline`` sharing these components (and the adapter, if any).

        The pipeline's own sampling differs from ``rollout.sampler``: it does not replace the product latents at
        each step, does not composite or verify product pixels, and samples the masked-image latents from the
        VAE posterior with its generator; use it for compatibility checks, not for serving.
        """
        return StableDiffusionInpaintPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    # ------------------------------------------------------------------------------------------------------
    # LoRA

    def add_lora(self, config: LoraConfig) -> None:
        """Attach a fresh adapter (B = 0): the model still equals the base model until the first update."""
        add_lora(self.unet, config)

    @property
    def has_adapter(self) -> bool:
        """Whether a LoRA adapter is attached."""
        return has_lora(self.unet)

    @property
    def lora_config(self) -> LoraConfig:
        """Configuration of the attached adapter."""
        return lora_config_of(self.unet)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The LoRA weights (float32); every other weight is frozen."""
        return [p for p in lora_parameters(self.unet) if p.requires_grad]

    def save_adapter(self, folder: str | Path) -> Path:
        """Write the adapter in the format ``StableDiffusionInpaintPipeline.load_lora_weights`` reads."""
        return save_lora(self.unet, Path(folder))

    def load_adapter(self, folder: str | Path) -> None:
        """Load an adapter written by :meth:`save_adapter` (into the attached one, in place, if present)."""
        load_lora(self.unet, Path(folder))

    @contextlib.contextmanager
    def as_base(self) -> Iterator[InpaintPolicy]:
        """The base model pi_base: adapters are bypassed inside the block; no second copy exists in memory.

        Use for the KL term: ``with policy.as_base(): base = predict(...)`` under ``torch.no_grad()``.
        """
        switch = adapters_disabled(self.unet) if self.unet_runner is None else self.unet_runner.as_base()
        with switch:
            yield self

    # ------------------------------------------------------------------------------------------------------
    # rollout.protocols.InpaintingModel

    @property
    def device(self) -> torch.device:
        """Device of every weight."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the frozen weights."""
        return self._dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent position along each axis."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of a latent."""
        return int(self.vae.config.latent_channels)

    @property
    def resolution(self) -> int:
        """The image side the UNet was built for (its sample_size times the VAE factor)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[N, L, D]`` CLIP hidden states in :attr:`dtype`, cached per prompt string."""
        return self._prompts.encode(prompts, self._dtype)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float in [-1, 1] -> ``scaling_factor`` x the posterior mode, ``[B, C, h, w]`` float32."""
        self._check_images(images)
        posterior = self.vae.encode(images.to(device=self._device, dtype=self._dtype)).latent_dist
        return posterior.mode().float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(
        self,
        latents: torch.Tensor,
        *,
        masked_image: torch.Tensor | None = None,
        product_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled latents ``[B, C, h, w]`` -> ``[B, 3, h*f, w*f]`` float32 clamped to [-1, 1].

        With a mask-aware decoder and both ``masked_image [B, 3, h*f, w*f]`` (in [-1, 1], background zeroed)
        and ``product_mask [B, h*f, w*f]`` bool, that decoder is used; otherwise the VAE's own decoder.
        """
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, h, w], got {list(latents.shape)}")
        latents = latents.to(device=self._device, dtype=self._dtype)
        if self.mask_decoder is not None and masked_image is not None and product_mask is not None:
            context = masked_image.to(device=self._device, dtype=self._dtype)
            decoded = self.mask_decoder(latents, context, product_mask.to(self._device))
            return decoded.float().clamp(-1.0, 1.0)
        scaled = latents / self.vae.config.scaling_factor
        return self.vae.decode(scaled).sample.float().clamp(-1.0, 1.0)

    def predict_noise(
        self, latent_input: torch.Tensor, timestep: torch.Tensor, prompt_embeds: torch.Tensor
    ) -> torch.Tensor:
        """UNet output ``[B, C, h, w]`` float32 for ``latent_input [B, 2C+1, h, w]`` at ``timestep`` (0-d or [B]).

        Gradients flow to the LoRA weights when called with grad enabled.
        """
        latent_input, prompt_embeds = latent_input.to(self._dtype), prompt_embeds.to(self._dtype)
        if self.unet_runner is not None:
            return self.unet_runner(latent_input, timestep, prompt_embeds).float()
        return self.unet(latent_input, timestep, encoder_hidden_states=prompt_embeds).sample.float()

    def _check_images(self, images: torch.Tensor) -> None:
        factor = self.vae_scale_factor
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] % factor or images.shape[3] % factor:
            raise ValueError(f"images must be [B, 3, H, W] with H, W multiples of {factor}, got {list(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [-1, 1], got {images.dtype}")


# ----------------------------------------------------------------------------------------------------------
# Components built from a config


def build_unet(
    config: UNetConfig, *, sample_size: int, latent_channels: int, cross_attention_dim: int
) -> UNet2DConditionModel:
    """A randomly initialised SD-inpainting-style UNet (``in_channels = 2 * latent_channels + 1``)."""
    levels = config.cross_attention_levels
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=2 * latent_channels + 1,
        out_channels=latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)),
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
    )


def build_vae(config: VAEConfig, resolution: int) -> AutoencoderKL:
    """A randomly initialised ``AutoencoderKL`` with a downsampling factor of 2 ** (levels - 1)."""
    levels = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=resolution,
        scaling_factor=config.scaling_factor,
    )


def build_scheduler(config: NoiseScheduleConfig) -> DDIMScheduler:
    """DDIM with ``clip_sample`` off and ``set_alpha_to_one`` false (every eta > 0 step has sigma > 0)."""
    return DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        timestep_spacing=config.timestep_spacing,
        steps_offset=config.steps_offset,
        clip_sample=False,
        set_alpha_to_one=False,
    )


def _base_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The UNet's weights under their original names, without LoRA tensors (peft wraps adapted layers)."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in unet.state_dict().items():
        if ".lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor.detach().cpu().contiguous()
    return state


def resolve_model_folder(pretrained: str | Path) -> Path:
    """``pretrained`` as a folder; the bare name ``studio_tiny`` (with no such folder here) is the shipped base."""
    path = Path(pretrained)
    if str(pretrained) == STUDIO_TINY_NAME and not path.exists():
        return STUDIO_TINY
    return path


def describe(policy: InpaintPolicy) -> dict[str, object]:
    """Parameter counts and shapes of ``policy``, for logs and manifests."""

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    info: dict[str, object] = {
        "unet_params": count(policy.unet) - sum(p.numel() for p in lora_parameters(policy.unet)),
        "vae_params": count(policy.vae),
        "text_encoder_params": count(policy.text_encoder),
        "lora_params": sum(p.numel() for p in lora_parameters(policy.unet)),
        "resolution": policy.resolution,
        "latent_shape": [policy.latent_channels, *[policy.resolution // policy.vae_scale_factor] * 2],
        "text_tokens": int(policy.tokenizer.model_max_length),
        "dtype": str(policy.dtype).removeprefix("torch."),
    }
    return info
