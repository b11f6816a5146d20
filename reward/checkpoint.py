"""Reward-model folders on disk: safetensors weights + the config and metadata that rebuild them + metrics.

    <dir>/model.safetensors   every member's weights (``members.<k>.<parameter>``); frozen encoders are not
                              stored: EfficientNet-Lite0 comes from its package, precomputed embeddings from
                              the file named in the config (its SHA-256 is checked on load)
    <dir>/reward.json         format, the reward config, feature width, slots, annotators, vocabularies,
                              calibrator, head normalisation, product kinds
    <dir>/metrics.json        what training measured (written by the trainer)
    <dir>/SHA256SUMS          the SHA-256 of model.safetensors (``offline_data.integrity``)

Weights are read with safetensors only; nothing is unpickled. Loading refuses a folder whose weights do not match
SHA256SUMS (or that has none: backdrop always writes it), and weights with NaN/inf. This module sits below
``reward.scorer``: it writes and reads the parts a scorer is made of (:class:`ScorerParts`), and
``RewardScorer.save`` / ``.load`` call it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import save_file

from offline_data.assets import file_sha256
from offline_data.integrity import load_verified_weights, write_checksums
from reward.calibration import Calibrator
from reward.config import RewardConfig, config_to_dict, json_ready, reward_config_from_dict
from reward.encoders import build_encoder
from reward.ensemble import RewardEnsemble
from reward.errors import CheckpointError
from reward.train import build_model
from reward.vocabulary import ContextVocabulary

FORMAT = "backdrop-reward/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "reward.json"
METRICS_FILE = "metrics.json"


class ScorerState(Protocol):
    """What a model folder stores of a scorer (``reward.scorer.RewardScorer`` and :class:`ScorerParts` have it)."""

    ensemble: RewardEnsemble
    config: RewardConfig
    calibrator: Calibrator
    normalisation: Mapping[str, tuple[float, float]]
    product_kinds: Mapping[str, str]


@dataclasses.dataclass(frozen=True, eq=False)
class ScorerParts:
    """A model folder read back: the members, the config, the click calibrator, the head normalisation
    {head: (mean, std)} and the training products' kinds; ``RewardScorer.load`` builds the scorer from them."""

    ensemble: RewardEnsemble
    config: RewardConfig
    calibrator: Calibrator
    normalisation: dict[str, tuple[float, float]]
    product_kinds: dict[str, str]


def save_scorer(scorer: ScorerState, path: Path, *, metrics: Mapping | None = None) -> Path:
    """Write ``scorer`` (a ``reward.scorer.RewardScorer``) to the folder ``path``; returns it."""
    path.mkdir(parents=True, exist_ok=True)
    ensemble = scorer.ensemble
    first = ensemble.members[0]
    tensors = {
        f"members.{k}.{name}": value.detach().cpu().contiguous()
        for k, member in enumerate(ensemble.members)
        for name, value in member.state_dict().items()
    }
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": FORMAT})
    write_checksums(path)
    encoder = scorer.config.encoder
    meta = {
        "format": FORMAT,
        "config": config_to_dict(scorer.config),
        "members": len(ensemble.members),
        "feature_dim": first.feature_dim,
        "scene_dim": first.scene_dim,
        "slots": first.click.slots,
        "training_images": int(first.click.image_effects.numel()),
        "annotators": list(first.preference.annotators),
        "vocabulary": first.vocabulary.to_dict(),
        "calibrator": scorer.calibrator.to_dict(),
        "normalisation": {h: list(v) for h, v in scorer.normalisation.items()},
        "product_kinds": dict(scorer.product_kinds),
        "examination": ensemble.examination().tolist(),
        "embeddings_sha256": file_sha256(Path(encoder.embeddings)) if encoder.kind == "precomputed" else None,
    }
    (path / META_FILE).write_text(json.dumps(json_ready(meta), indent=2) + "\n", encoding="utf-8")
    if metrics is not None:
        (path / METRICS_FILE).write_text(json.dumps(json_ready(dict(metrics)), indent=2) + "\n", encoding="utf-8")
    return path


def read_meta(path: Path) -> dict:
    """The folder's ``reward.json``.

    Raises:
        CheckpointError: missing, unreadable, or another format.
    """
    file = path / META_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: not found; is {path} a 'backdrop reward train' model folder?") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: cannot read: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{file}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_parts(path: Path, device: torch.device) -> ScorerParts:
    """Read the scorer saved in ``path``, its members on ``device``.

    Raises:
        CheckpointError: missing or inconsistent files.
    """
    meta = read_meta(path)
    try:
        config = reward_config_from_dict(meta["config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path / META_FILE}: config does not match this version of backdrop: {exc}") from None
    if config.encoder.kind == "precomputed":
        embeddings = Path(config.encoder.embeddings)
        if not embeddings.is_file():
            raise CheckpointError(f"{path}: the model's embeddings file {embeddings} is missing")
        if file_sha256(embeddings) != meta.get("embeddings_sha256"):
            raise CheckpointError(f"{embeddings}: changed since the model in {path} was trained (SHA-256 differs)")
    encoder = build_encoder(config.encoder)
    frozen = not config.encoder.trainable
    vocabulary = ContextVocabulary.from_dict(meta["vocabulary"])
    if not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path / WEIGHTS_FILE}: not found")
    tensors = load_verified_weights(path, WEIGHTS_FILE, required=True, what="reward model")
    members = []
    for k in range(int(meta["members"])):
        model = build_model(
            config,
            feature_dim=int(meta["feature_dim"]),
            scene_dim=int(meta["scene_dim"]),
            vocabulary=vocabulary,
            slots=int(meta["slots"]),
            annotators=tuple(meta["annotators"]),
            encoder=None if frozen else encoder,
            training_images=int(meta.get("training_images", 0)),
        )
        prefix = f"members.{k}."
        state = {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: member {k} does not match its config: {exc}") from None
        model.eval()
        members.append(model.to(device))
    ensemble = RewardEnsemble(members, encoder.to(device) if frozen else None)
    return ScorerParts(
        ensemble=ensemble,
        config=config,
        calibrator=Calibrator.from_dict(meta["calibrator"]),
        normalisation={h: (float(v[0]), float(v[1])) for h, v in meta["normalisation"].items()},
        product_kinds=dict(meta.get("product_kinds", {})),
    )
