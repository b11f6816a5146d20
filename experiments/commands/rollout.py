"""``backdrop rollout sample``: paint backgrounds behind product photos, product pixels kept exactly.

Requests come from a request table (``--requests FILE``) or from ``--products`` x ``--prompts`` (RGBA photos, RGB
photos with ``--masks``, or ``studio:KIND[:SEED]``); ``--native`` paints at a photo's own size, ``--adapter`` adds a
LoRA adapter, ``--style`` a style board, and ``--best-of N --reward SPEC`` keeps the best of N candidates that are
not near-duplicates. The flags become an :class:`~experiments.rollout_run.RolloutSampleConfig`;
:func:`~experiments.rollout_run.sample_rollouts` paints, writes and verifies (its module docstring has the sources,
the outputs and the checks); this module prints the preservation report.
"""

from __future__ import annotations

import argparse
from typing import Any

from experiments.commands.arguments import group_parser
from experiments.output_folder import add_overwrite_argument, open_output_run

DESCRIPTION = (
    "Paint backgrounds behind product photos with the inpainting model (default: the shipped tiny studio base), "
    "each output at its photo's own size. Product pixels are kept bit-exactly and verified. Writes images, "
    "trajectories, a contact sheet and report.json to --out."
)


def register(subparsers: Any) -> None:
    group = group_parser(subparsers, "rollout", "sample backgrounds with the inpainting model")
    parser = group.add_parser("sample", help="paint backgrounds behind product photos", description=DESCRIPTION)
    parser.add_argument("--requests", metavar="FILE",
                        help="request table (.parquet/.csv/.jsonl: request_id, product_id, image, mask, prompt, "
                             "segment, split; offline_data.requests): one image per request, named after its "
                             "request_id, at its photo's own size")  # fmt: skip
    parser.add_argument("--products", nargs="+", metavar="PRODUCT",
                        help="RGBA photos (alpha = product), RGB photos with --masks, or studio:KIND[:SEED] "
                             "procedural products (KIND: bottle, box, can, ball, shoe, jar, mug)")  # fmt: skip
    parser.add_argument("--masks", nargs="+", metavar="MASK",
                        help="one mask image per product (white/>=128 = product); use '-' for a product that "
                             "needs none (RGBA or studio)")  # fmt: skip
    parser.add_argument("--prompts", nargs="+", metavar="PROMPT", help="background descriptions (with --products)")
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="images per request (default: 1 with --requests, else 8 per product and prompt)",
    )
    parser.add_argument("--allow-outside", action="store_true",
                        help="accept request-table image/mask paths outside the table's folder")  # fmt: skip
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/rollout/<timestamp>)")
    parser.add_argument(
        "--model",
        default="studio_tiny",
        help="diffusers-format inpainting folder, or studio_tiny (default: the shipped base)",
    )
    parser.add_argument("--adapter", metavar="DIR", help="LoRA adapter folder (written by the policy trainer)")
    parser.add_argument("--style", nargs="+", metavar="IMAGE",
                        help="style board: images whose mean style embedding conditions the model "
                             "(needs a model with a style/ adapter, like studio_tiny)")  # fmt: skip
    parser.add_argument(
        "--native",
        action="store_true",
        help="paint photos at their own size (padded to the VAE factor) instead of letterboxed at the model's "
        "resolution",
    )
    parser.add_argument("--max-native-side", type=int, default=1024, metavar="PX",
                        help="largest photo side --native paints (default: 1024)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default: 20)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default: 5)")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta in (0, 1] (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; sample k uses seed + k (default: 0)")
    parser.add_argument("--segment", default="panel", help="audience segment recorded in the requests")
    parser.add_argument("--best-of", type=int, default=1, metavar="N",
                        help="keep the best of N candidates per image (needs --reward)")  # fmt: skip
    parser.add_argument("--reward", metavar="SPEC",
                        help="reward for --best-of: a reward model folder ('backdrop reward train'), gold[:SEGMENT] "
                             "(the studio world's hidden gold, evaluation only) or MODULE:FACTORY, called with "
                             "--reward-model if given")  # fmt: skip
    parser.add_argument("--reward-model", metavar="PATH", help="argument passed to a MODULE:FACTORY reward")
    parser.add_argument(
        "--max-hamming",
        type=int,
        default=6,
        help="near-duplicate threshold of --best-of in pHash bits of 64 (default: 6)",
    )
    parser.add_argument(
        "--no-guard",
        action="store_true",
        help="skip the prompt guards (the distribution check reads training_prompts.txt in the model folder)",
    )
    parser.add_argument(
        "--max-distance",
        type=float,
        default=0.5,
        help="largest cosine distance to a training prompt the guard accepts (default: 0.5)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="samples denoised together (default: 8)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: 0 = torch's default)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    # heavy (torch, diffusers, transformers): imported when the command runs, so `backdrop --help` stays fast
    from experiments.rollout_run import RolloutSampleConfig, sample_rollouts

    config = RolloutSampleConfig(
        requests=args.requests, products=tuple(args.products or ()), masks=_tuple(args.masks),
        prompts=tuple(args.prompts or ()), n=args.n, allow_outside=args.allow_outside, out=args.out, model=args.model,
        adapter=args.adapter, style=_tuple(args.style), native=args.native, max_native_side=args.max_native_side,
        steps=args.steps, guidance=args.guidance, eta=args.eta, seed=args.seed, segment=args.segment,
        best_of=args.best_of, reward=args.reward, reward_model=args.reward_model, max_hamming=args.max_hamming,
        guard=not args.no_guard, max_distance=args.max_distance, batch_size=args.batch_size, device=args.device,
        threads=args.threads, progress=not args.no_progress,
    )  # fmt: skip
    # The output folder is the run folder (the CLI closes its record, error.json included, when the command ends).
    result = sample_rollouts(
        config, open_run=lambda out, inputs: open_output_run(args, out, inputs=inputs), notify=print
    )
    for report in result.preservation:
        print(f"preservation: {report.describe()}")
    check = result.alpha_rule
    print(f"alpha rule at the photos' own size: {check.product_pixels} product pixel(s), {check.product_changed} "
          f"changed; {check.soft_pixels} soft pixel(s), {check.soft_off} off the formula")  # fmt: skip
    out = result.out
    print(f"{result.images} image(s) in {out / 'images'}; contact sheet {result.contact_sheet}; "
          f"report {out / 'report.json'}")  # fmt: skip
    return 0 if result.ok else 1


def _tuple(values: list[str] | None) -> tuple[str, ...] | None:
    return tuple(values) if values is not None else None
