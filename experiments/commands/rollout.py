"""``backdrop rollout sample``: paint backgrounds behind product photos, product pixels kept exactly.

Products are RGBA photos (alpha >= 128 is the product), RGB photos with a mask file (``--masks``, one per
photo, white = product), or procedural studio products (``studio:KIND[:SEED]``). By default a product is fitted
into the model's resolution the way the simulator places photos (cropped to its mask, scaled to 78 % of the
frame, stood near the bottom); ``--native`` keeps the photo's own pixels and size instead. The default model
is the shipped tiny base (``studio_tiny``); ``--adapter`` adds a LoRA adapter, ``--style`` a style board.
Prompts pass the guards (``rollout.guards``) first. With ``--best-of N --reward SPEC`` every kept image is
the best of N candidates that are not near-duplicates (``rollout.rerank``).

Writes ``OUT/images/*.png``, ``OUT/trajectories/<request>.safetensors`` (+ .json), ``OUT/contact_sheet.png``
and ``OUT/report.json``, and prints the preservation report.
"""

from __future__ import annotations

import argparse
from typing import Any

DESCRIPTION = (
    "Paint backgrounds behind product photos with the inpainting model (default: the shipped tiny studio base). "
    "Product pixels are kept bit-exactly and verified. Writes images, trajectories, a contact sheet and "
    "report.json to --out."
)


def register(subparsers: Any) -> None:
    from experiments.commands.arguments import group_parser
    from experiments.output_folder import add_overwrite_argument

    group = group_parser(subparsers, "rollout", "sample backgrounds with the inpainting model")
    parser = group.add_parser("sample", help="paint backgrounds behind product photos", description=DESCRIPTION)
    parser.add_argument("--products", nargs="+", required=True, metavar="PRODUCT",
                        help="RGBA photos (alpha = product), RGB photos with --masks, or studio:KIND[:SEED] "
                             "procedural products (KIND: bottle, box, can, ball, shoe, jar, mug)")  # fmt: skip
    parser.add_argument("--masks", nargs="+", metavar="MASK",
                        help="one mask image per product (white/>=128 = product); use '-' for a product that "
                             "needs none (RGBA or studio)")  # fmt: skip
    parser.add_argument("--prompts", nargs="+", required=True, metavar="PROMPT", help="background descriptions")
    parser.add_argument("--n", type=int, default=8, help="images per (product, prompt) (default: 8)")
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
        help="keep photos at their own size and pixels instead of fitting them to the model",
    )
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default: 20)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default: 5)")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta in (0, 1] (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; sample k uses seed + k (default: 0)")
    parser.add_argument("--segment", default="panel", help="audience segment recorded in the requests")
    parser.add_argument("--best-of", type=int, default=1, metavar="N",
                        help="keep the best of N candidates per image (needs --reward)")  # fmt: skip
    parser.add_argument("--reward", metavar="SPEC",
                        help="reward for --best-of: gold[:SEGMENT] (the studio world's hidden gold, evaluation "
                             "only) or MODULE:FACTORY, called with --reward-model if given")  # fmt: skip
    parser.add_argument("--reward-model", metavar="PATH", help="argument passed to a MODULE:FACTORY reward")
    parser.add_argument(
        "--max-hamming",
        type=int,
        default=6,
        help="near-duplicate threshold of --best-of in pHash bits of 64 (default: 6)",
    )
    parser.add_argument("--no-guard", action="store_true", help="skip the prompt guards")
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
    import json
    from pathlib import Path

    from experiments.output_folder import open_output_run
    from experiments.runtime import resolve_device, set_threads
    from experiments.tracking import new_run_dir
    from offline_data.errors import BackdropError
    from policy.model import InpaintPolicy, resolve_model_folder
    from rollout.config import SamplerConfig
    from rollout.guards import GuardConfig, PromptGuard
    from rollout.request import expand_requests
    from rollout.sampler import sample_trajectories

    if args.n < 1 or args.best_of < 1:
        raise BackdropError("--n and --best-of must be >= 1")
    if not 0 <= args.seed < 2**62:  # the generators take int64 seeds; sample k uses seed + k
        raise BackdropError(f"--seed must be in [0, 2**62), got {args.seed}")
    if args.best_of > 1 and not args.reward:
        raise BackdropError("--best-of needs --reward (gold[:SEGMENT] or MODULE:FACTORY)")
    try:
        sampler = SamplerConfig(num_steps=args.steps, guidance_scale=args.guidance, eta=args.eta,
                                batch_size=args.batch_size)  # fmt: skip
        guard_config = GuardConfig(max_distance=args.max_distance)
    except ValueError as exc:
        raise BackdropError(f"invalid option: {exc}") from None
    set_threads(args.threads)
    verdicts = [] if args.no_guard else PromptGuard(guard_config).require(args.prompts)

    device = resolve_device(args.device)
    folder = resolve_model_folder(args.model)
    policy = InpaintPolicy.from_pretrained(folder, adapter=args.adapter, device=device)
    if args.steps > (trained := policy.scheduler.config.num_train_timesteps):
        raise BackdropError(f"--steps {args.steps}: the model's schedule has {trained} timesteps; give at most that")
    model = policy
    if args.style:
        model = _styled(policy, folder, args.style)
    products = _load_products(args.products, args.masks, policy.resolution, native=args.native)
    templates = [_request(name, rgba, prompt, i, j, args.segment)
                 for i, (name, rgba) in enumerate(products) for j, prompt in enumerate(args.prompts)]  # fmt: skip
    requests, seeds = expand_requests(templates, args.n * args.best_of, args.seed)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, request in enumerate(requests):
        by_size.setdefault(request.size, []).append(index)

    # Inputs checked: the output folder becomes the run folder (the CLI closes its record when the command ends).
    out = Path(args.out) if args.out else new_run_dir("runs", "rollout")
    open_output_run(args, out, inputs=args.products)
    (out / "images").mkdir()
    reward_fn = _load_reward(args.reward, args.reward_model) if args.reward else None
    rows, records, reports, filtered_total = [], [], [], 0
    for indices in by_size.values():  # the sampler takes one image size per call
        batch = [requests[i] for i in indices]
        rollout = sample_trajectories(model, batch, [seeds[i] for i in indices], sampler,
                                      progress=not args.no_progress)  # fmt: skip
        reports.append(rollout.preservation)
        chosen, scores = list(range(len(batch))), [None] * len(batch)
        if reward_fn is not None:
            from rollout.rerank import rerank

            ranked = rerank(rollout.images, batch, reward_fn, keep=args.n, max_hamming=args.max_hamming)
            chosen, scores = list(ranked.indices), ranked.scores.tolist()
            filtered_total += ranked.filtered
        _write_outputs(out, rollout, batch, chosen, scores, rows, records)
    sheet = _contact_sheet(out, rows)
    ok = all(r.ok for r in reports)
    report = {
        "model": str(folder), "adapter": args.adapter, "style_board": args.style, "native": args.native,
        "sampler": {"steps": args.steps, "guidance": args.guidance, "eta": args.eta},
        "best_of": args.best_of, "reward": args.reward, "near_duplicates_filtered": filtered_total,
        "guards": [{"prompt": v.prompt, "nearest_prompt": v.nearest_prompt, "distance": v.distance}
                   for v in verdicts],
        "preservation": {"ok": ok, "max_abs_diff": max(r.max_abs_diff for r in reports),
                         "mask_pixels": sum(r.mask_pixels for r in reports),
                         "differing_pixels": sum(r.differing_pixels for r in reports)},
        "images": records,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for r in reports:
        print(f"preservation: {r.describe()}")
    print(f"{len(records)} image(s) in {out / 'images'}; contact sheet {sheet}; report {out / 'report.json'}")
    return 0 if ok else 1


def _styled(policy: Any, folder: Any, paths: list[str]) -> Any:
    """The policy wrapped with the style tokens of a board of images."""
    import numpy as np
    import torch
    from PIL import Image

    from offline_data.errors import AssetError
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


def _load_products(paths: list[str], masks: list[str] | None, size: int, *, native: bool) -> list[tuple[str, Any]]:
    """(name, RGBA uint8 [H, W, 4]) per product, alpha exactly 0/255 (module docstring for the sources)."""
    import tempfile
    from pathlib import Path

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from offline_data.errors import AssetError
    from offline_data.simulator import PRODUCT_KINDS, load_product_photo, render_product

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
            product = render_product(kind, np.random.default_rng(int(seed or 0)), size, product_id=spec)
            products.append((f"studio-{kind}-{seed or 0}", product.rgba))
            continue
        path = Path(spec)
        try:
            with Image.open(path) as image:
                image.load()
                photo = np.asarray(image.convert("RGBA" if mask_path is None else "RGB")).copy()
        except FileNotFoundError:
            raise AssetError(f"{path}: product photo not found") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise AssetError(f"{path}: cannot read product photo: {exc}") from None
        if mask_path is not None:
            photo = np.dstack([photo, _read_mask(Path(mask_path), photo.shape[:2]) * np.uint8(255)])
        elif not native:
            products.append((path.stem, load_product_photo(path, size, product_id=path.stem).rgba))
            continue
        if native:
            alpha = np.where(photo[..., 3] >= 128, 255, 0).astype(np.uint8)
            products.append((path.stem, np.dstack([photo[..., :3], alpha])))
            continue
        # An RGB photo + mask, fitted like an RGBA photo: load_product_photo reads files, so hand it one.
        with tempfile.TemporaryDirectory() as scratch:
            rgba_path = Path(scratch) / f"{path.stem}.png"
            Image.fromarray(photo, mode="RGBA").save(rgba_path)
            products.append((path.stem, load_product_photo(rgba_path, size, product_id=path.stem).rgba))
    return products


def _read_mask(path: Any, shape: tuple[int, int]) -> Any:
    """A mask image as bool [H, W] (grey level >= 128 = product), checked against the photo's size."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from offline_data.errors import AssetError

    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"))
    except FileNotFoundError:
        raise AssetError(f"{path}: mask file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise AssetError(f"{path}: cannot read mask: {exc}") from None
    if grey.shape != shape:
        raise AssetError(f"{path}: mask is {grey.shape[1]}x{grey.shape[0]} but its photo is {shape[1]}x{shape[0]}")
    mask = grey >= 128
    if not mask.any():
        raise AssetError(f"{path}: mask has no product pixel (none >= 128)")
    if mask.all():
        raise AssetError(f"{path}: mask covers the whole image; there is no background to paint")
    return mask


def _request(name: str, rgba: Any, prompt: str, product: int, prompt_index: int, segment: str) -> Any:
    from offline_data.errors import AssetError
    from rollout.request import request_from_rgba

    try:
        return request_from_rgba(rgba, request_id=f"{name}-p{prompt_index}", product_id=name, segment=segment,
                                 prompt=prompt)  # fmt: skip
    except ValueError as exc:
        raise AssetError(f"product {product + 1} ({name}): {exc}") from None


def _load_reward(spec: str, model_path: str | None) -> Any:
    """A ``rollout.protocols.RewardFn`` from ``gold[:SEGMENT]`` or ``MODULE:FACTORY``."""
    import importlib

    from offline_data.errors import BackdropError

    if spec == "gold" or spec.startswith("gold:"):
        return _GoldReward(spec.partition(":")[2] or None)
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise BackdropError(f"--reward {spec!r}: expected gold[:SEGMENT] or MODULE:FACTORY")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise BackdropError(f"--reward {spec!r}: cannot import it: {exc}") from None
    return factory(model_path) if model_path is not None else factory()


class _GoldReward:
    """The studio world's hidden gold engagement as a RewardFn (evaluation only: a model never trains on it)."""

    def __init__(self, segment: str | None) -> None:
        from offline_data.errors import BackdropError
        from offline_data.simulator import SEGMENTS

        if segment is not None and segment not in SEGMENTS:
            raise BackdropError(f"--reward gold:{segment}: unknown segment; expected one of {', '.join(SEGMENTS)}")
        self.segment = segment

    def __call__(self, images: Any, requests: Any) -> Any:
        import torch

        from offline_data.simulator import gold_engagement

        masks = torch.stack([r.product_mask for r in requests]).numpy()
        segments = [self.segment or r.segment for r in requests]
        gold = gold_engagement(images.permute(0, 2, 3, 1).numpy(), masks, [r.prompt for r in requests], segments)
        return torch.from_numpy(gold).float()


def _write_outputs(out: Any, rollout: Any, batch: list, chosen: list[int], scores: list, rows: list,
                   records: list) -> None:  # fmt: skip
    """Write the chosen images and their trajectories (one file per request), and collect sheet rows."""
    import numpy as np
    from PIL import Image

    groups: dict[str, list[int]] = {}
    for position, index in enumerate(chosen):
        groups.setdefault(batch[index].request_id, []).append(position)
    for request_id, positions in groups.items():
        indices = [chosen[p] for p in positions]
        rollout.trajectory.select(indices).save(out / "trajectories" / f"{request_id}.safetensors")
        cells = []
        for k, (position, index) in enumerate(zip(positions, indices)):
            image = rollout.images[index].permute(1, 2, 0).numpy()
            name = f"{request_id}_{k}.png"
            Image.fromarray(np.ascontiguousarray(image)).save(out / "images" / name)
            score = scores[position]
            records.append({"image": f"images/{name}", "request_id": request_id, "prompt": batch[index].prompt,
                            "product_id": batch[index].product_id, "seed": rollout.trajectory.seeds[index],
                            "reward": score})  # fmt: skip
            cells.append((image, f"{score:.2f}" if score is not None else f"seed {rollout.trajectory.seeds[index]}"))
        rows.append((f"{batch[indices[0]].product_id}: {batch[indices[0]].prompt}", cells))


def _contact_sheet(out: Any, rows: list) -> Any:
    from policy.contact_sheet import draw_contact_sheet

    return draw_contact_sheet(rows, out / "contact_sheet.png", label_width=260)
