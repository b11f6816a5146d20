"""``backdrop export``: gate a policy run's candidate and write an A/B bundle (adapter, manifest, model card).

Gates: zero product-pixel changes over held-out evaluation samples (pixel verifier), KL to the base within
budget, the off-policy lift's lower bound at or above a threshold, no reward-model audit flag. A failed gate
refuses with the reasons (exit code 4) unless ``--override "REASON"``, which is recorded in the manifest and
the model card. After writing, the bundle is reloaded and must reproduce its reference images bit-identically
(exit code 5 otherwise).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments.commands.arguments import add_config_arguments, load_root_config
from experiments.tracking import setup_logging

DESCRIPTION = (
    "Export a policy run's LoRA candidate for an A/B test, behind gates: product preservation (every evaluation "
    "output verified pixel by pixel), KL to the base within budget, off-policy lift lower bound, and a clean "
    "reward-model audit. Writes the adapter (loadable with diffusers' load_lora_weights), optionally the merged "
    "UNet, manifest.json (base and reward-model hashes, config, data hashes, seeds, git sha, metrics, gates), "
    "MODEL_CARD.md with a contact sheet, and checks that the reloaded bundle reproduces its reference images."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("export", help="gate and export an A/B candidate bundle", description=DESCRIPTION)
    parser.add_argument("run", metavar="RUN_DIR", help="a 'backdrop policy train' run directory")
    parser.add_argument("--out", required=True, metavar="BUNDLE", help="new folder the bundle is written to")
    parser.add_argument("--merge", action="store_true", help="also write the UNet with the adapter fused in")
    parser.add_argument(
        "--override",
        metavar="REASON",
        help="export even if gates fail; the reason and the failed gates are recorded in the manifest and card",
    )
    parser.add_argument(
        "--reward", metavar="MODEL_DIR", help="reward model folder (default: the one the run was trained against)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_config_arguments(
        parser,
        config_class="experiments.export.config:ExportCommandConfig",
        example="export.threads=4",
        default_config="experiments/configs/export.toml",
    )
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    # heavy (torch, diffusers, transformers): imported when the command runs, so `backdrop --help` stays fast
    from experiments.export.bundle import export_candidate
    from experiments.export.config import ExportCommandConfig

    default = Path(__file__).resolve().parent.parent / "configs" / "export.toml"
    if args.config == "experiments/configs/export.toml" and not Path(args.config).is_file():
        args.config = str(default)  # run from outside the repository: the copy installed with the package
    config = load_root_config(ExportCommandConfig, args)
    setup_logging()
    result = export_candidate(
        Path(args.run),
        Path(args.out),
        config.export,
        merge=args.merge,
        override=args.override,
        reward_dir=Path(args.reward) if args.reward else None,
        progress=not args.no_progress,
    )
    for gate in result.gates:
        print(f"{gate.name:13s} {'passed' if gate.passed else 'FAILED'}  {gate.message}")
    if result.failed:
        print(
            f"exported with --override ({args.override!r}); failed gate(s): {', '.join(g.name for g in result.failed)}"
        )
    reload = result.manifest.get("reload", {})
    print(
        "reload: "
        + ", ".join(f"{k}: {'bit-identical' if v.get('identical') else 'differs'}" for k, v in reload.items())
    )
    print(f"bundle: {result.bundle}")
    return 0
