"""``backdrop policy compare``: DDPO vs best-of-n reranking vs offline DPO / RWR on held-out products, at matched KL.

Writes compare.md (the table) and compare.json into a fresh run directory (``runs/policy_compare/<timestamp>``, or
``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = (
    "Compare finished 'backdrop policy train' runs (one per seed) with best-of-n reranking of the base model "
    "(and of the DDPO policy) and with 'backdrop policy offline' runs, on the same held-out studio requests: gold "
    "gain over the base (raw and in within-request SDs, with 95% intervals), proxy gain and KL to the base; "
    "offline runs are read at the evaluation whose KL matches DDPO's."
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
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/policy_compare/<timestamp>)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.set_defaults(handler=run_policy_compare)


def run_policy_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from experiments.compare_methods import compare_methods
    from experiments.tracking import new_run_dir

    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else new_run_dir("runs", "policy_compare")
    payload = compare_methods(
        args.ddpo, dpo=args.dpo, rwr=args.rwr, best_of=args.best_of, stack=args.stack, out_dir=out
    )
    print((out / "compare.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'compare.md'} and {out / 'compare.json'} ({len(payload['rows'])} rows)")
    return 0
