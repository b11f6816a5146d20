"""``backdrop rollout sample``: paint backgrounds behind product photos, product pixels kept exactly.

Requests come from a request table (``--requests FILE``, ``offline_data.requests``: one image per row, named
after its request_id), or from ``--products`` x ``--prompts``: RGBA photos (alpha is the product), RGB photos
with a mask file (``--masks``, one per photo, grey >= 128 = product), or procedural studio products
(``studio:KIND[:SEED]``). Photos keep their own size, pixels and depth or are refused by name
(``offline_data.photos``): by default the whole photo is letterboxed onto the model's resolution, painted, and the
painted canvas resized back under the original pixels; ``--native`` paints at the photo's own size padded to the
VAE factor (``rollout.photo``). Every output is verified against the alpha rule (alpha 255 bit-identical, 0 <
alpha < 255 by the integer formula). The default model is the shipped tiny base (``studio_tiny``);
``--adapter`` adds a LoRA adapter, ``--style`` a style board. Prompts pass the guards (``rollout.guards``) first.
With ``--best-of N --reward SPEC`` every kept image is the best of N candidates that are not near-duplicates
(``rollout.rerank``), SPEC being a reward model folder, gold[:SEGMENT] or MODULE:FACTORY.

Writes ``OUT/images/*.png``, ``OUT/trajectories/<request>.safetensors`` (+ .json), ``OUT/contact_sheet.png``,
``OUT/report.json`` and, with ``--requests``, the request manifest ``OUT/requests/``; prints the preservation
report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path
from typing import Any

from experiments.commands.arguments import group_parser
from experiments.output_folder import add_overwrite_argument, open_output_run
from experiments.tracking import new_run_dir
from offline_data.errors import AssetError, BackdropError
from rollout.config import SamplerConfig

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
    from experiments.runtime import resolve_device, set_threads
    from policy.model import InpaintPolicy, resolve_model_folder
    from rollout.guards import GuardConfig, PromptGuard, read_training_prompts
    from rollout.photo import fit_canvas, merge_checks, native_canvas
    from rollout.request import expand_requests
    from rollout.rerank import rerank
    from rollout.sampler import sample_trajectories

    _check_sources(args)
    n = args.n if args.n is not None else (1 if args.requests else 8)
    if n < 1 or args.best_of < 1:
        raise BackdropError("--n and --best-of must be >= 1")
    if not 0 <= args.seed < 2**62:  # the generators take int64 seeds; sample k uses seed + k
        raise BackdropError(f"--seed must be in [0, 2**62), got {args.seed}")
    if args.best_of > 1 and not args.reward:
        raise BackdropError("--best-of needs --reward (a reward model folder, gold[:SEGMENT] or MODULE:FACTORY)")
    try:
        sampler = SamplerConfig(num_steps=args.steps, guidance_scale=args.guidance, eta=args.eta,
                                batch_size=args.batch_size)  # fmt: skip
        guard_config = GuardConfig(max_distance=args.max_distance)
    except ValueError as exc:
        raise BackdropError(f"invalid option: {exc}") from None
    set_threads(args.threads)
    folder = resolve_model_folder(args.model)
    # The guard compares prompts with the base model's training prompts, recorded in its folder.
    guard = None if args.no_guard else PromptGuard(guard_config, read_training_prompts(folder))
    # The output folder is the run folder (the CLI closes its record, error.json included, when the command ends);
    # it is opened once the inputs given on the command line are checked, so a refused prompt leaves no folder.
    out = Path(args.out) if args.out else new_run_dir("runs", "rollout")
    if args.requests:  # the table's rejects and request manifest are written into the run folder
        open_output_run(args, out, inputs=[args.requests])
        photos, verdicts = _table_photos(args, guard, out), []
    else:
        verdicts = [] if guard is None else guard.require(args.prompts)

    device = resolve_device(args.device)
    policy = InpaintPolicy.from_pretrained(folder, adapter=args.adapter, device=device)
    if args.steps > (trained := policy.scheduler.config.num_train_timesteps):
        raise BackdropError(f"--steps {args.steps}: the model's schedule has {trained} timesteps; give at most that")
    model = policy
    if args.style:
        model = _styled(policy, folder, args.style)
    if not args.requests:
        products = _load_products(args.products, args.masks, policy.resolution)
        photos = [_photo(name, rgb, alpha, prompt, j, args.segment)
                  for name, rgb, alpha in products for j, prompt in enumerate(args.prompts)]  # fmt: skip
    _check_file_names([p.request_id for p in photos])
    placed = [native_canvas(p, policy.vae_scale_factor, args.max_native_side) if args.native
              else fit_canvas(p, policy.resolution) for p in photos]  # fmt: skip
    requests, seeds = expand_requests([r for r, _ in placed], n * args.best_of, args.seed)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, request in enumerate(requests):
        by_size.setdefault(request.size, []).append(index)

    if not args.requests:
        open_output_run(args, out, inputs=list(args.products))
    (out / "images").mkdir()
    reward_fn = _load_reward(args.reward, args.reward_model) if args.reward else None
    sources = {p.request_id: (p, placement) for p, (_, placement) in zip(photos, placed)}
    rows, records, reports, checks, filtered_total = [], [], [], [], 0
    for indices in by_size.values():  # the sampler takes one image size per call
        batch = [requests[i] for i in indices]
        rollout = sample_trajectories(model, batch, [seeds[i] for i in indices], sampler,
                                      progress=not args.no_progress)  # fmt: skip
        reports.append(rollout.preservation)
        chosen, scores = list(range(len(batch))), [None] * len(batch)
        if reward_fn is not None:
            ranked = rerank(rollout.images, batch, reward_fn, keep=n, max_hamming=args.max_hamming)
            chosen, scores = list(ranked.indices), ranked.scores.tolist()
            filtered_total += ranked.filtered
        checks.extend(_write_outputs(out, rollout, batch, chosen, scores, sources, rows, records))
    sheet = _contact_sheet(out, rows)
    check = merge_checks(checks)
    ok = all(r.ok for r in reports) and check.ok
    report = {
        "model": str(folder), "adapter": args.adapter, "style_board": args.style, "native": args.native,
        "requests": args.requests, "sampler": {"steps": args.steps, "guidance": args.guidance, "eta": args.eta},
        "best_of": args.best_of, "reward": args.reward, "near_duplicates_filtered": filtered_total,
        "guards": [{"prompt": v.prompt, "nearest_prompt": v.nearest_prompt, "distance": v.distance}
                   for v in verdicts],
        "preservation": {"ok": ok, "max_abs_diff": max(r.max_abs_diff for r in reports),
                         "mask_pixels": sum(r.mask_pixels for r in reports),
                         "differing_pixels": sum(r.differing_pixels for r in reports)},
        "alpha_rule": {"ok": check.ok, "product_pixels": check.product_pixels, "soft_pixels": check.soft_pixels,
                       "product_changed": check.product_changed, "soft_off": check.soft_off},
        "images": records,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for r in reports:
        print(f"preservation: {r.describe()}")
    print(f"alpha rule at the photos' own size: {check.product_pixels} product pixel(s), {check.product_changed} "
          f"changed; {check.soft_pixels} soft pixel(s), {check.soft_off} off the formula")  # fmt: skip
    print(f"{len(records)} image(s) in {out / 'images'}; contact sheet {sheet}; report {out / 'report.json'}")
    return 0 if ok else 1


def _check_sources(args: argparse.Namespace) -> None:
    """--requests, or --products with --prompts (and optional --masks), never both."""
    if args.requests and (args.products or args.masks or args.prompts):
        raise BackdropError("--requests replaces --products, --masks and --prompts; give one or the other")
    if not args.requests and not (args.products and args.prompts):
        raise BackdropError("give --requests FILE, or --products and --prompts")


def _table_photos(args: argparse.Namespace, guard: Any, out: Any) -> list:
    """The photos of a validated request table (rejects listed and written to OUT/requests/); refuses an empty one."""
    # heavy (torch, pyarrow): imported when the command runs, so `backdrop --help` stays fast
    from experiments.policy_runs.request_manifest import guard_fn, write_table_manifest
    from offline_data.requests import RequestTableConfig, read_requests, require_requests
    from rollout.photo import row_photo

    config = RequestTableConfig(allow_outside=args.allow_outside, default_segment=args.segment)
    table = require_requests(read_requests(args.requests, guard=guard_fn(guard), config=config))
    for message in table.problems():
        print(f"rejected: {message}")
    write_table_manifest(table, out / "requests")
    return [row_photo(table, row) for row in table.rows()]


def _styled(policy: Any, folder: Any, paths: list[str]) -> Any:
    """The policy wrapped with the style tokens of a board of images."""
    # heavy (torch, diffusers, pyarrow): imported when the command runs, so `backdrop --help` stays fast
    import numpy as np
    import torch
    from PIL import Image

    from policy.style import StyleConditioning, StyledModel

    if not (folder / "style").is_dir():
        raise AssetError(f"{folder}: the model has no style/ adapter; --style needs one (e.g. studio_tiny)")
    style = StyleConditioning.load(folder / "style")
    board = []
    for path in paths:
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((policy.resolution, policy.resolution), Image.Resampling.LANCZOS)
        except (OSError, ValueError) as exc:
            raise AssetError(f"{path}: cannot read style image: {exc}") from None
        board.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
    return StyledModel(policy, style.tokens(torch.stack(board)))


def _load_products(paths: list[str], masks: list[str] | None, size: int) -> list[tuple[str, Any, Any]]:
    """(name, rgb [H, W, 3] uint8, product alpha [H, W] uint8) per product (module docstring for the sources).

    Photo files keep their own size and pixels (``offline_data.photos`` decodes them); studio products are
    rendered at the model's resolution with a 0/255 alpha.
    """
    # heavy (pyarrow): imported when the command runs, so `backdrop --help` stays fast
    import numpy as np

    from offline_data.photos import decode_mask, decode_photo, product_alpha
    from offline_data.simulator import PRODUCT_KINDS, render_product

    if masks is not None and len(masks) != len(paths):
        raise AssetError(f"--masks has {len(masks)} entries but --products has {len(paths)}; give one per product "
                         "('-' for none)")  # fmt: skip
    products = []
    for i, spec in enumerate(paths):
        mask_path = masks[i] if masks is not None and masks[i] != "-" else None
        if spec.startswith("studio:"):
            kind, _, seed = spec.removeprefix("studio:").partition(":")
            if kind not in PRODUCT_KINDS or (seed and not seed.isdigit()):
                raise AssetError(f"{spec}: expected studio:KIND[:SEED] with KIND in {', '.join(PRODUCT_KINDS)}")
            rgba = render_product(kind, np.random.default_rng(int(seed or 0)), size, product_id=spec).rgba
            alpha = np.where(rgba[..., 3] >= 128, np.uint8(255), np.uint8(0))
            products.append((f"studio-{kind}-{seed or 0}", np.ascontiguousarray(rgba[..., :3]), alpha))
            continue
        path = Path(spec)
        photo = decode_photo(path)
        mask = decode_mask(Path(mask_path), photo.size) if mask_path is not None else None
        products.append((path.stem, photo.rgb, product_alpha(photo, mask, str(path))))
    return products


def _photo(name: str, rgb: Any, alpha: Any, prompt: str, prompt_index: int, segment: str) -> Any:
    # heavy (torch, pyarrow): imported when the command runs, so `backdrop --help` stays fast
    from rollout.photo import PhotoRequest

    return PhotoRequest(request_id=f"{name}-p{prompt_index}", product_id=name, segment=segment, prompt=prompt,
                        rgb=rgb, alpha=alpha)  # fmt: skip


def _load_reward(spec: str, model_path: str | None) -> Any:
    """A ``rollout.protocols.RewardFn`` from ``gold[:SEGMENT]`` or ``MODULE:FACTORY``."""

    if spec == "gold" or spec.startswith("gold:"):
        return _GoldReward(spec.partition(":")[2] or None)
    if (Path(spec) / "reward.json").is_file():
        # heavy (torch, diffusers, transformers): imported when the command runs, so `backdrop --help` stays fast
        from experiments.policy_runs.train import load_reward_model

        reward_model = load_reward_model(Path(spec))
        return lambda images, requests: reward_model(images, requests).reward
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise BackdropError(
            f"--reward {spec!r}: expected a reward model folder (with reward.json), gold[:SEGMENT] or MODULE:FACTORY"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise BackdropError(f"--reward {spec!r}: cannot import it: {exc}") from None
    return factory(model_path) if model_path is not None else factory()


class _GoldReward:
    """The studio world's hidden gold engagement as a RewardFn (evaluation only: a model never trains on it)."""

    def __init__(self, segment: str | None) -> None:
        # heavy (pyarrow): imported when the command runs, so `backdrop --help` stays fast
        from offline_data.simulator import SEGMENTS

        if segment is not None and segment not in SEGMENTS:
            raise BackdropError(f"--reward gold:{segment}: unknown segment; expected one of {', '.join(SEGMENTS)}")
        self.segment = segment

    def __call__(self, images: Any, requests: Any) -> Any:
        # heavy (torch, pyarrow): imported when the command runs, so `backdrop --help` stays fast
        import torch

        from offline_data.simulator import gold_engagement

        masks = torch.stack([r.product_mask for r in requests]).numpy()
        segments = [self.segment or r.segment for r in requests]
        gold = gold_engagement(images.permute(0, 2, 3, 1).numpy(), masks, [r.prompt for r in requests], segments)
        return torch.from_numpy(gold).float()


def _write_outputs(out: Any, rollout: Any, batch: list, chosen: list[int], scores: list, sources: dict, rows: list,
                   records: list) -> list:  # fmt: skip
    """Write the chosen images at their photos' own size and their trajectories; collect sheet rows.

    Images are ``<request_id>.png`` when one is kept per request, else ``<request_id>_<k>.png`` (characters other
    than letters, digits, ``.``, ``_`` and ``-`` become ``_``). Returns the alpha-rule check of every image.
    """
    # heavy (torch, pyarrow): imported when the command runs, so `backdrop --help` stays fast
    from PIL import Image

    from rollout.photo import paint_back

    groups: dict[str, list[int]] = {}
    for position, index in enumerate(chosen):
        groups.setdefault(batch[index].request_id, []).append(position)
    checks = []
    for request_id, positions in groups.items():
        indices = [chosen[p] for p in positions]
        stem = _file_stem(request_id)
        rollout.trajectory.select(indices).save(out / "trajectories" / f"{stem}.safetensors")
        photo, placement = sources[request_id]
        cells = []
        for k, (position, index) in enumerate(zip(positions, indices)):
            image, check = paint_back(rollout.images[index], photo, placement)
            checks.append(check)
            name = f"{stem}.png" if len(indices) == 1 else f"{stem}_{k}.png"
            Image.fromarray(image).save(out / "images" / name)
            score = scores[position]
            records.append({"image": f"images/{name}", "request_id": request_id, "prompt": batch[index].prompt,
                            "product_id": batch[index].product_id, "seed": rollout.trajectory.seeds[index],
                            "size": [image.shape[0], image.shape[1]], "reward": score,
                            "alpha_rule_ok": check.ok})  # fmt: skip
            cells.append((image, f"{score:.2f}" if score is not None else f"seed {rollout.trajectory.seeds[index]}"))
        rows.append((f"{batch[indices[0]].product_id}: {batch[indices[0]].prompt}", cells))
    return checks


def _check_file_names(request_ids: list[str]) -> None:
    """Refuse requests whose image file names would collide (two products with one file name, or ids that differ
    only in characters a file name cannot hold)."""
    seen: dict[str, str] = {}
    for request_id in request_ids:
        other = seen.setdefault(_file_stem(request_id), request_id)
        if other != request_id:
            raise BackdropError(
                f"requests {other!r} and {request_id!r} would both be written as "
                f"images/{_file_stem(request_id)}*.png; give them distinct ids (or product files distinct names)"
            )


def _file_stem(request_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", request_id)


def _contact_sheet(out: Any, rows: list) -> Any:
    """The sheet of every kept image; photos larger than 192 px are shown as thumbnails (the files keep full size)."""
    # heavy (numpy, PIL): imported when the command runs, so `backdrop --help` stays fast
    import numpy as np
    from PIL import Image

    from policy.contact_sheet import draw_contact_sheet

    def shown(image: Any) -> Any:
        if max(image.shape[:2]) <= 192:
            return image
        thumbnail = Image.fromarray(image)
        thumbnail.thumbnail((192, 192), Image.Resampling.LANCZOS)
        return np.asarray(thumbnail)

    rows = [(label, [(shown(image), caption) for image, caption in cells]) for label, cells in rows]
    return draw_contact_sheet(rows, out / "contact_sheet.png", label_width=260)
