"""The four log tables (docs/architecture.md, "The pipeline"): columns, types, and the constraints validation enforces.

Parquet is the native format; CSV and JSONL carry the same columns. Timestamps are ISO-8601 (UTC when no
offset is given). Ids are strings. A column marked ``required`` must be present in the file; ``nullable``
says whether a present column may hold nulls in some rows.

| table       | key        | references                                    |
|-------------|------------|-----------------------------------------------|
| impressions | event_id   | image_id -> assets.image_id                   |
| dwell       | event_id   | event_id -> impressions.event_id              |
| preferences | pair_id    | image_a, image_b -> assets.image_id           |
| assets      | image_id   | path -> a file relative to the assets table   |
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import pyarrow as pa

TableName = Literal["impressions", "dwell", "preferences", "assets"]
TABLE_NAMES: tuple[TableName, ...] = ("impressions", "dwell", "preferences", "assets")

TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Column:
    """One column of a log table and the constraint its values must meet."""

    name: str
    type: pa.DataType
    doc: str
    required: bool = True
    """The column must be present in the file."""
    nullable: bool = False
    """Rows may hold null here (only meaningful when present)."""
    min_value: float | None = None
    """Inclusive lower bound for numeric columns."""
    exclusive_min: float | None = None
    """Exclusive lower bound for numeric columns."""
    max_value: float | None = None
    """Inclusive upper bound for numeric columns."""
    allowed: tuple[str, ...] | None = None
    """The closed set of values for categorical string columns."""

    def expectation(self) -> str:
        """Human wording of what a valid value looks like, used in validation messages."""
        if self.allowed is not None:
            return "one of " + ", ".join(repr(a) for a in self.allowed)
        if pa.types.is_timestamp(self.type):
            return "ISO-8601 timestamp"
        if pa.types.is_boolean(self.type):
            return "boolean (true/false, 1/0)"
        if pa.types.is_integer(self.type) or pa.types.is_floating(self.type):
            kind = "integer" if pa.types.is_integer(self.type) else "number"
            bounds = []
            if self.min_value is not None:
                bounds.append(f">= {self.min_value:g}")
            if self.exclusive_min is not None:
                bounds.append(f"> {self.exclusive_min:g}")
            if self.max_value is not None:
                bounds.append(f"<= {self.max_value:g}")
            return f"{kind} {' and '.join(bounds)}".strip()
        return "non-empty string"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TableSchema:
    name: TableName
    key: str
    """Column whose values must be unique within the table."""
    columns: tuple[Column, ...]

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"table {self.name!r} has no column {name!r}")

    def arrow_schema(self, present: tuple[str, ...] | None = None) -> pa.Schema:
        """The Arrow schema of the table (optionally only the ``present`` columns, in schema order)."""
        cols = [c for c in self.columns if present is None or c.name in present]
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable or not c.required) for c in cols])


IMPRESSIONS = TableSchema(
    name="impressions",
    key="event_id",
    columns=(
        Column(name="event_id", type=pa.string(), doc="Unique id of this impression."),
        Column(name="request_id", type=pa.string(), doc="Page view / request that showed several slots."),
        Column(name="image_id", type=pa.string(), doc="Generated image shown (-> assets.image_id)."),
        Column(name="product_id", type=pa.string(), doc="Product in the image."),
        Column(name="position", type=pa.int64(), min_value=1, doc="1-based slot the image was shown in."),
        Column(name="clicked", type=pa.bool_(), doc="Whether the shopper clicked the image."),
        Column(
            name="propensity",
            type=pa.float64(),
            required=False,
            nullable=True,
            exclusive_min=0.0,
            max_value=1.0,
            doc="P(logging policy showed this image in this slot). Absent: later stages estimate it, and say so.",
        ),
        Column(name="shown_at", type=TIMESTAMP, doc="When the impression was served (ISO-8601)."),
        Column(name="segment", type=pa.string(), doc="Shopper segment of the request."),
    ),
)

DWELL = TableSchema(
    name="dwell",
    key="event_id",
    columns=(
        Column(name="event_id", type=pa.string(), doc="The clicked impression (-> impressions.event_id)."),
        Column(name="dwell_ms", type=pa.int64(), min_value=0, doc="Time on the product page, milliseconds."),
        Column(name="censored", type=pa.bool_(), doc="True when the session ended before the shopper left the page."),
    ),
)

PREFERENCES = TableSchema(
    name="preferences",
    key="pair_id",
    columns=(
        Column(name="pair_id", type=pa.string(), doc="Unique id of this judgement."),
        Column(name="image_a", type=pa.string(), doc="First image (-> assets.image_id)."),
        Column(name="image_b", type=pa.string(), doc="Second image (-> assets.image_id); never equal to image_a."),
        Column(name="choice", type=pa.string(), allowed=("a", "b", "tie"), doc="Which image was preferred."),
        Column(name="annotator_id", type=pa.string(), doc="Who judged (panel member, test cell)."),
        Column(name="source", type=pa.string(), doc="Where the judgement came from: panel, side_by_side, ..."),
    ),
)

ASSETS = TableSchema(
    name="assets",
    key="image_id",
    columns=(
        Column(name="image_id", type=pa.string(), doc="Unique id of the image."),
        Column(name="product_id", type=pa.string(), doc="Product shown."),
        Column(name="path", type=pa.string(), doc="Image file, relative to the folder holding the assets table."),
        Column(name="sha256", type=pa.string(), doc="Hex SHA-256 of the file's bytes (64 lowercase hex digits)."),
        Column(
            name="kind",
            type=pa.string(),
            allowed=("product", "mask", "generated"),
            doc="product = RGBA product photo, mask = product mask, generated = composited background image.",
        ),
        Column(
            name="category",
            type=pa.string(),
            required=False,
            nullable=True,
            doc="Product category (bottle, box, ...); context for the reward models when present.",
        ),
        Column(name="prompt", type=pa.string(), required=False, nullable=True, doc="Background prompt (generated)."),
        Column(name="style_id", type=pa.string(), required=False, nullable=True, doc="Style reference, if any."),
        Column(name="model_version", type=pa.string(), required=False, nullable=True, doc="Generator that made it."),
        Column(name="seed", type=pa.int64(), required=False, nullable=True, min_value=0, doc="Generation seed."),
    ),
)

SCHEMAS: dict[TableName, TableSchema] = {
    "impressions": IMPRESSIONS,
    "dwell": DWELL,
    "preferences": PREFERENCES,
    "assets": ASSETS,
}
