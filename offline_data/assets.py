"""Asset files: resolving their paths, checking their SHA-256, and loading images lazily by ``image_id``.

An assets table's ``path`` is relative to the folder holding the table (docs/architecture.md, "The pipeline"). A
validated assets table (``backdrop data validate`` output) lives in another folder than the original, so it records
where the original was in its Parquet metadata (``backdrop.asset_root``, relative to itself), and
:class:`AssetStore` resolves paths against that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from offline_data.errors import AssetError
from offline_data.keys import KeyIndex, hash_strings
from offline_data.schemas import ASSETS

ASSET_ROOT_KEY = "backdrop.asset_root"
"""Parquet metadata key of a validated assets table: the folder asset paths are relative to."""

_CHUNK = 1 << 20


def resolve_asset_path(root: Path, path: str) -> Path:
    """``path`` from the assets table, resolved against ``root`` unless it is absolute."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else root / candidate


def is_inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (after ``..`` and symlinks are resolved) lies inside the folder ``root``."""
    return path.resolve().is_relative_to(root.resolve())


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def asset_root_metadata(source_dir: Path, out_dir: Path) -> dict[str, str]:
    """Metadata for a validated assets table written to ``out_dir`` from a table in ``source_dir``.

    Stored relative so that moving the data folder as a whole keeps it valid.
    """
    return {ASSET_ROOT_KEY: os.path.relpath(source_dir.resolve(), out_dir.resolve())}


def image_array(data: bytes, origin: str) -> np.ndarray:
    """Decode image bytes to uint8 [H, W, C]: C = 1 (grey / mask), 3 (RGB) or 4 (RGBA).

    Raises:
        AssetError: not an image PIL can decode, or not 8-bit.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode in ("1", "L"):
                image = image.convert("L")
            elif image.mode in ("P", "LA", "PA", "RGBa", "La"):
                image = image.convert("RGBA")
            elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGB")
            elif image.mode not in ("RGB", "RGBA"):
                raise AssetError(f"{origin}: expected an 8-bit image, got PIL mode {image.mode!r}")
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise AssetError(f"{origin}: cannot decode image: {exc}") from None
    return array[..., None] if array.ndim == 2 else array


@dataclasses.dataclass(frozen=True)
class AssetRecord:
    """One row of an assets table."""

    image_id: str
    product_id: str
    path: Path
    """Resolved file path."""
    sha256: str
    kind: str
    row: int
    """1-based row in the assets table."""


class AssetStore:
    """Images of an assets table, loaded lazily by ``image_id``.

    ``store.load("img_0007")`` reads the file, checks its SHA-256 against the table (when ``verify``) and
    returns uint8 [H, W, C]. Ids are found through a hashed index, so the store holds the table's columns
    plus about 30 bytes per asset.
    """

    def __init__(self, table: pa.Table, root: Path, *, source: str = "<assets>", verify: bool = True) -> None:
        missing = [
            name for name in ("image_id", "product_id", "path", "sha256", "kind") if name not in table.schema.names
        ]
        if missing:
            raise AssetError(f"{source}: assets table lacks column(s) {', '.join(missing)}")
        self.table = table.combine_chunks()
        self.root = root
        self.source = source
        self.verify = verify
        self._ids = self.table.column("image_id").combine_chunks()
        if self._ids.null_count:
            raise AssetError(f"{source}: image_id has nulls; validate the table first (backdrop data validate)")
        self._index = KeyIndex()
        hashes = hash_strings(self._ids)
        unique, first = np.unique(hashes, return_index=True)
        if len(unique) != len(hashes):
            raise AssetError(f"{source}: image_id is not unique; validate the table first (backdrop data validate)")
        self._index.insert(unique, first.astype(np.int64))

    @classmethod
    def open(cls, path: str | Path, root: str | Path | None = None, *, verify: bool = True) -> AssetStore:
        """Open a Parquet assets table (normally ``<validated>/assets.parquet``).

        Args:
            path: the assets table.
            root: folder the ``path`` column is relative to; default: the table's ``backdrop.asset_root``
                metadata when present, else the table's folder.
            verify: check each file's SHA-256 when it is loaded.

        Raises:
            AssetError: the table cannot be read or lacks the assets columns.
        """
        path = Path(path)
        try:
            table = pq.read_table(path, columns=[c.name for c in ASSETS.columns if c.required])
        except (OSError, pa.ArrowException) as exc:
            raise AssetError(f"{path}: cannot read assets table: {exc}") from None
        if root is None:
            metadata = table.schema.metadata or {}
            relative = metadata.get(ASSET_ROOT_KEY.encode())
            root = path.parent / relative.decode() if relative is not None else path.parent
        return cls(table, Path(root), source=str(path), verify=verify)

    def __len__(self) -> int:
        return self.table.num_rows

    def _row(self, image_id: str) -> int | None:
        lookup = self._index.lookup(hash_strings(pa.array([image_id], type=pa.string())))
        if not lookup.found[0]:
            return None
        row = int(lookup.locations[0])
        # Confirm against the stored string so a hash collision can never return the wrong asset.
        return row if self._ids[row].as_py() == image_id else None

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and self._row(image_id) is not None

    def record(self, image_id: str) -> AssetRecord:
        """The table row of ``image_id``.

        Raises:
            AssetError: no asset has this id.
        """
        row = self._row(image_id)
        if row is None:
            raise AssetError(f"{self.source}: no asset with image_id {image_id!r}")
        values = {name: self.table.column(name)[row].as_py() for name in ("product_id", "path", "sha256", "kind")}
        return AssetRecord(
            image_id=image_id,
            product_id=values["product_id"],
            path=resolve_asset_path(self.root, values["path"]),
            sha256=values["sha256"],
            kind=values["kind"],
            row=row + 1,
        )

    def read_bytes(self, image_id: str) -> bytes:
        """The file's bytes, SHA-256-checked when ``verify``.

        Raises:
            AssetError: unknown id, missing file, or a SHA-256 that differs from the table's.
        """
        record = self.record(image_id)
        try:
            data = record.path.read_bytes()
        except OSError as exc:
            raise AssetError(
                f"{record.path}: cannot read the file of image_id {image_id!r} "
                f"({self.source} row {record.row}): {exc.strerror or exc}"
            ) from None
        if self.verify:
            actual = hashlib.sha256(data).hexdigest()
            if actual != record.sha256:
                raise AssetError(
                    f"{record.path}: SHA-256 is {actual}, but {self.source} row {record.row} records "
                    f"{record.sha256} for image_id {image_id!r} (the file changed after it was logged)"
                )
        return data

    def load(self, image_id: str) -> np.ndarray:
        """The image of ``image_id`` as uint8 [H, W, C] (C = 1, 3 or 4 as stored).

        Raises:
            AssetError: unknown id, missing or changed file, or not a decodable 8-bit image.
        """
        data = self.read_bytes(image_id)
        return image_array(data, f"{self.record(image_id).path} (image_id {image_id!r})")

    def check_file(self, image_id: str) -> None:
        """Raise :class:`AssetError` unless the file exists and matches its recorded SHA-256."""
        record = self.record(image_id)
        if not record.path.is_file():
            raise AssetError(
                f"{record.path}: file of image_id {image_id!r} ({self.source} row {record.row}) not found"
            )
        actual = file_sha256(record.path)
        if actual != record.sha256:
            raise AssetError(
                f"{record.path}: SHA-256 is {actual}, but {self.source} row {record.row} records {record.sha256}"
            )
