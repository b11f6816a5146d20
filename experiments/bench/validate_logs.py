"""Benchmark: validate a large impressions log end to end (read -> validate -> write accepted + rejects).

Generates (untimed) N impression rows as Parquet with about 1 % bad rows of six kinds, plus an assets table
they refer to, then runs :func:`offline_data.validation.validate_logs` on them in a fresh child process per
repeat, so that each repeat's peak RSS (``ru_maxrss`` of that process) is its own and excludes generation.
Prints a table (rows, seconds, rows/s, peak RSS) and writes JSON. Target: >= 1,000,000 rows/s and
<= 4 GiB peak RSS on 2 cores. The reject counts per reason are checked against what was injected.

    python -m experiments.bench.validate_logs                     # 10 M rows, 1 repeat
    python -m experiments.bench.validate_logs --rows 2000000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_ROWS_PER_S = 1_000_000
TARGET_RSS_GIB = 4.0
BAD_KINDS = {
    # reason code -> share of rows (about 1 % in all)
    "position:invalid": 0.002,
    "propensity:invalid": 0.002,
    "segment:missing": 0.0015,
    "image_id:dangling": 0.0015,
    "product_id:mismatch": 0.0015,
    "event_id:duplicate": 0.0015,
}


def generate(
    out_dir: Path,
    rows: int,
    *,
    fmt: str = "parquet",
    products: int = 2_000,
    images_per_product: int = 5,
    seed: int = 0,
) -> dict:
    """Write ``impressions.<fmt>`` (``rows`` rows; parquet or csv) and ``assets.parquet`` into ``out_dir``.

    Returns:
        The number of injected bad rows per reason code.
    """
    # heavy (pyarrow): imported when the benchmark runs, so importing the module stays light
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    from offline_data.schemas import ASSETS, IMPRESSIONS

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_images = products * images_per_product
    image_product = np.arange(n_images) // images_per_product

    def ids(prefix: str, values: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(prefix, pc.cast(pa.array(values), pa.string()), "")

    assets = pa.table(
        {
            "image_id": ids("img_", np.arange(n_images)),
            "product_id": ids("prod_", image_product),
            "path": ids("images/img_", np.arange(n_images)),
            "sha256": pa.array(["0" * 64] * n_images),
            "kind": pa.array(["generated"] * n_images),
        }
    )
    pq.write_table(assets.cast(ASSETS.arrow_schema(tuple(assets.column_names))), out_dir / "assets.parquet")

    # Which rows are bad, and how: disjoint random sets, one kind each (row 0 stays good, so that every
    # duplicate can repeat the id of a strictly earlier row).
    order = 1 + rng.permutation(rows - 1)
    counts = {kind: round(share * rows) for kind, share in BAD_KINDS.items()}
    bounds = np.cumsum([0, *counts.values()])
    bad = {kind: np.sort(order[bounds[i] : bounds[i + 1]]) for i, kind in enumerate(counts)}
    # A duplicate repeats the event id of an earlier row (up to 1000 rows back); when that row is itself a
    # duplicate, follow it back to a row that still has its own id, so every duplicate is exactly one.
    duplicates = bad["event_id:duplicate"]
    source = np.maximum(0, duplicates - 1 - rng.integers(0, 1000, len(duplicates)))
    while (chained := np.isin(source, duplicates)).any():
        source[chained] = source[np.searchsorted(duplicates, source[chained])]
    copied_from = dict(zip(duplicates.tolist(), source.tolist()))
    # Nullable fields: the input is allowed to be wrong (a null segment), that is what is being validated.
    schema = pa.schema([field.with_nullable(True) for field in IMPRESSIONS.arrow_schema()])
    chunk = 1 << 20
    start_us = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
    writer_type = {"parquet": pq.ParquetWriter, "csv": pa_csv.CSVWriter}[fmt]
    with writer_type(out_dir / f"impressions.{fmt}", schema) as writer:
        for lo in range(0, rows, chunk):
            hi = min(rows, lo + chunk)
            n = hi - lo
            index = np.arange(lo, hi)
            image = rng.integers(0, n_images, n)
            product = image_product[image]
            position = rng.integers(1, 9, n)
            propensity = rng.uniform(0.05, 1.0, n)
            event = index.copy()
            segment_null = np.zeros(n, dtype=bool)

            def local(kind: str, lo: int = lo, hi: int = hi) -> np.ndarray:
                picked = bad[kind]
                return picked[(picked >= lo) & (picked < hi)] - lo

            position[local("position:invalid")] = 0
            propensity[local("propensity:invalid")] = 1.5
            segment_null[local("segment:missing")] = True
            image[local("image_id:dangling")] = n_images + 7  # not in assets
            mismatch = local("product_id:mismatch")
            product[mismatch] = (image_product[image[mismatch]] + 1) % products
            duplicate = local("event_id:duplicate")
            event[duplicate] = [copied_from[i] for i in index[duplicate].tolist()]
            segment = pa.array(rng.choice(np.array(["new", "returning", "loyal", "bargain"]), n), mask=segment_null)
            batch = pa.RecordBatch.from_arrays(
                [
                    ids("ev_", event),
                    ids("req_", index // 8),
                    ids("img_", image),
                    ids("prod_", product),
                    pa.array(position),
                    pa.array(rng.random(n) < 0.05),
                    pa.array(propensity),
                    pa.array(start_us + index * 1000, type=pa.timestamp("us", tz="UTC")),
                    segment,
                ],
                schema=schema,
            )
            writer.write_batch(batch)
    return counts


def run_once(data_dir: Path, out_dir: Path, batch_rows: int) -> dict:
    """Validate in this process and report seconds, peak RSS and the summary counts (the child's job)."""
    # heavy (pyarrow): imported when the benchmark runs, so importing the module stays light
    from offline_data.io import find_table
    from offline_data.validation import ValidationConfig, validate_logs

    sources = {t: find_table(data_dir, t) for t in ("impressions", "assets")}
    start, cpu_start = time.perf_counter(), time.process_time()
    summary = validate_logs(sources, out_dir, ValidationConfig(batch_rows=batch_rows))
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    impressions = summary.tables["impressions"]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "read": impressions.read,
        "accepted": impressions.accepted,
        "rejected": impressions.rejected,
        "rejected_by_reason": {str(k): v for k, v in impressions.rejected_by_reason.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="impression rows to generate")
    parser.add_argument("--repeats", type=int, default=1, help="timed validations (median reported)")
    parser.add_argument(
        "--format", choices=("parquet", "csv"), default="parquet", help="format of the generated impressions"
    )
    parser.add_argument("--batch-rows", type=int, default=262_144, help="rows per validation batch")
    parser.add_argument("--data-dir", type=Path, help="where to generate (default: a temporary folder)")
    parser.add_argument(
        "--json", type=Path, default=Path("bench_results/validate_logs.json"), help="results file to write"
    )
    parser.add_argument("--child", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_once(Path(args.child[0]), Path(args.child[1]), args.batch_rows)))
        return 0

    with tempfile.TemporaryDirectory(prefix="backdrop-bench-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "logs"
        print(f"generating {args.rows:,} impression rows as {args.format} in {data_dir} ...", flush=True)
        started = time.perf_counter()
        injected = generate(data_dir, args.rows, fmt=args.format)
        print(f"generated in {time.perf_counter() - started:.1f} s (not timed)", flush=True)
        results = []
        for repeat in range(args.repeats):
            child = subprocess.run(
                [sys.executable, "-m", "experiments.bench.validate_logs", "--batch-rows", str(args.batch_rows),
                 "--child", str(data_dir), str(Path(tmp) / f"validated-{repeat}")],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                return 1
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    # Cross-check of the children's own figures: the largest peak RSS among the waited-for children.
    children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return report(args, injected, results, children_rss)


def report(args: argparse.Namespace, injected: dict, results: list[dict], children_rss: int) -> int:
    print(f"\n{'repeat':>6}  {'rows':>12}  {'seconds':>8}  {'cpu s':>8}  {'rows/s':>12}  {'peak RSS MiB':>12}")
    for i, r in enumerate(results):
        rate = r["read"] / r["seconds"]
        print(
            f"{i:>6}  {r['read']:>12,}  {r['seconds']:>8.2f}  {r['cpu_seconds']:>8.2f}  {rate:>12,.0f}  "
            f"{r['peak_rss_bytes'] / 2**20:>12,.0f}"
        )
    seconds = statistics.median(r["seconds"] for r in results)
    cpu = statistics.median(r["cpu_seconds"] for r in results)
    rss = statistics.median(r["peak_rss_bytes"] for r in results)
    rate = args.rows / seconds
    print(f"{'median':>6}  {args.rows:>12,}  {seconds:>8.2f}  {cpu:>8.2f}  {rate:>12,.0f}  {rss / 2**20:>12,.0f}")
    found = results[0]["rejected_by_reason"]
    counts_ok = found == {k: v for k, v in injected.items() if v}
    print(f"\nrejects by reason: {found}\ninjected:          {injected}  -> {'match' if counts_ok else 'MISMATCH'}")
    meets = rate >= TARGET_ROWS_PER_S and rss <= TARGET_RSS_GIB * 2**30
    print(f"target >= {TARGET_ROWS_PER_S:,} rows/s and <= {TARGET_RSS_GIB} GiB: {'met' if meets else 'NOT met'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "validate_logs",
        "rows": args.rows,
        "format": args.format,
        "batch_rows": args.batch_rows,
        "repeats": results,
        "median_seconds": seconds,
        "median_cpu_seconds": cpu,
        "median_rows_per_s": rate,
        "median_peak_rss_bytes": rss,
        "children_max_rss_bytes": children_rss,
        "injected_bad_rows": injected,
        "reject_counts_match": counts_ok,
        "target_met": meets,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
    }
    args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0 if counts_ok else 1


if __name__ == "__main__":
    sys.exit(main())
