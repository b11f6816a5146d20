"""Resumable training checkpoints: tensors in safetensors, everything else in JSON, nothing pickled.

A checkpoint folder ``<dir>/epoch-000040/`` holds

- ``adapter/pytorch_lora_weights.safetensors``: the LoRA adapter in diffusers' format (``InpaintPolicy.save_adapter``;
  a plain ``StableDiffusionInpaintPipeline.load_lora_weights`` reads it);
- ``tensors.safetensors``: the optimiser's per-parameter state (``optimizer.<index>.<name>``) and the torch RNG
  states (``rng.torch``, ``rng.cuda.<device>``);
- ``state.json``: format and version, the optimiser's param groups and scalar state, python's and numpy's global
  RNG states, and the trainer's own state (epoch, steps, stat tracker, KL controller, evaluation history...).

Folders are written under a temporary name and renamed when complete, then ``<dir>/latest.json`` is pointed at
them, so a run killed while writing leaves the previous checkpoint intact. A ``SHA256SUMS`` of its weight files
(``offline_data.integrity``) is written last, inside the temporary folder; loading refuses a checkpoint without it,
one whose files do not match it, or tensors with NaN/inf.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from offline_data.errors import AssetError
from offline_data.integrity import require_finite_weights, verify_weights, write_checksums
from policy.model import InpaintPolicy

FORMAT = "backdrop.policy_checkpoint"
VERSION = 1
LATEST = "latest.json"
_TENSORS = "tensors.safetensors"
_STATE = "state.json"
_ADAPTER = "adapter"


class CheckpointError(AssetError):
    """A checkpoint is missing, unreadable, or does not fit the model/optimiser it is loaded into."""


def capture_rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python's, numpy's and torch's (CPU and every CUDA device's) global RNG states: (JSON part, tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    json_part = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": cached},
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return json_part, tensors


def restore_rng_state(json_part: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Undo :func:`capture_rng_state` (CUDA states only where the device exists)."""
    version, internal, gauss = json_part["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = json_part["numpy"]
    np.random.set_state(
        (np_state["kind"], np.asarray(np_state["keys"], dtype=np.uint32), np_state["pos"], np_state["has_gauss"],
         np_state["cached"])
    )  # fmt: skip
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"rng.cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"], i)


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def _join_optimizer_state(json_part: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in json_part["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": json_part["param_groups"]}


def save_checkpoint(
    directory: str | Path,
    name: str,
    *,
    policy: InpaintPolicy,
    optimizer: torch.optim.Optimizer,
    trainer_state: Mapping[str, Any],
) -> Path:
    """Write checkpoint ``<directory>/<name>`` atomically and point ``<directory>/latest.json`` at it.

    Args:
        directory: the run's checkpoint folder.
        name: the checkpoint's folder name (e.g. ``epoch-000040``); an existing one is replaced.
        policy: its adapter is saved.
        optimizer: its full state is saved.
        trainer_state: JSON-serialisable state of the trainer (epoch, tracker, controller, ...).

    Returns:
        The checkpoint folder.
    """
    directory = Path(directory)
    final = directory / name
    temporary = directory / f".{name}.partial"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)
    policy.save_adapter(temporary / _ADAPTER)
    optim_json, optim_tensors = _split_optimizer_state(optimizer)
    rng_json, rng_tensors = capture_rng_state()
    save_file({**optim_tensors, **rng_tensors}, str(temporary / _TENSORS))
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": optim_json,
        "rng": rng_json,
        "trainer": dict(trainer_state),
    }
    (temporary / _STATE).write_text(json.dumps(payload, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    write_checksums(temporary)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    latest = directory / LATEST
    latest_tmp = directory / f".{LATEST}.partial"
    latest_tmp.write_text(json.dumps({"checkpoint": name}) + "\n", encoding="utf-8")
    os.replace(latest_tmp, latest)
    return final


def latest_checkpoint(directory: str | Path) -> Path:
    """The folder ``<directory>/latest.json`` points at.

    Raises:
        CheckpointError: no checkpoint was written there, or the pointer is broken.
    """
    directory = Path(directory)
    pointer = directory / LATEST
    if not pointer.is_file():
        raise CheckpointError(f"{directory}: no checkpoint to resume from ({LATEST} not found)")
    try:
        name = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{pointer}: unreadable checkpoint pointer: {exc}") from None
    # The pointer names a folder beside it, never a path: a run resumes from its own checkpoints only.
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise CheckpointError(f"{pointer}: 'checkpoint' must name a folder in {directory}, got {name!r}")
    folder = directory / name
    if not folder.is_dir():
        raise CheckpointError(f"{pointer}: points at {folder}, which does not exist")
    if folder.resolve().parent != directory.resolve():
        raise CheckpointError(f"{pointer}: {folder} leads to {folder.resolve()}, outside {directory}")
    return folder


def read_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint, checked before anything of it is used: format, version and the type of every
    part the loader reads (the trainer's own part is checked by the trainer).

    Raises:
        CheckpointError: missing, unreadable, another format or version, or a part of the wrong type (by key).
    """
    state_path = Path(folder) / _STATE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: checkpoint file not found")
    try:
        payload = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{state_path}: unreadable checkpoint state: {exc}") from None
    if not isinstance(payload, dict) or (payload.get("format"), payload.get("version")) != (FORMAT, VERSION):
        found = (
            (payload.get("format"), payload.get("version")) if isinstance(payload, dict) else type(payload).__name__
        )
        raise CheckpointError(f"{state_path}: expected format {FORMAT!r} version {VERSION}, got {found}")
    expected = {
        ("optimizer",): dict, ("optimizer", "param_groups"): list, ("optimizer", "scalars"): dict,
        ("rng",): dict, ("rng", "python"): list, ("rng", "numpy"): dict, ("trainer",): dict,
    }  # fmt: skip
    for keys, kind in expected.items():
        value: Any = payload
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kind):
            raise CheckpointError(
                f"{state_path}: '{'.'.join(keys)}' must be a {'list' if kind is list else 'table'}, got "
                f"{type(value).__name__}"
            )
    numpy_keys = {"kind", "keys", "pos", "has_gauss", "cached"}
    if len(payload["rng"]["python"]) != 3 or set(payload["rng"]["numpy"]) != numpy_keys:
        raise CheckpointError(f"{state_path}: 'rng' does not hold python's and numpy's generator states")
    return payload


def load_checkpoint(
    folder: str | Path, *, policy: InpaintPolicy, optimizer: torch.optim.Optimizer, restore_rng: bool = True
) -> dict[str, Any]:
    """Load a checkpoint into ``policy`` (adapter, in place) and ``optimizer``; returns the trainer's state.

    Raises:
        CheckpointError: missing files, wrong format/version, or state that does not fit.
    """
    folder = Path(folder)
    tensors_path = folder / _TENSORS
    payload = read_checkpoint_state(folder)
    if not tensors_path.is_file():
        raise CheckpointError(f"{tensors_path}: checkpoint file not found")
    verify_weights(folder, required=True, what="training checkpoint")
    try:
        tensors = load_file(str(tensors_path))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{tensors_path}: unreadable checkpoint tensors: {exc}") from None
    require_finite_weights(tensors, str(tensors_path))
    try:
        policy.load_adapter(folder / _ADAPTER)
    except AssetError as exc:
        raise CheckpointError(f"{folder}: cannot restore the adapter: {exc}") from None
    try:
        optimizer.load_state_dict(_join_optimizer_state(payload["optimizer"], tensors))
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{folder}: optimiser state does not fit this optimiser: {exc}") from None
    if restore_rng:
        restore_rng_state(payload["rng"], tensors)
    return payload["trainer"]
