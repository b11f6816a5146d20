"""experiments.bench.matrix_bound: the attention split of the counted FLOPs, the bound's arithmetic, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments.bench import matrix_bound
from experiments.bench.ddpo_gpu import tiny_config
from experiments.bench.unet_cost import measure_unet_cost, recipe_attention_flops, recipe_flops, unet_forward_flops
from policy.config import LoraConfig
from policy.lora import add_lora
from policy.model import build_unet


def test_attention_split_matches_the_analytic_count() -> None:
    config = tiny_config()
    sample = config.resolution // config.vae.scale_factor
    text = config.text

    def build() -> torch.nn.Module:
        unet = build_unet(config.unet, sample_size=sample, latent_channels=4, cross_attention_dim=text.hidden_size)
        add_lora(unet, LoraConfig())
        return unet

    cost = measure_unet_cost(build, text_tokens=text.max_length, text_width=text.hidden_size)
    with torch.device("meta"):
        unet_config = build().config
    attention = unet_forward_flops(unet_config, batch=1, text_tokens=text.max_length).attention
    assert attention > 0
    # 10 sampled steps, 4 trained: 2 images x (10 + 4 + 4 forwards + 4 flash backwards at 2.5 forwards each)
    split = recipe_attention_flops(cost, steps=10, guidance=True, trained_steps=4)
    assert split == pytest.approx(2 * (18 * attention + 4 * 2.5 * attention))
    assert split < recipe_flops(cost, steps=10, guidance=True, trained_steps=4)["total"]


def test_bound_by_hand() -> None:
    profile = {
        "total_ms": 400.0,
        "families": {
            "attention": {"ms": 100.0},
            "convolution": {"ms": 150.0},
            "matmul": {"ms": 50.0},
            "normalisation": {"ms": 100.0},
        },
    }
    # per sample, batch 2: attention 5 TFLOP in 0.1 s -> 100 TFLOP/s; the rest 20 TFLOP in 0.2 s -> 200 TFLOP/s
    bound = matrix_bound.matrix_bound(
        profile, batch=2, profiled={"attention": 5e12, "matrix": 20e12}, recipe={"attention": 50e12, "matrix": 200e12}
    )
    assert bound["attention_tflops_per_s"] == pytest.approx(100.0)
    assert bound["matrix_tflops_per_s"] == pytest.approx(200.0)
    assert bound["matrix_kernel_share"] == pytest.approx(0.75)
    assert bound["bound_epoch_s"] == pytest.approx(3.0)  # 2 x (50/100 + 200/200) s
    assert bound["bound_samples_per_hour"] == pytest.approx(2400.0)
    with pytest.raises(ValueError, match="no attention or no convolution/matmul time"):
        matrix_bound.matrix_bound(
            {"total_ms": 1.0, "families": {"matmul": {"ms": 1.0}}},
            batch=2,
            profiled={"attention": 1.0, "matrix": 1.0},
            recipe={"attention": 1.0, "matrix": 1.0},
        )


def _payload(rows: list[dict]) -> dict:
    return {"device": "test", "settings": {"tiny": True, "batch": 4, "steps": 6}, "rows": rows}


def test_cli_bounds_profiled_rows_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    families = {"attention": {"ms": 2.0}, "convolution": {"ms": 3.0}, "matmul": {"ms": 1.0}, "other": {"ms": 4.0}}
    profiled = {"name": "+ compiled", "samples_per_hour": 1000.0, "timestep_fraction": 1.0}
    profiled["profile"] = {"steps": 2, "total_ms": 10.0, "families": families}
    fraction = {**profiled, "name": "  fraction 0.5", "timestep_fraction": 0.5}
    plain = {"name": "baseline", "samples_per_hour": 500.0}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_payload([plain, profiled, fraction])))
    assert matrix_bound.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "+ compiled" in out and "baseline" not in out and "fraction" not in out and "60%" in out
    [row] = matrix_bound.bounds(_payload([plain, profiled, fraction]))
    assert row["matrix_kernel_share"] == pytest.approx(0.6)
    # 3 x 6 steps' FLOPs vs 2 profiled steps: the bound epoch is ~3x the 6 ms of matrix time (the VAE is fixed)
    assert 6e-3 < row["bound_epoch_s"] < 3 * 6e-3


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert matrix_bound.main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(_payload([{"name": "baseline", "samples_per_hour": 500.0}])))
    assert matrix_bound.main([str(path)]) == 1
    assert "no full-recipe row has a kernel profile" in capsys.readouterr().err
    path.write_text("{not json")
    assert matrix_bound.main([str(path)]) == 2
    assert "JSONDecodeError" in capsys.readouterr().err
