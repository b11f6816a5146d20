"""``backdrop export``: turn a policy run into an A/B candidate bundle, behind gates.

:func:`export_candidate`, top to bottom:

1. read the run (``backdrop policy train`` layout: config.toml, environment.json, metrics.jsonl, adapter/ or the
   latest checkpoint's adapter) and load the candidate: the run's base model + its adapter;
2. sample the run's held-out evaluation requests (``[export.evaluation]``) and measure what the gates need: the
   product pixels of every output (pixel verifier), the KL to the base recomputed on those samples, the direct
   lift over the base (the base sampled on the same requests and seeds, both scored by the reward ensemble:
   ``experiments/export/direct.py``) and the logs' correction of it (click residuals over embedding clusters of
   the logged variants, ``experiments/export/logged_correction.py``), the logged non-inferiority check (ELBO
   re-weighting of logged images, ``experiments/export/logged_ope.py``), the reward model's audit
   (``reward/audit.py``);
3. :func:`experiments.export.gates.check_gates`: refuse with the reasons, or continue with ``override`` recorded;
4. write the bundle::

       <out>/adapter/pytorch_lora_weights.safetensors   LoRA (diffusers format: load_lora_weights loads it)
       <out>/merged_unet/                              --merge: the base UNet with the adapter fused in
       <out>/base/                                     only when the base was built from a config (no folder)
       <out>/reference/ref-<i>.png                     reference images (hashes in the manifest)
       <out>/contact_sheet.png                         product | base | candidate for a few requests
       <out>/audit/                                    audit.html, audit.json, plots/
       <out>/ope.json                                  the logged non-inferiority (OPE) report
       <out>/manifest.json  <out>/MODEL_CARD.md

5. reload the bundle (a fresh policy, and a plain diffusers pipeline with ``load_lora_weights``) and reproduce
   the reference images bit-identically (``experiments/export/reload.py``), or fail loudly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from experiments.config import ConfigError, dump_toml, load_config, to_dict
from experiments.export.config import ExportConfig
from experiments.export.gates import (
    GateResult,
    audit_gate,
    check_gates,
    kl_gate,
    ope_gate,
    preservation_gate,
    recorded_override,
)
from experiments.export.lift import lift_summary, measure_lift
from experiments.export.logged_ope import evaluate_candidate
from experiments.export.manifest import (
    FORMAT,
    VERSION,
    base_identity,
    find_truth,
    reward_identity,
    reward_test_split,
    reward_training_data,
    table_digests,
)
from experiments.export.model_card import write_model_card
from experiments.export.reload import (
    ReproducibilityError,
    image_sha256,
    merge_adapter,
    sample_references,
    verify_reload,
)
from experiments.ope.evaluate import to_json_safe
from experiments.policy_runs.request_manifest import MANIFEST_DIR
from experiments.policy_runs.requests import manifest_eval
from experiments.policy_runs.train import DIVERGED_FILE, PolicyTrainCommandConfig, StudioRewardFn, load_world
from experiments.runtime import resolve_device, resolve_dtype, seed_everything
from experiments.studio.prompts import studio_vocabulary
from experiments.studio.truth import prompt_family, studio_truth
from experiments.tracking import git_state, package_versions, read_metrics
from offline_data.assets import file_sha256
from offline_data.errors import AssetError, BackdropError, InputUnreadableError, OutputExistsError
from offline_data.finite import dumps_strict
from offline_data.integrity import check_sha256, write_checksums
from policy.checkpoint import CheckpointError, latest_checkpoint
from policy.contact_sheet import draw_contact_sheet
from policy.model import InpaintPolicy, resolve_model_folder
from policy.replay import background_dims, stepwise_kl
from reward.audit import audit_reward_model
from reward.report import write_audit
from reward.scorer import RewardScorer
from rollout.request import expand_requests
from rollout.sampler import sample_trajectories

logger = logging.getLogger("backdrop")


class ExportInputError(BackdropError):
    """The run folder, the bundle folder or the reward model cannot be used."""

    exit_code = 2


@dataclasses.dataclass(frozen=True, eq=False)
class PolicyRun:
    """A ``backdrop policy train`` run directory, read."""

    directory: Path
    config: PolicyTrainCommandConfig
    environment: dict
    records: list[dict]
    adapter: Path
    adapter_source: str
    """"final adapter" or the checkpoint the adapter was taken from."""
    reward_dir: Path


def read_run(run_dir: Path, reward_dir: Path | None = None) -> PolicyRun:
    """Read a policy run; the adapter is ``adapter/`` or, for an unfinished run, the latest checkpoint's.

    Raises:
        ExportInputError: not a run folder, no adapter, or no reward model found.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise ExportInputError(f"{run_dir}: not a 'backdrop policy train' run directory (no config.toml)")
    try:
        config = load_config(PolicyTrainCommandConfig, run_dir / "config.toml")
    except ConfigError as exc:
        raise ExportInputError(f"{run_dir / 'config.toml'}: not a policy train config: {exc}") from None
    if (run_dir / DIVERGED_FILE).is_file():
        raise ExportInputError(
            f"{run_dir}: the run went non-finite and stopped (see {run_dir / DIVERGED_FILE}); a diverged run is not "
            "exported: train again with a smaller trainer.optim.learning_rate or a larger trainer.kl.coef"
        )
    environment_path = run_dir / "environment.json"
    environment = json.loads(environment_path.read_text(encoding="utf-8")) if environment_path.is_file() else {}
    records = []
    if (run_dir / "metrics.jsonl").is_file():
        records = read_metrics(run_dir)
    adapter, source = run_dir / "adapter", "final adapter"
    if not (adapter / "pytorch_lora_weights.safetensors").is_file():
        try:
            checkpoint = latest_checkpoint(run_dir / "checkpoints")
        except CheckpointError:
            raise ExportInputError(f"{run_dir}: no adapter/ and no checkpoint to export") from None
        adapter, source = checkpoint / "adapter", f"checkpoint {checkpoint.name} (the run has no final adapter)"
    reward = reward_dir or environment.get("reward_model") or config.reward.model_dir
    if reward is None or not (Path(reward) / "reward.json").is_file():
        raise ExportInputError(
            f"{run_dir}: reward model {reward} not found; pass --reward MODEL_DIR (a 'backdrop reward train' model)"
        )
    return PolicyRun(run_dir, config, environment, records, adapter, source, Path(reward))


@dataclasses.dataclass(frozen=True, eq=False)
class ExportResult:
    """A written bundle."""

    bundle: Path
    gates: list[GateResult]
    failed: list[GateResult]
    manifest: dict


def export_candidate(
    run_dir: Path,
    out: Path,
    config: ExportConfig,
    *,
    merge: bool = False,
    override: str | None = None,
    reward_dir: Path | None = None,
    progress: bool = False,
) -> ExportResult:
    """Gate and export the candidate of ``run_dir`` into the new folder ``out`` (module docstring).

    Raises:
        ExportInputError: unusable run, reward model, or an ``out`` folder that already holds files.
        GateRefusedError: a gate failed and ``override`` is None (nothing is written).
        ReproducibilityError: the written bundle did not reproduce its reference images.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out}: already holds files; export into a new folder")
    run = read_run(run_dir, reward_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    dtype = resolve_dtype(run.config.run.dtype, device)
    seed_everything(run.config.run.seed)
    candidate = InpaintPolicy.from_config(
        run.config.policy.model, vocabulary=studio_vocabulary(), device=device, dtype=dtype
    )
    candidate.load_adapter(run.adapter)
    try:
        held_out = manifest_eval(run.directory, candidate.resolution)[: config.evaluation.requests]
    except AssetError as exc:
        raise ExportInputError(str(exc)) from None
    # The world only names the studio products' kinds for the reward model; a catalogue run has none.
    world = load_world(run.config.world) if run.config.catalogue.requests is None else None
    sampler = dataclasses.replace(run.config.trainer.sampler, enforce_preservation=False)
    scorer = RewardScorer.load(run.reward_dir, device=device)

    logger.info("sampling %d evaluation request(s) x %d seed(s)", len(held_out), config.evaluation.seeds_per_request)
    measured = _measure(candidate, held_out, sampler, config, run, progress=progress)
    logs_dir = config.ope.logs or _default_logs(run.reward_dir)
    ope_result, ope_gate_result = _ope(candidate, scorer, logs_dir, sampler, config, progress)
    audit, audit_gate_result = _audit(scorer, logs_dir, run, config)
    samples = measured.pop("samples_for_lift")
    measured["lift"], lift_gate_result = measure_lift(
        candidate, scorer, world, samples, sampler, config, audit, logs_dir
    )
    gates = [measured["preservation"], measured["kl"], lift_gate_result, ope_gate_result, audit_gate_result]
    for gate in gates:
        logger.info("gate %-12s %s: %s", gate.name, "passed" if gate.passed else "FAILED", gate.message)
    failed = check_gates(gates, override)
    if override is not None and not failed:
        logger.warning("every gate passed: --override %r was not needed and is not recorded", override)
    evidence = GateEvidence(gates, failed, recorded_override(failed, override), measured, ope_result, audit, logs_dir)

    files = _write_bundle(out, candidate, run, scorer, world, held_out, sampler, config, evidence, merge=merge)
    manifest = _manifest(run, config, evidence, files)
    _write_manifest(out, manifest)
    write_model_card(out, manifest)
    manifest["reload"] = _reload(manifest, files, sampler, device, dtype)
    _write_manifest(out, manifest)
    write_model_card(out, manifest)
    write_checksums(out)  # every weight file of the bundle (adapter, base, merged UNet) in one list
    return ExportResult(bundle=out, gates=gates, failed=failed, manifest=manifest)


@dataclasses.dataclass(frozen=True, eq=False)
class GateEvidence:
    """What the gates were decided on, and the decision."""

    gates: list[GateResult]
    failed: list[GateResult]
    override: str | None
    measured: dict
    """Evaluation samples: the preservation and KL gates, sample count, seeds, the run's last evaluation, the
    direct lift with its calibration and the logs' correction (``experiments.export.lift.MeasuredLift`` or None)."""
    ope: Any
    """``experiments.export.logged_ope.CandidateOPE`` (logged non-inferiority), or None when OPE was impossible."""
    audit: dict | None
    """{"result": AuditResult, "truth": ...} (audited now) or {"metrics": ..., "source": ...} (read)."""
    logs_dir: Path | None


@dataclasses.dataclass(frozen=True, eq=False)
class BundleFiles:
    """What was written, and the reference images the reloaded bundle must reproduce."""

    out: Path
    base_folder: Path
    merged: Path | None
    references: list
    reference_seeds: list[int]
    hashes: list[str]
    contact: Path
    audit_files: dict[str, str]


def _write_bundle(
    out: Path, candidate, run: PolicyRun, scorer, world, held_out, sampler, config: ExportConfig,
    evidence: GateEvidence, *, merge: bool,
) -> BundleFiles:  # fmt: skip
    """Adapter, base (when built from a config), merged UNet, reference images, contact sheet, audit, OPE."""
    out.mkdir(parents=True, exist_ok=True)
    candidate.save_adapter(out / "adapter")
    base_folder = _base_folder(candidate, run, out)
    merged = merge_adapter(base_folder, out / "adapter", out / "merged_unet") if merge else None
    references = list(held_out[: config.reference.requests])
    reference_seeds = [config.reference.seed + i for i in range(len(references))]
    reference_images = sample_references(candidate, references, reference_seeds, sampler)
    _write_pngs(reference_images, out / "reference")
    contact = _contact_sheet(candidate, scorer, world, held_out[: config.contact_sheet_requests], sampler, config, out)
    audit_files = _write_audit(evidence.audit, out / "audit")
    if evidence.ope is not None:
        (out / "ope.json").write_text(json.dumps(_json(evidence.ope), indent=2) + "\n", encoding="utf-8")
    return BundleFiles(
        out, base_folder, merged, references, reference_seeds, image_sha256(reference_images), contact, audit_files
    )


# ----------------------------------------------------------------------------------------------------------
# Measurements behind the gates


def _measure(candidate, requests, sampler, config: ExportConfig, run: PolicyRun, *, progress: bool) -> dict[str, Any]:
    expanded, seeds = expand_requests(requests, config.evaluation.seeds_per_request, config.evaluation.first_seed)
    rollout = sample_trajectories(candidate, expanded, seeds, sampler, progress=progress)
    originals = torch.stack([r.product_rgb for r in expanded])
    masks = torch.stack([r.product_mask for r in expanded])
    preservation = preservation_gate(originals, rollout.images, masks, [r.request_id for r in expanded], seeds)
    kl = stepwise_kl(candidate, rollout.trajectory, 64)
    kl_nats = (kl.sum(dim=1) * background_dims(rollout.trajectory)).double().numpy()
    evaluations = [r for r in run.records if "eval/kl_nats" in r]
    run_kl = float(evaluations[-1]["eval/kl_nats"]) if evaluations else None
    return {
        "preservation": preservation,
        "kl": kl_gate(kl_nats, config.gates.max_kl_nats, run_kl_nats=run_kl),
        "samples": len(expanded),
        "seeds": {"first": config.evaluation.first_seed, "count": len(seeds)},
        "run_final_eval": evaluations[-1] if evaluations else None,
        "samples_for_lift": (expanded, seeds, rollout.images),
    }


def _default_logs(reward_dir: Path) -> Path | None:
    return reward_test_split(reward_dir)


def _ope(candidate, scorer, logs_dir: Path | None, sampler, config: ExportConfig, progress: bool):
    estimator = config.ope.ope.primary
    threshold = config.gates.min_lift_lower_bound
    if logs_dir is None or not Path(logs_dir).is_dir():
        refusal = f"no logs to evaluate on ({logs_dir}); set [export.ope] logs to a folder of validated logs"
        return None, ope_gate(None, None, None, threshold, estimator=estimator, refusal=refusal)
    try:
        result = evaluate_candidate(candidate, scorer, Path(logs_dir), config.ope, sampler, progress=progress)
    except (BackdropError, ValueError) as exc:
        return None, ope_gate(None, None, None, threshold, estimator=estimator, refusal=str(exc))
    lift = result.report.result(f"lift:{estimator}", "request")
    details = {"ess": lift.ess, "logs": str(logs_dir), "candidate": result.diagnostics}
    return result, ope_gate(lift.value, lift.ci_low, lift.ci_high, threshold, estimator=estimator, details=details)


def _audit(scorer, logs_dir: Path | None, run: PolicyRun, config: ExportConfig):
    """The audit's result (None when read from a file) and its gate."""
    tolerated = config.gates.tolerated_flags
    if config.audit_report is not None:
        try:
            metrics = json.loads(Path(config.audit_report).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputUnreadableError(f"{config.audit_report}: cannot read the audit report: {exc}") from None
        return {"metrics": metrics, "source": str(config.audit_report)}, audit_gate(
            metrics.get("flags", []), tolerated
        )
    if logs_dir is None or not Path(logs_dir).is_dir():
        gate = GateResult("audit", False, None, 0.0, f"no logs to audit the reward model on ({logs_dir})")
        return None, gate
    truth = config.truth or (find_truth(Path(logs_dir)) if config.truth_search else None)
    result = audit_reward_model(
        scorer,
        logs_dir,
        truth=studio_truth(truth),
        prompt_family=prompt_family,
        run_dir=run.directory,
        config=config.audit,
    )
    return {"result": result, "truth": str(truth) if truth else None}, audit_gate(result.flags, tolerated)


# ----------------------------------------------------------------------------------------------------------
# Writing


def _base_folder(candidate, run: PolicyRun, out: Path) -> Path:
    """The base model's folder; a base built from a config has none, so it is written into the bundle."""
    pretrained = run.config.policy.model.pretrained
    if pretrained is not None:
        return resolve_model_folder(pretrained).resolve()
    with candidate.as_base():
        candidate.save_pretrained(out / "base")
    return out / "base"


def _write_pngs(images: torch.Tensor, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"ref-{i}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths


def _contact_sheet(candidate, scorer, world, requests, sampler, config: ExportConfig, out: Path) -> Path:
    """product | base | candidate for a few evaluation requests, same seed, proxy reward in the captions."""
    seeds = [config.evaluation.first_seed + i * config.evaluation.seeds_per_request for i in range(len(requests))]
    after = sample_trajectories(candidate, list(requests), seeds, sampler).images
    with candidate.as_base():
        before = sample_trajectories(candidate, list(requests), seeds, sampler).images
    reward = StudioRewardFn(scorer, {p.product_id: p.kind for p in world.products} if world is not None else {})
    reward_before = reward(before, list(requests)).reward.tolist()
    reward_after = reward(after, list(requests)).reward.tolist()
    rows = []
    for i, request in enumerate(requests):
        product = torch.where(
            request.product_mask[None], request.product_rgb, torch.full_like(request.product_rgb, 255)
        )
        rows.append(
            (
                f"{request.product_id} {request.segment}",
                [
                    (product.permute(1, 2, 0).numpy(), "product"),
                    (before[i].permute(1, 2, 0).numpy(), f"base {reward_before[i]:+.2f}"),
                    (after[i].permute(1, 2, 0).numpy(), f"cand {reward_after[i]:+.2f}"),
                ],
            )
        )
    return draw_contact_sheet(rows, out / "contact_sheet.png", scale=2)


def _write_audit(audit: dict | None, folder: Path) -> dict[str, str]:
    if audit is None:
        return {}
    if "result" in audit:
        written = write_audit(audit["result"], folder)
        return {k: str(v.relative_to(folder.parent)) for k, v in written.items() if not k.startswith("plot:")}
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(audit["source"], folder / "audit.json")
    return {"json": "audit/audit.json"}


def _json(ope_result) -> dict:
    return to_json_safe(
        {
            "report": ope_result.report.to_dict(),
            "candidate": ope_result.diagnostics,
            "log_ratio_nats": ope_result.log_ratio,
        }
    )


def _manifest(run: PolicyRun, config: ExportConfig, evidence: GateEvidence, files: BundleFiles) -> dict:
    """The bundle's manifest.json (``experiments/export/manifest.py`` has the identities and hashes)."""
    audit, measured = evidence.audit, evidence.measured
    audit_metrics = None
    if audit is not None:
        audit_metrics = audit["result"].metrics if "result" in audit else audit["metrics"]
    pretrained = run.config.policy.model.pretrained
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "candidate": {
            "run": str(run.directory),
            "adapter_source": run.adapter_source,
            "adapter": "adapter/pytorch_lora_weights.safetensors",
            "adapter_sha256": file_sha256(files.out / "adapter" / "pytorch_lora_weights.safetensors"),
            "lora": to_dict(run.config.policy.lora),
            "merged_unet": "merged_unet/" if files.merged is not None else None,
        },
        "base_model": base_identity(files.base_folder, pretrained=str(pretrained) if pretrained is not None else None),
        "reward_model": reward_identity(run.reward_dir),
        "training": {
            "config": to_dict(run.config),
            "command": " ".join(run.environment.get("argv", [])) or None,
            "git": run.environment.get("git"),
            "final_eval": measured["run_final_eval"],
        },
        "data": {
            "reward_training": reward_training_data(run.reward_dir),
            "ope_logs": {
                "folder": str(evidence.logs_dir) if evidence.logs_dir else None,
                "tables": table_digests(evidence.logs_dir),
            },
            "world": None
            if run.config.catalogue.requests is not None
            else {"config": str(run.config.world.config) if run.config.world.config else "default studio world"},
            "requests": _requests_identity(run.directory),
        },
        "seeds": {
            "run": run.config.run.seed,
            "evaluation": measured["seeds"],
            "reference": files.reference_seeds,
            "ope": config.ope.seed,
            "audit": config.audit.seed,
        },
        "export": {
            "config": to_dict(config),
            "config_toml": dump_toml(config),
            "git": git_state(),
            "packages": dict(package_versions()),
        },
        "metrics": {
            "evaluation_samples": measured["samples"],
            "kl_nats_mean": measured["kl"].value,
            "preservation_changed_pixels": measured["preservation"].value,
            "direct_lift": lift_summary(measured.get("lift"), config),
            "ope": None if evidence.ope is None else _ope_summary(evidence.ope, config),
            "audit_headline": None if audit_metrics is None else audit_metrics.get("headline"),
        },
        "gates": [g.to_dict() for g in evidence.gates],
        "override": None
        if evidence.override is None
        else {"reason": evidence.override, "failed_gates": [g.name for g in evidence.failed]},
        "audit": {
            "files": files.audit_files,
            "truth": audit.get("truth") if audit else None,
            "flags": [] if audit_metrics is None else audit_metrics.get("flags", []),
        },
        "reference_images": [
            {
                "request_id": r.request_id,
                "seed": s,
                "sha256": h,
                "file": f"reference/ref-{i}.png",
                "shape": [3, *r.size],
            }
            for i, (r, s, h) in enumerate(zip(files.references, files.reference_seeds, files.hashes))
        ],
        "sampler": to_dict(run.config.trainer.sampler),
        "contact_sheet": files.contact.name,
    }
    return manifest


def _requests_identity(run_dir: Path) -> dict:
    """The run's request manifest: where it is, its rows per split, and the SHA-256 of its table file."""
    table = run_dir / MANIFEST_DIR / "requests.parquet"
    splits = pq.read_table(table, columns=["split"]).column("split").to_pylist()
    # Named inside the run folder: the bundle and its card carry no path of the machine that wrote them.
    return {
        "manifest": f"{run_dir.name}/{MANIFEST_DIR}/requests.parquet",
        "sha256": file_sha256(table),
        "train": splits.count("train"),
        "eval": splits.count("eval"),
    }


def _ope_summary(ope_result, config: ExportConfig) -> dict:
    estimator = config.ope.ope.primary
    out = {}
    for key in (estimator, f"lift:{estimator}", f"relative_lift:{estimator}", "on_policy", "dm"):
        try:
            res = ope_result.report.result(key, "request")
        except KeyError:
            continue
        out[key] = {"value": res.value, "ci_low": res.ci_low, "ci_high": res.ci_high, "ess": res.ess}
    return out


def _write_manifest(out: Path, manifest: dict) -> None:
    text = dumps_strict(manifest, indent=2, default=_default) + "\n"  # a NaN metric is null, listed in non_finite
    (out / "manifest.json").write_text(text, encoding="utf-8")


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to the manifest")


def _reload(manifest: dict, files: BundleFiles, sampler, device, dtype) -> dict:
    candidate = manifest["candidate"]
    check_sha256(files.out / candidate["adapter"], candidate["adapter_sha256"], "manifest.json adapter_sha256")
    try:
        return verify_reload(
            files.hashes, files.references, files.reference_seeds, sampler, base_folder=files.base_folder,
            adapter_folder=files.out / "adapter", device=device, dtype=dtype, merged_unet=files.merged,
        )  # fmt: skip
    except ReproducibilityError as exc:
        manifest["reload"] = {"identical": False, "error": str(exc)}
        _write_manifest(files.out, manifest)
        raise
