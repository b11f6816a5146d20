"""``backdrop simulate``: write the studio world (logs, assets, truth sidecar, summary, contact sheet) to a folder.

The world is configured by ``experiments/configs/studio_world.toml`` (the default, identical to the built-in
defaults of ``offline_data.simulator.SimulatorConfig``), another ``--config`` file, and ``--set`` overrides,
e.g. ``--set logging.requests=1000000`` for a large world, ``--set world.real_photos=true`` to add the
sample product photo, ``--set users.target_censoring_rate=0.6`` for heavily censored dwell logs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from experiments.commands.arguments import add_config_arguments, load_root_config
from experiments.config import dump_toml
from experiments.output_folder import add_overwrite_argument, open_output_run

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "studio_world.toml"

DESCRIPTION = (
    "Simulate the studio world: products with exact and noisy masks, generated background variants, a logging "
    "policy with exact propensities, position-biased clicks, censored dwell and pairwise panel judgements. "
    "Writes the four log tables (assets, impressions, dwell, preferences) with their PNG files, an "
    "evaluation-only truth/ sidecar (hidden gold, true probabilities, Bayes ceilings), summary.json and "
    "contact_sheet.png."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate", help="write the studio world's logs and assets", description=DESCRIPTION
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_config_arguments(
        parser,
        config_class="offline_data.simulator:SimulatorConfig",
        example="logging.requests=1000000",
        default_config="experiments/configs/studio_world.toml",
    )
    add_overwrite_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(handler=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    # heavy (pyarrow): imported when the command runs, so `backdrop --help` stays fast
    from offline_data.simulator import SimulatorConfig
    from offline_data.simulator.simulation import simulate

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.config == "experiments/configs/studio_world.toml" and not Path(args.config).is_file():
        # Run from outside the repository: use the copy installed with the package.
        args.config = str(DEFAULT_CONFIG)
    config = load_root_config(SimulatorConfig, args)
    out_dir = Path(args.out)
    with open_output_run(args, out_dir, config=config):
        # The folder is empty but for the run record; overwrite=True only lets simulate replace the
        # config.toml just written (it is written again below).
        summary = simulate(config, out_dir, progress=not args.no_progress, overwrite=True)
    (out_dir / "config.toml").write_text(dump_toml(config), encoding="utf-8")
    print(summary.format_table())
    print(
        f"\nlogs: {out_dir}/{{assets,impressions,dwell,preferences}}.parquet   images: {out_dir}/images/\n"
        f"truth (evaluation only): {out_dir}/truth/   contact sheet: {out_dir}/contact_sheet.png\n"
        f"summary: {out_dir}/summary.json   resolved config: {out_dir}/config.toml"
    )
    return 0
