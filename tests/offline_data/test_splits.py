"""Splits: leak-free by construction and by inspection, deterministic, and nothing lost without a trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from offline_data.errors import LogValidationError
from offline_data.io import find_table
from offline_data.splits import SPLITS, SplitConfig, assign, assign_few, split_logs
from offline_data.validation import validate_logs

SEGMENTS = ("warm", "cool", "minimal", "bargain", "loyal")


def write_world(directory: Path, products: int = 40, impressions: int = 800, seed: int = 0) -> Path:
    """Valid logs of ``products`` products (3 generated images each); returns the validated folder."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    image_ids = [f"p{p}-v{v}" for p in range(products) for v in range(3)]
    pq.write_table(
        pa.table(
            {
                "image_id": image_ids,
                "product_id": [i.split("-")[0] for i in image_ids],
                "path": [f"images/{i}.png" for i in image_ids],
                "sha256": ["0" * 64] * len(image_ids),
                "kind": ["generated"] * len(image_ids),
            }
        ),
        directory / "assets.parquet",
    )
    image = rng.integers(0, len(image_ids), impressions)
    clicked = rng.random(impressions) < 0.3
    start = np.datetime64("2024-03-01T00:00:00", "us")
    shown = start + (np.arange(impressions) // 2).astype("timedelta64[m]")  # pairs of equal timestamps
    events = [f"e{k}" for k in range(impressions)]
    pq.write_table(
        pa.table(
            {
                "event_id": events,
                "request_id": [f"r{k // 4}" for k in range(impressions)],
                "image_id": [image_ids[i] for i in image],
                "product_id": [image_ids[i].split("-")[0] for i in image],
                "position": rng.integers(1, 5, impressions),
                "clicked": clicked,
                "propensity": rng.uniform(0.1, 1.0, impressions),
                "shown_at": pa.array(shown, type=pa.timestamp("us", tz="UTC")),
                "segment": rng.choice(SEGMENTS, impressions),
            }
        ),
        directory / "impressions.parquet",
    )
    clicked_events = [e for e, c in zip(events, clicked) if c]
    pq.write_table(
        pa.table(
            {
                "event_id": clicked_events,
                "dwell_ms": rng.integers(0, 60_000, len(clicked_events)),
                "censored": rng.random(len(clicked_events)) < 0.2,
            }
        ),
        directory / "dwell.parquet",
    )
    pairs = 300
    a = rng.integers(0, products, pairs)
    b = np.where(rng.random(pairs) < 0.3, rng.integers(0, products, pairs), a)
    pq.write_table(
        pa.table(
            {
                "pair_id": [f"q{k}" for k in range(pairs)],
                "image_a": [f"p{p}-v0" for p in a],
                "image_b": [f"p{p}-v1" for p in b],
                "choice": rng.choice(["a", "b", "tie"], pairs),
                "annotator_id": [f"ann{k % 7}" for k in range(pairs)],
                "source": ["panel"] * pairs,
            }
        ),
        directory / "preferences.parquet",
    )
    sources = {t: find_table(directory, t) for t in ("assets", "impressions", "dwell", "preferences")}
    summary = validate_logs(sources, directory / "validated")
    assert summary.rejected == 0
    return directory / "validated"


@pytest.fixture(scope="module")
def validated(tmp_path_factory) -> Path:
    return write_world(tmp_path_factory.mktemp("world") / "logs")


def read_split(out: Path, table: str) -> dict[str, pa.Table]:
    return {s: pq.read_table(out / s / f"{table}.parquet") for s in SPLITS}


def products_of(table: pa.Table, column: str = "product_id") -> set[str]:
    return set(table.column(column).to_pylist())


def test_split_by_product_is_leak_free(validated, tmp_path):
    report = split_logs(validated, tmp_path / "out", SplitConfig(by="product", seed=3))
    out = tmp_path / "out"
    impressions, assets = read_split(out, "impressions"), read_split(out, "assets")
    dwell, preferences = read_split(out, "dwell"), read_split(out, "preferences")
    product_sets = [products_of(impressions[s]) | products_of(assets[s]) for s in SPLITS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not product_sets[i] & product_sets[j]
    catalogue = pq.read_table(validated / "assets.parquet")
    image_product = dict(zip(catalogue.column("image_id").to_pylist(), catalogue.column("product_id").to_pylist()))
    for s, products in zip(SPLITS, product_sets):
        events = set(impressions[s].column("event_id").to_pylist())
        assert set(dwell[s].column("event_id").to_pylist()) <= events
        pairs = preferences[s].to_pylist()
        assert all(image_product[p["image_a"]] in products and image_product[p["image_b"]] in products for p in pairs)
    # Nothing lost: every validated row is in exactly one split, or dropped with its reason.
    dropped = pq.read_table(out / "preferences.dropped.parquet")
    for table in ("assets", "impressions", "dwell", "preferences"):
        total = pq.read_table(validated / f"{table}.parquet").num_rows
        dropped_rows = dropped.num_rows if table == "preferences" else 0
        assert sum(report.rows[table].values()) + dropped_rows == total, table
    leaked = dropped.to_pylist()
    assert leaked and all(image_product[p["image_a"]] != image_product[p["image_b"]] for p in leaked)
    assert {p["dropped_because"] for p in leaked} == {"leakage: its images' products are in different splits"}
    assert report.dropped == {"preferences": {"leakage: its images' products are in different splits": len(leaked)}}
    assert sum(report.groups.values()) == len(products_of(pq.read_table(validated / "impressions.parquet")))


def test_split_is_deterministic_and_independent_of_batching(validated, tmp_path):
    split_logs(validated, tmp_path / "a", SplitConfig(seed=5))
    split_logs(validated, tmp_path / "b", SplitConfig(seed=5, batch_rows=7))
    split_logs(validated, tmp_path / "c", SplitConfig(seed=6))
    for table in ("assets", "impressions", "dwell", "preferences"):
        first, again = read_split(tmp_path / "a", table), read_split(tmp_path / "b", table)
        assert all(first[s].equals(again[s]) for s in SPLITS), table
    test_a = products_of(read_split(tmp_path / "a", "impressions")["test"])
    test_c = products_of(read_split(tmp_path / "c", "impressions")["test"])
    assert test_a != test_c


def test_assign_follows_the_fractions():
    keys = pa.array([f"product-{i}" for i in range(20_000)])
    split = assign(keys, (0.7, 0.2, 0.1), seed=0)
    shares = np.bincount(split, minlength=3) / len(split)
    np.testing.assert_allclose(shares, [0.7, 0.2, 0.1], atol=0.01)
    np.testing.assert_array_equal(assign(keys[:100], (0.7, 0.2, 0.1), seed=0), split[:100])  # per key, not per batch
    assert set(assign(keys, (1.0, 0.0, 0.0), seed=1).tolist()) == {0}


@pytest.mark.parametrize(
    ("groups", "fractions", "counts"),
    [
        (10, (0.8, 0.1, 0.1), [8, 1, 1]),
        (3, (0.8, 0.1, 0.1), [1, 1, 1]),
        (5, (0.6, 0.4, 0.0), [3, 2, 0]),
        (4, (0.5, 0.25, 0.25), [2, 1, 1]),
    ],
)
def test_few_groups_are_dealt_whole(groups, fractions, counts):
    names = [f"s{i}" for i in range(groups)]
    dealt = assign_few(names, fractions, seed=0)
    assert sorted(dealt) == names
    assert np.bincount(list(dealt.values()), minlength=3).tolist() == counts
    assert assign_few(list(reversed(names)), fractions, seed=0) == dealt


def test_split_by_segment_keeps_each_segment_in_one_split(validated, tmp_path):
    report = split_logs(validated, tmp_path / "out", SplitConfig(by="segment", fractions=(0.6, 0.2, 0.2), seed=1))
    impressions = read_split(tmp_path / "out", "impressions")
    segments = [set(impressions[s].column("segment").to_pylist()) for s in SPLITS]
    assert [len(s) for s in segments] == [3, 1, 1]
    assert set().union(*segments) == set(SEGMENTS)
    assert report.groups == {"train": 3, "validation": 1, "test": 1}
    assets = read_split(tmp_path / "out", "assets")
    assert all(assets[s].num_rows == 120 for s in SPLITS)  # the catalogue is shared
    assert "assets have no segment: the catalogue is copied into every split" in report.notes


def test_split_by_time_orders_the_splits(validated, tmp_path):
    report = split_logs(validated, tmp_path / "out", SplitConfig(by="time", fractions=(0.5, 0.25, 0.25)))
    impressions = read_split(tmp_path / "out", "impressions")
    times = {s: pc.cast(impressions[s].column("shown_at"), pa.int64()).to_numpy() for s in SPLITS}
    assert times["train"].max() < times["validation"].min() <= times["validation"].max() < times["test"].min()
    assert [impressions[s].num_rows for s in SPLITS] == [400, 200, 200]
    assert report.time_cutoffs == ["2024-03-01T03:20:00+00:00", "2024-03-01T05:00:00+00:00"]
    dwell = read_split(tmp_path / "out", "dwell")
    for s in SPLITS:
        assert set(dwell[s].column("event_id").to_pylist()) <= set(impressions[s].column("event_id").to_pylist())


def test_split_needs_validated_tables(tmp_path, validated):
    with pytest.raises(LogValidationError, match="no validated impressions table"):
        split_logs(tmp_path, tmp_path / "out")
    folder = tmp_path / "raw"
    folder.mkdir()
    table = pq.read_table(validated / "impressions.parquet")
    pq.write_table(
        table.set_column(4, "position", pc.cast(table.column("position"), pa.string())), folder / "impressions.parquet"
    )
    with pytest.raises(
        LogValidationError, match=r"column 'position' is string, expected int64: not a validated impressions table"
    ):
        split_logs(folder, tmp_path / "out")


def test_split_assets_keep_resolving_to_the_images(validated, tmp_path):
    from offline_data.assets import ASSET_ROOT_KEY

    source = (pq.read_schema(validated / "assets.parquet").metadata or {}).get(ASSET_ROOT_KEY.encode())
    expected = (validated / source.decode() if source else validated).resolve()
    out = tmp_path / "deeper" / "split"
    split_logs(validated, out, SplitConfig(by="product"))
    for split in SPLITS:
        path = out / split / "assets.parquet"
        relative = pq.read_schema(path).metadata[ASSET_ROOT_KEY.encode()].decode()
        assert (path.parent / relative).resolve() == expected


def test_a_split_left_empty_gets_a_hint(tmp_path):
    few = write_world(tmp_path / "few", products=2, impressions=60)
    report = split_logs(few, tmp_path / "few_split", SplitConfig(by="product", fractions=(0.8, 0.1, 0.1)))
    empty = [s for s in SPLITS[1:] if report.rows["impressions"][s] == 0]
    assert empty, "two products cannot fill three splits"
    hints = [n for n in report.notes if "got 0 impressions" in n]
    assert [h.split()[0] for h in hints] == empty
    assert "2 products in all" in hints[0] and "--fractions" in hints[0]
    assert "got 0 impressions" in report.render()
