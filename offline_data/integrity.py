"""Verified weights: a ``SHA256SUMS`` file beside every weight file backdrop writes, checked on every load.

Every folder of weights backdrop writes (LoRA adapters, training checkpoints, reward models, saved base models,
merged UNets, export bundles) gets a ``SHA256SUMS`` listing the SHA-256 of each ``*.safetensors`` file under it, in
the format of GNU ``sha256sum`` (``<hex>  <relative path>``), so ``sha256sum -c SHA256SUMS`` checks a folder without
backdrop. It is written after the weights, atomically (temporary file, then rename).

Loading checks the folder before any tensor is read (:func:`verify_weights`):

- a listed file that is missing, or whose bytes hash to something else, is refused naming the file, the expected
  and the found digest (a flipped byte in an adapter otherwise paints black backgrounds with exit 0);
- a ``*.safetensors`` file under the folder that neither the list nor a ``SHA256SUMS`` of a subfolder on its way
  covers is refused too ("verified" means every weight file that is loaded was checked; a component added to a
  saved model, e.g. a mask-aware decoder, brings its own list, checked when the component is loaded);
- a folder without ``SHA256SUMS``: a folder backdrop wrote with its own format marker (training checkpoints, reward
  models, merged UNets and bundles of an export) is refused, since backdrop writes the sums in the same step as the
  weights and their absence means the folder was copied in part, edited, or written by a version before the sums; a
  user's own base model or a LoRA from another tool has no sums to check, so it loads with a warning saying it is
  unverified (``required=False``).

:func:`require_finite_weights` refuses a loaded state with NaN or infinite entries, naming the tensor: weights
with non-finite values only ever come from a broken file or a diverged run, and produce NaN images silently.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError
from safetensors.torch import load_file

from offline_data.assets import file_sha256
from offline_data.errors import AssetError
from offline_data.finite import first_non_finite_tensor

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CHECKSUMS_FILE = "SHA256SUMS"
"""Name of the checksum list in a weights folder (``sha256sum -c SHA256SUMS`` reads it)."""
WEIGHT_PATTERN = "*.safetensors"
"""The files a checksum list covers: every weight file backdrop writes is safetensors."""
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class WeightIntegrityError(AssetError):
    """A weights file does not match the SHA-256 recorded beside it, is missing, is not covered by the list, holds
    NaN/inf, or a folder backdrop wrote has no checksum list."""


def weight_files(folder: Path) -> list[str]:
    """The ``*.safetensors`` files under ``folder``, as sorted POSIX paths relative to it."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob(WEIGHT_PATTERN) if path.is_file())


def write_checksums(folder: str | Path) -> Path:
    """Write ``<folder>/SHA256SUMS`` for every weight file under ``folder`` (sorted, so the same files give the same
    bytes); returns its path.

    Raises:
        ValueError: there is no weight file under ``folder`` (a writer calls this after writing its weights).
    """
    folder = Path(folder)
    names = weight_files(folder)
    if not names:
        raise ValueError(f"{folder}: no {WEIGHT_PATTERN} file to record a checksum for")
    text = "".join(f"{file_sha256(folder / name)}  {name}\n" for name in names)
    path = folder / CHECKSUMS_FILE
    partial = folder / f".{CHECKSUMS_FILE}.partial"
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


def rewrite_checksums(folder: str | Path) -> list[Path]:
    """Write again every ``SHA256SUMS`` under ``folder`` (for a writer that changed or added weight files after the
    lists were written, e.g. storing them as float16); returns the lists written."""
    lists = sorted(Path(folder).rglob(CHECKSUMS_FILE), key=lambda p: len(p.parts), reverse=True)  # deepest first
    return [write_checksums(path.parent) for path in lists]


def read_checksums(folder: Path) -> dict[str, str]:
    """The ``{relative path: hex digest}`` of ``<folder>/SHA256SUMS``.

    Raises:
        WeightIntegrityError: a line that is not ``<64 hex>  <path>``, a path that leaves the folder, or a file
            listed twice.
    """
    path = folder / CHECKSUMS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightIntegrityError(f"{path}: cannot read the checksum list: {exc}") from None
    sums: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = _LINE.match(line)
        if match is None:
            raise WeightIntegrityError(f"{path}: line {number}: expected '<64 hex digits>  <file>', got {line[:80]!r}")
        digest, name = match.groups()
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise WeightIntegrityError(f"{path}: line {number}: {name!r} is outside the folder")
        if name in sums:
            raise WeightIntegrityError(f"{path}: line {number}: {name!r} is listed twice")
        sums[name] = digest
    return sums


def verify_weights(folder: str | Path, *, required: bool, what: str = "weights") -> bool:
    """Check every weight file under ``folder`` against ``<folder>/SHA256SUMS`` (module docstring).

    Args:
        folder: the weights folder.
        required: refuse a folder without a checksum list (folders backdrop wrote with a format marker); when
            False such a folder is loaded with a warning.
        what: what the folder is, for messages (``"reward model"``, ``"LoRA adapter"``...).

    Returns:
        True when verified, False when there was no list and ``required`` is False.

    Raises:
        WeightIntegrityError: a mismatch, a missing or uncovered file, or a required list that is absent.
    """
    folder = Path(folder)
    if not (folder / CHECKSUMS_FILE).is_file():
        if required:
            raise WeightIntegrityError(
                f"{folder}: this {what} was written by backdrop but has no {CHECKSUMS_FILE}, so its weights "
                "cannot be verified (copied in part, edited, or written before backdrop recorded checksums); write "
                f"it again, or if you trust the files: (cd {folder} && sha256sum "
                f"{' '.join(weight_files(folder))} > {CHECKSUMS_FILE})"
            )
        logger.warning("%s: %s has no %s: loading unverified weights", folder, what, CHECKSUMS_FILE)
        return False
    sums = read_checksums(folder)
    uncovered = [name for name in weight_files(folder) if name not in sums and not _nested_list(folder, name)]
    if uncovered:
        raise WeightIntegrityError(
            f"{folder / uncovered[0]}: weight file not listed in {folder / CHECKSUMS_FILE} ({len(uncovered)} such "
            f"file(s)); a file added after backdrop wrote the {what} is not loaded unverified"
        )
    for name, expected in sums.items():
        check_sha256(folder / name, expected, f"listed in {folder / CHECKSUMS_FILE}")
    return True


def _nested_list(folder: Path, name: str) -> bool:
    """Whether a subfolder of ``folder`` on the way to the file ``name`` has a checksum list of its own."""
    parents = Path(name).parents
    return any((folder / parent / CHECKSUMS_FILE).is_file() for parent in parents if parent != Path("."))


def check_sha256(path: Path, expected: str, recorded: str) -> None:
    """Refuse ``path`` unless its bytes hash to ``expected`` (``recorded`` says where that digest came from).

    Raises:
        WeightIntegrityError: the file is missing or its SHA-256 differs (naming the file, expected and found).
    """
    if not path.is_file():
        raise WeightIntegrityError(f"{path}: {recorded} but missing")
    found = file_sha256(path)
    if found != expected:
        raise WeightIntegrityError(
            f"{path}: SHA-256 mismatch: expected {expected} ({recorded}), found {found}; the file changed after "
            "backdrop wrote it (a flipped byte, a partial copy, an edit) and is not loaded"
        )


def load_verified_weights(folder: Path, name: str, *, required: bool, what: str) -> dict[str, torch.Tensor]:
    """The tensors of ``folder/name`` after :func:`verify_weights` of ``folder``, checked finite.

    Raises:
        WeightIntegrityError: what :func:`verify_weights` and :func:`require_finite_weights` refuse, or a file
            safetensors cannot read.
    """
    verify_weights(folder, required=required, what=what)
    path = Path(folder) / name
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise WeightIntegrityError(f"{path}: cannot read the {what}'s weights: {exc}") from None
    require_finite_weights(tensors, str(path))
    return tensors


def require_finite_weights(
    tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], source: str
) -> None:
    """Refuse loaded weights with a NaN or infinite entry, naming the first such tensor and its count.

    Raises:
        WeightIntegrityError: a floating-point tensor has non-finite entries.
    """
    bad = first_non_finite_tensor(tensors.items() if isinstance(tensors, Mapping) else tensors)
    if bad is not None:
        name, count, size = bad
        raise WeightIntegrityError(
            f"{source}: tensor {name!r} has {count} NaN/infinite value(s) of {size}; refusing weights that can only "
            "paint or score NaN"
        )
