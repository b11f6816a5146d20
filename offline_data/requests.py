"""The request table: a team's own product photos and prompts, the policy's input, validated at the boundary.

One row per request (Parquet native; CSV and JSON Lines carry the same columns, read by ``offline_data.io``):

| column       | required | meaning                                                                          |
|--------------|----------|----------------------------------------------------------------------------------|
| request_id   | yes      | unique id; ``rollout sample`` names its images after it                          |
| product_id   | yes      | the product shown (several requests may show one product)                       |
| image        | yes      | photo file, relative to the folder holding the table                             |
| mask         | no       | mask file (grey >= 128 = product), same size; needed when the photo has no alpha |
| prompt       | yes      | background description                                                           |
| segment      | no       | shopper segment the image is for (default: the reader's ``default_segment``)     |
| split        | no       | ``train`` or ``eval``; default a stable salted hash of product_id                |

Every row is accepted or rejected with its reasons (``row R, column 'C': expected E, got F``), so
accepted + rejected = read. A row is rejected for: an empty id, product or prompt; a duplicate request_id (the
first one is kept); a prompt the guard refuses; an image or mask path outside the table's folder (unless
``allow_outside``); a missing, undecodable or unsupported photo or mask, or a size outside the limits
(``offline_data.photos`` names each refusal); a mask of another size than its photo; no alpha and no mask; an
empty product; a product covering almost the whole photo (``offline_data.photos.MAX_PRODUCT_FRACTION``). The
accepted table records each file's SHA-256, the photo's upright size and its EXIF orientation.

The guard is a callable argument (``prompts -> refusal reason or None per prompt``) so this package does not
depend on ``rollout``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from offline_data.assets import file_sha256
from offline_data.errors import AssetError, InputUnreadableError, LogValidationError
from offline_data.io import MalformedRows, TableSource, as_text, format_of, open_file
from offline_data.outputs import REJECT_FIELDS
from offline_data.photos import Photo, PhotoError, PhotoLimits, decode_mask, decode_photo, product_alpha
from offline_data.schemas import Column, TableSchema
from offline_data.splits import assign

REQUESTS = TableSchema(
    name="requests",  # type: ignore[arg-type]  # not a log table; the readers only use the name in messages
    key="request_id",
    columns=(
        Column(name="request_id", type=pa.string(), doc="Unique id of the request."),
        Column(name="product_id", type=pa.string(), doc="Product shown."),
        Column(name="image", type=pa.string(), doc="Photo file, relative to the table's folder."),
        Column(name="mask", type=pa.string(), required=False, nullable=True, doc="Mask file (>= 128 = product)."),
        Column(name="prompt", type=pa.string(), doc="Background description."),
        Column(name="segment", type=pa.string(), required=False, nullable=True, doc="Shopper segment."),
        Column(name="split", type=pa.string(), required=False, nullable=True, allowed=("train", "eval"), doc="Split."),
    ),
)

SPLITS = ("train", "eval")

ACCEPTED_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),
        pa.field("mask", pa.string()),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("segment", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image_sha256", pa.string(), nullable=False),
        pa.field("mask_sha256", pa.string()),
        pa.field("height", pa.int64(), nullable=False),
        pa.field("width", pa.int64(), nullable=False),
        pa.field("orientation", pa.int64(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
    ]
)
"""The accepted rows: the input columns (defaults filled in), file hashes, upright size, EXIF orientation, and
the 1-based row of the input file."""

REJECTS_SCHEMA = pa.schema(
    [pa.field(name, pa.int64() if name == "row" else pa.string()) for name in REJECT_FIELDS]
    + [pa.field(c.name, pa.string()) for c in REQUESTS.columns]
)

PromptGuardFn = Callable[[Sequence[str]], Sequence[str | None]]
"""Prompts -> per prompt, why it is refused, or None when it is allowed."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestTableConfig:
    """How a request table is read."""

    limits: PhotoLimits = PhotoLimits()
    """Photo sizes accepted."""
    allow_outside: bool = False
    """Accept image and mask paths that leave the table's folder (``..``, absolute paths)."""
    default_segment: str = "panel"
    """Segment of rows without one."""
    split_seed: int = 0
    """Salt of the default split (``offline_data.splits.assign`` on product_id)."""
    eval_fraction: float = 0.2
    """Share of products the default split holds out for evaluation."""

    def __post_init__(self) -> None:
        if not self.default_segment:
            raise ValueError("default_segment must be non-empty")
        if not 0.0 <= self.eval_fraction < 1.0 or self.split_seed < 0:
            raise ValueError(f"need 0 <= eval_fraction < 1 and split_seed >= 0, got {self.eval_fraction}")


@dataclasses.dataclass(frozen=True, eq=False)
class RequestTable:
    """A validated request table."""

    accepted: pa.Table
    """Accepted rows, :data:`ACCEPTED_SCHEMA`."""
    rejects: pa.Table
    """Rejected rows, :data:`REJECTS_SCHEMA`: file, 1-based row, first reason, every message, the raw text of a
    record that could not be split into columns, original values."""
    source: Path
    """The table file read."""
    read: int
    """Rows read (= accepted + rejected)."""

    @property
    def base_dir(self) -> Path:
        """The folder image and mask paths are relative to."""
        return self.source.parent

    def __len__(self) -> int:
        return self.accepted.num_rows

    def rows(self, split: str | None = None) -> list[dict]:
        """The accepted rows as dicts (optionally those of one split), in table order."""
        rows = self.accepted.to_pylist()
        return [r for r in rows if split is None or r["split"] == split]

    def load(self, row: dict) -> tuple[Photo, np.ndarray]:
        """The photo of an accepted row and its product alpha [H, W] uint8 (``offline_data.photos``).

        Raises:
            AssetError: a file changed since the table was validated (SHA-256 differs), or no longer decodes.
        """
        image = self.base_dir / row["image"]
        _check_sha(image, row["image_sha256"], self.source, row["row"])
        photo = decode_photo(image, PhotoLimits(min_side=1, max_side=max(row["height"], row["width"])))
        mask = None
        if row["mask"] is not None:
            mask_path = self.base_dir / row["mask"]
            _check_sha(mask_path, row["mask_sha256"], self.source, row["row"])
            mask = decode_mask(mask_path, photo.size)
        return photo, product_alpha(photo, mask, f"{self.source} row {row['row']}")

    def problems(self, limit: int = 20) -> list[str]:
        """The first ``limit`` rejection messages, ``file: row R, column 'C': ...``."""
        messages = self.rejects.column("problems").to_pylist()[:limit]
        return [f"{self.source}: {m}" for m in messages]


def read_requests(
    path: str | Path, *, guard: PromptGuardFn | None = None, config: RequestTableConfig | None = None
) -> RequestTable:
    """Read and validate a request table (module docstring).

    Raises:
        InputUnreadableError: the file is missing, has an unknown suffix, cannot be parsed, or lacks a column.
    """
    config = config or RequestTableConfig()
    path = Path(path)
    fmt = format_of(path)
    if fmt is None or path.is_dir():
        raise InputUnreadableError(f"{path}: expected a request table file ending in .parquet, .csv or .jsonl")
    if not path.is_file():
        raise InputUnreadableError(f"{path}: request table not found")
    reader = open_file(TableSource("requests", path, fmt, (path,)), 0, REQUESTS, 65_536)  # type: ignore[arg-type]
    values: list[dict] = []
    rejected: list[dict] = []
    for batch in reader.batches():
        if isinstance(batch, MalformedRows):
            for row, text, problem in zip(batch.rows, batch.text, batch.problems):
                rejected.append(_reject(path, int(row), "row:malformed", [f"row {row}: {problem}"], {"raw": text}))
            continue
        texts = {name: as_text(column).to_pylist() for name, column in batch.columns.items()}
        for k, row in enumerate(batch.rows.tolist()):
            values.append(
                {"row": row, **{c.name: texts.get(c.name, [None] * len(batch))[k] for c in REQUESTS.columns}}
            )
    accepted, more_rejects = _validate(values, path, guard, config)
    rejected.extend(more_rejects)
    rejected.sort(key=lambda r: r["row"])
    read = len(values) + sum(1 for r in rejected if r["reason"] == "row:malformed")
    if len(accepted) + len(rejected) != read:  # the books: every row read is accepted or rejected, once
        raise RuntimeError(f"{path}: {len(accepted)} accepted + {len(rejected)} rejected != {read} read")
    return RequestTable(
        accepted=pa.Table.from_pylist(accepted, schema=ACCEPTED_SCHEMA),
        rejects=pa.Table.from_pylist(rejected, schema=REJECTS_SCHEMA),
        source=path,
        read=read,
    )


def require_requests(table: RequestTable, *, strict: bool = False) -> RequestTable:
    """``table`` when it has accepted rows (and, if ``strict``, no rejected one).

    Raises:
        LogValidationError: no row was accepted, or ``strict`` and some were rejected; lists the first problems.
    """
    if len(table) and not (strict and table.rejects.num_rows):
        return table
    listed = "\n".join(f"  {m}" for m in table.problems())
    what = "no request was accepted" if not len(table) else f"{table.rejects.num_rows} request(s) rejected"
    raise LogValidationError(f"{table.source}: {what} ({table.read} read):\n{listed}")


def write_requests(table: RequestTable, folder: Path) -> Path:
    """``requests.parquet`` (accepted rows) and ``requests.rejects.parquet`` into ``folder``; returns the first."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.accepted, folder / "requests.parquet")
    pq.write_table(table.rejects, folder / "requests.rejects.parquet")
    return folder / "requests.parquet"


def _validate(
    values: list[dict], path: Path, guard: PromptGuardFn | None, config: RequestTableConfig
) -> tuple[list[dict], list[dict]]:
    base = path.parent
    problems: dict[int, list[tuple[str, str]]] = {}  # position -> (reason, message)

    def fail(position: int, column: str, expected: str, found: object, reason: str, note: str = "") -> None:
        shown = "null" if found is None else repr(found) if isinstance(found, str) else str(found)
        message = f"row {values[position]['row']}, column '{column}': expected {expected}, got {shown}{note}"
        problems.setdefault(position, []).append((reason, message))

    first_row: dict[str, int] = {}
    for i, value in enumerate(values):
        for column in ("request_id", "product_id", "image", "prompt"):
            if value[column] is None or not value[column].strip():
                fail(i, column, "a non-empty string", value[column], f"{column}:empty")
        request_id = value["request_id"]
        if request_id and request_id.strip():
            if request_id in first_row:
                fail(i, "request_id", "a unique id", request_id, "request_id:duplicate",
                     f" (first in row {first_row[request_id]})")  # fmt: skip
            else:
                first_row[request_id] = value["row"]
        if value["split"] is not None and value["split"] not in SPLITS:
            fail(i, "split", "one of 'train', 'eval' (or empty)", value["split"], "split:invalid")
    if guard is not None:
        prompts = sorted({v["prompt"] for i, v in enumerate(values) if v["prompt"] and v["prompt"].strip()})
        refusals = dict(zip(prompts, guard(prompts))) if prompts else {}
        for i, value in enumerate(values):
            reason = refusals.get(value["prompt"])
            if reason is not None:
                fail(i, "prompt", "a prompt the guards allow", value["prompt"], "prompt:refused", f" ({reason})")
    files: dict[int, dict] = {}
    for i, value in enumerate(values):
        if i in problems:
            continue  # no file is read for a row already rejected
        try:
            files[i] = _check_files(value, base, config)
        except _RowProblem as exc:
            fail(i, exc.column, exc.expected, value[exc.column], exc.reason, f" ({exc.detail})")
    defaults = _default_splits([v["product_id"] for v in values], config)
    accepted, rejected = [], []
    for i, value in enumerate(values):
        if i in problems:
            found = problems[i]
            originals = {c.name: value[c.name] for c in REQUESTS.columns}
            rejected.append(_reject(path, value["row"], found[0][0], [m for _, m in found], originals))
            continue
        accepted.append({
            "request_id": value["request_id"], "product_id": value["product_id"], "image": value["image"],
            "mask": value["mask"], "prompt": value["prompt"], "segment": value["segment"] or config.default_segment,
            "split": value["split"] or defaults[i], "row": value["row"], **files[i],
        })  # fmt: skip
    return accepted, rejected


class _RowProblem(Exception):
    def __init__(self, column: str, expected: str, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.column, self.expected, self.reason, self.detail = column, expected, reason, detail


def _check_files(value: dict, base: Path, config: RequestTableConfig) -> dict:
    """Decode the row's photo (and mask) under the photo rules; hashes, upright size and orientation."""
    image = _inside(base, value["image"], "image", config.allow_outside)
    try:
        photo = decode_photo(image, config.limits)
    except PhotoError as exc:
        raise _RowProblem("image", "a readable 8-bit photo within the size limits", exc.reason, str(exc)) from None
    mask, mask_sha = None, None
    if value["mask"] is not None and value["mask"].strip():
        mask_path = _inside(base, value["mask"], "mask", config.allow_outside)
        try:
            mask = decode_mask(mask_path, photo.size)
        except PhotoError as exc:
            raise _RowProblem("mask", "a readable mask of its photo's size", exc.reason, str(exc)) from None
        mask_sha = file_sha256(mask_path)
    try:
        product_alpha(photo, mask, str(image))
    except PhotoError as exc:
        column = "image" if exc.reason == "alpha:none" else ("mask" if mask is not None else "image")
        raise _RowProblem(
            column, "a product that is neither empty nor the whole photo", exc.reason, str(exc)
        ) from None
    return {
        "image_sha256": file_sha256(image), "mask_sha256": mask_sha,
        "height": photo.size[0], "width": photo.size[1], "orientation": photo.orientation,
    }  # fmt: skip


def _inside(base: Path, relative: str, column: str, allow_outside: bool) -> Path:
    """``relative`` resolved against ``base``; outside ``base`` only when allowed."""
    path = Path(relative)
    resolved = path if path.is_absolute() else base / path
    if not allow_outside:
        root = os.path.realpath(base)
        if os.path.commonpath([root, os.path.realpath(resolved)]) != root:
            raise _RowProblem(
                column, "a path inside the table's folder", f"{column}:outside",
                f"it resolves outside {base}; move the file under the table's folder or allow outside paths",
            )  # fmt: skip
    return resolved


def _default_splits(product_ids: list[str | None], config: RequestTableConfig) -> list[str]:
    keys = pa.array([p or "" for p in product_ids], type=pa.string())
    fractions = (1.0 - config.eval_fraction, 0.0, config.eval_fraction)
    index = assign(keys, fractions, config.split_seed) if len(keys) else np.zeros(0, dtype=np.int8)
    return ["eval" if s == 2 else "train" for s in index.tolist()]


def _reject(path: Path, row: int, reason: str, messages: list[str], originals: dict) -> dict:
    return {"file": str(path), "row": row, "reason": reason, "problems": "; ".join(messages), **originals}


def _check_sha(path: Path, recorded: str, source: Path, row: int) -> None:
    if not path.is_file():
        raise AssetError(f"{path}: file of {source} row {row} not found")
    actual = file_sha256(path)
    if actual != recorded:
        raise AssetError(
            f"{path}: SHA-256 is {actual}, but {source} row {row} records {recorded} (the file changed after the "
            "table was validated)"
        )
