"""Reproducing a bundle's reference images after reloading it, bit for bit.

Before the bundle is written, the candidate in memory samples a few evaluation requests with fixed seeds through
``rollout.sampler`` and their uint8 images are hashed (SHA-256 of the raw bytes, recorded in the manifest). After
writing, two fresh models sample the same requests and seeds:

- ``fresh_policy``: a new :class:`~policy.model.InpaintPolicy` loaded from the base model's files plus the
  bundle's adapter (``InpaintPolicy.load_adapter``);
- ``diffusers_pipeline``: a plain ``StableDiffusionInpaintPipeline.from_pretrained(base)`` with
  ``load_lora_weights(bundle/adapter)``, its components wrapped in an ``InpaintPolicy`` so that the same sampler
  runs (the pipeline's own ``__call__`` samples differently, see ``rollout/sampler.py``).

Every image must hash the same, or :class:`ReproducibilityError` stops the export. A merged UNet (``--merge``)
changes float rounding, so its images are compared by their largest pixel difference and reported, not gated.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel

from offline_data.errors import BackdropError
from offline_data.integrity import verify_weights, write_checksums
from policy.model import MASK_DECODER, InpaintPolicy
from policy.vae import MaskAwareDecoder
from rollout.config import SamplerConfig
from rollout.request import InpaintRequest
from rollout.sampler import sample_trajectories

logger = logging.getLogger(__name__)


class ReproducibilityError(BackdropError):
    """A reloaded bundle did not reproduce its reference images bit-identically."""

    exit_code = 5


def image_sha256(images: torch.Tensor) -> list[str]:
    """SHA-256 of each image's raw bytes ([B, 3, H, W] uint8, C-contiguous): B hex digests."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be [B, 3, H, W] uint8, got {images.dtype} {list(images.shape)}")
    return [hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest() for image in images.cpu()]


def sample_references(
    policy: InpaintPolicy, requests: Sequence[InpaintRequest], seeds: Sequence[int], sampler: SamplerConfig
) -> torch.Tensor:
    """The reference images: one sample per (request, seed), in one call (a fixed batch composition)."""
    return sample_trajectories(policy, list(requests), list(seeds), sampler).images


def pipeline_policy(
    base_folder: Path, adapter_folder: Path, *, device: torch.device, dtype: torch.dtype
) -> InpaintPolicy:
    """A plain diffusers ``StableDiffusionInpaintPipeline`` of the base, with the bundle's LoRA loaded by
    ``load_lora_weights``, as an :class:`InpaintPolicy` (the base's mask-aware decoder attached when it has one)."""

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        base_folder, safety_checker=None, requires_safety_checker=False, use_safetensors=True
    )
    pipe.load_lora_weights(adapter_folder)
    decoder = MaskAwareDecoder.load(base_folder / MASK_DECODER) if (base_folder / MASK_DECODER).is_dir() else None
    return InpaintPolicy(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
        device=device,
        dtype=dtype,
        mask_decoder=decoder,
    )


def verify_reload(
    expected: Sequence[str],
    requests: Sequence[InpaintRequest],
    seeds: Sequence[int],
    sampler: SamplerConfig,
    *,
    base_folder: Path,
    adapter_folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    merged_unet: Path | None = None,
) -> dict:
    """Reload the bundle two ways and compare the reference images' hashes with ``expected``.

    Returns:
        {"fresh_policy": {"identical": True, ...}, "diffusers_pipeline": {...}, "merged_unet": {...} (with
        ``merged_unet``)}.

    Raises:
        ReproducibilityError: any reference image of the fresh policy or the pipeline differs.
    """
    results = {}
    fresh = InpaintPolicy.from_pretrained(base_folder, adapter=adapter_folder, device=device, dtype=dtype)
    loaders = {
        "fresh_policy": lambda: fresh,
        "diffusers_pipeline": lambda: pipeline_policy(base_folder, adapter_folder, device=device, dtype=dtype),
    }
    for name, load in loaders.items():
        hashes = image_sha256(sample_references(load(), requests, seeds, sampler))
        differing = [r.request_id for r, got, want in zip(requests, hashes, expected) if got != want]
        results[name] = {"identical": not differing, "images": len(hashes), "differing_requests": differing}
        if differing:
            raise ReproducibilityError(
                f"{adapter_folder}: reloading the bundle ({name.replace('_', ' ')}) did not reproduce "
                f"{len(differing)} of {len(hashes)} reference image(s) bit-identically (requests {differing[:5]}); "
                "the exported candidate would not be the one that passed the gates"
            )
        logger.info("reload via %s reproduced %d reference image(s) bit-identically", name, len(hashes))
    if merged_unet is not None:
        base = InpaintPolicy.from_pretrained(base_folder, device=device, dtype=dtype)
        verify_weights(merged_unet, required=True, what="merged UNet")
        merged = InpaintPolicy(
            unet=UNet2DConditionModel.from_pretrained(merged_unet, use_safetensors=True),
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            scheduler=base.scheduler,
            device=device,
            dtype=dtype,
            mask_decoder=base.mask_decoder,
        )
        reference = sample_references(fresh, requests, seeds, sampler)
        images = sample_references(merged, requests, seeds, sampler)
        difference = int((images.int() - reference.int()).abs().max())
        results["merged_unet"] = {"identical": difference == 0, "max_abs_pixel_difference": difference}
    return results


def merge_adapter(base_folder: Path, adapter_folder: Path, out: Path) -> Path:
    """The base UNet with the adapter fused into its weights (diffusers' ``fuse_lora``), saved to ``out`` in
    diffusers' layout (config.json + diffusion_pytorch_model.safetensors)."""
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        base_folder, safety_checker=None, requires_safety_checker=False, use_safetensors=True
    )
    pipe.load_lora_weights(adapter_folder)
    pipe.fuse_lora()
    pipe.unload_lora_weights()  # keeps the fused weights, drops the adapter layers
    pipe.unet.save_pretrained(out, safe_serialization=True)
    write_checksums(out)
    return out
