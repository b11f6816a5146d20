"""``backdrop reward train`` and ``backdrop reward eval``: learn a reward model from logs, and measure it.

train: without --data, simulate the default studio world into the run directory, validate it and split it by
product; with --data, take a folder of logs (raw tables are validated first; a folder with train/, validation/
and test/ splits is used as is; a validated folder is split). Then train the ensemble (early-stopped on
validation), calibrate the click head on validation, save the model to ``<run>/model`` (safetensors + config
+ metrics) and report its logs-only metrics on the test split.

eval: score a saved model on a folder of validated logs and write ``eval.json`` and PNG plots (reliability
diagram, examination per slot, pairwise accuracy slices); with --truth (a ``backdrop simulate`` output), also
the Bayes ceilings, examination estimated vs true and accuracy against the hidden gold.

Further subcommands live in ``experiments/commands/reward_<name>.py`` (``backdrop reward audit``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path
from typing import Any

from experiments.commands.arguments import (
    add_config_arguments,
    add_discovered_subcommands,
    group_parser,
    load_root_config,
)
from experiments.config import ConfigError, load_config
from experiments.output_folder import add_overwrite_argument, open_output_run
from experiments.tracking import Run, filter_metrics, setup_logging, start_run

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "reward.toml"


def register(subparsers: Any) -> None:
    commands = group_parser(subparsers, "reward", "train and evaluate reward models from engagement logs")
    train = commands.add_parser(
        "train",
        help="train a reward model (click, dwell, preference heads; ensemble; calibration)",
        description=__doc__.split("\n\n")[1],
    )
    train.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="logs to learn from: raw tables, a 'backdrop data validate' folder, or a folder with train/, "
        "validation/ and test/ splits (default: simulate the default studio world into the run directory)",
    )
    add_config_arguments(
        train,
        config_class="experiments.reward_fit:command_config_class",
        example="reward.train.epochs=4",
        default_config="experiments/configs/reward.toml",
    )
    train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a killed run in its folder, with its config: finished ensemble members are loaded from "
        "RUN/checkpoints, the others trained (the result equals the uninterrupted run's)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    train.set_defaults(handler=run_train)

    evaluate = commands.add_parser(
        "eval", help="evaluate a trained reward model on held-out logs", description=__doc__.split("\n\n")[2]
    )
    evaluate.add_argument("model", type=Path, metavar="MODEL", help="model folder (or the run folder holding model/)")
    evaluate.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="folder of validated logs, e.g. <run>/splits/test"
    )
    evaluate.add_argument(
        "--truth",
        type=Path,
        metavar="DIR",
        help="simulation folder with the evaluation-only truth/ sidecar (adds ceilings and gold metrics)",
    )
    evaluate.add_argument(
        "--out", type=Path, metavar="DIR", help="where eval.json and the plots go (default: MODEL/eval)"
    )
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_overwrite_argument(evaluate)
    evaluate.set_defaults(handler=run_eval)
    add_discovered_subcommands(commands, "reward")


def run_train(args: argparse.Namespace) -> int:
    # heavy (torch, diffusers, transformers): imported when the command runs, so `backdrop --help` stays fast
    from accelerate import PartialState

    from experiments.policy_runs.train import ProcessRun, is_main_process, launched_processes
    from experiments.reward_fit import command_config_class, fit_from_logs, save_reward_model
    from experiments.runtime import resolve_device

    if args.resume:
        config, data, run = _resume(args)
    else:
        if args.config == "experiments/configs/reward.toml" and not Path(args.config).is_file():
            args.config = str(DEFAULT_CONFIG)  # run from outside the repository: the copy installed with the package
        config, data = load_root_config(command_config_class(), args), args.data
        run = None
    progress = not args.no_progress and is_main_process()
    if launched_processes() > 1:
        if args.resume:
            raise ConfigError("--resume continues a one-process run; run it without accelerate launch")
        # `accelerate launch --num_processes N`: join the process group before process 0 prepares the data.
        PartialState(cpu=resolve_device(config.run.device).type == "cpu")
    if run is None:
        run = start_run(config.run, config, command="reward train") if is_main_process() else ProcessRun()
    # one process: every finished member is checkpointed (a launch's processes would all write the same files)
    checkpoints = run.dir / "checkpoints" if launched_processes() == 1 else None
    with run:
        _forward_package_logs()
        fit = fit_from_logs(
            config, data, run.dir, log_metrics=run.log_metrics, progress=progress, checkpoint_dir=checkpoints
        )
        if not is_main_process():
            return 0  # the other processes of a launch trained the same model; process 0 writes it
        metrics, test_metrics = fit.metrics, fit.test_metrics
        model_dir = save_reward_model(fit, config, run)
    print(_summary(metrics, test_metrics))
    print(f"\nmodel: {model_dir}")
    truth = f" --truth {fit.simulated}" if fit.simulated is not None else ""
    print(f"evaluate: backdrop reward eval {model_dir} --data {fit.splits / 'test'}{truth}")
    return 0


def _resume(args: argparse.Namespace) -> tuple[Any, Path | None, Any]:
    """The config, data folder and reopened run of ``reward train --resume RUN``: records of members that had not
    finished (and of the test split) are dropped from metrics.jsonl, as they are logged again."""
    # heavy (torch, accelerate): imported when the command runs, as in run_train
    from experiments.reward_fit import command_config_class, has_splits

    if args.overrides or args.config != "experiments/configs/reward.toml":
        raise ConfigError("--resume continues a run with its own config.toml; drop --config and --set")
    run_dir = Path(args.resume)
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"{run_dir}: not a reward train run (no config.toml)")
    config = load_config(command_config_class(), run_dir / "config.toml")
    data = args.data or _recorded_data(run_dir)
    if data is None:
        if not has_splits(run_dir / "splits"):
            raise ConfigError(f"{run_dir}: the run stopped before its splits were written; start a new run")
        data = run_dir / "splits"
    finished = {p.name.split("-")[1] for p in (run_dir / "checkpoints").glob("member-*") if p.is_dir()}
    prefixes = tuple(f"member{int(k)}/" for k in finished)

    def keep(record: dict) -> bool:
        names = [k for k in record if k not in ("step", "time", "non_finite")]
        return all(name.startswith(prefixes) for name in names) if prefixes else not names

    dropped = filter_metrics(run_dir, keep)
    setup_logging()
    logging.getLogger("backdrop").info(
        "resuming %s: %d finished member(s) loaded, %d metric record(s) dropped", run_dir, len(finished), dropped
    )
    return config, data, Run(run_dir, tensorboard=config.run.tensorboard)


def _recorded_data(run_dir: Path) -> Path | None:
    """The ``--data`` the run was started with (its environment.json records the command line), or None."""
    try:
        argv = json.loads((run_dir / "environment.json").read_text(encoding="utf-8")).get("argv") or []
    except (OSError, ValueError, AttributeError):
        return None
    for flag, value in itertools.pairwise(argv):
        if flag == "--data":
            return Path(value)
    return None


def _forward_package_logs() -> None:
    """Send the reward and offline_data loggers to the run's handlers (console and log.txt)."""
    handlers = logging.getLogger("backdrop").handlers
    for name in ("reward", "offline_data"):
        package = logging.getLogger(name)
        package.setLevel(logging.INFO)
        package.propagate = False
        for handler in handlers:
            if handler not in package.handlers:
                package.addHandler(handler)


def _summary(metrics: dict, test: dict) -> str:
    lines = [f"trained {len(metrics['members'])} member(s) in {metrics['seconds']:.0f} s"]
    for k, member in enumerate(metrics["members"]):
        lines.append(f"  member {k}: best epoch {member['best_epoch']} of {member['epochs_run']}, "
                     f"validation loss {member['best_validation_loss']:.4f}")  # fmt: skip
    lines.append("examination (θ_k / θ_1): " + "  ".join(f"{t:.3f}" for t in metrics["examination"]))
    if "calibration" in metrics:
        lines.append(f"calibration: {metrics['calibration']['reason']}")
    for key in ("click_auc", "click_ece", "pairwise_accuracy"):
        if key in test:
            lines.append(f"test {key}: {test[key]:.4f}")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    # heavy (torch, pyarrow): imported when the command runs, so `backdrop --help` stays fast
    from experiments.runtime import resolve_device
    from experiments.studio.truth import prompt_family, studio_truth
    from reward.evaluation import evaluate
    from reward.plots import write_plots
    from reward.scorer import RewardScorer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = args.model / "model" if (args.model / "model" / "reward.json").is_file() else args.model
    out = args.out or model / "eval"
    with open_output_run(args, out, inputs=[args.data, model]):
        scorer = RewardScorer.load(model, device=resolve_device(args.device))
        metrics, plots = evaluate(scorer, args.data, truth=studio_truth(args.truth), prompt_family=prompt_family)
        (out / "eval.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n", encoding="utf-8")
        written = write_plots(metrics, plots, out)
    print(format_eval(metrics))
    print(f"\nwrote {out / 'eval.json'} and {', '.join(p.name for p in written)}")
    return 0


def format_eval(metrics: dict) -> str:
    """The headline numbers of an evaluation as text."""
    lines = [f"data: {metrics['data']} ({metrics['impressions']:,} impressions, {metrics['pairs']:,} pairs)"]
    for key in ("click_auc", "click_log_loss", "click_ece", "click_ece_uncalibrated", "pairwise_accuracy",
                "pairwise_accuracy_utility_only"):  # fmt: skip
        if key in metrics:
            lines.append(f"{key:32s} {metrics[key]:.4f}")
    lines.append(f"{'examination (θ_k / θ_1)':32s} " + "  ".join(f"{t:.3f}" for t in metrics["examination"]))
    truth = metrics.get("truth")
    if truth:
        ceilings = truth["ceilings"]
        lines.append(f"{'examination true':32s} " + "  ".join(f"{t:.3f}" for t in truth["examination_true"]))
        lines.append(f"{'examination max relative error':32s} {truth['examination_max_relative_error']:.4f}")
        if "pairwise_accuracy_expected" in truth:
            lines.append(
                f"{'pairwise accuracy (expected)':32s} {truth['pairwise_accuracy_expected']:.4f} of Bayes ceiling "
                f"{ceilings['pairwise_accuracy']:.4f} = {truth['pairwise_accuracy_ratio']:.2%} "
                f"(realised {metrics['pairwise_accuracy']:.4f} = {truth['pairwise_accuracy_realised_ratio']:.2%} "
                f"of the Bayes predictor's realised {ceilings['pairwise_accuracy_realised']:.4f})"
            )
        if "click_auc_ratio" in truth:
            lines.append(
                f"{'click AUC':32s} {metrics['click_auc']:.4f} of ceiling {ceilings['click_auc']:.4f} = "
                f"{truth['click_auc_ratio']:.2%}"
            )
    return "\n".join(lines)
