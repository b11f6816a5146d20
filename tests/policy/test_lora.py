"""LoRA on the policy's UNet: what trains, the base model (adapters off), and the adapter file that diffusers loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline
from safetensors import safe_open

from offline_data.errors import AssetError
from policy.config import InpaintModelConfig, LoraConfig
from policy.lora import WEIGHT_NAME, LoraTargetError, read_lora_config
from policy.model import InpaintPolicy

WORDS = ["warm oak table", "white marble"]
DEFAULT_LORA = LoraConfig()


def build(lora: LoraConfig | None = DEFAULT_LORA, dtype: torch.dtype = torch.float32) -> InpaintPolicy:
    return InpaintPolicy.from_config(InpaintModelConfig(), lora=lora, vocabulary=WORDS, dtype=dtype)


def perturb_adapter(policy: InpaintPolicy, seed: int = 0) -> None:
    """Give the adapter non-zero B so that it changes the output (as after training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in policy.trainable_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def noise_prediction(policy: InpaintPolicy) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    latent_input = torch.randn(2, 9, 16, 16, generator=generator)
    return policy.predict_noise(latent_input, torch.tensor(701), policy.encode_prompts(["white marble", ""]))


def test_only_lora_weights_train_and_they_stay_float32() -> None:
    policy = build(dtype=torch.bfloat16)
    trainable = dict((n, p) for n, p in policy.unet.named_parameters() if p.requires_grad)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    frozen = [p for p in policy.unet.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert not any(p.requires_grad for p in [*policy.vae.parameters(), *policy.text_encoder.parameters()])
    # 4 transformers (down 4x4, mid, 2 x up 4x4) x 2 attentions x 4 projections x (A, B)
    assert len(policy.trainable_parameters()) == 4 * 2 * 4 * 2
    assert all(torch.count_nonzero(n) == 0 for k, n in trainable.items() if ".lora_B." in k)
    assert noise_prediction(policy).dtype == torch.float32


def test_adapter_starts_as_the_base_model_and_as_base_is_the_base() -> None:
    base = build(lora=None)
    policy = build()
    with torch.no_grad():
        expected = noise_prediction(base)
        assert torch.equal(noise_prediction(policy), expected)  # B = 0: KL to the base is exactly 0
        perturb_adapter(policy)
        adapted = noise_prediction(policy)
        assert not torch.allclose(adapted, expected)
        with policy.as_base() as base:
            assert base is policy
            assert torch.equal(noise_prediction(policy), expected)
            assert not any(p.requires_grad for p in policy.unet.parameters())
        assert torch.equal(noise_prediction(policy), adapted)
    assert policy.trainable_parameters() and all(p.requires_grad for p in policy.trainable_parameters())


def test_as_base_restores_adapters_after_an_exception() -> None:
    policy = build()
    perturb_adapter(policy)
    with torch.no_grad():
        adapted = noise_prediction(policy)
        with pytest.raises(RuntimeError, match="boom"), policy.as_base():
            raise RuntimeError("boom")
        assert torch.equal(noise_prediction(policy), adapted)


def test_optimiser_steps_change_only_lora_weights() -> None:
    policy = build()
    frozen = {n: p.detach().clone() for n, p in policy.unet.named_parameters() if not p.requires_grad}
    lora = {n: p for n, p in policy.unet.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in lora.items()}
    optimiser = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3, weight_decay=0.0)

    def step() -> None:
        optimiser.zero_grad()
        noise_prediction(policy).square().mean().backward()
        optimiser.step()

    step()
    changed = {n for n, p in lora.items() if not torch.equal(p, start[n])}
    # With B = 0 the gradient of A is exactly zero (dL/dA = scale * B^T dL/dy x^T), so step 1 moves only B.
    assert changed == {n for n in lora if ".lora_B." in n}
    step()
    assert all(not torch.equal(p, start[n]) for n, p in lora.items())
    assert all(torch.equal(p, frozen[n]) for n, p in policy.unet.named_parameters() if n in frozen)
    assert all(p.grad is None for p in policy.vae.parameters())


def test_adapter_file_format(tmp_path: Path) -> None:
    policy = build(lora=LoraConfig(rank=8, alpha=16.0, target_modules=("to_q", "to_v")))
    path = policy.save_adapter(tmp_path)
    assert path == tmp_path / WEIGHT_NAME
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
        dtypes = {handle.get_tensor(k).dtype for k in keys}
    assert keys and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert dtypes == {torch.float32}
    assert metadata["unet.r"] == 8 and metadata["unet.lora_alpha"] == 16.0
    assert read_lora_config(tmp_path) == LoraConfig(rank=8, alpha=16.0, target_modules=("to_q", "to_v"))


def test_adapter_round_trip_in_place_and_into_a_bare_model(tmp_path: Path) -> None:
    config = LoraConfig(rank=8, alpha=16.0)  # alpha != rank: the scale must survive the file
    source = build(lora=config)
    perturb_adapter(source, seed=1)
    source.save_adapter(tmp_path)
    with torch.no_grad():
        expected = noise_prediction(source)

    target = build(lora=config)
    params = target.trainable_parameters()
    target.load_adapter(tmp_path)
    assert [id(p) for p in target.trainable_parameters()] == [id(p) for p in params]  # optimisers keep working
    bare = build(lora=None)
    bare.load_adapter(tmp_path)
    assert bare.lora_config == LoraConfig(rank=8, alpha=16.0, target_modules=("to_k", "to_out.0", "to_q", "to_v"))
    with torch.no_grad():
        assert torch.equal(noise_prediction(target), expected)
        assert torch.equal(noise_prediction(bare), expected)


def test_adapter_load_errors(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="LoRA weights not found"):
        build().load_adapter(tmp_path)
    build(lora=LoraConfig(rank=8)).save_adapter(tmp_path)
    with pytest.raises(AssetError, match="differs from the attached adapter"):
        build(lora=LoraConfig(rank=4)).load_adapter(tmp_path)
    (tmp_path / WEIGHT_NAME).write_bytes(b"\x00" * 16)
    with pytest.raises(AssetError, match="SHA-256 mismatch"):  # the adapter's SHA256SUMS catches it first
        build().load_adapter(tmp_path)
    (tmp_path / "SHA256SUMS").unlink()  # an adapter from elsewhere, without sums: loaded unverified, then unreadable
    with pytest.raises(AssetError, match="cannot read LoRA weights"):
        build().load_adapter(tmp_path)


def test_add_lora_refuses_a_second_adapter_and_unknown_targets() -> None:
    policy = build()
    with pytest.raises(ValueError, match="already has adapter"):
        policy.add_lora(LoraConfig())
    with pytest.raises(LoraTargetError, match="policy.lora.target_modules=\\['no_such_layer'\\]: no such module"):
        build(lora=LoraConfig(target_modules=("no_such_layer",)))


@pytest.mark.parametrize(
    "targets",
    [("to_q", "to_k", "to_v", "to_out.0"), ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")],
    ids=["attention", "attention+convs"],
)
def test_adapter_reproduces_our_image_in_a_plain_diffusers_pipeline(tmp_path: Path, targets: tuple) -> None:
    """Adapter saved here + base folder -> ``load_lora_weights`` in a plain pipeline gives the same image.

    With ResNet convolutions among the targets too: a file whose attention keys were renamed to diffusers' old
    names loaded its convolution tensors only (the attention ones silently dropped).
    """
    ours = build(lora=LoraConfig(rank=4, alpha=4.0, target_modules=targets))
    perturb_adapter(ours, seed=2)
    ours.save_pretrained(tmp_path / "base")
    ours.save_adapter(tmp_path / "adapter")

    plain = StableDiffusionInpaintPipeline.from_pretrained(tmp_path / "base")
    plain.load_lora_weights(tmp_path / "adapter")
    loaded_tensors = [n for n, p in plain.unet.named_parameters() if ".lora_" in n]
    assert len(loaded_tensors) == len([n for n, _ in ours.unet.named_parameters() if ".lora_" in n])
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 64, 64, generator=generator)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, 24:] = 1  # 1 = repaint (SD convention)

    def run(pipe: StableDiffusionInpaintPipeline) -> np.ndarray:
        return pipe(
            prompt="warm oak table",
            image=image,
            mask_image=mask,
            num_inference_steps=4,
            generator=torch.Generator().manual_seed(7),
            output_type="np",
        ).images

    expected = run(ours.to_pipeline())
    loaded = run(plain)
    plain.unet.disable_adapters()
    without_adapter = run(plain)
    # Not bit-exact: the loaded LoRA layers are assembled differently (1e-6-level float differences).
    np.testing.assert_allclose(loaded, expected, atol=1e-5, rtol=0)
    assert np.abs(without_adapter - expected).max() > 1e-2  # the comparison is sensitive to the adapter
