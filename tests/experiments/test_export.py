"""``backdrop export`` on a tiny policy run: the bundle, its manifest and card, the override, the refusal, a
planted product-pixel change, and the bit-identical reload (fresh policy and plain diffusers pipeline)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from experiments.config import dump_toml
from experiments.export.bundle import export_candidate
from experiments.export.config import (
    CandidateOPEConfig,
    EvaluationSetConfig,
    ExportConfig,
    GateConfig,
    ReferenceConfig,
)
from experiments.export.gates import GateRefusedError
from experiments.export.reload import ReproducibilityError, verify_reload
from experiments.ope.evaluate import OPEConfig
from experiments.studio.prompts import studio_vocabulary
from reward.audit_config import AuditConfig, ProbeConfig

SAMPLER_STEPS = 3
FAST = ExportConfig(
    threads=1,
    contact_sheet_requests=2,
    evaluation=EvaluationSetConfig(requests=3, seeds_per_request=2),
    ope=CandidateOPEConfig(elbo_draws=1, batch_size=16, ope=OPEConfig(n_bootstrap=200)),
    audit=AuditConfig(images=12, probes=ProbeConfig(edits=("blur",), regions=("background",))),
    reference=ReferenceConfig(requests=2),
)
FAST_SET = [
    "--set",
    "export.threads=1",
    "--set",
    "export.contact_sheet_requests=2",
    "--set",
    "export.evaluation.requests=3",
    "--set",
    "export.ope.elbo_draws=1",
    "--set",
    "export.ope.batch_size=16",
    "--set",
    "export.ope.ope.n_bootstrap=200",
    "--set",
    "export.audit.images=12",
    "--set",
    'export.audit.probes.edits=["blur"]',
    "--set",
    'export.audit.probes.regions=["background"]',
    "--set",
    "export.reference.requests=2",
]


def build_run(root: Path) -> Path:
    """A small world (logs + truth), a reward model trained on it, and a policy run whose adapter is a
    perturbed LoRA on the shipped tiny studio base (``backdrop policy train`` layout)."""
    from experiments.policy_runs.requests import run_requests
    from experiments.policy_runs.train import (
        PolicyTrainCommandConfig,
        RewardSourceConfig,
        WorldSourceConfig,
        load_world,
    )
    from experiments.studio.requests import StudioRequestsConfig
    from policy.config import InpaintModelConfig, LoraConfig, PolicyConfig
    from policy.model import InpaintPolicy
    from policy.trainer_config import DDPOConfig
    from reward.pipeline import fit_reward_model
    from rollout.config import SamplerConfig
    from tests.reward.conftest import build_splits, fast_config, small_world

    world = small_world()
    splits = build_splits(root, world)
    (root / "world.toml").write_text(dump_toml(world))
    scorer, metrics = fit_reward_model(
        fast_config(), splits / "train", splits / "validation", seed=0, device=torch.device("cpu"), progress=False
    )
    scorer.save(root / "reward", metrics={**metrics, "splits": str(splits)})
    config = PolicyTrainCommandConfig(
        policy=PolicyConfig(model=InpaintModelConfig(pretrained=Path("studio_tiny")), lora=LoraConfig()),
        world=WorldSourceConfig(config=root / "world.toml"),
        requests=StudioRequestsConfig(split_fractions=(0.6, 0.2, 0.2), eval_products=4),
        reward=RewardSourceConfig(model_dir=root / "reward"),
        trainer=DDPOConfig(sampler=SamplerConfig(num_steps=SAMPLER_STEPS, guidance_scale=3.0, batch_size=8)),
    )
    run = root / "run"
    run.mkdir()
    policy = InpaintPolicy.from_config(config.policy.model, lora=config.policy.lora, vocabulary=studio_vocabulary())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in policy.trainable_parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    policy.save_adapter(run / "adapter")
    run_requests(config, run, policy.resolution, load_world(config.world))  # the run's request manifest
    (run / "config.toml").write_text(dump_toml(config))
    (run / "environment.json").write_text(json.dumps({"argv": ["backdrop", "policy", "train"], "git": {"sha": "abc"}}))
    record = {
        "step": 5,
        "eval/kl_nats": 12.5,
        "eval/proxy_gain_sd": 0.2,
        "gold/gain_sd": 0.1,
        "gold/gain_se": 0.01,
        "gold/base_within_sd": 0.2,
    }
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 0, "eval/kl_nats": 0.0, "eval/proxy_gain_sd": 0.0}) + "\n" + json.dumps(record) + "\n"
    )
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def bundle(run_dir: Path) -> Path:
    """Exported through the CLI with a KL budget the candidate cannot meet, so the override is exercised."""
    out = run_dir.parent / "bundle"
    args = [
        "export",
        str(run_dir),
        "--out",
        str(out),
        "--merge",
        "--no-progress",
        "--override",
        "A/B owner: smoke test",
        "--set",
        "export.gates.max_kl_nats=1e-9",
        *FAST_SET,
    ]
    assert main(args) == 0
    return out


def test_bundle_files_manifest_and_override(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in (
        "adapter/pytorch_lora_weights.safetensors",
        "merged_unet/diffusion_pytorch_model.safetensors",
        "MODEL_CARD.md",
        "contact_sheet.png",
        "audit/audit.html",
        "audit/audit.json",
        "reference/ref-0.png",
        "reference/ref-1.png",
    ):
        assert (bundle / name).is_file(), name
    assert [g["name"] for g in manifest["gates"]] == ["preservation", "kl", "lift", "logged_noninferiority", "audit"]
    kl = manifest["gates"][1]
    assert not kl["passed"] and kl["threshold"] == 1e-9 and kl["value"] > 0
    assert manifest["override"]["reason"] == "A/B owner: smoke test"
    assert "kl" in manifest["override"]["failed_gates"]
    assert manifest["gates"][0]["passed"] and manifest["metrics"]["preservation_changed_pixels"] == 0.0
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "Exported with an override." in card and "A/B owner: smoke test" in card
    assert "| kl | **FAILED** |" in card and "contact_sheet.png" in card
    assert "not as the A/B effect" in card  # the OPE caveat under the estimate
    from policy.model import STUDIO_TINY

    assert not (bundle / "base").exists()  # the base is a folder of its own, identified by its hashes
    assert manifest["base_model"]["pretrained"] == "studio_tiny"
    weights = STUDIO_TINY / "unet" / "diffusion_pytorch_model.safetensors"
    assert (
        manifest["base_model"]["files"]["unet/diffusion_pytorch_model.safetensors"]
        == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    adapter = (bundle / "adapter" / "pytorch_lora_weights.safetensors").read_bytes()
    assert manifest["candidate"]["adapter_sha256"] == hashlib.sha256(adapter).hexdigest()
    reward_weights = Path(manifest["reward_model"]["folder"]) / "model.safetensors"
    assert manifest["reward_model"]["weights_sha256"] == hashlib.sha256(reward_weights.read_bytes()).hexdigest()
    assert set(manifest["data"]["ope_logs"]["tables"]) >= {"impressions.parquet", "assets.parquet"}
    assert manifest["training"]["final_eval"]["eval/kl_nats"] == 12.5
    assert manifest["audit"]["truth"] is not None  # found above the logs
    assert len(manifest["reference_images"]) == 2
    ope = json.loads((bundle / "ope.json").read_text())
    assert len(ope["log_ratio_nats"]) == ope["candidate"]["images"] > 0
    gates = {g["name"]: g for g in manifest["gates"]}
    assert gates["logged_noninferiority"]["details"]["ess"] > 0
    assert "among logged images (ELBO re-weighting)" in gates["logged_noninferiority"]["message"]
    # The lift gate: the candidate's and the base's fresh samples of the 3 x 2 evaluation requests and seeds.
    lift = manifest["metrics"]["direct_lift"]
    assert (lift["requests"], lift["seeds"], lift["members"]) == (3, 2, 2)
    assert lift["lower_sd"] <= lift["lift_sd"] <= lift["upper_sd"] and 0 <= lift["reward_model_share"] <= 1
    assert gates["lift"]["threshold"] == 0.0
    assert lift["calibration_margin_sd"] is None and lift["calibration"]["click_ece"] > 0  # measured, not applied
    assert "### Direct lift over the base" in card and f"**{lift['lift_sd']:+.3f}**" in card
    # The logs' correction, on the reward model's test split: recorded with its numbers, applied or abstained.
    correction = lift["logged_correction"]
    assert correction["logged_impressions"] > 0 and correction["clusters"] >= 1 and 0 <= correction["coverage"] <= 1
    assert correction["correction_lower_sd"] <= correction["correction_sd"] <= correction["correction_upper_sd"]
    assert gates["lift"]["details"]["logged_correction"] == correction
    if correction["applied"]:
        assert (
            gates["lift"]["value"] == correction["lower_sd"] <= lift["lower_sd"] + correction["correction_sd"] + 1e-12
        )
        assert "applied" in gates["lift"]["message"] and f"**{correction['lift_sd']:+.3f}**" in card
    else:
        assert correction["status"].startswith("abstained: coverage")
        assert gates["lift"]["value"] == lift["lower_sd"]
        assert gates["lift"]["passed"] == (lift["lower_sd"] > 0 and min(lift["member_lifts_sd"]) > 0)
        assert "the plain direct lift decides" in gates["lift"]["message"]
        assert f"Logged correction **{correction['status']}**" in card
    assert "Agreement with gold: **unmeasured**" in card or "Measured agreement with gold" in card


def test_reload_reproduces_the_reference_images(bundle: Path, run_dir: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    reload = manifest["reload"]
    assert reload["fresh_policy"]["identical"] and reload["diffusers_pipeline"]["identical"]
    assert reload["merged_unet"]["max_abs_pixel_difference"] <= 2  # fused weights round differently
    # The hashes are those of the PNGs' pixels, and the plain pipeline really carries the LoRA.
    import numpy as np
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    pixels = np.asarray(Image.open(bundle / "reference" / "ref-0.png")).transpose(2, 0, 1)
    digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
    assert digest == manifest["reference_images"][0]["sha256"]
    from policy.model import STUDIO_TINY

    pipe = StableDiffusionInpaintPipeline.from_pretrained(STUDIO_TINY, safety_checker=None)
    pipe.load_lora_weights(bundle / "adapter")
    assert getattr(pipe.unet, "peft_config", None)


def test_reload_failure_is_loud(bundle: Path, run_dir: Path) -> None:
    from experiments.config import load_config
    from experiments.policy_runs.train import PolicyTrainCommandConfig, load_world
    from experiments.studio.requests import studio_requests
    from policy.model import STUDIO_TINY

    config = load_config(PolicyTrainCommandConfig, run_dir / "config.toml")
    requests = studio_requests(config.requests, load_world(config.world)).evaluation[:2]
    manifest = json.loads((bundle / "manifest.json").read_text())
    hashes = [r["sha256"] for r in manifest["reference_images"]]
    hashes[1] = "0" * 64
    with pytest.raises(ReproducibilityError, match=f"1 of 2 reference image\\(s\\).*{requests[1].request_id}"):
        verify_reload(
            hashes,
            requests,
            [7, 8],
            config.trainer.sampler,
            base_folder=STUDIO_TINY,
            adapter_folder=bundle / "adapter",
            device=torch.device("cpu"),
            dtype=torch.float32,
        )


def test_refusal_names_the_gates_and_writes_nothing(run_dir: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(FAST, gates=GateConfig(max_kl_nats=1e-9))
    out = tmp_path / "refused"
    with pytest.raises(GateRefusedError) as info:
        export_candidate(run_dir, out, config)
    message = str(info.value)
    assert "kl: KL to the base" in message and "above the budget 1e-09" in message
    assert "preservation" not in message.split("failed:")[1]  # it passed
    assert not out.exists()


def test_planted_product_pixel_change_is_refused(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """One product pixel of the second evaluation output (request 0, second seed) is changed after compositing."""
    import rollout.sampler as sampler_module
    from experiments.config import load_config
    from experiments.policy_runs.train import PolicyTrainCommandConfig, load_world
    from experiments.studio.requests import studio_requests

    original = sampler_module.composite_product
    calls = []

    def composite_with_a_planted_change(generated, originals, masks, band_weight=None):
        out = original(generated, originals, masks, band_weight)
        if not calls:
            y, x = torch.nonzero(masks[1])[0].tolist()
            out[1, 0, y, x] ^= 1
        calls.append(1)
        return out

    monkeypatch.setattr(sampler_module, "composite_product", composite_with_a_planted_change)
    config = load_config(PolicyTrainCommandConfig, run_dir / "config.toml")
    first = studio_requests(config.requests, load_world(config.world)).evaluation[0]
    seed = FAST.evaluation.first_seed + 1
    with pytest.raises(GateRefusedError) as info:
        export_candidate(run_dir, tmp_path / "planted", FAST)
    message = str(info.value)
    assert (
        f"preservation: 1 product pixel(s) changed in 1 output(s), threshold 0: request {first.request_id!r} "
        in message
    )
    assert f"(seed {seed}): 1 product pixel(s) changed, max |diff| 1" in message
    assert not (tmp_path / "planted").exists()


def test_existing_bundle_folder_and_missing_reward_are_input_errors(run_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "full")]) == 73  # OutputExistsError
    assert "already holds files" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--out", str(tmp_path / "b"), "--reward", str(tmp_path / "nope")]) == 2
    error = capsys.readouterr().err
    assert f"reward model {tmp_path / 'nope'} not found" in error and "--reward MODEL_DIR" in error
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "not a 'backdrop policy train' run directory" in capsys.readouterr().err


def test_shipped_export_config_is_the_default() -> None:
    from experiments.config import load_config
    from experiments.export.config import ExportCommandConfig

    shipped = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "export.toml"
    assert load_config(ExportCommandConfig, shipped) == ExportCommandConfig()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("export.gates.max_kl_nats=0", "max_kl_nats must be > 0, got 0.0"),
        ("export.ope.ratio_temperature=0", "ratio_temperature must be > 0, got 0.0"),
        ("export.ope.elbo_draws=0", "elbo_draws and batch_size must be >= 1"),
        ("export.evaluation.requests=0", "requests and seeds_per_request must be >= 1"),
        ("export.reference.requests=0", "requests must be >= 1 and seed >= 0"),
        ("export.ope.ope.n_bootstrap=50", "n_bootstrap must be 0 \\(no intervals\\) or >= 100, got 50"),
        ("export.gates.max_kl=3", "unknown key 'export.gates.max_kl' \\(did you mean 'max_kl_nats'\\?\\)"),
    ],
)
def test_bad_export_config_values_are_named(override: str, message: str) -> None:
    from experiments.config import ConfigError, load_config
    from experiments.export.config import ExportCommandConfig

    with pytest.raises(ConfigError, match=message):
        load_config(ExportCommandConfig, None, [override])


def test_the_bundle_carries_checksums_of_all_its_weights(bundle: Path) -> None:
    from offline_data.integrity import read_checksums, verify_weights

    listed = read_checksums(bundle)
    assert "adapter/pytorch_lora_weights.safetensors" in listed  # the base is the shipped one here, not copied in
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert listed[manifest["candidate"]["adapter"]] == manifest["candidate"]["adapter_sha256"]
    assert verify_weights(bundle, required=True) and verify_weights(bundle / "adapter", required=True)


def test_a_run_that_went_non_finite_is_not_exported(run_dir: Path, tmp_path: Path, capsys) -> None:
    diverged = tmp_path / "diverged"
    diverged.mkdir()
    (diverged / "config.toml").write_text((run_dir / "config.toml").read_text())
    (diverged / "diverged.json").write_text('{"error": "epoch 2: policy/kl is nan; training stopped"}')
    assert main(["export", str(diverged), "--out", str(tmp_path / "out")]) == 2
    assert "the run went non-finite and stopped" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
