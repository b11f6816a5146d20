"""Checkpoints of an ensemble's finished members, so that a killed ``reward train`` resumes where it stopped.

Members train one after another, each from its own seed (``seed + k * SEED_STRIDE`` for its row order, bootstrap
weights, augmentation and dropout; ``reward.ensemble``), so a member is a natural unit of work: a resumed run loads
the members that finished and trains the others from their start, and ends with the uninterrupted run's model.
A member's epochs are seconds to minutes, the whole ensemble minutes to hours: the work a kill loses is at most
one member.

    <dir>/member-000/weights.safetensors   the member's best-epoch weights (what training returned) and torch's
                                           global RNG state after it (the next member's initialisation draws
                                           from it, so a resumed run restores it)
    <dir>/member-000/member.json           format, history, best epoch and loss, early stop
    <dir>/member-000/SHA256SUMS            ``offline_data.integrity``; checked on load

A member folder is written under a temporary name and renamed when complete; a killed write leaves no member.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from offline_data.integrity import load_verified_weights, write_checksums
from reward.errors import CheckpointError
from reward.model import RewardModel
from reward.train import MemberResult

FORMAT = "backdrop.reward_member/1"
_WEIGHTS = "weights.safetensors"
_META = "member.json"
_RNG = "__rng__.torch"


def member_folder(directory: Path, member: int) -> Path:
    """``<directory>/member-NNN``."""
    return Path(directory) / f"member-{member:03d}"


def save_member(directory: Path, member: int, result: MemberResult) -> Path:
    """Write a finished member atomically; returns its folder."""
    final = member_folder(directory, member)
    partial = final.with_name(f".{final.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file({**state, _RNG: torch.get_rng_state()}, str(partial / _WEIGHTS))
    meta = {
        "format": FORMAT,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_validation_loss": result.best_validation_loss if math.isfinite(result.best_validation_loss) else None,
        "stopped_early": result.stopped_early,
    }
    (partial / _META).write_text(json.dumps(meta, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    write_checksums(partial)
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def load_member(directory: Path, member: int, model: RewardModel) -> MemberResult | None:
    """The finished member ``member`` loaded into ``model`` (built as for training), or None if it did not finish.

    Raises:
        CheckpointError: an unreadable or foreign member.json, or weights that do not fit ``model``.
        WeightIntegrityError: weights that do not match their SHA256SUMS, are unreadable, or hold NaN/inf.
    """
    folder = member_folder(directory, member)
    if not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / _META}: unreadable member checkpoint: {exc}") from None
    shapes = {"history": list, "best_epoch": int, "stopped_early": bool}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / _META}: expected format {FORMAT!r}")
    for key, kind in shapes.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{folder / _META}: '{key}' is {meta.get(key)!r}, not what a member holds")
    state = load_verified_weights(folder, _WEIGHTS, required=True, what="reward member checkpoint")
    rng = state.pop(_RNG, None)
    if rng is None:
        raise CheckpointError(f"{folder / _WEIGHTS}: no '{_RNG}' tensor (torch's RNG state after the member)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder / _WEIGHTS}: does not fit this run's member {member}: {exc}") from None
    torch.set_rng_state(rng)  # as if the member had just trained: the next member is initialised from it
    model.eval()
    loss = meta.get("best_validation_loss")
    return MemberResult(
        model.cpu(),
        [dict(h) for h in meta["history"]],
        meta["best_epoch"],
        math.inf if loss is None else float(loss),
        meta["stopped_early"],
    )
