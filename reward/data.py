"""Training and evaluation data of the reward heads, read from validated logs through HF ``datasets``.

:func:`load_reward_data` reads one folder of validated tables (``backdrop data validate`` output, or one split of
``backdrop data split``): impressions joined with dwell (``offline_data.datasets.click_examples``), preferences and
assets as memory-mapped ``datasets.Dataset``s, turns the rows into index tensors, and decodes every image the rows
refer to once (with its product's mask for mask-aware encoders). It reads nothing else: the simulator's
``truth/`` sidecar never reaches training (evaluation takes it explicitly, ``evaluation.py``).

Bad data stops with a named error rather than a traceback or a silent drop: an image id with no asset
(:class:`~reward.errors.MissingImageError`), images of different sizes, a product with no mask when the encoder
needs one, or (:func:`check_trainable`) an empty split or a head that is weighted but has no labels.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor
from tqdm.auto import tqdm

from offline_data.assets import ASSET_ROOT_KEY, AssetStore, resolve_asset_path
from offline_data.datasets import click_examples, load_table
from offline_data.outputs import accepted_path
from reward.errors import MissingImageError, RewardDataError
from reward.losses import CHOICE_A, CHOICE_B, CHOICE_TIE

logger = logging.getLogger(__name__)

CHOICES = {"a": CHOICE_A, "b": CHOICE_B, "tie": CHOICE_TIE}


@dataclasses.dataclass(frozen=True, eq=False)
class ImageTable:
    """Every image the rows refer to, decoded once.

    Attributes:
        image_ids: N ids.
        product_ids: N product ids.
        prompts: N prompts (assets.prompt; None when absent).
        kinds: N product kinds (assets.category; None when absent).
        pixels: [N, 3, H, W] uint8.
        masks: [N, H, W] bool product masks (the product's mask asset), or None when not loaded.
    """

    image_ids: tuple[str, ...]
    product_ids: tuple[str, ...]
    prompts: tuple[str | None, ...]
    kinds: tuple[str | None, ...]
    pixels: Tensor
    masks: Tensor | None

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclasses.dataclass(frozen=True, eq=False)
class Impressions:
    """Impressions (joined with their dwell), one entry per row, in table order.

    Attributes:
        event_ids: n ids.
        request_ids: n request ids.
        image: [n] int64 row of the image in the :class:`ImageTable`.
        segment: n segment names.
        position: [n] int64 1-based slot.
        clicked: [n] bool.
        dwell_ms: [n] int64 dwell (−1 where there is no dwell row).
        censored: [n] bool (False where there is no dwell row).
        has_dwell: [n] bool.
    """

    event_ids: np.ndarray
    request_ids: np.ndarray
    image: Tensor
    segment: tuple[str, ...]
    position: Tensor
    clicked: Tensor
    dwell_ms: Tensor
    censored: Tensor
    has_dwell: Tensor

    def __len__(self) -> int:
        return int(self.image.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class Pairs:
    """Pairwise judgements.

    Attributes:
        pair_ids: n ids.
        image_a, image_b: [n] int64 rows in the :class:`ImageTable`.
        choice: [n] int64 (0 a, 1 b, 2 tie).
        annotators: n annotator ids.
    """

    pair_ids: np.ndarray
    image_a: Tensor
    image_b: Tensor
    choice: Tensor
    annotators: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.image_a.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class RewardData:
    """One folder's rows and images."""

    source: Path
    images: ImageTable
    impressions: Impressions
    pairs: Pairs

    @property
    def dwell_rows(self) -> Tensor:
        """Rows of :attr:`impressions` that have dwell: [m] int64."""
        return torch.nonzero(self.impressions.has_dwell).flatten()


def _column(dataset, name: str) -> pa.ChunkedArray:
    return dataset.data.column(name)


def _find_asset_root(assets_path: Path, first_path: str | None) -> Path:
    """Folder the assets table's paths are relative to: its ``backdrop.asset_root`` metadata, else the nearest
    folder (the table's own, then its parents) where the first asset's file exists."""
    metadata = pq.read_schema(assets_path).metadata or {}
    relative = metadata.get(ASSET_ROOT_KEY.encode())
    if relative is not None:
        return assets_path.parent / relative.decode()
    if first_path is not None:
        for folder in [assets_path.parent, *assets_path.parent.parents][:5]:
            if resolve_asset_path(folder, first_path).is_file():
                if folder != assets_path.parent:
                    logger.info("%s has no %s metadata; its files are under %s", assets_path, ASSET_ROOT_KEY, folder)
                return folder
    return assets_path.parent


def _rgb(array: np.ndarray, image_id: str, path: Path) -> np.ndarray:
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        return array[..., :3]
    if array.shape[2] != 3:
        raise RewardDataError(f"{path}: image {image_id!r} has {array.shape[2]} channels, expected RGB")
    return array


def _indices(ids: pa.ChunkedArray, table_ids: pa.Array, table: str, column: str, source: Path) -> Tensor:
    """Row of each id in ``table_ids`` ([n] int64), or MissingImageError naming the first rows without one."""
    index = pc.index_in(ids.cast(pa.string()), value_set=table_ids)
    missing = pc.is_null(index).to_numpy(zero_copy_only=False)
    if missing.any():
        rows = np.flatnonzero(missing)
        shown = ", ".join(f"row {r + 1} ({ids[int(r)].as_py()!r})" for r in rows[:5])
        raise MissingImageError(
            f"{source / f'{table}.parquet'}: {rows.size} {column} value(s) have no row in the assets table: {shown}"
        )
    return torch.from_numpy(index.to_numpy(zero_copy_only=False).astype(np.int64))


def load_reward_data(
    validated_dir: str | Path, *, load_masks: bool = True, progress: bool = False, cache_dir: str | Path | None = None
) -> RewardData:
    """Rows and images of a folder of validated tables (module docstring).

    Args:
        validated_dir: holds ``assets.parquet`` and at least one of ``impressions.parquet`` / ``preferences.parquet``
            (``dwell.parquet`` is optional), all validated.
        load_masks: also load each product's mask (the ``kind = "mask"`` asset of its product_id).
        progress: tqdm bar while decoding images.
        cache_dir: where ``datasets`` keeps its Arrow cache (default ``<validated_dir>/.hf_cache``).

    Raises:
        InputUnreadableError / LogValidationError: a table is missing or not validated.
        MissingImageError: a row refers to an image id the assets table lacks.
        RewardDataError: images of different sizes or channels, or a product without a mask (``load_masks``).
    """
    source = Path(validated_dir)
    has = {t: accepted_path(source, t).is_file() for t in ("impressions", "preferences", "assets")}
    # Empty tables are read as absent (datasets cannot build a Dataset from a 0-row Parquet file).
    for table in ("impressions", "preferences"):
        if has[table] and pq.read_metadata(accepted_path(source, table)).num_rows == 0:
            has[table] = False
    if not has["assets"]:
        raise RewardDataError(f"{source}: no validated assets table (assets.parquet); reward models need the images")
    if not has["impressions"] and not has["preferences"]:
        raise RewardDataError(
            f"{source}: no impressions and no preference pairs (impressions.parquet / preferences.parquet missing or "
            "empty): nothing to learn from"
        )
    assets = load_table(source, "assets", cache_dir=cache_dir)
    asset_ids = _column(assets, "image_id").combine_chunks()

    impressions_ds = click_examples(source, cache_dir=cache_dir) if has["impressions"] else None
    pairs_ds = load_table(source, "preferences", cache_dir=cache_dir) if has["preferences"] else None
    referenced = []
    if impressions_ds is not None:
        referenced.append(_column(impressions_ds, "image_id"))
    if pairs_ds is not None:
        referenced += [_column(pairs_ds, "image_a"), _column(pairs_ds, "image_b")]
    chunks = [c.cast(pa.string()) for column in referenced for c in column.chunks]
    used_ids = pc.unique(pa.chunked_array(chunks, type=pa.string()))
    used_ids = pc.take(used_ids, pc.sort_indices(used_ids))  # a stable image order, whatever the row order
    if impressions_ds is not None:
        _indices(_column(impressions_ds, "image_id"), asset_ids, "impressions", "image_id", source)
    if pairs_ds is not None:
        for column in ("image_a", "image_b"):
            _indices(_column(pairs_ds, column), asset_ids, "preferences", column, source)
    rows = pc.index_in(used_ids, value_set=asset_ids).to_numpy(zero_copy_only=False).astype(np.int64)
    images = _load_images(assets, rows, source, load_masks, progress)

    image_ids = pa.array(images.image_ids, type=pa.string())
    if impressions_ds is not None:
        impressions = _impressions(impressions_ds, image_ids, source)
    else:
        impressions = _empty_impressions()
    pairs = _pairs(pairs_ds, image_ids, source) if pairs_ds is not None else _empty_pairs()
    return RewardData(source=source, images=images, impressions=impressions, pairs=pairs)


def _load_images(assets, rows: np.ndarray, source: Path, load_masks: bool, progress: bool) -> ImageTable:
    table = assets.data.table
    columns = {name: table.column(name).to_pylist() for name in ("image_id", "product_id", "path", "kind")}
    optional = {
        name: table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
        for name in ("prompt", "category")
    }
    assets_path = accepted_path(source, "assets")
    root = _find_asset_root(assets_path, columns["path"][int(rows[0])] if rows.size else None)
    store = AssetStore(table, root, source=str(assets_path))
    pixels, shape = [], None
    for row in tqdm(rows, desc="decoding images", unit="img", disable=not progress):
        image_id = columns["image_id"][row]
        array = _rgb(store.load(image_id), image_id, store.record(image_id).path)
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            raise RewardDataError(
                f"{assets_path}: image {image_id!r} is {array.shape[1]}x{array.shape[0]} px, but the others are "
                f"{shape[1]}x{shape[0]}; a reward model needs one image size (resize the assets)"
            )
        pixels.append(array)
    size = shape[:2] if shape is not None else (0, 0)
    stacked = np.stack(pixels) if pixels else np.zeros((0, *size, 3), dtype=np.uint8)
    product_ids = tuple(columns["product_id"][r] for r in rows)
    masks = _load_masks(store, columns, product_ids, size, assets_path) if load_masks else None
    # Kind and prompt come from the generated image's own row; a product's kind may also sit on its photo row.
    kind_of_product: dict[str, str] = {}
    for pid, kind in zip(columns["product_id"], optional["category"]):
        if kind is not None:
            kind_of_product.setdefault(pid, kind)
    return ImageTable(
        image_ids=tuple(columns["image_id"][r] for r in rows),
        product_ids=product_ids,
        prompts=tuple(optional["prompt"][r] for r in rows),
        kinds=tuple(optional["category"][r] or kind_of_product.get(columns["product_id"][r]) for r in rows),
        pixels=torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous(),
        masks=masks,
    )


def _load_masks(
    store: AssetStore, columns: dict[str, list], product_ids: Sequence[str], size: tuple[int, int], where: Path
) -> Tensor:
    first_mask: dict[str, str] = {}
    for image_id, pid, kind in zip(columns["image_id"], columns["product_id"], columns["kind"]):
        if kind == "mask":
            first_mask.setdefault(pid, image_id)
    decoded: dict[str, np.ndarray] = {}
    out = np.zeros((len(product_ids), *size), dtype=bool)
    for i, pid in enumerate(product_ids):
        if pid not in decoded:
            if pid not in first_mask:
                raise RewardDataError(
                    f"{where}: product {pid!r} has no mask asset (kind = 'mask'); the mask-aware encoder needs "
                    "each product's mask (or use encoder.kind = 'efficientnet_lite0' / 'precomputed')"
                )
            array = store.load(first_mask[pid])
            grey = array[..., 0] if array.shape[2] in (1, 2) else array[..., :3].max(axis=2)
            if array.shape[:2] != size:
                raise RewardDataError(
                    f"{where}: mask {first_mask[pid]!r} is {array.shape[1]}x{array.shape[0]} px, its images "
                    f"{size[1]}x{size[0]}"
                )
            decoded[pid] = grey >= 128
        out[i] = decoded[pid]
    return torch.from_numpy(out)


def _impressions(dataset, image_ids: pa.Array, source: Path) -> Impressions:
    dwell = _column(dataset, "dwell_ms")
    has_dwell = pc.is_valid(dwell).to_numpy(zero_copy_only=False)
    return Impressions(
        event_ids=_column(dataset, "event_id").to_numpy(zero_copy_only=False),
        request_ids=_column(dataset, "request_id").to_numpy(zero_copy_only=False),
        image=_indices(_column(dataset, "image_id"), image_ids, "impressions", "image_id", source),
        segment=tuple(_column(dataset, "segment").to_pylist()),
        position=torch.from_numpy(_column(dataset, "position").to_numpy().astype(np.int64)),
        clicked=torch.from_numpy(_column(dataset, "clicked").to_numpy(zero_copy_only=False).astype(bool)),
        dwell_ms=torch.from_numpy(pc.fill_null(dwell, -1).to_numpy().astype(np.int64)),
        censored=torch.from_numpy(
            pc.fill_null(_column(dataset, "censored"), False).to_numpy(zero_copy_only=False).astype(bool)
        ),
        has_dwell=torch.from_numpy(has_dwell.astype(bool)),
    )


def _pairs(dataset, image_ids: pa.Array, source: Path) -> Pairs:
    choices = _column(dataset, "choice").to_pylist()
    return Pairs(
        pair_ids=_column(dataset, "pair_id").to_numpy(zero_copy_only=False),
        image_a=_indices(_column(dataset, "image_a"), image_ids, "preferences", "image_a", source),
        image_b=_indices(_column(dataset, "image_b"), image_ids, "preferences", "image_b", source),
        choice=torch.tensor([CHOICES[c] for c in choices], dtype=torch.long),
        annotators=tuple(_column(dataset, "annotator_id").to_pylist()),
    )


def _empty_impressions() -> Impressions:
    empty = torch.zeros(0, dtype=torch.long)
    flags = torch.zeros(0, dtype=torch.bool)
    ids = np.array([], dtype=object)
    return Impressions(ids, ids, empty, (), empty, flags, empty, flags, flags)


def _empty_pairs() -> Pairs:
    empty = torch.zeros(0, dtype=torch.long)
    return Pairs(np.array([], dtype=object), empty, empty, empty, ())


def check_trainable(data: RewardData, loss_weights: dict[str, float], *, split: str) -> None:
    """Refuse data a weighted head cannot learn from.

    Raises:
        RewardDataError: the split has no rows at all, or a head with loss weight > 0 has no labels (clicks need
            impressions with at least one click, dwell needs dwell rows, preference needs non-tie judgements).
    """
    where = f"{split} split ({data.source})"
    if len(data.impressions) == 0 and len(data.pairs) == 0:
        raise RewardDataError(f"{where} is empty: no impressions and no preference pairs")
    problems = []
    if loss_weights.get("click", 0) > 0:
        if len(data.impressions) == 0:
            problems.append("click head: no impressions")
        elif not bool(data.impressions.clicked.any()):
            problems.append(f"click head: none of the {len(data.impressions):,} impressions was clicked")
    if loss_weights.get("dwell", 0) > 0 and not bool(data.impressions.has_dwell.any()):
        problems.append("dwell head: no dwell rows (dwell.parquet missing, empty, or none matches an impression)")
    if loss_weights.get("preference", 0) > 0 and not bool((data.pairs.choice != CHOICE_TIE).any()):
        problems.append(
            "preference head: no preference judgements" if len(data.pairs) == 0 else "preference head: only ties"
        )
    if problems:
        raise RewardDataError(
            f"{where}: {'; '.join(problems)}. Give logs with these labels, or set their weight to 0 with "
            "--set reward.train.loss_weights.<head>=0"
        )


def estimate_examination(positions: Tensor, clicked: Tensor) -> tuple[float, ...]:
    """θ_k / θ_1 from *randomised* logs (slots assigned uniformly at random): CTR of slot k over CTR of slot 1.

    Under the position-based model with random placement, E[click | slot k] = θ_k E[attractiveness], so the
    CTR ratio is an unbiased ratio of examination probabilities. On ranked logs it is biased (better images sit
    higher); use the ``pbm`` click mode there.

    Args:
        positions: [n] int64 1-based slots.
        clicked: [n] bool.

    Returns:
        θ per slot 1..max(position), θ_1 = 1.
    """
    if positions.numel() == 0:
        raise RewardDataError("cannot estimate examination from an empty impressions table")
    slots = int(positions.max())
    shown = torch.bincount(positions - 1, minlength=slots).double()
    clicks = torch.bincount(positions - 1, weights=clicked.double(), minlength=slots)
    if shown[0] == 0 or clicks[0] == 0:
        raise RewardDataError("cannot estimate examination: slot 1 has no impressions or no clicks")
    empty = [str(k + 1) for k in range(slots) if shown[k] == 0]
    if empty:
        raise RewardDataError(f"cannot estimate examination: slot(s) {', '.join(empty)} never shown")
    ctr = clicks / shown
    return tuple(float(min(1.0, max(v, 1e-6))) for v in (ctr / ctr[0]).tolist())
