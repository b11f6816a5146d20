"""``backdrop policy pretrain``: pretrain the tiny base model on the studio world and write it with a manifest.

``backdrop policy pretrain --config experiments/configs/pretrain_studio.toml --export policy/weights/studio_tiny``
reproduces the shipped weights: VAE, mask-aware decoder, two-stage inpainting UNet with the text encoder and the
style adapter (``experiments.studio.pretrain.train``), then the evaluation
(``experiments.studio.pretrain.eval``), all into the run directory
(``<run>/model``: diffusers layout + mask_decoder/ + style/ + manifest.json + samples.png).

The root config's sections are dataclass-only modules (no torch), imported at module level so that the class
exists for the strict loader; ``backdrop --help`` stays fast.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.commands.arguments import add_config_arguments
from experiments.config import ConfigError, RunConfig, dump_toml, load_config
from experiments.studio.pretrain.config import PretrainConfig
from experiments.tracking import start_run
from policy.config import InpaintModelConfig

DEFAULT_CONFIG = "experiments/configs/pretrain_studio.toml"


@dataclass(frozen=True, kw_only=True)
class PretrainRunConfig(RunConfig):
    """[run] of ``backdrop policy pretrain``: RunConfig with pretraining's defaults."""

    name: str = "pretrain"
    """Run name; results go to ``<output_dir>/<name>/<timestamp>``."""
    threads: int = 1
    """torch intra-op threads. One: on a shared 2-core machine a second thread made every step 5-8x slower
    (measured: UNet step 0.17 s with 1 thread, 1.1-1.7 s with 2, while other jobs ran)."""


@dataclass(frozen=True, kw_only=True)
class PretrainCommandConfig:
    """Root config of ``backdrop policy pretrain``: sections [run], [model] and [pretrain]."""

    run: PretrainRunConfig = field(default_factory=PretrainRunConfig)
    """Run directory, seed (batches, noise, timesteps), device, threads."""
    model: InpaintModelConfig = field(default_factory=InpaintModelConfig)
    """Architecture of the model built from scratch (``pretrained`` must stay unset)."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """Data, stages, checkpoints and the final evaluation."""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain the tiny base model on the studio world (VAE, mask-aware decoder, inpainting, style)",
        description=(
            "Pretrain the tiny inpainting base model on the studio world: the VAE, the mask-aware decoder, then "
            "the UNet with random masks (stage 1) and product masks (stage 2), jointly with the text encoder and "
            "the style adapter. Writes <run>/model (diffusers layout, mask_decoder/, style/, manifest.json, "
            "samples.png) and checkpoints for --resume."
        ),
    )
    add_config_arguments(
        parser,
        config_class="experiments.commands.policy_pretrain:PretrainCommandConfig",
        example="pretrain.checkpoint_every=100",
        default_config=DEFAULT_CONFIG,
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint (its config)"
    )
    parser.add_argument(
        "--export", metavar="DIR", help="also copy the finished model folder to DIR (e.g. policy/weights/studio_tiny)"
    )
    parser.add_argument(
        "--evaluate", metavar="MODEL_DIR", help="only (re)evaluate a pretrained model folder and rewrite its manifest"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(handler=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    # heavy (torch, diffusers, transformers): imported when the command runs, so `backdrop --help` stays fast
    from experiments.runtime import setup_runtime
    from experiments.studio.pretrain.checkpoint import LATEST
    from experiments.studio.pretrain.manifest import evaluate_and_write_manifest, export_model, halve_weights
    from experiments.studio.pretrain.train import pretrain
    from experiments.studio.prompts import studio_training_prompts
    from offline_data.integrity import rewrite_checksums
    from rollout.guards import write_training_prompts

    config_path = Path(args.config) if args.config else None
    if config_path is not None and str(config_path) == DEFAULT_CONFIG and not config_path.is_file():
        # Run from outside the repository: use the copy installed with the package.
        config_path = Path(__file__).resolve().parent.parent / "configs" / "pretrain_studio.toml"
    resume = None
    if args.resume:
        run_dir = Path(args.resume)
        resume = run_dir / "checkpoints" / LATEST
        if not resume.is_file():
            raise ConfigError(f"{run_dir}: no checkpoint to resume from (expected {resume})")
        config_path = run_dir / "config.toml"
    config = load_config(PretrainCommandConfig, config_path, args.overrides)
    runtime = setup_runtime(config.run)
    manifest_args = {"config": config.pretrain, "seed": runtime.seed, "threads": runtime.threads,
                     "device": runtime.device}  # fmt: skip
    if args.evaluate:
        print(evaluate_and_write_manifest(Path(args.evaluate), command=None, config_toml=None, seconds=None,
                                          **manifest_args))  # fmt: skip
        return 0
    command = ["backdrop", "policy", "pretrain"]
    if args.resume:  # the run's own config.toml was loaded, whatever --config says
        command += ["--resume", args.resume]
    elif args.config:
        command += ["--config", args.config]
    for override in args.overrides:
        command += ["--set", override]
    if args.export:
        command += ["--export", args.export]
    with start_run(config.run, config, command="policy pretrain", extra={"device": str(runtime.device)}) as run:
        result = pretrain(
            config.model, config.pretrain, seed=runtime.seed, checkpoint_dir=run.dir / "checkpoints",
            log_metrics=run.log_metrics, resume=resume, device=runtime.device, progress=not args.no_progress,
        )  # fmt: skip
        folder = run.dir / "model"
        result.policy.save_pretrained(folder)
        result.style.save(folder / "style")
        write_training_prompts(folder, studio_training_prompts())  # what the prompt guard compares prompts with
        if config.pretrain.weights_dtype == "float16":
            halve_weights(folder)
        rewrite_checksums(folder)  # the style adapter was added and the weights may be float16 now
        report = evaluate_and_write_manifest(
            folder, command=shlex.join(command), config_toml=dump_toml(config), seconds=result.seconds,
            training_metrics=result.metrics, log_metrics=run.log_metrics, **manifest_args,
        )  # fmt: skip
        print(report)
        print(f"\nmodel: {folder}\nrun:   {run.dir}")
        if args.export:
            export_model(folder, Path(args.export))
            print(f"exported to {args.export}")
    return 0
