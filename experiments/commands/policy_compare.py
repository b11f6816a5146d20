"""``backdrop policy compare``: DDPO vs best-of-n reranking vs offline DPO / RWR on held-out products, at matched KL.

Writes compare.md (the table) and compare.json into a fresh run directory (``runs/policy_compare/<timestamp>``, or
``--out``) and prints the table. Device, dtype and threads are the first DDPO run's [run] settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments.output_folder import add_overwrite_argument, open_output_run
from experiments.tracking import new_run_dir

DESCRIPTION = (
    "Compare finished 'backdrop policy train' runs (one per seed) with best-of-n reranking of the base model "
    "(and of the DDPO policy) and with 'backdrop policy offline' runs, on the same held-out studio requests: gold "
    "gain over the base (raw and in within-request SDs, with 95% intervals), proxy gain and KL to the base; "
    "offline runs are read at the evaluation whose KL matches DDPO's. Without gold (catalogue runs, or --requests) "
    "the rows are ranked by the reward model's held-out estimate (pessimistic proxy gain; best-of-n by a held-out "
    "ensemble member)."
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare", help="DDPO vs best-of-n vs offline methods at matched KL", description=DESCRIPTION
    )
    parser.add_argument("--ddpo", nargs="+", required=True, metavar="RUN", help="policy train run directories (seeds)")
    parser.add_argument("--dpo", nargs="*", default=[], metavar="RUN", help="policy offline --method dpo runs")
    parser.add_argument("--rwr", nargs="*", default=[], metavar="RUN", help="policy offline --method rwr runs")
    parser.add_argument("--best-of", type=int, default=16, metavar="N", help="candidates per request (default 16)")
    parser.add_argument(
        "--no-stack", dest="stack", action="store_false", help="skip best-of-n on top of the first DDPO policy"
    )
    parser.add_argument(
        "--requests",
        metavar="FILE",
        help="request table (.parquet/.csv/.jsonl): evaluate every run on its eval rows, not the first run's manifest",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/policy_compare/<timestamp>)")
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run_policy_compare)


def run_policy_compare(args: argparse.Namespace) -> int:
    # heavy (torch, diffusers, transformers): imported when the command runs, so `backdrop --help` stays fast
    from experiments.compare.methods import compare_methods

    out = Path(args.out) if args.out else new_run_dir("runs", "policy_compare")
    inputs = [*args.ddpo, *args.dpo, *args.rwr, *([args.requests] if args.requests else [])]
    with open_output_run(args, out, inputs=inputs):
        payload = compare_methods(
            args.ddpo, dpo=args.dpo, rwr=args.rwr, best_of=args.best_of, stack=args.stack, out_dir=out,
            requests=args.requests,
        )  # fmt: skip
    print((out / "compare.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'compare.md'} and {out / 'compare.json'} ({len(payload['rows'])} rows)")
    return 0
