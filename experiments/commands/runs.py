"""``backdrop runs compare``: compare run directories (table, CSV/JSON, one plot per metric)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments.commands.arguments import group_parser
from experiments.compare.runs import compare_runs, format_table, write_comparison
from experiments.output_folder import add_overwrite_argument, open_output_run
from experiments.tracking import new_run_dir

COMPARE_DESCRIPTION = (
    "Compare run directories (any folder with metrics.jsonl and config.toml: training runs, sweep trials, "
    "sweeps): prints one row per run with its name, timestamp, the config keys that differ between the runs and "
    "the final and best value of each metric, and writes the table as CSV and JSON plus one PNG per metric with "
    "the runs' curves overlaid."
)


def register(subparsers: Any) -> None:
    runs = group_parser(subparsers, "runs", "inspect and compare run directories")
    parser = runs.add_parser("compare", help="compare run directories", description=COMPARE_DESCRIPTION)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories (each with metrics.jsonl)")
    parser.add_argument(
        "--metrics",
        metavar="M1,M2",
        help="comma-separated metrics to compare (default: every metric any run logged)",
    )
    parser.add_argument(
        "--lower-is-better",
        metavar="M1,M2",
        default="",
        help="metrics whose best value is the minimum (default: names with loss, kl, error, nll, ece, regret, "
        "violation, sec or time; everything else is maximised)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where comparison.csv, comparison.json and the plots go (default: runs/compare/<timestamp>)",
    )
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run_compare)


def run_compare(args: argparse.Namespace) -> int:

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    lower = [m.strip() for m in args.lower_is_better.split(",") if m.strip()]
    comparison = compare_runs(args.runs, metrics=metrics, lower_is_better=lower)
    out = Path(args.out) if args.out else new_run_dir("runs", "compare")
    with open_output_run(args, out, inputs=args.runs):
        written = write_comparison(comparison, out)
    print(format_table(comparison.header(), comparison.rows()))
    if not comparison.config_keys:
        print("\n(no config key differs between these runs)")
    print(f"\ncomparison: {written['csv']}, {written['json']}; plots: {out}/*.png ({len(written['plots'])})")
    return 0
