"""Identities and hashes recorded in a candidate bundle's ``manifest.json``.

- the base model: its folder, and the SHA-256 of every file in it (weights and configs) plus one combined digest
  over the sorted (relative path, digest) lines, so "same base" is one string comparison;
- the reward model: format, members, encoder and the digests of its weights and metadata;
- the data: digests of the parquet tables the reward model trained on and the candidate was evaluated on;
- the training run: its config, seed, git state and the command that started it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from offline_data.assets import file_sha256

FORMAT = "backdrop.candidate_bundle"
VERSION = 1


def folder_digests(folder: Path) -> dict:
    """{"files": {relative path: sha256}, "sha256": combined digest} of every regular file under ``folder``."""
    folder = Path(folder)
    files = {
        path.relative_to(folder).as_posix(): file_sha256(path) for path in sorted(folder.rglob("*")) if path.is_file()
    }
    combined = hashlib.sha256("".join(f"{name}\t{digest}\n" for name, digest in files.items()).encode()).hexdigest()
    return {"files": files, "sha256": combined}


def base_identity(folder: Path, *, pretrained: str | None) -> dict:
    """The base model's identity: where it came from and the digests of its files."""
    identity = {"pretrained": pretrained, "folder": str(folder), **folder_digests(folder)}
    index = folder / "model_index.json"
    if index.is_file():
        identity["pipeline_class"] = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    shipped = folder / "manifest.json"
    if shipped.is_file():
        manifest = json.loads(shipped.read_text(encoding="utf-8"))
        identity["reproduce"] = manifest.get("reproduce")
    return identity


def reward_identity(model_dir: Path) -> dict:
    """The reward model's version and digests (``reward/checkpoint.py`` layout)."""
    meta = json.loads((model_dir / "reward.json").read_text(encoding="utf-8"))
    weights = model_dir / "model.safetensors"
    return {
        "folder": str(model_dir),
        "format": meta.get("format"),
        "members": meta.get("members"),
        "encoder": meta.get("config", {}).get("encoder", {}).get("kind"),
        "combination": meta.get("config", {}).get("combination", {}).get("weights"),
        "weights_sha256": file_sha256(weights),
        "meta_sha256": file_sha256(model_dir / "reward.json"),
    }


def table_digests(folder: Path | None) -> dict[str, str]:
    """{table file: sha256} of the parquet files directly in ``folder`` (empty when it does not exist)."""
    if folder is None or not Path(folder).is_dir():
        return {}
    return {path.name: file_sha256(path) for path in sorted(Path(folder).glob("*.parquet"))}


def reward_training_data(model_dir: Path) -> dict:
    """Digests of the splits the reward model trained and was validated on (from its metrics.json)."""
    metrics_path = model_dir / "metrics.json"
    if not metrics_path.is_file():
        return {}
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    out = {}
    for split in ("train", "validation"):
        folder = metrics.get(split, {}).get("dir")
        if folder:
            out[split] = {"folder": folder, "tables": table_digests(Path(folder))}
    return out


def reward_test_split(model_dir: Path) -> Path | None:
    """The test split the reward model was evaluated on (metrics.json ``splits`` + /test), if recorded."""
    metrics_path = model_dir / "metrics.json"
    if not metrics_path.is_file():
        return None
    splits = json.loads(metrics_path.read_text(encoding="utf-8")).get("splits")
    return Path(splits) / "test" if splits else None


def find_truth(start: Path, levels: int = 5) -> Path | None:
    """The simulation whose truth sidecar belongs to the logs in ``start``: the nearest folder at or above it (up
    to ``levels`` parents) holding ``truth/world.json``, or holding a ``world/`` simulation that does (the layout
    of ``backdrop reward train`` without --data: ``<run>/world`` beside ``<run>/splits``)."""
    folder = Path(start).resolve()
    for ancestor in [folder, *folder.parents][: levels + 1]:
        for candidate in (ancestor, ancestor / "world"):
            if (candidate / "truth" / "world.json").is_file():
                return candidate
    return None


GATE_TRUTH = Path(__file__).resolve().parent.parent / "bench" / "results" / "gate_truth.json"
"""The lift gate's validation against the studio world's gold (``python -m experiments.bench.gate_truth``)."""


def gate_validation(path: Path = GATE_TRUTH) -> dict | None:
    """The lift gate's measured agreement with gold (the summary of ``path``: the plain direct lift's, with the
    logs-corrected lift's under ``corrected``, None when that was not measured), or None when it is unmeasured: no
    file, or only a ``--tiny`` dry run (which measures nothing)."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if result.get("tiny") or not isinstance(result.get("summary"), dict):
        return None
    corrected = result.get("summary_corrected")
    return {
        **result["summary"],
        "corrected": corrected if isinstance(corrected, dict) else None,
        "file": f"experiments/bench/results/{path.name}",
        "command": result.get("command"),
    }
