"""Small, valid log tables built in the test (never the simulator), written in any of the three formats.

``log_rows`` is a fresh copy of a consistent set of rows: 3 products with a product photo, a mask and two
generated variants each (12 assets, real PNG files with their true SHA-256), 12 impressions over 3
requests, dwell for the 4 clicked ones, and 4 preference pairs (one across products). Tests modify a copy
and write it with ``write_logs``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from offline_data.schemas import SCHEMAS

Rows = dict[str, list[dict[str, Any]]]
PRODUCTS = ("p0", "p1", "p2")
CLICKED = (0, 3, 5, 8)


def _image(path: Path, kind: str, value: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "product":
        array = np.full((4, 5, 4), value, dtype=np.uint8)
    elif kind == "mask":
        array = np.full((4, 5), value, dtype=np.uint8)
    else:
        array = np.full((4, 5, 3), value, dtype=np.uint8)
    Image.fromarray(array).save(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_rows(root: Path) -> Rows:
    """The base rows; image files are written under ``root/images``."""
    assets = []
    for p, product in enumerate(PRODUCTS):
        for k, (suffix, kind) in enumerate(
            (("product", "product"), ("mask", "mask"), ("v0", "generated"), ("v1", "generated"))
        ):
            image_id = f"{product}-{suffix}"
            rel = f"images/{image_id}.png"
            digest = _image(root / rel, kind, 10 * p + k)
            assets.append(
                {
                    "image_id": image_id, "product_id": product, "path": rel, "sha256": digest, "kind": kind,
                    "category": "bottle", "prompt": "warm oak table" if kind == "generated" else None,
                    "style_id": None, "model_version": "sim-1" if kind == "generated" else None,
                    "seed": k if kind == "generated" else None,
                }
            )  # fmt: skip
    impressions = []
    for k in range(12):
        product = PRODUCTS[k % 3]
        impressions.append(
            {
                "event_id": f"e{k + 1:02d}", "request_id": f"r{k // 4 + 1}", "image_id": f"{product}-v{k % 2}",
                "product_id": product, "position": k % 4 + 1, "clicked": k in CLICKED, "propensity": 0.25,
                "shown_at": f"2024-03-01T00:{k:02d}:00Z", "segment": ("warm", "cool", "minimal")[k % 3],
            }
        )  # fmt: skip
    dwell = [{"event_id": f"e{k + 1:02d}", "dwell_ms": 1000 * (k + 1), "censored": k == 5} for k in CLICKED]
    fields = ("pair_id", "image_a", "image_b", "choice", "annotator_id", "source")
    preferences = [
        dict(zip(fields, values))
        for values in (
            ("q1", "p0-v0", "p0-v1", "a", "ann1", "panel"),
            ("q2", "p1-v0", "p1-v1", "b", "ann2", "panel"),
            ("q3", "p2-v1", "p2-v0", "tie", "ann1", "sbs"),
            ("q4", "p0-v0", "p1-v0", "a", "ann3", "panel"),  # across products
        )
    ]
    return {"assets": assets, "impressions": impressions, "dwell": dwell, "preferences": preferences}


def _csv_text(value: Any) -> str:
    if value is None:
        return ""  # an unquoted empty field is null
    if value == "":
        return '""'  # a quoted empty field is the empty string
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_table(directory: Path, table: str, rows: list[dict[str, Any]], fmt: str) -> Path:
    """Write ``rows`` as ``directory/<table>.<fmt>``; the columns are the first row's keys."""
    directory.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else [c.name for c in SCHEMAS[table].columns]
    if fmt == "csv":
        path = directory / f"{table}.csv"
        lines = [",".join(columns)] + [",".join(_csv_text(row.get(c)) for c in columns) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path = directory / f"{table}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif fmt == "parquet":
        path = directory / f"{table}.parquet"
        schema = SCHEMAS[table]
        arrays = []
        for name in columns:
            values = [row.get(name) for row in rows]
            target = schema.column(name).type if name in {c.name for c in schema.columns} else None
            if target is not None and pa.types.is_timestamp(target):
                arrays.append(pc.cast(pa.array(values, type=pa.string()), target))
            else:
                arrays.append(pa.array(values, type=target))
        pq.write_table(pa.table(dict(zip(columns, arrays))), path)
    else:
        raise ValueError(fmt)
    return path


@pytest.fixture
def log_rows(tmp_path: Path) -> Rows:
    """A fresh copy of the base rows, with the image files under ``tmp_path/logs/images``."""
    return copy.deepcopy(build_rows(tmp_path / "logs"))


@pytest.fixture
def table_writer() -> Callable[..., Path]:
    """:func:`write_table`, for tests that lay files out themselves."""
    return write_table


@pytest.fixture
def write_logs(tmp_path: Path) -> Callable[..., Path]:
    """``write_logs(rows, fmt="csv", formats=None, tables=None) -> folder`` (``tmp_path/logs``)."""

    def write(rows: Rows, fmt: str = "csv", formats: dict[str, str] | None = None, tables: Any = None) -> Path:
        directory = tmp_path / "logs"
        for table, table_rows in rows.items():
            if tables is None or table in tables:
                write_table(directory, table, table_rows, (formats or {}).get(table, fmt))
        return directory

    return write
