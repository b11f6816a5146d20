"""Small model parts on disk: a folder with ``config.json`` (a format tag + constructor fields) and safetensors.

Used by the mask-aware decoder (``policy.vae``) and the style adapter (``policy.style``); the diffusers parts of a
model use diffusers' own layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from offline_data.errors import AssetError
from offline_data.integrity import require_finite_weights, verify_weights, write_checksums

CONFIG_NAME = "config.json"


def save_component(folder: str | Path, payload: dict[str, Any], module: nn.Module, weights_name: str) -> Path:
    """Write ``payload`` (with its "format" tag) as config.json and ``module``'s float32 state as safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    state = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / weights_name), metadata={"format": "pt"})
    write_checksums(folder)
    return folder


def read_component(
    folder: str | Path, weights_name: str, format_tag: str, what: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config payload and the tensors of a component folder written by :func:`save_component`.

    Raises:
        AssetError: a missing or unreadable file, or a config whose format is not ``format_tag``; the message
            names the file and ``what`` the component is.
        WeightIntegrityError: no ``SHA256SUMS`` (:func:`save_component` writes it), weights that do not match it,
            or NaN/inf weights.
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / weights_name
    for path in (config_path, weights_path):
        if not path.is_file():
            raise AssetError(f"{path}: {what} file not found")
    try:
        payload = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AssetError(f"{config_path}: cannot read the {what} config: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != format_tag:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise AssetError(f"{config_path}: expected format {format_tag!r}, got {found!r}")
    verify_weights(folder, required=True, what=what)
    try:
        tensors = load_file(str(weights_path))
    except (OSError, SafetensorError) as exc:
        raise AssetError(f"{weights_path}: cannot read the {what} weights: {exc}") from None
    require_finite_weights(tensors, str(weights_path))
    return payload, tensors


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source: Path, what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, as an AssetError naming ``source`` when they do not fit."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AssetError(f"{source}: the {what} weights do not fit its config: {exc}") from None
