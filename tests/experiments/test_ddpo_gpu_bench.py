"""experiments.bench.ddpo_gpu: the CPU dry run end to end, its arithmetic, and the FLOP count it reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from experiments.bench import ddpo_gpu
from experiments.bench.rollout import sd15_inpainting_config
from experiments.bench.unet_cost import measure_unet_cost, recipe_flops, unet_forward_flops
from policy.config import LoraConfig
from policy.lora import add_lora
from policy.model import build_unet


def test_dry_run_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--tiny", "--steps", "6", "--timed-steps", "3", "--batch", "4", "--warmup-steps", "2"]
    code = ddpo_gpu.main(
        [*argv, "--threads", "1", "--during-sampling", "--timestep-fraction", "0.5", "--out", str(out)]
    )
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "ddpo_gpu" and payload["model"]["resolution"] == 32
    assert "scaled by 6/3" in payload["scaling"]
    names = [row["name"] for row in payload["rows"]]
    assert names[0].startswith("baseline") and names[1] == "project eager" and "fraction 0.5" in names[-1]
    fields = ("epoch_s", "samples_per_hour", "tflops_per_s", "percent_of_limit", "peak_memory_gib", "speedup")
    for row in payload["rows"]:
        assert "error" not in row, row.get("error")
        assert all(field in row for field in fields)
        assert row["samples_per_hour"] == pytest.approx(3600 * 4 / row["epoch_s"] * 3 / 6)
        assert row["percent_of_limit"] == pytest.approx(100 * row["samples_per_hour"] / 7150)
    assert payload["rows"][0]["speedup"] == 1.0
    project = payload["rows"][1]
    assert project["trained_steps"] == 3 and payload["rows"][-1]["trained_steps"] == 2  # round(3 x 0.5)
    assert project["preservation_max_abs_diff"] == 0.0
    assert project["diagnostics"]["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-3)
    assert payload["rows"][0]["flops_per_sample"] < project["flops_per_sample"]  # the baseline does no VAE work
    assert payload["verdicts"]["best_row"] in names[1:4]  # timestep-fraction rows never count
    during = payload["rows"][3]  # the same update as the bf16 LoRA row, its gradient taken while sampling
    assert during["gradient"] == "during_sampling" and project["gradient"] == "re_forward"
    assert during["diagnostics"]["policy/ratio_mean"] == 1.0 and during["diagnostics"]["policy/clipfrac"] == 0.0


def test_summarise_scales_by_steps_and_counts_flops() -> None:
    args = argparse.Namespace(batch=16, steps=50, timed_steps=10)
    row = {"epoch_s": 2.0}
    ddpo_gpu.summarise(row, args, {"total": 68e12})
    assert row["samples_per_hour_timed_steps"] == 28_800  # 16 samples / 2 s
    assert row["samples_per_hour"] == 5_760  # each sample of 50 steps takes 5x as long
    assert row["tflops_per_s"] == 544.0  # 68 TFLOP x 16 / 2 s
    assert row["percent_of_limit"] == pytest.approx(100 * 5760 / 7150)
    assert "samples_per_hour_linear_estimate" not in row  # no phase split: only the upper-bound scaling
    project = {"epoch_s": 4.4, "trained_steps": 10, "phases_s": {"sample_score": 1.2, "reference": 0.8, "update": 2.4}}
    ddpo_gpu.summarise(project, args, None)
    # 0.4 s of sampling does not grow with the steps: a 50-step epoch takes 0.4 + 5 x 4.0 = 20.4 s
    assert project["samples_per_hour_linear_estimate"] == pytest.approx(3600 * 16 / 20.4)
    assert project["tflops_per_s"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch", "6"], "--batch must be a positive multiple of 4"),
        (["--steps", "10", "--timed-steps", "20"], "--timed-steps must be in"),
        (["--timestep-fraction", "1.0"], "--timestep-fraction must be in"),
        (["--update-rows", "16"], "give --compile too"),
        (["--cuda-graphs"], "give --compile too"),
        (
            ["--compile", "--compile-backend", "eager", "--cuda-graphs"],
            "--cuda-graphs needs --compile-backend inductor",
        ),
        (["--compile", "--update-rows", "0"], "--update-rows must be >= 1"),
    ],
)
def test_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ddpo_gpu.parse_args(argv)
    assert message in capsys.readouterr().err


def test_sd15_unet_flops_analytic_equals_flop_counter_on_meta() -> None:
    """803.4 GFLOP per 512 px forward (issue 9's "about 803"), two independent counts; LoRA r4 adds its share."""
    config = sd15_inpainting_config()

    def build() -> torch.nn.Module:
        unet = build_unet(config.unet, sample_size=64, latent_channels=4, cross_attention_dim=768)
        add_lora(unet, LoraConfig())
        return unet

    cost = measure_unet_cost(build, text_tokens=77, text_width=768)
    with torch.device("meta"):
        unet_config = build_unet(config.unet, sample_size=64, latent_channels=4, cross_attention_dim=768).config
    assert unet_forward_flops(unet_config, batch=1, text_tokens=77).total == cost.forward_flops
    assert cost.forward_flops / 1e9 == pytest.approx(803.4, abs=0.05)
    assert unet_forward_flops(unet_config, batch=1, text_tokens=77, lora_rank=4).total == cost.lora_forward_flops
    # Backward into the LoRA weights: activation gradients (~1 forward) + flash attention's recomputation.
    assert 1.0 < cost.lora_backward_flops / cost.forward_flops < 1.5
    full = recipe_flops(cost, steps=50, guidance=True, trained_steps=50)
    assert full["sampling"] == 100 * cost.lora_forward_flops and full["reference"] == 100 * cost.forward_flops
    assert 320e12 < full["total"] < 400e12  # ~400 forward-equivalents per sample (docs/benchmarks.md)


def test_dry_run_compiled_rows_with_larger_calls_and_channels_last(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--tiny", "--steps", "2", "--batch", "4", "--threads", "1", "--no-baseline"]
    argv += ["--no-eager-rows", "--compile", "--compile-backend", "eager", "--update-rows", "4", "--channels-last"]
    assert ddpo_gpu.main([*argv, "--timestep-fraction", "0.5", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows[:3]] == [
        "+ torch.compile (eager)",
        "+ 4 rows per training call",
        "+ channels-last UNet",
    ]
    assert [r["rows_per_forward"] for r in rows] == [2, 4, 4, 4]  # default batch / 2; the last value carries on
    assert [r["channels_last"] for r in rows] == [False, False, True, True]
    # each full-recipe row profiles a 4-step epoch after its timing; the timestep-fraction row does not
    assert [r.get("profile", {}).get("steps") for r in rows] == [4, 4, 4, None]
    assert "convolution" in rows[0]["profile"]["families"] and "profile_error" not in rows[0]
    for row in rows:
        assert "error" not in row, row.get("error")
        # one optimiser step per epoch with replayed old log-probs: the ratio is exactly 1
        assert row["diagnostics"]["policy/ratio_mean"] == 1.0 and row["diagnostics"]["policy/clipfrac"] == 0.0
