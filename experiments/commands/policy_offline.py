"""``backdrop policy offline --method dpo|rwr``: fine-tune the policy from logs only.

``dpo``: Diffusion-DPO on the pairwise preference logs (the base model, adapter disabled, is DPO's reference model).
``rwr``: reward-weighted regression on the images of the impression logs, weighted by the reward model's
debiased click and dwell heads. Both are evaluated like ``backdrop policy train`` (held-out requests: proxy,
KL, and hidden gold on the studio world; ``--requests FILE`` evaluates on a team's own request table) and keep
an adapter per evaluation under adapters/ for matched-KL comparisons.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments.commands.arguments import add_config_arguments, add_progress_argument, load_root_config
from experiments.config import ConfigError
from experiments.tracking import start_run

DESCRIPTION = (
    "Offline fine-tuning of the inpainting policy's LoRA adapter from logs: Diffusion-DPO on pairwise "
    "judgements (--method dpo) or reward-weighted regression on impression images weighted by the reward "
    "model's click and dwell heads (--method rwr). Evaluated on held-out studio products (proxy, hidden gold, KL "
    "to the base) like 'backdrop policy train'."
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "offline", help="fine-tune from logs only (Diffusion-DPO or RWR)", description=DESCRIPTION
    )
    parser.add_argument("--method", choices=("dpo", "rwr"), help="offline objective (overrides [offline] method)")
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="folder of validated log tables, e.g. the train split of 'backdrop data split' (overrides [data] dir)",
    )
    parser.add_argument(
        "--reward",
        metavar="MODEL_DIR",
        help="reward model folder (RWR weights, evaluation proxy); overrides [reward] model_dir",
    )
    parser.add_argument(
        "--requests",
        metavar="FILE",
        help="evaluate on the eval rows of a request table of your own photos (sets [catalogue] requests; no gold) "
        "instead of the studio world's held-out products",
    )
    add_config_arguments(
        parser,
        config_class="experiments.policy_runs.offline:PolicyOfflineCommandConfig",
        example="offline.steps=200",
        default_config="experiments/configs/studio_<method>.toml",
    )
    add_progress_argument(parser)
    parser.set_defaults(handler=run_policy_offline)


def run_policy_offline(args: argparse.Namespace) -> int:
    # heavy (torch, diffusers, transformers): imported when the command runs, so `backdrop --help` stays fast
    from experiments.policy_runs.offline import CONFIGS, PolicyOfflineCommandConfig, train_offline
    from experiments.policy_runs.requests import with_requests
    from experiments.policy_runs.train import describe_evaluation, resolve_reward_dir

    if args.config == "experiments/configs/studio_<method>.toml":
        # The shipped config of the method (repository copy, else the one installed with the package).
        name = f"studio_{args.method or 'dpo'}.toml"
        local = Path("experiments/configs") / name
        args.config = str(local if local.is_file() else CONFIGS / name)
    if args.method:
        args.overrides = [*args.overrides, f"offline.method={args.method}"]
    config = load_root_config(PolicyOfflineCommandConfig, args)
    config = with_requests(config, args.requests)
    data_dir = Path(args.data) if args.data else config.data.dir
    if data_dir is None:
        raise ConfigError(
            "no logs: pass --data DIR (a folder of validated tables, e.g. the train split of 'backdrop data split') "
            "or set [data] dir"
        )
    reward_dir = resolve_reward_dir(config, args.reward)
    with start_run(
        config.run, config, command=f"policy offline --method {config.offline.method}",
        extra={"data": str(data_dir), "reward_model": str(reward_dir)},
    ) as run:  # fmt: skip
        history = train_offline(
            config, data_dir=data_dir, reward_dir=reward_dir, run=run, progress=not args.no_progress
        )
    evaluated = [h for h in history if "eval/kl_nats" in h]
    if evaluated:
        print(describe_evaluation({**evaluated[-1], "epoch": evaluated[-1]["step"]}).replace("epoch", "step", 1))
    print(f"run directory: {run.dir}")
    return 0
