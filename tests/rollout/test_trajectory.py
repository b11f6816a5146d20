"""Trajectory: shape validation, selection, concatenation, safetensors + JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from offline_data.errors import AssetError
from rollout.trajectory import Trajectory

B, T, C, H = 3, 4, 4, 4  # latents 4x4, pixels 16x16


def fields(seed: int = 0, **overrides: object) -> dict:
    generator = torch.Generator().manual_seed(seed)
    base = {
        "latents": torch.randn(B, T + 1, C, H, H, generator=generator),
        "timesteps": torch.tensor([751, 501, 251, 1]),
        "log_probs": torch.randn(B, T, generator=generator),
        "prompt_embeds": torch.randn(B, 5, 8, generator=generator),
        "negative_prompt_embeds": torch.randn(B, 5, 8, generator=generator),
        "masked_image_latents": torch.randn(B, C, H, H, generator=generator),
        "latent_product": torch.rand(B, 1, H, H, generator=generator) > 0.5,
        "product_mask": torch.rand(B, 4 * H, 4 * H, generator=generator) > 0.5,
        "request_ids": [f"r{i + seed}" for i in range(B)],
        "product_ids": [f"p{i}" for i in range(B)],
        "prompts": ["oak", "", "white marble"],
        "seeds": [seed * 10 + i for i in range(B)],
        "eta": 1.0,
        "guidance_scale": 5.0,
    }
    return {**base, **overrides}


def assert_same(a: Trajectory, b: Trajectory) -> None:
    for name in ("latents", "timesteps", "log_probs", "prompt_embeds", "negative_prompt_embeds",
                 "masked_image_latents", "latent_product", "product_mask"):  # fmt: skip
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("request_ids", "product_ids", "prompts", "seeds", "eta", "guidance_scale"):
        assert getattr(a, name) == getattr(b, name), name


def test_properties() -> None:
    trajectory = Trajectory(**fields())
    assert (trajectory.batch_size, trajectory.num_steps) == (B, T)
    assert torch.equal(trajectory.background, ~trajectory.latent_product)
    assert trajectory.request_ids == ("r0", "r1", "r2")  # lists become tuples


def test_save_load_round_trip(tmp_path: Path) -> None:
    trajectory = Trajectory(**fields())
    path = trajectory.save(tmp_path / "traj" / "epoch0.safetensors")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["format"] == "backdrop.trajectory" and sidecar["seeds"] == [0, 1, 2]
    assert_same(Trajectory.load(path), trajectory)


def test_select_and_concat() -> None:
    first, second = Trajectory(**fields(0)), Trajectory(**fields(1))
    picked = first.select([2, 0])
    assert picked.request_ids == ("r2", "r0") and torch.equal(picked.latents[0], first.latents[2])
    both = Trajectory.concat([first, second])
    assert both.batch_size == 2 * B and both.request_ids[B:] == second.request_ids
    assert_same(both.select(range(B)), first)
    with pytest.raises(ValueError, match="trajectory 1: eta/guidance"):
        Trajectory.concat([first, Trajectory(**fields(1, guidance_scale=1.0))])
    with pytest.raises(ValueError, match="trajectory 1: timesteps differ"):
        Trajectory.concat([first, Trajectory(**fields(1, timesteps=torch.tensor([752, 501, 251, 1])))])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"latents": torch.zeros(B, T + 1, C, H)}, r"latents: expected float32 \[B, T\+1, C, h, w\]"),
        ({"latents": torch.zeros(B, 1, C, H, H)}, r"latents: expected at least 2 entries"),
        ({"timesteps": torch.tensor([3, 2, 1])}, r"timesteps: expected int64 \[4\], got torch.int64 \[3\]"),
        ({"log_probs": torch.zeros(B, T, dtype=torch.float64)}, r"log_probs: expected float32 \[3, 4\]"),
        ({"prompt_embeds": torch.zeros(2, 5, 8)}, r"prompt_embeds: expected float32 \[3, L, D\]"),
        ({"negative_prompt_embeds": torch.zeros(B, 6, 8)}, r"negative_prompt_embeds: expected float32 \[3, 5, 8\]"),
        ({"masked_image_latents": torch.zeros(B, C, H, 5)}, r"masked_image_latents: expected float32 \[3, 4, 4, 4\]"),
        ({"latent_product": torch.zeros(B, 1, H, H)}, r"latent_product: expected bool \[3, 1, 4, 4\]"),
        ({"product_mask": torch.zeros(B, 16, 12, dtype=torch.bool)}, "product_mask: expected a multiple of"),
        ({"request_ids": ["a"]}, r"request_ids: expected 3 entries \(one per sample\), got 1"),
        ({"seeds": [1, 2]}, "seeds: expected 3 entries"),
        ({"eta": 0.0}, r"eta: expected a value in \(0, 1\]"),
    ],
)
def test_invalid_fields_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Trajectory(**fields(**overrides))


def test_load_errors(tmp_path: Path) -> None:
    path = Trajectory(**fields()).save(tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match="end in .safetensors"):
        Trajectory(**fields()).save(tmp_path / "t.pt")
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(
        AssetError, match="expected format 'backdrop.trajectory' version 1, got \\('backdrop.trajectory', 99\\)"
    ):
        Trajectory.load(path)
    sidecar.write_text(json.dumps({k: v for k, v in meta.items() if k != "seeds"}))
    with pytest.raises(AssetError, match=r"missing trajectory field\(s\) \['seeds'\]"):
        Trajectory.load(path)
    sidecar.write_text(json.dumps({**meta, "prompts": ["only one"]}))
    with pytest.raises(AssetError, match="invalid trajectory: prompts: expected 3 entries"):
        Trajectory.load(path)
    sidecar.unlink()
    with pytest.raises(AssetError, match="t.json: trajectory file not found"):
        Trajectory.load(path)
    path.write_bytes(b"garbage")
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(AssetError, match="cannot read trajectory tensors"):
        Trajectory.load(path)
