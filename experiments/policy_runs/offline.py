"""``backdrop policy offline``: fine-tune the policy from logs only (Diffusion-DPO or reward-weighted regression).

The logs are a folder of validated tables (``backdrop data validate`` output, or the train split of
``backdrop data split``), read with ``reward.data.load_reward_data``: the logged composites, their product masks
and prompts, the pairwise judgements (DPO) and the impressions (RWR). RWR's weights come from the reward model's
debiased click and dwell heads on the logged images, averaged over the configured shopper segments. Evaluation is
the same as ``backdrop policy train``'s (held-out studio products: proxy, gold, KL; or, with ``--requests``, the
eval rows of a team's request table: proxy and KL) so the runs compare; the run writes its request manifest.

Root config sections: [run], [policy], [catalogue], [world], [requests], [reward], [data], [offline], [sampler],
[eval].
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from experiments.config import RunConfig
from experiments.policy_runs.requests import CatalogueSourceConfig, run_requests
from experiments.policy_runs.train import (
    RewardSourceConfig,
    WorldSourceConfig,
    build_policy,
    load_reward_model,
    load_world,
)
from experiments.runtime import setup_runtime
from experiments.studio.requests import StudioRequestsConfig
from offline_data.errors import BackdropError
from policy.config import InpaintModelConfig, PolicyConfig
from policy.dpo import DPOObjective, preference_pairs
from policy.evaluation import EvaluationConfig, PolicyEvaluator
from policy.offline import LoggedImages, OfflineTrainer, encode_logged_images
from policy.offline_config import OfflineConfig
from policy.reward_signal import ScoredOutput
from policy.rwr import RWRObjective, combine_heads, rwr_weights
from reward.data import load_reward_data
from rollout.config import SamplerConfig
from rollout.request import InpaintRequest

logger = logging.getLogger("backdrop")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
"""The shipped configs: studio_dpo.toml and studio_rwr.toml (the default of --method dpo / rwr)."""
CHOICE_NAMES = {0: "a", 1: "b", 2: "tie"}
"""reward.data's choice codes (0 a, 1 b, 2 tie)."""


class OfflineDataError(BackdropError):
    """The logs cannot feed the chosen offline method (no pairs, no impressions, images without a prompt)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyOfflineRunConfig(RunConfig):
    """[run] of ``backdrop policy offline``."""

    name: str = "policy_offline"
    """Run name; results go to ``<output_dir>/<name>/<timestamp>``."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogSourceConfig:
    """Where the logs come from."""

    dir: Path | None = None
    """A folder of validated tables (assets + preferences for dpo, + impressions for rwr); ``--data`` overrides
    it. Use the train split, so that the evaluation products stay unseen."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyOfflineCommandConfig:
    """Root config of ``backdrop policy offline``."""

    run: PolicyOfflineRunConfig = PolicyOfflineRunConfig()
    """Run directory, seed, device, dtype and threads."""
    policy: PolicyConfig = PolicyConfig(model=InpaintModelConfig(pretrained=Path("studio_tiny")))
    """The base model and the LoRA adapter that is trained."""
    catalogue: CatalogueSourceConfig = CatalogueSourceConfig()
    """A team's own request table (``--requests``): its eval rows are the held-out evaluation (no gold)."""
    world: WorldSourceConfig = WorldSourceConfig()
    """The studio world of the held-out evaluation (gold), without [catalogue] requests."""
    requests: StudioRequestsConfig = StudioRequestsConfig()
    """Held-out evaluation products (and the segments RWR's reward is averaged over)."""
    reward: RewardSourceConfig = RewardSourceConfig()
    """The reward model: RWR's weights and the evaluation's proxy."""
    data: LogSourceConfig = LogSourceConfig()
    """The logs."""
    offline: OfflineConfig = OfflineConfig()
    """Method, steps, optimiser, DPO and RWR settings."""
    sampler: SamplerConfig = SamplerConfig()
    """Sampling of the evaluation (keep it equal to [trainer.sampler] of the DDPO runs it is compared with)."""
    eval: EvaluationConfig = EvaluationConfig()
    """Held-out evaluation."""


def logged_images(data: Any) -> Any:
    """``reward.data.RewardData`` images as ``policy.offline.LoggedImages``.

    Raises:
        OfflineDataError: an image without a prompt or a mask.
    """
    table = data.images
    if table.masks is None:
        raise OfflineDataError(f"{data.source}: product masks were not loaded")
    missing = [i for i, p in zip(table.image_ids, table.prompts) if not p]
    if missing:
        raise OfflineDataError(
            f"{data.source}/assets.parquet: {len(missing)} image(s) have no prompt (e.g. {missing[:3]}); offline "
            "training conditions on the prompt each image was generated for"
        )
    try:
        return LoggedImages(
            image_ids=tuple(table.image_ids),
            product_ids=tuple(table.product_ids),
            prompts=tuple(table.prompts),
            pixels=table.pixels,
            masks=table.masks,
        )
    except ValueError as exc:
        raise OfflineDataError(f"{data.source}: {exc}") from None


def dpo_objective(policy: Any, data: Any, images: Any, config: OfflineConfig, progress: bool = True) -> Any:
    """Diffusion-DPO on the logs' pairwise judgements."""
    pairs = data.pairs
    if len(pairs) == 0:
        raise OfflineDataError(f"{data.source}: no pairwise judgements (preferences.parquet) for DPO")
    choices = [CHOICE_NAMES[int(c)] for c in pairs.choice.tolist()]
    try:
        oriented = preference_pairs(
            pairs.image_a.tolist(), pairs.image_b.tolist(), choices, images.product_ids, config.dpo
        )
    except ValueError as exc:
        raise OfflineDataError(f"{data.source}/preferences.parquet: {exc}") from None
    logger.info("DPO pairs: %s", oriented.counts)
    encoded = encode_logged_images(policy, images, batch_size=config.encode_batch, progress=progress)
    return DPOObjective(encoded, oriented, config.dpo)


def rwr_objective(
    policy: Any, data: Any, images: Any, config: OfflineConfig, reward_fn: Any, segments: tuple, progress: bool = True
) -> Any:
    """Reward-weighted regression on the images shown in the impression logs."""

    if len(data.impressions) == 0:
        raise OfflineDataError(f"{data.source}: no impressions for reward-weighted regression")
    shown = torch.unique(data.impressions.image)
    subset = LoggedImages(
        image_ids=tuple(images.image_ids[i] for i in shown.tolist()),
        product_ids=tuple(images.product_ids[i] for i in shown.tolist()),
        prompts=tuple(images.prompts[i] for i in shown.tolist()),
        pixels=images.pixels[shown],
        masks=images.masks[shown],
    )
    heads: dict[str, list] = {}
    for start in range(0, len(subset), 256):
        pixels, masks = subset.pixels[start : start + 256], subset.masks[start : start + 256]
        per_segment = []
        for segment in segments:
            requests = [
                InpaintRequest(
                    request_id=f"log-{start + i}",
                    product_id=pid,
                    segment=segment,
                    prompt=prompt,
                    product_rgb=pixel,
                    product_mask=mask,
                )
                for i, (pid, prompt, pixel, mask) in enumerate(
                    zip(subset.product_ids[start:], subset.prompts[start:], pixels, masks)
                )
            ]
            with torch.no_grad():
                out = reward_fn(pixels, requests)
            if not isinstance(out, ScoredOutput) or not getattr(out, "heads", None):
                raise OfflineDataError("the reward model reports no per-head scores; RWR weights by its heads")
            per_segment.append({k: v.float().cpu() for k, v in out.heads.items()})
        for name in per_segment[0]:
            heads.setdefault(name, []).append(torch.stack([s[name] for s in per_segment]).mean(dim=0))
    scores = {name: torch.cat(parts) for name, parts in heads.items()}
    try:
        weights = rwr_weights(
            combine_heads(scores, config.rwr.head_weights), config.rwr.temperature, config.rwr.max_weight
        )
    except ValueError as exc:
        raise OfflineDataError(f"{data.source}: cannot weight the logged images: {exc}") from None
    encoded = encode_logged_images(policy, subset, batch_size=config.encode_batch, progress=progress)
    return RWRObjective(encoded, weights, config.rwr)


def train_offline(
    config: PolicyOfflineCommandConfig, *, data_dir: Path, reward_dir: Path, run: Any, progress: bool = True
) -> list[dict]:
    """Load the logs, build the objective, train with held-out evaluation; writes into ``run.dir``.

    ``progress`` shows the loading, encoding and training bars (``--no-progress`` turns them off).
    """
    runtime = setup_runtime(config.run)
    world = load_world(config.world) if config.catalogue.requests is None else None
    reward_fn = load_reward_model(reward_dir, head_weights=config.reward.head_weights, world=world)
    data = load_reward_data(data_dir, load_masks=True, progress=progress)
    images = logged_images(data)
    policy = build_policy(config.policy, runtime)
    method = config.offline.method
    if method == "dpo":
        objective = dpo_objective(policy, data, images, config.offline, progress)
    else:
        objective = rwr_objective(policy, data, images, config.offline, reward_fn, config.requests.segments, progress)
    requests = run_requests(config, run.dir, policy.resolution, world, need_train=False)
    evaluator = PolicyEvaluator(
        requests.evaluation, reward_fn=reward_fn, gold_fn=requests.gold_fn, sampler=config.sampler, config=config.eval
    )
    trainer = OfflineTrainer(
        policy,
        objective,
        config.offline,
        seed=config.run.seed,
        sampling_steps=config.sampler.num_steps,
        evaluator=evaluator,
        log_metrics=run.log_metrics,
        output_dir=run.dir,
        progress=progress,
    )
    history = trainer.train()
    evaluated = [h for h in history if "eval/kl_nats" in h]
    if evaluated:
        run.write_json("final_eval.json", evaluated[-1])
    return history
