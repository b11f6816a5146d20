"""The manifest of a pretrained model folder: how to reproduce it, what it cost, what it measures.

``manifest.json`` sits next to the weights (the design's rule: safetensors weights + the config that built them + a
manifest). It records the command, the resolved config (also written as ``config.toml``), the data and run
seeds, training seconds per stage, package versions, parameter counts, every file's size and sha256, and the
metrics of :mod:`experiments.studio.pretrain.eval` computed on the weights exactly as written (after any float16
conversion). ``samples.png`` is the evaluation's contact sheet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from experiments.studio.pretrain.config import PretrainConfig
from experiments.studio.pretrain.eval import (
    build_evaluation_data,
    evaluate_reconstruction,
    evaluate_samples,
    evaluate_seams,
    fit_prompt_classifier,
)
from offline_data.errors import AssetError
from policy.contact_sheet import draw_contact_sheet
from policy.model import InpaintPolicy, describe
from policy.style import StyleConditioning

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "backdrop.pretrained_model"
HALVED_FOLDERS = ("unet", "vae", "text_encoder", "mask_decoder")
"""Subfolders whose float32 weights :func:`halve_weights` stores as float16 (the style adapter stays float32)."""


def halve_weights(folder: Path) -> None:
    """Rewrite the float32 tensors of the model's safetensors files as float16 (half the size on disk).

    Loaders cast back to the model's compute dtype; the evaluation then runs on exactly these weights.
    """
    for sub in HALVED_FOLDERS:
        for path in sorted((folder / sub).glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
            tensors = {k: v.half() if v.dtype == torch.float32 else v for k, v in load_file(str(path)).items()}
            save_file(tensors, str(path), metadata=metadata)


def file_table(folder: Path) -> dict[str, dict[str, object]]:
    """Every file under ``folder`` except the manifest and the sample sheet: relative path -> bytes, sha256."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative in (MANIFEST, "samples.png"):
            continue
        table[relative] = {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return table


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("torch", "diffusers", "transformers", "peft", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def evaluate_model(
    folder: Path, config: PretrainConfig, *, seed: int, device: torch.device | str = "cpu"
) -> tuple[dict[str, float], dict[str, object]]:
    """Load the model folder as users will, evaluate it, draw ``samples.png``; returns (metrics, parameters)."""
    policy = InpaintPolicy.from_pretrained(folder, device=device)
    style = StyleConditioning.load(folder / "style").to(device)
    size, data_seed = policy.resolution, config.data.seed
    data = build_evaluation_data(data_seed, size, max(config.evaluation.samples, 16))
    classifier = fit_prompt_classifier(style.encoder, data_seed, size, config.evaluation.classifier_scenes)
    metrics = evaluate_reconstruction(policy, data)
    seam_metrics, seam_examples = evaluate_seams(policy, data)
    metrics |= seam_metrics
    sample_metrics, rows = evaluate_samples(policy, style, data, classifier, config.evaluation, seed=seed)
    metrics |= sample_metrics
    sheet_rows = []
    for start in range(0, min(len(rows["samples"]), 36), 12):
        real = [(img.permute(1, 2, 0).numpy(), text.split(",")[0]) for img, text in rows["real"][start : start + 12]]
        fake = [(img.permute(1, 2, 0).numpy(), "") for img, _ in rows["samples"][start : start + 12]]
        sheet_rows += [("real render (prompt)", real), ("sample, same prompt", fake)]
    names = ("truth", "plain decoder", "mask-aware decoder")[: len(seam_examples)]
    sheet_rows.append(("seams (held-out)", list(zip(seam_examples, names))))
    for label, cells in rows.items():
        if label.startswith("style"):
            sheet_rows.append((label, [(img.permute(1, 2, 0).numpy(), text) for img, text in cells]))
    draw_contact_sheet(sheet_rows, folder / "samples.png")
    parameters = dict(describe(policy))
    parameters["mask_decoder_params"] = sum(p.numel() for p in policy.mask_decoder.parameters()) if (
        policy.mask_decoder is not None) else 0  # fmt: skip
    parameters["style_adapter_params"] = sum(p.numel() for p in style.adapter.parameters())
    return metrics, parameters


def evaluate_and_write_manifest(
    folder: Path,
    config: PretrainConfig,
    *,
    seed: int,
    command: str | None,
    config_toml: str | None,
    seconds: Mapping[str, float] | None,
    threads: int,
    device: torch.device | str = "cpu",
    training_metrics: Mapping[str, float] | None = None,
    log_metrics: Callable[[Mapping[str, float], int], None] | None = None,
) -> str:
    """Evaluate ``folder`` and write its manifest; returns a printable report.

    With ``command=None`` (re-evaluation) the command, config, seconds and training metrics of the existing
    manifest are kept and only the evaluation is refreshed.
    """
    previous = {}
    if command is None:
        path = folder / MANIFEST
        if not path.is_file():
            raise AssetError(f"{path}: no manifest to refresh (evaluate a folder written by policy pretrain)")
        previous = json.loads(path.read_text(encoding="utf-8"))
    if config_toml is not None:
        (folder / "config.toml").write_text(config_toml, encoding="utf-8")
    metrics, parameters = evaluate_model(folder, config, seed=seed, device=device)
    if log_metrics is not None:
        log_metrics(metrics, 0)
    seconds = dict(seconds) if seconds is not None else previous.get("training_seconds", {})
    files = file_table(folder)
    manifest = {
        "format": FORMAT,
        "reproduce": command if command is not None else previous.get("reproduce"),
        "config": "config.toml",
        "data_seed": config.data.seed,
        "run_seed": seed,
        "threads": threads,
        "device": str(device),
        "training_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "training_seconds_total": round(sum(seconds.values()), 1),
        "created": previous.get("created") or dt.datetime.now().isoformat(timespec="seconds"),
        "evaluated": dt.datetime.now().isoformat(timespec="seconds"),
        "versions": _versions(),
        "parameters": parameters,
        "weights_dtype": config.weights_dtype,
        "files": files,
        "total_bytes": sum(int(f["bytes"]) for f in files.values()),
        "training_metrics": previous.get("training_metrics", {}) if training_metrics is None else training_metrics,
        "metrics": {k: round(float(v), 5) for k, v in metrics.items()},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return format_report(manifest)


def format_report(manifest: Mapping[str, object]) -> str:
    """A plain-text table of a manifest's metrics and costs."""
    lines = [f"training seconds: {manifest['training_seconds']} (total {manifest['training_seconds_total']})",
             f"weights: {manifest['total_bytes'] / 1e6:.2f} MB ({manifest['weights_dtype']})"]  # fmt: skip
    metrics = dict(manifest["metrics"])  # type: ignore[call-overload]
    width = max(len(k) for k in metrics)
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in metrics.items()]
    return "\n".join(lines)


def export_model(source: Path, target: Path) -> Path:
    """Copy a model folder (written by ``policy pretrain``) to ``target``, replacing a previous export there.

    Raises:
        AssetError: ``source`` has no manifest, or ``target`` exists and is neither empty nor a model folder.
    """
    if not (source / MANIFEST).is_file():
        raise AssetError(f"{source}: not a pretrained model folder (no {MANIFEST})")
    if target.exists():
        if any(target.iterdir()) and not (target / MANIFEST).is_file():
            raise AssetError(f"{target}: exists and is not a model folder; refusing to overwrite it")
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target
