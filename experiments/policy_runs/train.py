"""``backdrop policy train``: DDPO fine-tuning of the inpainting policy against a learned reward model.

Wires the pieces the policy package keeps apart: the requests (a team's request table with ``--requests``, else the
studio world's products with its hidden gold for evaluation only; ``experiments.policy_runs.requests``), the reward
model (``reward``'s scorer, loaded from ``--reward`` or ``[reward] model_dir``), the run directory
(``experiments.tracking``) and the trainer (``policy.trainer``). Resuming (``--resume RUN``) reopens the run
directory, drops metrics logged after the last checkpoint, and continues from it (its requests from its manifest).

Root config sections: [run], [policy] (model + lora), [catalogue], [world], [requests], [reward], [trainer], [eval].
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from experiments.config import ConfigError, RunConfig, load_config
from experiments.policy_runs.requests import CatalogueSourceConfig, run_requests
from experiments.runtime import setup_runtime
from experiments.studio.prompts import studio_vocabulary
from experiments.studio.requests import StudioRequestsConfig
from experiments.tracking import filter_metrics
from offline_data.errors import BackdropError
from offline_data.finite import NonFiniteError
from offline_data.simulator import SimulatorConfig, StudioWorld
from policy.config import InpaintModelConfig, PolicyConfig
from policy.evaluation import KL_PER_SAMPLE, KL_PER_STEP, EvaluationConfig, PolicyEvaluator
from policy.model import InpaintPolicy
from policy.trainer import DDPOTrainer
from policy.trainer_config import DDPOConfig
from reward.config import CombinationConfig
from reward.scorer import RewardScorer, ScoringRequest

logger = logging.getLogger("backdrop")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "studio_ddpo.toml"
DIVERGED_FILE = "diverged.json"
"""Written into a run that stopped with ``NonFiniteError`` (the message); export refuses such a run, and a resume
that finishes removes it."""
REWARD_TRAIN_HINT = (
    "train one first, e.g.\n"
    "  backdrop simulate --out runs/studio_world\n"
    "  backdrop reward train --data runs/studio_world\n"
    "then pass its folder: backdrop policy train --reward <model folder> (or set [reward] model_dir)"
)


class RewardModelMissingError(BackdropError):
    """No reward model was given and none is configured."""

    exit_code = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyTrainRunConfig(RunConfig):
    """[run] of ``backdrop policy train``."""

    name: str = "policy_train"
    """Run name; results go to ``<output_dir>/<name>/<timestamp>``."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorldSourceConfig:
    """The studio world requests and gold come from."""

    config: Path | None = None
    """A ``backdrop simulate`` TOML (e.g. experiments/configs/studio_world.toml); unset = the default world. Use
    the world the reward model's logs were simulated from."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardSourceConfig:
    """The reward model the policy is trained against."""

    model_dir: Path | None = None
    """Folder written by ``backdrop reward train`` (``--reward`` overrides it). Required."""
    head_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    """Weights of the reward model's calibrated heads in the combined reward (click, dwell, preference);
    empty = the combination the model was trained with."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyTrainCommandConfig:
    """Root config of ``backdrop policy train``."""

    run: PolicyTrainRunConfig = PolicyTrainRunConfig()
    """Run directory, seed, device, dtype and threads."""
    policy: PolicyConfig = PolicyConfig(model=InpaintModelConfig(pretrained=Path("studio_tiny")))
    """The base model (default: the shipped tiny studio base) and the LoRA adapter that is trained."""
    catalogue: CatalogueSourceConfig = CatalogueSourceConfig()
    """A team's own request table (``--requests``); when set, [world] and [requests] are unused; no gold."""
    world: WorldSourceConfig = WorldSourceConfig()
    """Where studio requests and the hidden gold come from (without [catalogue] requests)."""
    requests: StudioRequestsConfig = StudioRequestsConfig()
    """Studio training products/prompts/segments and the held-out evaluation products."""
    reward: RewardSourceConfig = RewardSourceConfig()
    """The reward model."""
    trainer: DDPOConfig = DDPOConfig()
    """DDPO: sampling, optimiser, KL, reward signal, advantages, cadence."""
    eval: EvaluationConfig = EvaluationConfig()
    """Held-out evaluation (seeds per request)."""


def load_world(config: WorldSourceConfig) -> Any:
    """The studio world of ``config`` (the default world when no file is given)."""
    simulator = SimulatorConfig() if config.config is None else load_config(SimulatorConfig, config.config)
    return StudioWorld(simulator)


class StudioRewardFn:
    """``reward``'s scorer as the policy's reward model: the full output (reward, heads, ensemble std).

    ``RewardScorer.reward_fn`` returns the combined reward alone; the trainer also needs the ensemble's
    uncertainty (pessimism, certainty weights) and the heads (logging, RWR), so this adapter returns the scorer's
    ``RewardOutput``. Requests gain the product kind the scorer reads (looked up by product id: the studio world's
    products first, then the kinds the reward model saw in training; unknown kinds use its out-of-vocabulary
    index, which the scorer counts) and keep their product mask (mask-aware encoders).
    """

    def __init__(self, scorer: Any, kinds: dict[str, str]) -> None:
        self.scorer = scorer
        self.kinds = {**scorer.product_kinds, **kinds}

    def __call__(self, images: Any, requests: Sequence[Any]) -> Any:
        scored = [
            ScoringRequest(
                segment=r.segment,
                prompt=r.prompt,
                product_kind=self.kinds.get(r.product_id),
                product_mask=r.product_mask,
            )
            for r in requests
        ]
        return self.scorer(images, scored)


def load_reward_model(model_dir: Path, *, head_weights: dict[str, float] | None = None, world: Any = None) -> Any:
    """A reward model folder as a ``policy.reward_signal.RewardModelFn`` (scorer output with uncertainty).

    Args:
        model_dir: written by ``backdrop reward train``.
        head_weights: replace the combination of the heads the model was trained with (empty/None keeps it).
        world: the studio world whose product kinds the requests refer to.

    Raises:
        RewardModelMissingError: the folder does not exist.
    """
    if not Path(model_dir).is_dir():
        raise RewardModelMissingError(f"reward model folder {model_dir} not found; {REWARD_TRAIN_HINT}")
    scorer = RewardScorer.load(model_dir)
    if head_weights:
        try:
            combination = CombinationConfig(weights=dict(head_weights))
        except ValueError as exc:
            raise ConfigError(f"[reward] head_weights: {exc}") from None
        config = dataclasses.replace(scorer.config, combination=combination)
        scorer = RewardScorer(scorer.ensemble, config, scorer.calibrator, scorer.normalisation, scorer.product_kinds)
    kinds = {p.product_id: p.kind for p in world.products} if world is not None else {}
    return StudioRewardFn(scorer, kinds)


def resolve_reward_dir(config: Any, override: str | None) -> Path:
    """``--reward`` if given, else ``[reward] model_dir``; checked before any run directory is made.

    Raises:
        RewardModelMissingError: neither is given, or the folder does not exist (with the commands to make one).
    """
    if override:
        folder = Path(override)
    elif config.reward.model_dir is not None:
        folder = config.reward.model_dir
    else:
        raise RewardModelMissingError(
            f"no reward model: pass --reward MODEL_DIR or set [reward] model_dir; {REWARD_TRAIN_HINT}"
        )
    if not folder.is_dir():
        raise RewardModelMissingError(f"reward model folder {folder} not found; {REWARD_TRAIN_HINT}")
    return folder


def build_policy(config: PolicyConfig, runtime: Any, device: Any = None) -> Any:
    """The base model with a fresh adapter, on the run's device (or ``device``) and dtype."""
    return InpaintPolicy.from_config(
        config.model,
        lora=config.lora,
        vocabulary=studio_vocabulary(),
        device=device or runtime.device,
        dtype=runtime.dtype,
    )


def launched_processes() -> int:
    """How many processes ``accelerate launch`` (or torchrun) started this command in (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this is process 0 of a launch (always true when run directly)."""
    return int(os.environ.get("RANK", "0")) == 0


class ProcessRun:
    """The run handle of a non-main process of a multi-process launch: it logs and writes nothing."""

    dir = None

    def log_metrics(self, metrics: Any, step: int) -> None:
        return None

    def write_json(self, name: str, payload: Any) -> None:
        return None

    def __enter__(self) -> ProcessRun:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def truncate_metrics(run_dir: Path, last_step: int) -> int:
    """Drop records of ``metrics.jsonl`` logged after ``last_step`` (the checkpoint a resume continues from), and a
    last line cut short by a kill (``experiments.tracking.read_metrics``).

    Returns:
        How many records were dropped (the torn line not counted).

    Raises:
        InputUnreadableError: a record that is not JSON (other than a torn last line) or has no integer step.
    """
    return filter_metrics(run_dir, lambda record: record["step"] <= last_step)


def train_policy(
    config: PolicyTrainCommandConfig,
    *,
    reward_dir: Path,
    run: Any,
    resume_from: Path | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Build everything from ``config`` and train; writes into ``run.dir``. Returns the trainer's history."""
    runtime = setup_runtime(config.run)
    accelerator, device = None, runtime.device
    if launched_processes() > 1:
        # `accelerate launch --num_processes N`: one process per device; gradients are averaged by the trainer.
        accelerator = Accelerator(cpu=runtime.device.type == "cpu")
        device = accelerator.device

    world = load_world(config.world) if config.catalogue.requests is None else None
    reward_fn = load_reward_model(reward_dir, head_weights=config.reward.head_weights, world=world)
    policy = build_policy(config.policy, runtime, device)  # after the reward model: both draw from torch's RNG
    requests = run_requests(config, run.dir, policy.resolution, world)
    logger.info(
        "%d training requests, %d held-out evaluation requests (%s); reward model %s",
        len(requests.train), len(requests.evaluation), requests.source, reward_dir,
    )  # fmt: skip
    evaluator = PolicyEvaluator(
        requests.evaluation,
        reward_fn=reward_fn,
        gold_fn=requests.gold_fn,
        sampler=config.trainer.sampler,
        config=config.eval,
        training_pessimism=config.trainer.reward.pessimism,
    )
    try:
        trainer = DDPOTrainer(
            policy,
            reward_fn,
            requests.train,
            config.trainer,
            seed=config.run.seed,
            evaluator=evaluator,
            log_metrics=run.log_metrics,
            log_image=getattr(run, "log_image", None),
            output_dir=run.dir,
            accelerator=accelerator,
            progress=progress and is_main_process(),
        )
    except ValueError as exc:
        raise ConfigError(f"[trainer]: {exc}") from None
    if resume_from is not None:
        trainer.resume(resume_from)
    try:
        history = trainer.train()
    except NonFiniteError as exc:
        run.write_json(DIVERGED_FILE, {"error": str(exc)})
        raise
    if run.dir is not None:
        (run.dir / DIVERGED_FILE).unlink(missing_ok=True)
    final = [h for h in history if "eval/kl_nats" in h]
    if final:
        run.write_json("final_eval.json", {"epoch": final[-1]["epoch"], **final[-1]})
    log_hparams = getattr(run, "log_hparams", None)
    if log_hparams is not None and history:
        evaluations = [h for h in history if "eval/kl_nats" in h]
        log_hparams(config, (evaluations or history)[-1])
    return history


def describe_evaluation(record: dict[str, float]) -> str:
    """One line of an evaluation: the gold gain when gold was measured, else the reward model's held-out gain
    (raw and in within-request SDs of the base); the pessimistic proxy's gain; the KL to the base."""
    if "gold/gain" in record:
        sd = record["gold/base_within_sd"]
        head = (
            f"gold {record['gold/engagement']:+.3f} vs base {record['gold/base_engagement']:+.3f}: gain "
            f"{record['gold/gain']:+.3f} raw = {record['gold/gain_sd']:+.2f} within-request SD (se "
            f"{record['gold/gain_se'] / sd:.2f}); proxy gain {record['eval/proxy_gain_sd']:+.2f} SD"
        )
    else:
        sd = record["eval/proxy_base_within_sd"]
        head = (
            f"no gold; proxy gain {record['eval/proxy_gain']:+.3f} raw = {record['eval/proxy_gain_sd']:+.2f} "
            f"within-request SD (se {record['eval/proxy_gain_se'] / sd:.2f})"
        )
    if "eval/pessimistic_gain_sd" in record:
        head += f"; pessimistic (mean - {record['eval/pessimism']:g} std) {record['eval/pessimistic_gain_sd']:+.2f} SD"
    kl = f"{KL_PER_SAMPLE} {record['eval/kl_nats']:.2f}"
    if "eval/kl_step" in record:
        kl += f", {KL_PER_STEP} {record['eval/kl_step']:.2e}"
    return f"epoch {int(record['epoch'])}: {head}; {kl}"
