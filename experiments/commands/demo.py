"""``backdrop demo``: simulate, validate, split, train and audit the reward model, DDPO, best-of-n, export, report.

What ``make demo`` runs. The default (experiments/configs/demo.toml) is sized for about 5 minutes on 2 CPU cores;
``--quick`` (experiments/configs/demo_quick.toml) is a much smaller smoke run of the same stages.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments.commands.arguments import add_config_arguments
from experiments.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "experiments/configs/demo.toml"
QUICK_CONFIG = "experiments/configs/demo_quick.toml"

DESCRIPTION = (
    "The whole loop on a demo-sized studio world, in this process: simulate the logs, validate and split them by "
    "product, train the reward ensemble, audit it, fine-tune the shipped tiny base with DDPO (KL to the base), "
    "compare with best-of-n reranking, export a gated candidate bundle and write report.html (before/after "
    "contact sheet; reward, gold and KL curves; links to the audit report and the model card). The last lines "
    "printed give the report's path and the headline numbers. Exit status 4: a gate refused the export and "
    "[demo] export_override is unset; 5: the exported bundle did not reproduce its reference images."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole loop on the studio world (~5 min)", description=DESCRIPTION
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a much smaller run of the same stages (about a minute; default config {QUICK_CONFIG})",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="new or empty output folder (default: runs/demo/<timestamp>)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_config_arguments(
        parser, config_class="experiments.demo.config:DemoConfig", example="trainer.epochs=2", default_config=None
    )
    parser.set_defaults(handler=run_demo_command)


def config_path(args: argparse.Namespace) -> Path:
    """``--config``, else demo_quick.toml with ``--quick``, else demo.toml (the installed copy when run from
    outside the repository)."""
    if args.config:
        return Path(args.config)
    relative = QUICK_CONFIG if args.quick else DEFAULT_CONFIG
    return Path(relative) if Path(relative).is_file() else CONFIGS / Path(relative).name


def run_demo_command(args: argparse.Namespace) -> int:
    # heavy (torch, diffusers, transformers): imported when the command runs, so `backdrop --help` stays fast
    from experiments.demo.config import DemoConfig
    from experiments.demo.run import run_demo

    config = load_config(DemoConfig, config_path(args), args.overrides)
    return run_demo(config, args.out, progress=not args.no_progress)
