"""``backdrop reward audit``: calibration, discrimination by slice, ceilings, disagreement, probes, over-optimisation.

Writes ``audit.json``, ``audit.html`` (self-contained, figures embedded) and ``plots/*.png`` into ``--out``
(default ``MODEL/audit``) and prints the flags and the headline numbers. Exit code 0 whether or not flags were
raised (the export gate reads them); bad input exits non-zero with a message.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from experiments.commands.arguments import add_config_arguments, load_root_config
from experiments.output_folder import add_overwrite_argument, open_output_run
from reward.audit_config import AuditCommandConfig

DESCRIPTION = (
    "Audit a reward model on held-out logs before optimising against it: calibration per head (ECE, reliability, "
    "censoring-aware D-calibration of dwell), discrimination overall and by segment, slot, product kind and prompt "
    "family (click AUC, pairwise accuracy, dwell C-index) against the Bayes ceilings when --truth is given, "
    "ensemble disagreement, spurious-feature probes (brightness, saturation, blur, sharpening, JPEG, text overlay "
    "on the background or the whole image), a product-tamper probe and, with --run, the over-optimisation curve of "
    "a policy run. Flags for anything past a configurable threshold come first."
)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("audit", help="audit a reward model (HTML + JSON report)", description=DESCRIPTION)
    parser.add_argument("model", metavar="MODEL", help="reward model folder (or the run folder holding model/)")
    parser.add_argument(
        "--data", required=True, metavar="DIR", help="folder of validated logs to audit on, e.g. <run>/splits/test"
    )
    parser.add_argument(
        "--truth",
        metavar="DIR",
        help="simulation folder with the evaluation-only truth/ sidecar (adds ceilings, gold shifts of the probes "
        "and the disagreement's error to gold)",
    )
    parser.add_argument(
        "--run", metavar="RUN_DIR", help="a 'backdrop policy train' run: adds its over-optimisation curve"
    )
    parser.add_argument(
        "--out", metavar="DIR", help="where audit.json, audit.html and plots/ go (default: MODEL/audit)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    add_config_arguments(
        parser,
        config_class="reward.audit_config:AuditCommandConfig",
        example="audit.bins=15",
        default_config="experiments/configs/audit.toml",
    )
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    # heavy (torch, pyarrow): imported when the command runs, so `backdrop --help` stays fast
    from experiments.runtime import resolve_device
    from experiments.studio.truth import prompt_family, studio_truth
    from reward.audit import audit_reward_model, audit_summary
    from reward.report import write_audit
    from reward.scorer import RewardScorer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    default = Path(__file__).resolve().parent.parent / "configs" / "audit.toml"
    if args.config == "experiments/configs/audit.toml" and not Path(args.config).is_file():
        args.config = str(default)  # run from outside the repository: the copy installed with the package
    config = load_root_config(AuditCommandConfig, args)
    model = Path(args.model)
    model = model / "model" if (model / "model" / "reward.json").is_file() else model
    out = Path(args.out) if args.out else model / "audit"
    with open_output_run(args, out, inputs=[args.data, model], config=config):
        scorer = RewardScorer.load(model, device=resolve_device(args.device))
        result = audit_reward_model(
            scorer,
            args.data,
            truth=studio_truth(args.truth),
            prompt_family=prompt_family,
            run_dir=args.run,
            config=config.audit,
        )
        written = write_audit(result, out)
    print("\n".join(audit_summary(result.metrics)))
    print(f"\nwrote {written['html']} and {written['json']}")
    return 0
