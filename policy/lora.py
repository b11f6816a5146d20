"""The LoRA adapter on the UNet: add it (peft), switch it off for the base model, save and load it.

The adapter is written with peft's key names (``get_peft_model_state_dict`` ->
``StableDiffusionInpaintPipeline.save_lora_weights``, safetensors, with the peft ``LoraConfig`` as adapter
metadata so that alpha and the target modules survive), so a plain
``StableDiffusionInpaintPipeline.load_lora_weights(folder)`` loads it. The metadata's ``target_modules`` (a set in
peft, iterated in hash order) is written sorted, so identical runs write byte-identical adapters. A ``SHA256SUMS``
is written beside the weights and checked on load (``offline_data.integrity``; an adapter from another tool, without
one, loads with a warning), and loaded tensors must be finite.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
from diffusers.utils import convert_unet_state_dict_to_peft
from peft import LoraConfig as PeftLoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from offline_data.errors import AssetError, BackdropError
from offline_data.integrity import require_finite_weights, verify_weights, write_checksums
from policy.config import LoraConfig

ADAPTER_NAME = "default"
"""peft's adapter name; diffusers' loaders use the same default."""
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
"""File name that ``load_lora_weights(folder)`` looks for."""
_PREFIX = "unet."
_METADATA_KEY = "lora_adapter_metadata"


class LoraTargetError(BackdropError, ValueError):
    """``policy.lora.target_modules`` names no module of the UNet (peft refuses the adapter)."""

    exit_code = 2


def add_lora(unet: UNet2DConditionModel, config: LoraConfig) -> None:
    """Freeze ``unet`` and attach a fresh adapter; only the LoRA weights require grad, and they are float32.

    B is initialised to zero (peft does this for both ``init`` choices), so the adapted UNet computes
    exactly what the base UNet computes until the first update.

    Raises:
        ValueError: the UNet already has an adapter.
        LoraTargetError: no module matches ``config.target_modules`` (a ValueError too).
    """
    if getattr(unet, "peft_config", None):
        raise ValueError(f"the UNet already has adapter(s) {sorted(unet.peft_config)}; add_lora attaches one")
    unet.requires_grad_(False)
    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        init_lora_weights="gaussian" if config.init == "gaussian" else True,
        target_modules=list(config.target_modules),
    )
    try:
        unet.add_adapter(peft_config, adapter_name=ADAPTER_NAME)
    except ValueError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoraTargetError(
            f"policy.lora.target_modules={list(config.target_modules)}: no such module in the UNet "
            f"(expected names like to_q, to_k, to_v, to_out.0): {detail}"
        ) from None
    # Frozen weights may be bf16; LoRA weights (and so their gradients and optimiser state) stay float32.
    for param in lora_parameters(unet):
        param.data = param.data.float()


def has_lora(unet: UNet2DConditionModel) -> bool:
    """Whether an adapter is attached."""
    return bool(getattr(unet, "peft_config", None))


def named_lora_parameters(unet: UNet2DConditionModel) -> list[tuple[str, torch.nn.Parameter]]:
    """The adapter's parameters (A and B of every adapted layer) with their names, in module order."""
    return [(name, p) for name, p in unet.named_parameters() if ".lora_A." in name or ".lora_B." in name]


def lora_parameters(unet: UNet2DConditionModel) -> list[torch.nn.Parameter]:
    """The adapter's parameters (A and B of every adapted layer), in module order."""
    return [p for _, p in named_lora_parameters(unet)]


def lora_config_of(unet: UNet2DConditionModel) -> LoraConfig:
    """Our :class:`LoraConfig` describing the attached adapter (read back from peft)."""
    if not has_lora(unet):
        raise ValueError("the UNet has no adapter")
    return _from_peft_dict(unet.peft_config[ADAPTER_NAME].to_dict(), source="the attached adapter")


@contextlib.contextmanager
def adapters_disabled(unet: UNet2DConditionModel) -> Iterator[None]:
    """Run the base model: every adapter layer is bypassed inside the block (no copy of the weights).

    peft's switch also clears ``requires_grad`` of the LoRA weights; the previous flags are restored on exit.
    A UNet without adapters is already the base model and is left alone.
    """
    if not has_lora(unet):
        yield
        return
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    flags = [(p, p.requires_grad) for p in lora_parameters(unet)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for param, flag in flags:
            param.requires_grad_(flag)


def save_lora(unet: UNet2DConditionModel, folder: Path) -> Path:
    """Write the adapter to ``folder/pytorch_lora_weights.safetensors`` as ``load_lora_weights`` reads it.

    The keys are peft's (``unet.<module>.lora_A.weight`` / ``lora_B``), which diffusers' loaders read as they are.
    They are not renamed to the older ``lora.down`` / ``lora.up`` names: diffusers renames only attention
    processors' keys that way, so a file mixing both (attention renamed, ResNet convolutions not) loads with the
    convolution tensors alone and the attention ones silently dropped.

    Returns:
        The path of the weights file.
    """
    if not has_lora(unet):
        raise ValueError("the UNet has no adapter to save")
    state_dict = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    layers = {k: v.detach().float().cpu().contiguous() for k, v in state_dict.items()}
    metadata = unet.peft_config[ADAPTER_NAME].to_dict()
    # peft keeps target_modules as a set: its order (hence the file's bytes) would change from run to run
    metadata = {k: sorted(v) if isinstance(v, set | frozenset) else v for k, v in metadata.items()}
    StableDiffusionInpaintPipeline.save_lora_weights(
        folder, unet_lora_layers=layers, safe_serialization=True, unet_lora_adapter_metadata=metadata
    )
    _sort_metadata(folder / WEIGHT_NAME)
    write_checksums(folder)
    return folder / WEIGHT_NAME


def _sort_metadata(path: Path) -> None:
    """Rewrite the safetensors header with its ``__metadata__`` keys sorted.

    safetensors (0.8) keeps the metadata in a Rust ``HashMap``, whose iteration order is seeded per process, so
    the two keys diffusers writes ("format", "lora_adapter_metadata") came out in either order and identical runs
    wrote different bytes. The header is JSON after an 8-byte little-endian length, padded with spaces to a multiple
    of 8; tensor offsets count from its end, so rewriting it alone keeps the tensors valid.
    """
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()  # always ours: the bytes never depend on the order
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])


def read_lora_config(folder: Path) -> LoraConfig:
    """The :class:`LoraConfig` recorded in an adapter saved by :func:`save_lora`.

    Raises:
        AssetError: the file is missing, unreadable, or carries no adapter metadata.
    """
    path = _weights_path(folder)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_METADATA_KEY)
    except (OSError, SafetensorError) as exc:
        raise AssetError(f"{path}: cannot read LoRA weights: {exc}") from None
    if raw is None:
        raise AssetError(f"{path}: no '{_METADATA_KEY}' in the safetensors metadata (rank/alpha unknown)")
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AssetError(f"{path}: '{_METADATA_KEY}' is not valid JSON: {exc}") from None
    config = {k[len(_PREFIX) :]: v for k, v in packed.items() if k.startswith(_PREFIX)}
    return _from_peft_dict(config, source=str(path))


def load_lora(unet: UNet2DConditionModel, folder: Path) -> None:
    """Load an adapter saved by :func:`save_lora` (or any diffusers-format UNet LoRA) into ``unet``.

    If the UNet has no adapter, one is added from the file's metadata. If it has one, its configuration must
    match and the weights are copied into the existing parameters in place (an optimiser holding them keeps
    working, which resuming a run relies on).

    Raises:
        AssetError: missing/unreadable file, a configuration that differs from the attached adapter, missing
            or unexpected tensors, or tensors of the wrong shape.
        WeightIntegrityError: the file does not match its ``SHA256SUMS``, or holds NaN/inf.
    """
    path = _weights_path(folder)
    verify_weights(folder, required=False, what="LoRA adapter")
    saved = read_lora_config(folder)
    if has_lora(unet):
        current = lora_config_of(unet)
        if current != saved:
            raise AssetError(f"{path}: adapter config {saved} differs from the attached adapter {current}")
    else:
        add_lora(unet, saved)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise AssetError(f"{path}: cannot read LoRA weights: {exc}") from None
    require_finite_weights(tensors, str(path))
    foreign = sorted(k for k in tensors if not k.startswith(_PREFIX))
    if foreign:
        raise AssetError(f"{path}: only UNet LoRA tensors are supported, found {foreign[:3]}")
    state_dict = convert_unet_state_dict_to_peft({k[len(_PREFIX) :]: v for k, v in tensors.items()})
    try:
        result = set_peft_model_state_dict(unet, state_dict, adapter_name=ADAPTER_NAME)
    except RuntimeError as exc:
        raise AssetError(f"{path}: LoRA tensors do not fit this UNet: {exc}") from None
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if result.unexpected_keys or missing:
        raise AssetError(
            f"{path}: LoRA tensors do not match this UNet: unexpected {sorted(result.unexpected_keys)[:3]}, "
            f"missing {sorted(missing)[:3]}"
        )


def _weights_path(folder: Path) -> Path:
    path = Path(folder) / WEIGHT_NAME
    if not path.is_file():
        raise AssetError(f"{path}: LoRA weights not found (expected {WEIGHT_NAME} in {folder})")
    return path


def _from_peft_dict(config: dict, *, source: str) -> LoraConfig:
    """Our config from peft's ``LoraConfig.to_dict()`` (or the same keys read back from metadata)."""
    try:
        rank, alpha, targets = config["r"], config["lora_alpha"], config["target_modules"]
    except KeyError as exc:
        raise AssetError(f"{source}: adapter metadata lacks {exc}") from None
    if isinstance(targets, str):
        raise AssetError(f"{source}: target_modules is a regex ({targets!r}); give a list of module names")
    init = config.get("init_lora_weights", True)
    try:
        return LoraConfig(
            rank=int(rank),
            alpha=float(alpha),
            target_modules=tuple(sorted(targets)),
            dropout=float(config.get("lora_dropout", 0.0)),
            init="gaussian" if init == "gaussian" else "kaiming",
        )
    except ValueError as exc:
        raise AssetError(f"{source}: invalid adapter config: {exc}") from None
