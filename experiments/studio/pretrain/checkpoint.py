"""Checkpoints of base-model pretraining, in safetensors only (no pickles): weights, optimiser, EMA, generator.

One file holds the whole training state at a point of a stage:

- ``model.<name>.<param>``: the state dict of every model part (vae, mask_decoder, unet, text_encoder, style);
- ``optimizer.<index>.<key>``: the AdamW moment tensors of the stage's optimiser, its per-parameter ``step``;
- ``ema.<index>``: the EMA shadow of the trained parameters (denoiser stages);
- ``generator``: the batch generator's state (a uint8 tensor), so a resumed run draws the same batches;

and the safetensors metadata holds the JSON rest (stage name, step, optimiser param_groups). The file is
written to a temporary name and renamed, so an interrupted write never leaves a broken latest checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from offline_data.errors import AssetError
from offline_data.integrity import require_finite_weights

FORMAT = "backdrop.pretrain_checkpoint"
LATEST = "latest.safetensors"


@dataclass(frozen=True, kw_only=True)
class TrainingState:
    """Where training stands: the stage being run and how many of its steps are done."""

    stage: str
    """Stage name ("vae", "mask_decoder", "denoiser", or "done")."""
    step: int
    """Completed optimiser steps of that stage (for the denoiser: over both of its inpainting stages)."""
    scaling_factor: float | None = None
    """The VAE's latent scaling factor once it is set (it lives in the VAE's config, not its state dict)."""


def save_checkpoint(
    folder: Path,
    state: TrainingState,
    modules: dict[str, nn.Module],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    ema: list[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Path:
    """Write ``folder/latest.safetensors`` atomically; returns its path."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"model.{name}.{key}"] = value.detach().cpu().contiguous()
    meta: dict[str, object] = {
        "format": FORMAT,
        "stage": state.stage,
        "step": state.step,
        "scaling_factor": state.scaling_factor,
    }
    if optimizer is not None:
        packed = optimizer.state_dict()
        for index, slots in packed["state"].items():
            for key, value in slots.items():
                tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        meta["param_groups"] = packed["param_groups"]
    if ema is not None:
        for index, value in enumerate(ema):
            tensors[f"ema.{index}"] = value.detach().cpu().contiguous()
    if generator is not None:
        tensors["generator"] = generator.get_state()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LATEST
    partial = folder / f".{LATEST}.partial"
    save_file(tensors, str(partial), metadata={"backdrop": json.dumps(meta)})
    os.replace(partial, path)
    return path


def read_state(path: Path) -> TrainingState:
    """The stage and step recorded in a checkpoint (without loading its tensors)."""
    meta = _metadata(path)
    return TrainingState(stage=str(meta["stage"]), step=int(meta["step"]), scaling_factor=meta.get("scaling_factor"))


def load_checkpoint(
    path: Path,
    modules: dict[str, nn.Module],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    ema: list[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> TrainingState:
    """Restore what :func:`save_checkpoint` wrote into the given (already built) objects, in place.

    Raises:
        AssetError: a missing or unreadable file, a wrong format, or tensors that do not fit the objects.
    """
    meta = _metadata(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError) as exc:
        raise AssetError(f"{path}: cannot read the checkpoint: {exc}") from None
    require_finite_weights(tensors, str(path))
    for name, module in modules.items():
        prefix = f"model.{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise AssetError(f"{path}: weights of '{name}' do not fit: {exc}") from None
    if optimizer is not None:
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, slot = key.split(".", 2)
                slots.setdefault(int(index), {})[slot] = value
        if "param_groups" not in meta:
            raise AssetError(f"{path}: no optimiser state in this checkpoint")
        try:
            optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
        except (ValueError, KeyError, RuntimeError) as exc:
            raise AssetError(f"{path}: optimiser state does not fit: {exc}") from None
    if ema is not None:
        for index, shadow in enumerate(ema):
            key = f"ema.{index}"
            if key not in tensors or tensors[key].shape != shadow.shape:
                raise AssetError(f"{path}: EMA tensor {index} missing or of the wrong shape")
            shadow.copy_(tensors[key])
    if generator is not None:
        if "generator" not in tensors:
            raise AssetError(f"{path}: no generator state in this checkpoint")
        generator.set_state(tensors["generator"])
    return TrainingState(stage=str(meta["stage"]), step=int(meta["step"]), scaling_factor=meta.get("scaling_factor"))


class Checkpointer:
    """Saves the training state of a run every ``every`` steps and at stage ends, into ``folder``."""

    def __init__(self, folder: Path, modules: dict[str, nn.Module], every: int) -> None:
        self.folder = folder
        self.modules = modules
        self.every = every
        self.scaling_factor: float | None = None

    @property
    def latest(self) -> Path:
        """Path of the latest checkpoint."""
        return self.folder / LATEST

    def save(self, stage: str, step: int, **state: object) -> Path:
        """Write the checkpoint now (``state``: optimizer, ema, generator as in :func:`save_checkpoint`)."""
        position = TrainingState(stage=stage, step=step, scaling_factor=self.scaling_factor)
        return save_checkpoint(self.folder, position, self.modules, **state)  # type: ignore[arg-type]

    def maybe_save(self, stage: str, step: int, **state: object) -> None:
        """Write the checkpoint when ``step`` is a multiple of ``every``."""
        if step % self.every == 0:
            self.save(stage, step, **state)


def _metadata(path: Path) -> dict:
    if not path.is_file():
        raise AssetError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("backdrop")
    except (OSError, SafetensorError) as exc:
        raise AssetError(f"{path}: cannot read the checkpoint: {exc}") from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AssetError(f"{path}: not a backdrop pretraining checkpoint (format {FORMAT!r} expected)")
    return meta
