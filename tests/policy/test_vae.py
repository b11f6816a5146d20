"""The mask-aware decoder (equal to the VAE's decoder until trained, saved/loaded) and the seam metric."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from experiments.studio.pretrain.autoencoder import encode_latents, sampler_latents
from experiments.studio.pretrain.data import composite, masked_images, render_product_pool, render_scene_pool
from offline_data.errors import AssetError
from policy.config import InpaintModelConfig, MaskDecoderConfig, VAEConfig
from policy.model import STUDIO_TINY, InpaintPolicy, build_vae
from policy.vae import MaskAwareDecoder, measure_seams
from rollout.config import SamplerConfig
from rollout.request import InpaintRequest
from rollout.sampler import sample_trajectories


def vae(scaling: float = 0.5):
    model = build_vae(VAEConfig(scaling_factor=scaling), 64).eval()
    with torch.no_grad():  # non-zero post-quant conv so that the test sees it applied
        model.post_quant_conv.weight.add_(0.1 * torch.randn_like(model.post_quant_conv.weight))
    return model


def test_untrained_mask_decoder_equals_the_vae_decoder() -> None:
    base = vae(0.5)
    decoder = MaskAwareDecoder.from_vae(base).eval()
    latents = torch.randn(2, 4, 16, 16)
    context = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.rand(2, 64, 64) > 0.5
    with torch.no_grad():
        expected = base.decode(latents / 0.5).sample
        assert torch.equal(decoder(latents, context, mask), expected)
        # Once the fusion convolutions move, the context changes the output.
        for fusion in decoder.fusions:
            fusion.weight.add_(0.05)
        assert not torch.allclose(decoder(latents, context, mask), expected)
    assert decoder.fusion_levels() == [2, 1, 0, 0]  # mid block at 16x16, up blocks at 32, 64, 64 px


def test_shape_errors_name_all_inputs() -> None:
    decoder = MaskAwareDecoder.from_vae(vae())
    with pytest.raises(ValueError, match=r"masked_image \[B, 3, h\*4, w\*4\].*\[2, 3, 32, 32\]"):
        decoder(torch.zeros(2, 4, 16, 16), torch.zeros(2, 3, 32, 32), torch.zeros(2, 64, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool product_mask"):
        decoder(torch.zeros(2, 4, 16, 16), torch.zeros(2, 3, 64, 64), torch.zeros(2, 64, 64))


def test_save_load_round_trip_and_bad_files(tmp_path: Path) -> None:
    decoder = MaskAwareDecoder.from_vae(vae(0.7), MaskDecoderConfig(context_channels=8))
    with torch.no_grad():
        for fusion in decoder.fusions:
            fusion.weight.normal_()
    decoder.save(tmp_path / "md")
    loaded = MaskAwareDecoder.load(tmp_path / "md")
    assert loaded.shape == decoder.shape and loaded.config == decoder.config
    for (name, a), (_, b) in zip(decoder.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(AssetError, match="missing/config.json: mask-aware decoder file not found"):
        MaskAwareDecoder.load(tmp_path / "missing")
    (tmp_path / "md" / "config.json").write_text('{"format": "other"}')
    with pytest.raises(AssetError, match="expected format 'backdrop.mask_decoder', got 'other'"):
        MaskAwareDecoder.load(tmp_path / "md")


def test_policy_uses_the_mask_decoder_only_with_context(tmp_path: Path) -> None:
    policy = InpaintPolicy.from_config(InpaintModelConfig(), vocabulary=["marble"])
    decoder = MaskAwareDecoder.from_vae(policy.vae)
    with torch.no_grad():
        for fusion in decoder.fusions:
            fusion.weight.normal_(std=0.1)
    policy.save_pretrained(tmp_path / "m")
    decoder.save(tmp_path / "m" / "mask_decoder")
    loaded = InpaintPolicy.from_pretrained(tmp_path / "m")
    assert loaded.mask_decoder is not None
    latents = torch.randn(1, 4, 16, 16)
    masked, mask = torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    plain = loaded.decode_latents(latents)
    assert torch.equal(plain, policy.decode_latents(latents))
    assert not torch.equal(loaded.decode_latents(latents, masked_image=masked, product_mask=mask), plain)


# ----------------------------------------------------------------------------------------------------------
# Seam metric, checked by hand


def square_scene(halo: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """32x32 grey 100 background, a 10x10 product of 200, optionally a 2-px halo of 150 around it."""
    image = torch.full((1, 3, 32, 32), 100, dtype=torch.uint8)
    if halo is not None:
        image[0, :, 8:22, 8:22] = halo
    image[0, :, 10:20, 10:20] = 200
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 10:20, 10:20] = True
    return image, mask


def test_seam_metric_by_hand() -> None:
    clean = measure_seams(*square_scene(None))
    assert float(clean.colour_step) == pytest.approx(0.0, abs=1e-6)
    assert float(clean.gradient_excess) == pytest.approx(0.0, abs=1e-7)
    halo = measure_seams(*square_scene(150))
    # Band (2 px around the product) is 150, ring (4 px beyond) is 100: a step of 50/255 in each channel.
    assert float(halo.colour_step) == pytest.approx(50 / 255 * math.sqrt(3), rel=1e-5)
    # Pairs outside the product touching the band: inside the band (14x14 ring minus the product) |diff| 0, and
    # the 56 pairs crossing the band's outer edge |diff| 50/255. Band pixels: 14*14 - 100 = 96.
    # Horizontal pairs with both pixels outside the product and one in the band:
    #   rows 8,9,20,21 (4 rows): pairs (7,8)...(21,22) -> 15 pairs; rows 10..19 (10 rows): (7,8),(8,9),(20,21),(21,22)
    #   -> 4 pairs per row (the pairs (9,10), (19,20) touch the product). Total 4*15 + 10*4 = 100, same vertically.
    # Crossing pairs: 14 rows * 2 + 14 cols * 2 = 56, each 50/255; ring pairs all 0.
    assert float(halo.gradient_excess) == pytest.approx(56 * 50 / 255 / 200, rel=1e-5)


def test_seam_metric_on_a_lighting_gradient_is_small_next_to_a_halo() -> None:
    # A light falloff of 60 grey levels across the image (about 2 per pixel): the band and the ring sit a few
    # pixels apart, so the local comparison sees about slope x offset, far below a halo's step.
    ramp = torch.linspace(100, 160, 32).round().to(torch.uint8)
    image = ramp.expand(1, 3, 32, 32).clone()
    image[0, :, 10:20, 10:20] = 250
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 10:20, 10:20] = True
    seams = measure_seams(image, mask)
    assert float(seams.colour_step) < 0.03
    assert float(measure_seams(*square_scene(150)).colour_step) > 10 * float(seams.colour_step)


def test_seam_metric_input_errors() -> None:
    image, mask = square_scene(None)
    with pytest.raises(ValueError, match="uint8"):
        measure_seams(image.float(), mask)
    with pytest.raises(ValueError, match="product_masks must be bool"):
        measure_seams(image, mask[:, :16])


# ----------------------------------------------------------------------------------------------------------
# The shipped model: the mask-aware decoder removes the halo the plain decoder leaves


@pytest.mark.skipif(not (STUDIO_TINY / "mask_decoder").is_dir(), reason="shipped weights not present")
def test_shipped_mask_decoder_reduces_seams_on_held_out_composites() -> None:
    policy = InpaintPolicy.studio_base()
    scenes = render_scene_pool(24, 64, seed=123, stream=77)
    products = render_product_pool(24, 64, seed=123, stream=78)
    truth = composite(scenes.images, products.rgb, products.masks)
    masked = masked_images(products.rgb, products.masks)
    masked_latents = encode_latents(policy.vae, masked) * policy.vae.config.scaling_factor
    latents = sampler_latents(policy.vae, truth, masked_latents, products.masks)
    measures = {}
    for name, kwargs in (("plain", {}), ("aware", {"masked_image": masked, "product_mask": products.masks})):
        decoded = ((policy.decode_latents(latents, **kwargs) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        measures[name] = measure_seams(composite(decoded, products.rgb, products.masks), products.masks)
    truth_step = float(measure_seams(truth, products.masks).colour_step.mean())
    plain, aware = float(measures["plain"].colour_step.mean()), float(measures["aware"].colour_step.mean())
    assert aware < plain, (aware, plain)
    assert aware - truth_step < 0.5 * (plain - truth_step)  # at least half of the excess seam is gone


@pytest.mark.skipif(not (STUDIO_TINY / "mask_decoder").is_dir(), reason="shipped weights not present")
def test_sampling_with_the_mask_decoder_keeps_product_pixels() -> None:
    policy = InpaintPolicy.studio_base()
    products = render_product_pool(2, 64, seed=5, stream=9)
    requests = [
        InpaintRequest(request_id=f"r{i}", product_id=f"p{i}", segment="panel", prompt="white marble tabletop",
                       product_rgb=products.rgb[i], product_mask=products.masks[i])
        for i in range(2)
    ]  # fmt: skip
    rollout = sample_trajectories(policy, requests, [0, 1], SamplerConfig(num_steps=2))
    assert rollout.preservation.ok and rollout.preservation.max_abs_diff == 0
    for image, request in zip(rollout.images, requests):
        assert torch.equal(image[:, request.product_mask], request.product_rgb[:, request.product_mask])
