"""The model card in the Hub's format: YAML front matter that parses, and no path of the machine that wrote it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.export.model_card import render_model_card, short_name, without_machine_paths


def manifest(root: Path, *, passed: bool = True) -> dict:
    run = root / "runs" / "policy_train" / "20261206-120000"
    return {
        "created": "2026-12-06T12:00:00",
        "candidate": {
            "run": str(run),
            "adapter_source": "adapter/",
            "adapter": "adapter/pytorch_lora_weights.safetensors",
            "adapter_sha256": "ab" * 32,
            "lora": {"rank": 4, "alpha": 4, "target_modules": ["to_q", "to_v"]},
            "merged_unet": None,
        },
        "base_model": {
            "pretrained": None,
            "folder": str(root / "models" / "sd-inpainting"),
            "files": {"a": "b"},
            "sha256": "cd" * 32,
            "pipeline_class": "StableDiffusionInpaintPipeline",
        },
        "reward_model": {
            "folder": str(root / "runs" / "reward_train" / "20261206-110000" / "model"),
            "format": "backdrop.reward/1",
            "members": 3,
            "encoder": "studio_cnn",
            "weights_sha256": "ef" * 32,
        },
        "sampler": {"num_steps": 20, "eta": 1.0, "guidance_scale": 1.0},
        "training": {
            "command": f"backdrop policy train --reward {root}/runs/reward_train/20261206-110000/model --out {root}/x",
            "git": {"sha": "0" * 40},
            "final_eval": {
                "step": 10,
                "eval/proxy_gain_sd": 0.8,
                "gold/gain_sd": 0.4,
                "gold/gain_se": 0.01,
                "gold/base_within_sd": 0.1,
                "eval/kl_nats": 12.5,
            },
        },
        "seeds": {"run": 0},
        "metrics": {
            "evaluation_samples": 16,
            "kl_nats_mean": 11.0,
            "preservation_changed_pixels": 0.0,
            "ope": {"lift:dr": {"value": 0.01, "ci_low": -0.01, "ci_high": 0.03, "ess": 120.0}},
            "audit_headline": None,
        },
        "gates": [{"name": "kl", "passed": passed, "value": 11.0, "threshold": 400.0, "message": "ok"}],
        "override": None,
        "audit": {"files": {"html": str(root / "bundle" / "audit" / "audit.html")}, "flags": []},
        "reference_images": [],
        "contact_sheet": "contact_sheet.png",
    }


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    header, _, body = card[4:].partition("\n---\n")
    assert body.lstrip().startswith("# Candidate inpainting model")
    return yaml.safe_load(header)


def test_card_front_matter_is_hub_metadata(tmp_path: Path) -> None:
    meta = front_matter(render_model_card(manifest(tmp_path)))
    assert meta["base_model"] == "sd-inpainting"
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "image-to-image"
    assert {"lora", "inpainting", "diffusers", "gates-passed"} <= set(meta["tags"])
    (entry,) = meta["model-index"]
    assert entry["name"] == "backdrop candidate from policy_train/20261206-120000"
    metrics = {m["type"]: m["value"] for m in entry["results"][0]["metrics"]}
    assert metrics == {"kl_per_sample": 11.0, "product_pixels_changed": 0.0, "gold_gain_sd": 0.4,
                       "eval_proxy_gain_sd": 0.8, "ope_lift_dr": 0.01}  # fmt: skip
    assert "gates-overridden" in front_matter(render_model_card(manifest(tmp_path, passed=False)))["tags"]


def test_card_names_no_machine_path(tmp_path: Path) -> None:
    card = render_model_card(manifest(tmp_path))
    assert str(tmp_path) not in card and "/tmp" not in card
    assert "`policy_train/20261206-120000`" in card and "reward_train/20261206-110000/model" in card
    assert "--reward reward_train/20261206-110000/model" in card  # the recorded command, shortened
    assert 'from_pretrained("sd-inpainting")' in card and "KL per sample 12.5 nats" in card


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("backdrop export /home/me/runs/policy_train/1 --out b", "backdrop export runs/policy_train/1 --out b"),
        ("relative runs/x stays", "relative runs/x stays"),
        ("a=/abs/file.toml", "a=abs/file.toml"),
    ],
)
def test_without_machine_paths(text: str, expected: str) -> None:
    assert without_machine_paths(text) == expected
    assert short_name("/a/b/c", 3) == "a/b/c" and short_name(None) == "–"
