"""Style conditioning: switched off it is exactly the base model; masked style tokens equal absent ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.studio.pretrain.data import render_scene_pool
from offline_data.errors import AssetError
from offline_data.integrity import write_checksums
from policy.config import InpaintModelConfig, StyleConfig
from policy.model import InpaintPolicy
from policy.style import StudioStyleEncoder, StyleConditioning, StyledModel, StyleImageEncoder
from rollout.config import SamplerConfig
from rollout.denoise import conditioning_from_trajectory, denoise_step
from rollout.protocols import InpaintingModel
from rollout.request import InpaintRequest
from rollout.sampler import sample_trajectories

PROMPTS = ["white marble tabletop", "oak wood floor"]
FAST = SamplerConfig(num_steps=3, guidance_scale=4.0)


@pytest.fixture(scope="module")
def policy() -> InpaintPolicy:
    return InpaintPolicy.from_config(InpaintModelConfig(), vocabulary=["white", "marble", "tabletop", "oak", "wood"])


@pytest.fixture(scope="module")
def style(policy: InpaintPolicy) -> StyleConditioning:
    module = StyleConditioning(StyleConfig(num_tokens=3), policy.text_encoder.config.hidden_size)
    scenes = render_scene_pool(32, 64, seed=0)
    module.adapter.set_normalisation(module.encoder.encode(scenes.images))
    return module.eval()


def requests() -> list[InpaintRequest]:
    out = []
    for i, prompt in enumerate(PROMPTS):
        rgb = torch.randint(0, 256, (3, 64, 64), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        mask = torch.zeros(64, 64, dtype=torch.bool)
        mask[30:60, 20:40] = True
        out.append(InpaintRequest(request_id=f"r{i}", product_id=f"p{i}", segment="panel", prompt=prompt,
                                  product_rgb=rgb, product_mask=mask))  # fmt: skip
    return out


def test_switched_off_is_exactly_the_base_model(policy: InpaintPolicy) -> None:
    batch = requests()
    base = sample_trajectories(policy, batch, [3, 4], FAST)
    off = sample_trajectories(StyledModel(policy, None), batch, [3, 4], FAST)
    assert torch.equal(base.images, off.images)
    assert torch.equal(base.trajectory.latents, off.trajectory.latents)
    assert torch.equal(base.trajectory.log_probs, off.trajectory.log_probs)
    assert isinstance(StyledModel(policy, None), InpaintingModel)


def test_style_tokens_change_samples_and_trajectories_rescore(policy: InpaintPolicy, style: StyleConditioning) -> None:
    board = render_scene_pool(4, 64, seed=1).images
    tokens = style.tokens(board)
    assert tokens.shape == (3, policy.text_encoder.config.hidden_size)
    styled = StyledModel(policy, tokens)
    embeds = styled.encode_prompts(PROMPTS)
    assert embeds.shape[1] == policy.tokenizer.model_max_length + 3
    assert torch.equal(embeds[:, : policy.tokenizer.model_max_length], policy.encode_prompts(PROMPTS))
    batch = requests()
    base = sample_trajectories(policy, batch, [3, 4], FAST)
    rollout = sample_trajectories(styled, batch, [3, 4], FAST)
    assert not torch.equal(rollout.trajectory.latents, base.trajectory.latents)
    assert rollout.preservation.ok
    # The stored (extended) conditioning re-scores the chain exactly: log-probs recomputed equal the sampled ones.
    trajectory = rollout.trajectory
    policy.scheduler.set_timesteps(trajectory.num_steps)
    conditioning = conditioning_from_trajectory(trajectory, dtype=policy.dtype)
    with torch.no_grad():
        for i in range(trajectory.num_steps):
            out = denoise_step(policy, trajectory.latents[:, i], trajectory.timesteps[i], conditioning,
                               eta=trajectory.eta, prev_sample=trajectory.latents[:, i + 1])  # fmt: skip
            torch.testing.assert_close(out.log_prob, trajectory.log_probs[:, i], rtol=0, atol=1e-5)


def test_masked_style_tokens_equal_no_tokens_in_the_unet(policy: InpaintPolicy, style: StyleConditioning) -> None:
    # What pretraining does for "style off" samples (attention mask) is what sampling does without style.
    text = policy.encode_prompts(PROMPTS)
    tokens = style.adapter(torch.randn(2, style.encoder.dim))
    latent_input = torch.randn(2, 9, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 20])
    keep = torch.ones(2, text.shape[1] + tokens.shape[1], dtype=torch.bool)
    keep[:, text.shape[1] :] = False
    with torch.no_grad():
        without = policy.unet(latent_input, t, encoder_hidden_states=text).sample
        masked = policy.unet(latent_input, t, encoder_hidden_states=torch.cat([text, tokens], 1),
                             encoder_attention_mask=keep).sample  # fmt: skip
        unmasked = policy.unet(latent_input, t, encoder_hidden_states=torch.cat([text, tokens], 1)).sample
    torch.testing.assert_close(masked, without, rtol=0, atol=1e-5)
    assert (unmasked - without).abs().max() > 1e-3


def test_encoder_is_fixed_and_describes_style() -> None:
    encoder = StudioStyleEncoder(filters=8, seed=0)
    assert isinstance(encoder, StyleImageEncoder)
    assert encoder.dim == 12 + 6 + 8 + 36
    scenes = render_scene_pool(12, 64, seed=2)
    first = encoder.encode(scenes.images)
    assert first.shape == (12, encoder.dim) and first.dtype == torch.float32
    assert torch.equal(StudioStyleEncoder(filters=8, seed=0).encode(scenes.images), first)
    assert not any(p.requires_grad for p in encoder.parameters())
    # Colour statistics by hand: a uniform image has its colour as mean, zero std, zero texture energy.
    flat = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    flat[:, 0], flat[:, 1], flat[:, 2] = 255, 51, 0
    features = encoder.encode(flat)[0]
    torch.testing.assert_close(features[:3], torch.tensor([1.0, 0.2, 0.0]))
    assert torch.count_nonzero(features[3:6]) == 0 and torch.count_nonzero(features[12:18]) == 0
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode(flat.float())


def test_board_embedding_is_the_mean(style: StyleConditioning) -> None:
    board = render_scene_pool(3, 64, seed=4).images
    torch.testing.assert_close(style.board_embedding(board), style.encoder.encode(board).mean(dim=0))
    with pytest.raises(ValueError, match="at least one image"):
        style.board_embedding(board[:0])


def test_save_load_round_trip(style: StyleConditioning, tmp_path: Path) -> None:
    style.save(tmp_path / "style")
    loaded = StyleConditioning.load(tmp_path / "style")
    board = render_scene_pool(2, 64, seed=5).images
    assert torch.equal(loaded.tokens(board), style.tokens(board))
    (tmp_path / "style" / "style.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AssetError, match="style.safetensors: SHA-256 mismatch"):
        StyleConditioning.load(tmp_path / "style")
    write_checksums(tmp_path / "style")  # the list agrees with the broken file: reading it is what fails now
    with pytest.raises(AssetError, match="cannot read the style adapter weights"):
        StyleConditioning.load(tmp_path / "style")


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="num_tokens, hidden_size and encoder_filters must be >= 1"):
        StyleConfig(num_tokens=0)
    with pytest.raises(ValueError, match=r"style_tokens must be \[K, D\]"):
        StyledModel(object(), torch.zeros(2, 3, 4))  # type: ignore[arg-type]
