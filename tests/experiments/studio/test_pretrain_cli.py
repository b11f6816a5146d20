"""``backdrop policy pretrain`` end to end on the smoke config: model folder, manifest, export, resume, evaluate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from safetensors import safe_open

from experiments.cli import main
from policy.model import STUDIO_TINY, InpaintPolicy
from policy.style import StyleConditioning

SMOKE = "experiments/configs/pretrain_smoke.toml"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    export = root / "exported"
    code = main(["policy", "pretrain", "--config", SMOKE, "--set", f"run.output_dir={root / 'runs'}",
                 "--export", str(export), "--no-progress"])  # fmt: skip
    assert code == 0
    (run_dir,) = (root / "runs" / "pretrain-smoke").iterdir()
    return run_dir, export


def test_model_folder_loads_with_its_parts(run: tuple[Path, Path]) -> None:
    _, export = run
    policy = InpaintPolicy.from_pretrained(export)
    assert policy.mask_decoder is not None and policy.resolution == 64
    StyleConditioning.load(export / "style")
    with safe_open(str(export / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as handle:
        assert handle.get_tensor("conv_in.weight").dtype.is_floating_point
        assert str(handle.get_tensor("conv_in.weight").dtype) == "torch.float16"  # weights_dtype = "float16"
    assert (export / "samples.png").is_file() and (export / "config.toml").is_file()


def test_manifest_records_how_to_reproduce_and_what_it_measures(run: tuple[Path, Path]) -> None:
    run_dir, export = run
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["reproduce"].startswith(f"backdrop policy pretrain --config {SMOKE} --set run.output_dir=")
    assert manifest["data_seed"] == 0 and manifest["run_seed"] == 0 and manifest["threads"] == 1
    assert set(manifest["training_seconds"]) == {"vae", "mask_decoder", "denoiser"}
    for relative, entry in manifest["files"].items():
        data = (export / relative).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, relative
    assert manifest["total_bytes"] == sum(e["bytes"] for e in manifest["files"].values())
    metrics = manifest["metrics"]
    for key in (
        "vae/psnr_scenes",
        "seam/colour_step_plain",
        "seam/colour_step_aware",
        "adherence/gold_samples",
        "adherence/material_acc_chance",
        "style/material_acc_on",
        "samples/preservation_max_abs_diff",
    ):
        assert key in metrics, key
    assert metrics["samples/preservation_max_abs_diff"] == 0
    assert "denoiser/val_loss" in manifest["training_metrics"]
    assert (run_dir / "checkpoints" / "latest.safetensors").is_file()


def test_resume_of_a_finished_run_and_re_evaluation(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, export = run
    before = json.loads((export / "manifest.json").read_text())
    assert main(["policy", "pretrain", "--evaluate", str(export), "--config", SMOKE]) == 0
    after = json.loads((export / "manifest.json").read_text())
    assert after["reproduce"] == before["reproduce"] and after["metrics"] == before["metrics"]  # deterministic
    code = main(["policy", "pretrain", "--resume", str(run_dir), "--set", f"run.output_dir={tmp_path}",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    (resumed,) = (tmp_path / "pretrain-smoke").iterdir()
    original = json.loads((run_dir / "model" / "manifest.json").read_text())["files"]
    again = json.loads((resumed / "model" / "manifest.json").read_text())["files"]
    assert {k: v for k, v in again.items() if k != "config.toml"} == {
        k: v for k, v in original.items() if k != "config.toml"
    }  # the same weights, byte for byte


def test_resume_needs_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "pretrain", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


@pytest.mark.skipif(not (STUDIO_TINY / "manifest.json").is_file(), reason="shipped weights not present")
def test_shipped_weights_match_their_manifest() -> None:
    manifest = json.loads((STUDIO_TINY / "manifest.json").read_text())
    assert manifest["reproduce"] == (
        "backdrop policy pretrain --config experiments/configs/pretrain_studio.toml "
        "--export policy/weights/studio_tiny"
    )
    for relative, entry in manifest["files"].items():
        data = (STUDIO_TINY / relative).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, relative
    assert manifest["total_bytes"] < 8_000_000  # "a few MB"
    assert manifest["metrics"]["samples/preservation_max_abs_diff"] == 0
    policy = InpaintPolicy.studio_base()
    assert policy.mask_decoder is not None and policy.resolution == 64
