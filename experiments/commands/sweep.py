"""``backdrop sweep``: an optuna study over config keys of a training command (see experiments/sweep/study.py)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from experiments.commands.arguments import add_config_arguments, load_root_config
from experiments.config import ConfigError
from experiments.sweep.space import load_space
from experiments.sweep.targets import load_target

DESCRIPTION = (
    "Hyperparameter sweep with optuna over any config keys of a training command (kl_coef, learning rate, LoRA "
    "rank, clip range, reward pessimism, ...). The --space TOML file names the target command, the objective "
    "metric, an optional budget on a second metric (default use: gold engagement at a KL budget) and the "
    "params. Trials are pruned on their intermediate objective, stored in <sweep dir>/study.db so that an "
    "interrupted sweep resumes with --resume, run in parallel worker processes with --workers, and summarised "
    "(best trials, parameter importances, optuna's plots as PNG)."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sweep", help="optuna hyperparameter sweep over a command's config", description=DESCRIPTION
    )
    parser.add_argument(
        "--space",
        metavar="FILE",
        help="search space TOML (target, objective, direction, constraint, [params], [pruner]); "
        "examples in experiments/configs/*_space.toml; required unless --resume",
    )
    add_config_arguments(
        parser, config_class="experiments.policy_runs.train:PolicyTrainCommandConfig", example="run.threads=2"
    )
    parser.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="trials to finish in total, counting earlier sessions (default: the space's)",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="start no new trial after S seconds (running ones finish)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing study.db, each with cores/N torch threads (default: 1, in this process); on a "
        "GPU node worker i gets GPU i (round-robin) when run.device is auto or cuda",
    )
    parser.add_argument(
        "--resume",
        metavar="SWEEP_DIR",
        help="continue the sweep in SWEEP_DIR with its own space.toml and config.toml: finished trials are kept, "
        "interrupted ones run again",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    # heavy (optuna): imported when the command runs, so `backdrop --help` stays fast
    from experiments.sweep.study import SweepError, create_sweep, finished_summary_line, open_sweep, run_sweep
    from experiments.sweep.summary import format_summary, summarize_sweep

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.resume:
        given = [
            flag
            for flag, value in (("--space", args.space), ("--config", args.config), ("--set", args.overrides))
            if value
        ]
        if given:
            raise ConfigError(
                f"--resume uses the sweep's own space.toml and config.toml; drop {', '.join(given)} "
                "(to change the space, start a new sweep)"
            )
        sweep = open_sweep(args.resume)
    else:
        if not args.space:
            raise ConfigError("--space FILE is required (or --resume SWEEP_DIR); see experiments/configs/*_space.toml")
        space = load_space(args.space)
        target = load_target(space.target)
        sweep = create_sweep(space, load_root_config(target.config_class, args), space_source=args.space)
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    try:
        run_sweep(sweep, trials=args.trials, timeout=args.timeout, workers=args.workers, progress=not args.no_progress)
    except KeyboardInterrupt:
        summarize_sweep(sweep)
        print(f"interrupted; continue with: backdrop sweep --resume {sweep.paths.dir}")
        raise
    summary = summarize_sweep(sweep)
    print(format_summary(summary, list(sweep.space.params)))
    print(finished_summary_line(sweep.paths.dir))
    states = summary["states"]
    errors = [t for t in summary["trials"] if t["error"]]
    if errors and not (states.get("COMPLETE") or states.get("PRUNED")):
        first = errors[0]
        raise SweepError(
            f"every trial failed; first error (trial {first['number']}): {first['error']} "
            f"(traceback in {sweep.paths.dir / first['run_dir'] / 'error.txt'})"
        )
    return 0
