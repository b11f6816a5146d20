"""InpaintPolicy: built from a config, saved and loaded in diffusers' layout, loadable by diffusers itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

from experiments.config import ConfigError, from_dict
from offline_data.errors import AssetError
from policy.config import InpaintModelConfig, LoraConfig, PolicyConfig
from policy.model import InpaintPolicy, describe
from rollout.protocols import InpaintingModel

WORDS = ["warm oak table", "soft window light", "white marble"]


def build(seed: int = 0, lora: LoraConfig | None = None) -> InpaintPolicy:
    return InpaintPolicy.from_config(InpaintModelConfig(init_seed=seed), lora=lora, vocabulary=WORDS)


@pytest.fixture(scope="module")
def policy() -> InpaintPolicy:
    return build()


def unet_inputs(policy: InpaintPolicy, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latent_input = torch.randn(batch, 9, 16, 16, generator=generator)
    return latent_input, torch.tensor(501), policy.encode_prompts(["white marble"] * batch)


def test_tiny_model_shapes_and_sizes(policy: InpaintPolicy) -> None:
    info = describe(policy)
    assert policy.unet.config.in_channels == 9 and policy.latent_channels == 4
    assert policy.vae_scale_factor == 4 and policy.resolution == 64
    assert info["latent_shape"] == [4, 16, 16]
    assert 1_000_000 <= info["unet_params"] <= 2_000_000
    assert info["lora_params"] == 0 and not policy.has_adapter
    assert isinstance(policy, InpaintingModel)
    latents = policy.encode_images(torch.zeros(2, 3, 64, 64))
    assert latents.shape == (2, 4, 16, 16) and latents.dtype == torch.float32
    images = policy.decode_latents(latents)
    assert images.shape == (2, 3, 64, 64) and images.abs().max() <= 1.0
    latent_input, t, embeds = unet_inputs(policy)
    with torch.no_grad():
        assert policy.predict_noise(latent_input, t, embeds).shape == (2, 4, 16, 16)


def test_init_is_seeded_and_leaves_global_rng_alone(policy: InpaintPolicy) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again = build(seed=0)
    assert torch.equal(torch.rand(1), before)  # building did not consume the global generator
    other = build(seed=1)
    weight = "conv_in.weight"
    assert torch.equal(again.unet.state_dict()[weight], policy.unet.state_dict()[weight])
    assert not torch.equal(other.unet.state_dict()[weight], policy.unet.state_dict()[weight])


def test_bad_image_and_latent_shapes_are_refused(policy: InpaintPolicy) -> None:
    with pytest.raises(
        ValueError, match=r"images must be \[B, 3, H, W\] with H, W multiples of 4, got \[1, 3, 62, 64\]"
    ):
        policy.encode_images(torch.zeros(1, 3, 62, 64))
    with pytest.raises(ValueError, match="images must be float in"):
        policy.encode_images(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, h, w\], got \[1, 3, 16, 16\]"):
        policy.decode_latents(torch.zeros(1, 3, 16, 16))


def test_save_pretrained_round_trip(policy: InpaintPolicy, tmp_path: Path) -> None:
    policy.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DConditionModel"]
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    assert sum(f.endswith(".safetensors") for f in files) == 3
    loaded = InpaintPolicy.from_pretrained(tmp_path)
    latent_input, t, embeds = unet_inputs(policy)
    assert torch.equal(loaded.encode_prompts(["white marble", ""]), policy.encode_prompts(["white marble", ""]))
    with torch.no_grad():
        assert torch.equal(
            loaded.predict_noise(latent_input, t, embeds), policy.predict_noise(latent_input, t, embeds)
        )
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.equal(loaded.encode_images(image), policy.encode_images(image))
    assert loaded.scheduler.config.set_alpha_to_one is False
    # the same folder through the config: "pretrained" takes the same code path
    via_config = InpaintPolicy.from_config(InpaintModelConfig(pretrained=tmp_path))
    assert torch.equal(via_config.unet.state_dict()["conv_in.weight"], policy.unet.state_dict()["conv_in.weight"])


def test_saved_folder_loads_in_plain_diffusers_pipeline(policy: InpaintPolicy, tmp_path: Path) -> None:
    policy.save_pretrained(tmp_path)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tmp_path)
    assert torch.equal(pipe.unet.conv_in.weight, policy.unet.conv_in.weight)
    image = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 32:] = 1
    out = pipe(prompt="white marble", image=image, mask_image=mask, num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 64, 64, 3)


def test_save_pretrained_with_adapter_writes_the_base_model(tmp_path: Path) -> None:
    adapted = build(lora=LoraConfig())
    with torch.no_grad():
        for param in adapted.trainable_parameters():
            param.normal_(0, 0.5)  # an adapter that changes the output
    adapted.save_pretrained(tmp_path)
    base = InpaintPolicy.from_pretrained(tmp_path)
    assert not base.has_adapter
    latent_input, t, embeds = unet_inputs(adapted)
    with torch.no_grad():
        with adapted.as_base():
            base_out = adapted.predict_noise(latent_input, t, embeds)
        assert torch.equal(base.predict_noise(latent_input, t, embeds), base_out)
        assert not torch.allclose(adapted.predict_noise(latent_input, t, embeds), base_out)


def test_from_pretrained_errors(policy: InpaintPolicy, tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="model folder not found"):
        InpaintPolicy.from_pretrained(tmp_path / "nope")
    policy.save_pretrained(tmp_path / "ok")
    broken = tmp_path / "ok"
    for path in (broken / "vae").iterdir():
        path.unlink()
    (broken / "vae").rmdir()
    with pytest.raises(AssetError, match=r"missing subfolder\(s\) \['vae'\]"):
        InpaintPolicy.from_pretrained(broken)
    # a text-to-image (4-channel) UNet is not an inpainting checkpoint
    policy.save_pretrained(tmp_path / "t2i")
    config = dict(policy.unet.config)
    config["in_channels"] = 4
    UNet2DConditionModel.from_config(config).save_pretrained(tmp_path / "t2i" / "unet")
    (tmp_path / "t2i" / "SHA256SUMS").unlink()  # a folder from elsewhere (else its changed UNet is refused first)
    with pytest.raises(AssetError, match=r"not an inpainting UNet: in_channels=4, expected 2 \* 4 \+ 1 = 9"):
        InpaintPolicy.from_pretrained(tmp_path / "t2i")
    # pickled weights only: refused, never unpickled
    policy.save_pretrained(tmp_path / "pickle")
    unet_dir = tmp_path / "pickle" / "unet"
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    (unet_dir / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    (tmp_path / "pickle" / "SHA256SUMS").unlink()
    with pytest.raises(AssetError, match="safetensors weights required"):
        InpaintPolicy.from_pretrained(tmp_path / "pickle")


def test_a_model_built_from_its_config_needs_a_vocabulary_and_its_folder_carries_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs vocabulary=\[\.\.\.\]"):
        InpaintPolicy.from_config(InpaintModelConfig())
    built = InpaintPolicy.from_config(InpaintModelConfig(), vocabulary=["zebra stripes"])
    assert built.tokenizer.tokenize("zebra stripes") == ["zebra</w>", "stripes</w>"]
    built.save_pretrained(tmp_path)
    loaded = InpaintPolicy.from_config(InpaintModelConfig(pretrained=tmp_path), vocabulary=["ignored"])
    assert loaded.tokenizer.tokenize("zebra stripes") == ["zebra</w>", "stripes</w>"]
    assert len(loaded.tokenizer.tokenize("ignored")) > 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": {"resolution": 60}}, "resolution=60 must be a positive multiple of 16"),
        ({"model": {"unet": {"cross_attention_levels": [True]}}}, "cross_attention_levels has 1 entries"),
        ({"model": {"unet": {"norm_num_groups": 5}}}, "norm_num_groups=5 must divide every block_out_channels"),
        ({"model": {"vae": {"scaling_factor": 0.0}}}, "scaling_factor must be > 0"),
        ({"model": {"text": {"num_heads": 3}}}, "num_heads=3 must divide hidden_size=64"),
        ({"model": {"scheduler": {"beta_end": 0.0001}}}, "need 0 < beta_start < beta_end < 1"),
        ({"lora": {"rank": 0}}, "rank must be >= 1"),
        ({"lora": {"target_modules": []}}, "target_modules must be non-empty"),
        ({"lora": {"dropout": 1.0}}, r"dropout must be in \[0, 1\)"),
        ({"lora": {"rnak": 4}}, "unknown key 'lora.rnak' \\(did you mean 'rank'\\?\\)"),
    ],
)
def test_config_validation(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(PolicyConfig, data)
