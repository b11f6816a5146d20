"""Leak-free train / validation / test splits of validated logs, by product, by shopper segment, or by time.

A split is leak-free when nothing that identifies an evaluation example was seen in training:

- ``product``: every row of a product is in one split: its assets, its impressions, the dwell that follows
  them, and the preference pairs whose two images both show products of that split. A pair whose images'
  products fall in different splits belongs to neither: it is dropped *for leakage*, counted, reported and
  written to ``preferences.dropped.parquet`` (never silently lost).
- ``segment``: every impression of a shopper segment is in one split (dwell follows its impression).
- ``time``: impressions before the first cut-off train, then validation, then test; the cut-offs are the
  ``fractions`` quantiles of ``shown_at`` (dwell follows its impression).

Products are assigned by a hash of the product id salted with the seed (:func:`assign`): the same key
always lands in the same split for a seed, whatever the order or batching of the rows, so splitting
streams in one pass and two runs agree row for row. Segments are few (a handful), where independent draws
would often leave a split empty, so they are dealt out whole in salted-hash order (:func:`assign_few`).
Fractions apply to groups, so row shares can differ from them; the report gives the counts achieved.

Assets and preferences have no segment or time of their own: with ``segment`` and ``time``, assets are
a shared catalogue copied into every split, and preference pairs are split by product as above.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from offline_data.assets import ASSET_ROOT_KEY, asset_root_metadata
from offline_data.errors import LogValidationError
from offline_data.keys import KeyIndex, hash_strings, mix64
from offline_data.outputs import AtomicParquetWriter, accepted_path, open_validated
from offline_data.schemas import SCHEMAS, TableName

logger = logging.getLogger(__name__)

SplitBy = Literal["product", "segment", "time"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")
REPORT_FILE = "split_report.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplitConfig:
    """How :func:`split_logs` groups rows and how large each split is."""

    by: SplitBy = "product"
    """The grouping no split may share: product, segment (shopper segment), or time (shown_at order)."""
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Shares of train, validation and test: of groups (product, segment), or of impressions (time)."""
    seed: int = 0
    """Salt of the group hash: another seed gives another split, each deterministic. Unused by ``time``."""
    batch_rows: int = 262_144
    """Rows read at a time."""

    def __post_init__(self) -> None:
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions):
            raise ValueError(f"fractions must be three shares >= 0 (train, validation, test), got {self.fractions}")
        if abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {self.fractions} (sum {sum(self.fractions):g})")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {self.batch_rows}")


def assign(keys: pa.Array, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """The split of each key: a uniform draw from the key's salted hash, cut at the cumulative fractions.

    Args:
        keys: [N] grouping keys (strings; e.g. product ids).
        fractions: shares of train, validation, test (sum 1).
        seed: salt; the same (key, seed) always gives the same split.

    Returns:
        [N] int8 split index (0 train, 1 validation, 2 test).
    """
    salt = mix64(np.array([seed + 1], dtype=np.uint64))[0]
    hashes = mix64(hash_strings(keys, repeated=True) ^ salt)
    uniform = (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.searchsorted(np.cumsum(fractions)[:2], uniform, side="right").astype(np.int8)


def assign_few(groups: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, int]:
    """Whole groups to splits when there are few of them (shopper segments): exact counts, not draws.

    Groups are ordered by their salted hash (:func:`assign`'s, so a seed still decides) and dealt out in
    that order: each split with a non-zero fraction gets at least one group when there are enough, the
    rest by largest remainder of ``fraction * len(groups)``.

    Returns:
        group -> split index (0 train, 1 validation, 2 test).
    """
    if not groups:
        return {}
    salt = mix64(np.array([seed + 1], dtype=np.uint64))[0]
    keyed = mix64(hash_strings(pa.array(groups, type=pa.string())) ^ salt)
    ordered = [groups[i] for i in np.argsort(keyed, kind="stable")]
    share = np.asarray(fractions) * len(groups)
    counts = np.floor(share).astype(int)
    wanted = np.asarray(fractions) > 0
    if len(groups) >= wanted.sum():
        counts = np.where(wanted, np.maximum(counts, 1), 0)
    while counts.sum() > len(groups):  # the minimum of one per split overshot: take from the largest
        counts[np.argmax(counts)] -= 1
    for index in np.argsort(-(share - np.floor(share)), kind="stable"):
        if counts.sum() >= len(groups):
            break
        counts[index] += 1
    split = np.repeat(np.arange(len(SPLITS)), counts)
    return {group: int(s) for group, s in zip(ordered, split)}


@dataclasses.dataclass
class SplitReport:
    """What went where: rows per split and table, groups per split, rows dropped and why."""

    by: str
    seed: int
    fractions: list[float]
    out_dir: str
    rows: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    """table -> split -> rows written."""
    groups: dict[str, int] = dataclasses.field(default_factory=dict)
    """split -> distinct groups (products or segments) among its impressions."""
    dropped: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    """table -> reason -> rows not written to any split (also in ``<table>.dropped.parquet``)."""
    time_cutoffs: list[str] = dataclasses.field(default_factory=list)
    """``time``: the shown_at at which validation and test begin (ISO-8601)."""
    notes: list[str] = dataclasses.field(default_factory=list)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    def render(self) -> str:
        header = ("table", *SPLITS, "dropped")
        lines = ["  ".join(f"{h:>12}" if i else f"{h:<12}" for i, h in enumerate(header))]
        for table, counts in self.rows.items():
            dropped = sum(self.dropped.get(table, {}).values())
            cells = [f"{counts.get(s, 0):>12,}" for s in SPLITS] + [f"{dropped:>12,}"]
            lines.append("  ".join([f"{table:<12}", *cells]))
        if self.groups:
            lines.append(f"{self.by}s per split: " + ", ".join(f"{s} {self.groups.get(s, 0):,}" for s in SPLITS))
        for table, reasons in self.dropped.items():
            for reason, count in reasons.items():
                lines.append(f"dropped: {table}: {count:,} rows, {reason}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


class _SplitWriters:
    """One writer per split for a table, plus one for dropped rows; committed together or not at all."""

    def __init__(
        self, out_dir: Path, table: TableName, schema: pa.Schema, metadata: dict[str, str] | None = None
    ) -> None:
        self.table = table
        self.schema = schema
        self.writers = [AtomicParquetWriter(accepted_path(out_dir / s, table), schema, metadata) for s in SPLITS]
        dropped_schema = schema.append(pa.field("dropped_because", pa.string(), nullable=False))
        self.dropped = AtomicParquetWriter(out_dir / f"{table}.dropped.parquet", dropped_schema)
        self.dropped_reasons: dict[str, int] = {}

    def write(self, batch: pa.RecordBatch, split: np.ndarray) -> None:
        """Write ``batch`` [N] rows to splits ``split`` [N] (int8; -1 = dropped, see :meth:`drop`)."""
        for index, writer in enumerate(self.writers):
            chosen = split == index
            if chosen.any():
                writer.write(batch.filter(pa.array(chosen)))

    def drop(self, batch: pa.RecordBatch, mask: np.ndarray, reason: str) -> None:
        if not mask.any():
            return
        kept = batch.filter(pa.array(mask))
        because = pa.array(np.full(kept.num_rows, reason, dtype=object), type=pa.string())
        self.dropped.write(pa.RecordBatch.from_arrays([*kept.columns, because], schema=self.dropped.schema))
        self.dropped_reasons[reason] = self.dropped_reasons.get(reason, 0) + int(mask.sum())

    def commit(self, report: SplitReport) -> None:
        report.rows[self.table] = {s: w.rows for s, w in zip(SPLITS, self.writers)}
        for writer in self.writers:
            writer.commit()
        if self.dropped_reasons:
            report.dropped[self.table] = dict(self.dropped_reasons)
            self.dropped.commit()
        else:
            self.dropped.abort()

    def abort(self) -> None:
        for writer in [*self.writers, self.dropped]:
            writer.abort()


def split_logs(validated_dir: str | Path, out_dir: str | Path, config: SplitConfig | None = None) -> SplitReport:
    """Split the validated tables in ``validated_dir`` into ``out_dir/{train,validation,test}/<table>.parquet``.

    Tables present in ``validated_dir`` are split; impressions are required (they define the groups of
    ``segment`` and ``time``, and dwell follows them), assets are required when preferences are present.

    Returns:
        The report, also written to ``out_dir/split_report.json``.

    Raises:
        InputUnreadableError: a table file is unreadable.
        LogValidationError: a table is not a validated table, or a needed table is missing.
    """
    config = config or SplitConfig()
    validated_dir, out_dir = Path(validated_dir), Path(out_dir)
    present = {t for t in SCHEMAS if accepted_path(validated_dir, t).is_file()}
    if "impressions" not in present:
        raise LogValidationError(f"{validated_dir}: no validated impressions table (impressions.parquet) to split")
    if "preferences" in present and "assets" not in present:
        raise LogValidationError(
            f"{validated_dir}: preferences need the assets table to find each image's product; assets.parquet missing"
        )
    report = SplitReport(by=config.by, seed=config.seed, fractions=list(config.fractions), out_dir=str(out_dir))
    splitter = _Splitter(validated_dir, out_dir, config, report)
    pending: list[_SplitWriters] = []
    try:
        for table in ("assets", "impressions", "dwell", "preferences"):
            if table in present:
                pending.append(splitter.split(table))
    except BaseException:
        for writers in pending:
            writers.abort()
        raise
    for writers in pending:
        writers.commit(report)
    report.notes.extend(empty_split_hints(report))
    report.write(out_dir / REPORT_FILE)
    logger.info("split %s by %s into %s", validated_dir, config.by, out_dir)
    return report


def empty_split_hints(report: SplitReport) -> list[str]:
    """A hint for each split that was asked for rows (fraction > 0) but got no impressions: with few groups
    (products or segments) a split can get none, and training then has nothing to validate or test on."""
    counts = report.rows.get("impressions", {})
    hints = []
    for split, fraction in zip(SPLITS, report.fractions):
        if fraction > 0 and counts.get(split, 0) == 0 and sum(counts.values()) > 0:
            groups = f" ({sum(report.groups.values()):,} {report.by}s in all)" if report.groups else ""
            remedy = (
                f"raise the {split} fraction (--fractions)"
                if report.by == "time"
                else f"log more {report.by}s, raise the {split} fraction (--fractions), or split by time"
            )
            hints.append(
                f"{split} got 0 impressions although its fraction is {fraction:g}{groups}: the logs are too small "
                f"to split by {report.by} at these fractions; {remedy}"
            )
    return hints


class _Splitter:
    def __init__(self, validated_dir: Path, out_dir: Path, config: SplitConfig, report: SplitReport) -> None:
        self.validated_dir = validated_dir
        self.out_dir = out_dir
        self.config = config
        self.report = report
        self.images = KeyIndex({"split": np.int8})  # assets image_id -> split of its product
        self.events = KeyIndex({"split": np.int8})  # impressions event_id -> split
        self.groups: list[set[str]] = [set() for _ in SPLITS]
        self.cutoffs: np.ndarray | None = None

    def _batches(self, table: TableName) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        file = open_validated(self.validated_dir, table)
        return file.schema_arrow, file.iter_batches(batch_size=self.config.batch_rows)

    def _asset_root(self, schema: pa.Schema) -> Path:
        """The folder the validated assets table's relative paths resolve against."""
        relative = (schema.metadata or {}).get(ASSET_ROOT_KEY.encode())
        return self.validated_dir / relative.decode() if relative is not None else self.validated_dir

    def split(self, table: TableName) -> _SplitWriters:
        schema, batches = self._batches(table)
        # Split assets keep pointing at the images: their asset root, re-expressed from the split folders.
        metadata = (
            asset_root_metadata(self._asset_root(schema), self.out_dir / SPLITS[0]) if table == "assets" else None
        )
        writers = _SplitWriters(self.out_dir, table, schema.remove_metadata(), metadata)
        try:
            getattr(self, f"_split_{table}")(batches, writers)
        except BaseException:
            writers.abort()
            raise
        return writers

    def _by_product(self, product_ids: pa.Array) -> np.ndarray:
        return assign(product_ids, self.config.fractions, self.config.seed)

    def _split_assets(self, batches: Iterator[pa.RecordBatch], writers: _SplitWriters) -> None:
        for batch in batches:
            split = self._by_product(batch.column("product_id"))
            _insert(self.images, batch.column("image_id"), split)
            if self.config.by == "product":
                writers.write(batch, split)
            else:
                for index in range(len(SPLITS)):
                    writers.write(batch, np.full(batch.num_rows, index, dtype=np.int8))
        if self.config.by != "product":
            self.report.notes.append(f"assets have no {self.config.by}: the catalogue is copied into every split")

    def _time_cutoffs(self) -> np.ndarray:
        """shown_at (µs) at which validation and test begin: quantiles of all impressions' shown_at."""
        file = open_validated(self.validated_dir, "impressions")
        micros = pc.cast(file.read(columns=["shown_at"]).column(0), pa.int64()).to_numpy()
        never = np.iinfo(np.int64).max
        if len(micros) == 0:
            return np.array([never, never], dtype=np.int64)
        cuts = np.quantile(micros, np.cumsum(self.config.fractions)[:2], method="higher").astype(np.int64)
        if self.config.fractions[2] == 0:
            cuts[1] = never  # the 100 % quantile is the latest row, which would otherwise start the test split
        self.report.time_cutoffs = [
            "never" if c == never else pc.cast(pa.array([c]), pa.timestamp("us", tz="UTC"))[0].as_py().isoformat()
            for c in cuts.tolist()
        ]
        return cuts

    def _split_impressions(self, batches: Iterator[pa.RecordBatch], writers: _SplitWriters) -> None:
        by = self.config.by
        if by == "time":
            self.cutoffs = self._time_cutoffs()
        group_column = {"product": "product_id", "segment": "segment", "time": None}[by]
        if by == "segment":
            segments = self._segments()
            dealt = assign_few(segments, self.config.fractions, self.config.seed)
            lookup = pa.array(segments, type=pa.string())
            to_split = np.array([dealt[g] for g in segments], dtype=np.int8)
            if len(segments) < 10:
                self.report.notes.append(
                    f"only {len(segments)} segments: each split holds whole segments, so its share of rows can "
                    "differ much from the fractions"
                )
        for batch in batches:
            if by == "time":
                micros = pc.cast(batch.column("shown_at"), pa.int64()).to_numpy()
                split = np.searchsorted(self.cutoffs, micros, side="right").astype(np.int8)
            else:
                if by == "segment":
                    split = to_split[pc.index_in(batch.column("segment"), value_set=lookup).to_numpy()]
                else:
                    split = assign(batch.column(group_column), self.config.fractions, self.config.seed)
                for index in range(len(SPLITS)):
                    chosen = batch.column(group_column).filter(pa.array(split == index))
                    self.groups[index].update(pc.unique(chosen).to_pylist())
            _insert(self.events, batch.column("event_id"), split)
            writers.write(batch, split)
        if group_column is not None:
            self.report.groups = {s: len(g) for s, g in zip(SPLITS, self.groups)}

    def _segments(self) -> list[str]:
        """Distinct segments of the impressions (a first pass over that one column)."""
        file = open_validated(self.validated_dir, "impressions")
        seen: set[str] = set()
        for batch in file.iter_batches(batch_size=self.config.batch_rows, columns=["segment"]):
            seen.update(pc.unique(batch.column(0)).to_pylist())
        return sorted(seen)

    def _split_dwell(self, batches: Iterator[pa.RecordBatch], writers: _SplitWriters) -> None:
        for batch in batches:
            lookup = self.events.lookup_strings(batch.column("event_id"))
            writers.drop(batch, ~lookup.found, "its impression is not in the impressions table")
            writers.write(batch, np.where(lookup.found, lookup.payload["split"], -1))

    def _split_preferences(self, batches: Iterator[pa.RecordBatch], writers: _SplitWriters) -> None:
        for batch in batches:
            a = self.images.lookup_strings(batch.column("image_a"))
            b = self.images.lookup_strings(batch.column("image_b"))
            known = a.found & b.found
            leaked = known & (a.payload["split"] != b.payload["split"])
            writers.drop(batch, ~known, "an image is not in the assets table")
            writers.drop(batch, leaked, "leakage: its images' products are in different splits")
            writers.write(batch, np.where(known & ~leaked, a.payload["split"], -1))
        if self.config.by != "product":
            self.report.notes.append(f"preferences have no {self.config.by}: pairs are split by product")


def _insert(index: KeyIndex, keys: pa.Array, split: np.ndarray) -> None:
    """Remember the split of each key (keys of a validated table are unique)."""
    hashes = hash_strings(keys)
    index.insert(hashes, np.arange(len(index), len(index) + len(hashes), dtype=np.int64), {"split": split})
