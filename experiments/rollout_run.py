"""The run function of ``backdrop rollout sample``: paint backgrounds behind product photos into an output folder.

Requests come from a request table (``offline_data.requests``: one image per row, named after its request_id) or
from products x prompts: RGBA photos (alpha is the product), RGB photos with a mask file (one per photo, grey >= 128
= product), or procedural studio products (``studio:KIND[:SEED]``). Photos keep their own size, pixels and depth or
are refused by name (``offline_data.photos``): by default the whole photo is letterboxed onto the model's resolution,
painted, and the painted canvas resized back under the original pixels; ``native`` paints at the photo's own size
padded to the VAE factor (``rollout.photo``). Every output is verified against the alpha rule. With ``best_of`` N and
a reward, every kept image is the best of N candidates that are not near-duplicates (``rollout.rerank``).

:func:`sample_rollouts` writes ``OUT/images/*.png``, ``OUT/trajectories/<request>.safetensors`` (+ .json),
``OUT/contact_sheet.png``, ``OUT/report.json`` and, from a request table, the request manifest ``OUT/requests/``.
The command (``experiments/commands/rollout.py``) turns its flags into a :class:`RolloutSampleConfig`, opens the
run folder, and prints the returned :class:`RolloutSampleResult`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from experiments.policy_runs.request_manifest import guard_fn, write_table_manifest
from experiments.policy_runs.train import load_reward_model
from experiments.runtime import resolve_device, set_threads
from experiments.tracking import new_run_dir
from offline_data.errors import AssetError, BackdropError
from offline_data.photos import CompositeCheck, decode_mask, decode_photo, product_alpha
from offline_data.requests import RequestTableConfig, read_requests, require_requests
from offline_data.simulator import PRODUCT_KINDS, SEGMENTS, gold_engagement, render_product
from policy.contact_sheet import draw_contact_sheet
from policy.model import InpaintPolicy, resolve_model_folder
from policy.style import StyleConditioning, StyledModel
from rollout.config import SamplerConfig
from rollout.guards import GuardConfig, PromptGuard, read_training_prompts
from rollout.photo import (
    PhotoRequest,
    fit_canvas,
    merge_checks,
    native_canvas,
    paint_back,
    row_photo,
)
from rollout.preservation import PreservationReport
from rollout.request import expand_requests
from rollout.rerank import rerank
from rollout.sampler import sample_trajectories


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutSampleConfig:
    """What to paint, with which model, and where (the flags of ``backdrop rollout sample``)."""

    requests: str | None = None
    """Request table (.parquet/.csv/.jsonl); replaces ``products``, ``masks`` and ``prompts``."""
    products: tuple[str, ...] = ()
    """Photo files or ``studio:KIND[:SEED]`` products, each painted with every prompt."""
    masks: tuple[str, ...] | None = None
    """One mask file per product ('-' for a product that needs none), or None."""
    prompts: tuple[str, ...] = ()
    """Background descriptions (with ``products``)."""
    n: int | None = None
    """Images per request; None = 1 from a request table, else 8 (:attr:`images_per_request`)."""
    allow_outside: bool = False
    """Accept request-table image/mask paths outside the table's folder."""
    out: str | None = None
    """Output folder; None = a new ``runs/rollout/<timestamp>``."""
    model: str = "studio_tiny"
    """Diffusers-format inpainting folder, or ``studio_tiny``."""
    adapter: str | None = None
    """LoRA adapter folder."""
    style: tuple[str, ...] | None = None
    """Style board images (the model needs a ``style/`` adapter)."""
    native: bool = False
    """Paint photos at their own size (padded to the VAE factor) instead of letterboxed at the model's resolution."""
    max_native_side: int = 1024
    """Largest photo side (pixels) ``native`` paints."""
    steps: int = 20
    """DDIM steps."""
    guidance: float = 5.0
    """Classifier-free guidance scale."""
    eta: float = 1.0
    """DDIM eta in (0, 1]."""
    seed: int = 0
    """First seed; sample k uses seed + k (int64 generators: in [0, 2**62))."""
    segment: str = "panel"
    """Audience segment recorded in the requests."""
    best_of: int = 1
    """Keep the best of this many candidates per image (needs ``reward``)."""
    reward: str | None = None
    """Reward for ``best_of``: a reward model folder, ``gold[:SEGMENT]`` or ``MODULE:FACTORY``."""
    reward_model: str | None = None
    """Argument passed to a ``MODULE:FACTORY`` reward."""
    max_hamming: int = 6
    """Near-duplicate threshold of ``best_of`` in pHash bits of 64."""
    guard: bool = True
    """Check prompts against the base model's training prompts first."""
    max_distance: float = 0.5
    """Largest cosine distance to a training prompt the guard accepts."""
    batch_size: int = 8
    """Samples denoised together."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    threads: int = 0
    """Torch threads (0 = torch's default)."""
    progress: bool = True
    """Show the sampler's progress bars."""

    def __post_init__(self) -> None:
        if self.requests and (self.products or self.masks or self.prompts):
            raise BackdropError("--requests replaces --products, --masks and --prompts; give one or the other")
        if not self.requests and not (self.products and self.prompts):
            raise BackdropError("give --requests FILE, or --products and --prompts")
        if self.images_per_request < 1 or self.best_of < 1:
            raise BackdropError("--n and --best-of must be >= 1")
        if not 0 <= self.seed < 2**62:  # the generators take int64 seeds; sample k uses seed + k
            raise BackdropError(f"--seed must be in [0, 2**62), got {self.seed}")
        if self.best_of > 1 and not self.reward:
            raise BackdropError("--best-of needs --reward (a reward model folder, gold[:SEGMENT] or MODULE:FACTORY)")

    @property
    def images_per_request(self) -> int:
        """Images kept per request: ``n``, else 1 from a request table and 8 per product and prompt."""
        return self.n if self.n is not None else (1 if self.requests else 8)


@dataclasses.dataclass(frozen=True)
class RolloutSampleResult:
    """What :func:`sample_rollouts` wrote and verified."""

    out: Path
    """The output (run) folder."""
    report: dict[str, Any]
    """The content of ``out/report.json``."""
    preservation: list[PreservationReport]
    """Product preservation of every sampler call (one per image size), at the model's resolution."""
    alpha_rule: CompositeCheck
    """The alpha rule over every written image, at the photos' own size."""
    images: int
    """Images written to ``out/images``."""
    contact_sheet: Path
    """The contact sheet of every kept image."""

    @property
    def ok(self) -> bool:
        """Every product pixel preserved and every image within the alpha rule."""
        return bool(self.report["preservation"]["ok"])


OpenRun = Callable[[Path, list[str]], object]
"""Makes a folder the run folder, given the inputs it was made from (the CLI records its flags there)."""


def sample_rollouts(
    config: RolloutSampleConfig, *, open_run: OpenRun, notify: Callable[[str], None] = lambda message: None
) -> RolloutSampleResult:
    """Paint every request, write the outputs into the output folder and check them (module docstring).

    The output folder is opened with ``open_run`` once the inputs named by ``config`` are checked, so a refused
    prompt leaves no folder; a request table's rejected rows are passed to ``notify`` as they are found.

    Raises:
        BackdropError: an invalid option, a refused prompt, an unreadable or empty input, colliding file names.
    """
    n = config.images_per_request
    try:
        sampler = SamplerConfig(num_steps=config.steps, guidance_scale=config.guidance, eta=config.eta,
                                batch_size=config.batch_size)  # fmt: skip
        guard_config = GuardConfig(max_distance=config.max_distance)
    except ValueError as exc:
        raise BackdropError(f"invalid option: {exc}") from None
    set_threads(config.threads)
    folder = resolve_model_folder(config.model)
    # The guard compares prompts with the base model's training prompts, recorded in its folder.
    guard = PromptGuard(guard_config, read_training_prompts(folder)) if config.guard else None
    out = Path(config.out) if config.out else new_run_dir("runs", "rollout")
    if config.requests:  # the table's rejects and request manifest are written into the run folder
        open_run(out, [config.requests])
        photos, verdicts = _table_photos(config, guard, out, notify), []
    else:
        verdicts = [] if guard is None else guard.require(list(config.prompts))

    policy = InpaintPolicy.from_pretrained(folder, adapter=config.adapter, device=resolve_device(config.device))
    if config.steps > (trained := policy.scheduler.config.num_train_timesteps):
        raise BackdropError(f"--steps {config.steps}: the model's schedule has {trained} timesteps; give at most that")
    model = _styled(policy, folder, config.style) if config.style else policy
    if not config.requests:
        products = _load_products(config.products, config.masks, policy.resolution)
        photos = [PhotoRequest(request_id=f"{name}-p{j}", product_id=name, segment=config.segment, prompt=prompt,
                               rgb=rgb, alpha=alpha)
                  for name, rgb, alpha in products for j, prompt in enumerate(config.prompts)]  # fmt: skip
    _check_file_names([p.request_id for p in photos])
    placed = [native_canvas(p, policy.vae_scale_factor, config.max_native_side) if config.native
              else fit_canvas(p, policy.resolution) for p in photos]  # fmt: skip
    requests, seeds = expand_requests([r for r, _ in placed], n * config.best_of, config.seed)
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, request in enumerate(requests):
        by_size.setdefault(request.size, []).append(index)

    if not config.requests:
        open_run(out, list(config.products))
    (out / "images").mkdir()
    reward_fn = _load_reward(config.reward, config.reward_model) if config.reward else None
    sources = {p.request_id: (p, placement) for p, (_, placement) in zip(photos, placed)}
    rows, records, reports, checks, filtered_total = [], [], [], [], 0
    for indices in by_size.values():  # the sampler takes one image size per call
        batch = [requests[i] for i in indices]
        rollout = sample_trajectories(model, batch, [seeds[i] for i in indices], sampler, progress=config.progress)
        reports.append(rollout.preservation)
        chosen, scores = list(range(len(batch))), [None] * len(batch)
        if reward_fn is not None:
            ranked = rerank(rollout.images, batch, reward_fn, keep=n, max_hamming=config.max_hamming)
            chosen, scores = list(ranked.indices), ranked.scores.tolist()
            filtered_total += ranked.filtered
        checks.extend(_write_outputs(out, rollout, batch, chosen, scores, sources, rows, records))
    sheet = _contact_sheet(out, rows)
    check = merge_checks(checks)
    report = {
        "model": str(folder), "adapter": config.adapter, "style_board": _listed(config.style),
        "native": config.native, "requests": config.requests,
        "sampler": {"steps": config.steps, "guidance": config.guidance, "eta": config.eta},
        "best_of": config.best_of, "reward": config.reward, "near_duplicates_filtered": filtered_total,
        "guards": [{"prompt": v.prompt, "nearest_prompt": v.nearest_prompt, "distance": v.distance}
                   for v in verdicts],
        "preservation": {"ok": all(r.ok for r in reports) and check.ok,
                         "max_abs_diff": max(r.max_abs_diff for r in reports),
                         "mask_pixels": sum(r.mask_pixels for r in reports),
                         "differing_pixels": sum(r.differing_pixels for r in reports)},
        "alpha_rule": {"ok": check.ok, "product_pixels": check.product_pixels, "soft_pixels": check.soft_pixels,
                       "product_changed": check.product_changed, "soft_off": check.soft_off},
        "images": records,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return RolloutSampleResult(out, report, reports, check, len(records), sheet)


def _listed(values: tuple[str, ...] | None) -> list[str] | None:
    return list(values) if values is not None else None


def _table_photos(config: RolloutSampleConfig, guard: Any, out: Path, notify: Callable[[str], None]) -> list:
    """The photos of a validated request table (rejects reported and written to OUT/requests/); refuses an empty
    one."""
    table_config = RequestTableConfig(allow_outside=config.allow_outside, default_segment=config.segment)
    table = require_requests(read_requests(config.requests, guard=guard_fn(guard), config=table_config))
    for message in table.problems():
        notify(f"rejected: {message}")
    write_table_manifest(table, out / "requests")
    return [row_photo(table, row) for row in table.rows()]


def _styled(policy: InpaintPolicy, folder: Path, paths: tuple[str, ...]) -> StyledModel:
    """The policy wrapped with the style tokens of a board of images."""
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


def _load_products(
    paths: tuple[str, ...], masks: tuple[str, ...] | None, size: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, rgb [H, W, 3] uint8, product alpha [H, W] uint8) per product (module docstring for the sources).

    Photo files keep their own size and pixels (``offline_data.photos`` decodes them); studio products are
    rendered at the model's resolution with a 0/255 alpha.
    """
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


def _load_reward(spec: str, model_path: str | None) -> Any:
    """A ``rollout.protocols.RewardFn`` from a reward model folder, ``gold[:SEGMENT]`` or ``MODULE:FACTORY``."""
    if spec == "gold" or spec.startswith("gold:"):
        return _GoldReward(spec.partition(":")[2] or None)
    if (Path(spec) / "reward.json").is_file():
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
        if segment is not None and segment not in SEGMENTS:
            raise BackdropError(f"--reward gold:{segment}: unknown segment; expected one of {', '.join(SEGMENTS)}")
        self.segment = segment

    def __call__(self, images: torch.Tensor, requests: list) -> torch.Tensor:
        masks = torch.stack([r.product_mask for r in requests]).numpy()
        segments = [self.segment or r.segment for r in requests]
        gold = gold_engagement(images.permute(0, 2, 3, 1).numpy(), masks, [r.prompt for r in requests], segments)
        return torch.from_numpy(gold).float()


def _write_outputs(out: Path, rollout: Any, batch: list, chosen: list[int], scores: list, sources: dict, rows: list,
                   records: list) -> list[CompositeCheck]:  # fmt: skip
    """Write the chosen images at their photos' own size and their trajectories; collect sheet rows.

    Images are ``<request_id>.png`` when one is kept per request, else ``<request_id>_<k>.png`` (characters other
    than letters, digits, ``.``, ``_`` and ``-`` become ``_``). Returns the alpha-rule check of every image.
    """
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


def _contact_sheet(out: Path, rows: list) -> Path:
    """The sheet of every kept image; photos larger than 192 px are shown as thumbnails (the files keep full size)."""

    def shown(image: np.ndarray) -> np.ndarray:
        if max(image.shape[:2]) <= 192:
            return image
        thumbnail = Image.fromarray(image)
        thumbnail.thumbnail((192, 192), Image.Resampling.LANCZOS)
        return np.asarray(thumbnail)

    rows = [(label, [(shown(image), caption) for image, caption in cells]) for label, cells in rows]
    return draw_contact_sheet(rows, out / "contact_sheet.png", label_width=260)
