"""Benchmark: wall and CPU time of ``backdrop demo`` (the target: <= 5 minutes wall on 2 CPU cores after install).

Runs the demo ``--repeats`` times, each in a fresh process (imports included, as ``make demo`` runs it), and
reports per stage and in total the median wall seconds and the median CPU seconds (user + system, both torch
threads), read from each run's ``demo.json`` (stages) and ``resource.getrusage(RUSAGE_CHILDREN)`` (the whole
process). On a machine shared with other jobs the wall time overstates what a quiet one gives: the CPU time
divided by the threads is the better guide then, and the load average before and after each run is recorded.

    python -m experiments.bench.demo                      # default demo, 2 runs -> runs/bench/demo.json
    python -m experiments.bench.demo --quick --repeats 3  # the --quick size
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
from typing import Any


def run_once(quick: bool, out: Path, extra: list[str]) -> dict[str, Any]:
    """One demo in a child process; its exit status, wall and CPU seconds, and its per-stage timings."""
    size = ["--quick"] if quick else []
    command = [sys.executable, "-m", "experiments", "demo", *size, "--no-progress", "--out", str(out), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    results = json.loads((out / "demo.json").read_text(encoding="utf-8")) if (out / "demo.json").is_file() else {}
    return {
        "status": completed.returncode,
        "wall_s": wall,
        "cpu_s": cpu,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "stages": {t["stage"]: {"wall_s": t["wall_s"], "cpu_s": t["cpu_s"]} for t in results.get("timings", [])},
        "headline": completed.stdout.strip().splitlines()[-8:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="time 'backdrop demo --quick'")
    parser.add_argument("--repeats", type=int, default=2, help="demo runs (default 2); medians are reported")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="passed to the demo's --set")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/demo.json"), help="JSON written here")
    args = parser.parse_args(argv)
    extra = [item for override in args.overrides for item in ("--set", override)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as work:
        for repeat in range(args.repeats):
            run = run_once(args.quick, Path(work) / f"run{repeat}", extra)
            print(f"run {repeat + 1}: exit {run['status']}, {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU, "
                  f"load {run['load_before']:.1f} -> {run['load_after']:.1f}", flush=True)  # fmt: skip
            runs.append(run)
    stages = list(runs[0]["stages"])
    print(f"\n{'stage':10s} {'wall (s)':>9s} {'CPU (s)':>9s}   medians of {len(runs)} run(s)")
    table = {}
    for stage in stages:
        wall = statistics.median(r["stages"][stage]["wall_s"] for r in runs if stage in r["stages"])
        cpu = statistics.median(r["stages"][stage]["cpu_s"] for r in runs if stage in r["stages"])
        table[stage] = {"wall_s": wall, "cpu_s": cpu}
        print(f"{stage:10s} {wall:9.1f} {cpu:9.1f}")
    total_wall = statistics.median(r["wall_s"] for r in runs)
    total_cpu = statistics.median(r["cpu_s"] for r in runs)
    print(f"{'process':10s} {total_wall:9.1f} {total_cpu:9.1f}   (imports included; CPU / 2 = {total_cpu / 2:.0f} s)")
    print("\nheadline of the last run:\n" + "\n".join(runs[-1]["headline"]))
    payload = {
        "quick": args.quick,
        "overrides": args.overrides,
        "median": {"wall_s": total_wall, "cpu_s": total_cpu, "stages": table},
        "runs": runs,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    # exit 5 (the bundle did not reload bit-identically) still ran every stage, so its timing stands
    return 0 if all(r["status"] in (0, 5) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
