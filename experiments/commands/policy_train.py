"""``backdrop policy train``: fine-tune the inpainting policy with DDPO against a learned reward model.

Samples backgrounds for the training requests (a team's request table with ``--requests FILE``, else the studio
world's training products), scores them with the reward model, and updates the LoRA adapter with a clipped policy
gradient and a KL penalty to the base model; every ``eval_every`` epochs the held-out requests are sampled and scored
with the proxy reward and, for the studio world only, the simulator's hidden gold engagement (which training never
sees). The run directory holds metrics.jsonl, checkpoints/, adapter/, final_eval.json, overoptimisation.png and the
request manifest requests/ (``experiments.policy_runs.request_manifest``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from experiments import run_record
from experiments.commands.arguments import add_config_arguments, load_root_config
from experiments.config import ConfigError, load_config
from experiments.run_record import recorded_flags
from experiments.tracking import Run, setup_logging, start_run

DESCRIPTION = (
    "DDPO fine-tuning of the inpainting policy's LoRA adapter against a learned reward model (reward/), with "
    "per-request advantages, a clipped policy gradient and a closed-form KL penalty to the base model; product "
    "pixels are verified every epoch. Evaluates proxy reward and KL (plus the hidden gold engagement on the studio "
    "world) on held-out requests and draws the over-optimisation curve. Needs a reward model: --reward DIR or "
    "[reward] model_dir."
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train", help="DDPO fine-tuning against a learned reward model", description=DESCRIPTION
    )
    add_config_arguments(
        parser,
        config_class="experiments.policy_runs.train:PolicyTrainCommandConfig",
        example="policy.lora.rank=16",
        default_config="experiments/configs/studio_ddpo.toml",
    )
    parser.add_argument(
        "--reward",
        metavar="MODEL_DIR",
        help="reward model folder written by 'backdrop reward train' (overrides [reward] model_dir)",
    )
    parser.add_argument(
        "--requests",
        metavar="FILE",
        help="train on a request table of your own photos (.parquet/.csv/.jsonl; sets [catalogue] requests) instead "
        "of the studio world; rows with split = eval are the held-out requests",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its latest checkpoint, with the config and --reward it was started "
        "with (--config and --set are not allowed then)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(handler=run_policy_train)


def run_policy_train(args: argparse.Namespace) -> int:
    # heavy (torch, diffusers, transformers): imported when the command runs, so `backdrop --help` stays fast
    from experiments.policy_runs.requests import with_requests
    from experiments.policy_runs.train import (
        DEFAULT_CONFIG,
        PolicyTrainCommandConfig,
        ProcessRun,
        describe_evaluation,
        is_main_process,
        resolve_reward_dir,
        train_policy,
        truncate_metrics,
    )
    from policy.checkpoint import CheckpointError, latest_checkpoint, read_checkpoint_state

    if args.resume:
        if args.overrides or args.requests or args.config != "experiments/configs/studio_ddpo.toml":
            raise ConfigError(
                "--resume continues a run with its own config.toml; drop --config and --set (and --requests)"
            )
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise ConfigError(f"{run_dir}: not a policy train run (no config.toml)")
        config = load_config(PolicyTrainCommandConfig, run_dir / "config.toml")
        run_record.watch(run_dir)  # a failed resume leaves error.json in the run
        # The run's own --reward (command.json) unless given again.
        reward_dir = resolve_reward_dir(config, args.reward or recorded_flags(run_dir).get("reward"))
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
        step = read_checkpoint_state(checkpoint)["trainer"].get("epoch")  # checked again by the trainer
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise CheckpointError(f"{checkpoint / 'state.json'}: trainer.epoch is {step!r}, not an epoch count")
        log_file = None
        if is_main_process():  # under `accelerate launch` process 0 alone rewrites the run's files
            dropped = truncate_metrics(run_dir, int(step))
            setup_logging()
            run = Run(run_dir, tensorboard=config.run.tensorboard)
            log_file = logging.FileHandler(run_dir / "log.txt", encoding="utf-8")  # appends to the run's log
            log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger("backdrop").addHandler(log_file)
            logging.getLogger("backdrop").info(
                "resuming %s from %s (epoch %d); %d metric record(s) logged after it were dropped",
                run_dir, checkpoint.name, step, dropped,
            )  # fmt: skip
        else:
            run = ProcessRun()
    else:
        if args.config == "experiments/configs/studio_ddpo.toml" and not Path(args.config).is_file():
            args.config = str(DEFAULT_CONFIG)  # run from outside the repository: the installed copy
        config = load_root_config(PolicyTrainCommandConfig, args)
        config = with_requests(config, args.requests)
        reward_dir = resolve_reward_dir(config, args.reward)
        checkpoint, log_file = None, None
        if is_main_process():
            run = start_run(config.run, config, command="policy train", extra={"reward_model": str(reward_dir)})
        else:
            run = ProcessRun()  # other processes of `accelerate launch` train but do not log
    try:
        with run:
            history = train_policy(
                config, reward_dir=reward_dir, run=run, resume_from=checkpoint, progress=not args.no_progress
            )
    finally:
        if log_file is not None:
            logging.getLogger("backdrop").removeHandler(log_file)
            log_file.close()
    evaluated = [h for h in history if "eval/kl_nats" in h]
    if is_main_process():
        if evaluated:
            print(describe_evaluation(evaluated[-1]))
        print(f"run directory: {run.dir}")
    return 0
