"""Training the reward model: one ensemble member at a time, under ``accelerate``, with early stopping.

The loop of :func:`train_member`, top to bottom:

1. every step draws ``batch_impressions`` impressions, ``batch_pairs`` judgements and ``batch_dwell`` dwell rows
   (each table walks through its own shuffled order; an epoch is one pass over the impressions, or over the
   pairs when there are none);
2. the distinct images of those rows are encoded once (a trainable encoder sees them left-right mirrored at
   random; a frozen encoder's features were computed once before training);
3. loss = Σ_h weight_h · mean_w(per-row NLL of head h) + prompt-regression loss + annotator prior / pairs,
   where mean_w is the mean under the member's bootstrap weights (Poisson(1) per row; all 1 for ``seeds``);
4. AdamW with warm-up and cosine decay; head nuisance parameters (examination, annotator temperature and bias,
   tie and dwell spread) learn 10x faster and without weight decay, since they are few and well identified;
5. after each epoch, the validation losses (unweighted rows) decide early stopping; the best epoch's weights are
   kept.

A NaN or infinite training loss or gradient norm (checked every step, before the optimiser step) or validation loss
stops training with ``offline_data.finite.NonFiniteError`` naming the member, epoch and step.

Accelerate runs the same code on one CPU or several GPUs: every process draws the same global batch (the row
order, flips and bootstrap weights come from one seeded generator) and takes every k-th row of each table. Each
process's loss is its rows' part of the global batch's weighted mean, times the number of processes, so the
gradients DDP averages are those of one process given the whole batch; the feature normalisation takes its
statistics over the global batch's distinct images (``reward/batch_statistics.py``). Dropout masks are the one
difference left: they come from each process's own random stream (set ``reward.model.dropout = 0`` for results
equal to one process's up to float rounding).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm

from offline_data.finite import check_finite
from reward.batch_statistics import GlobalBatchNorm1d, owned_images
from reward.config import HEADS, RewardConfig
from reward.data import RewardData
from reward.errors import RewardDataError
from reward.losses import CHOICE_TIE
from reward.metrics import binary_auc
from reward.model import RewardModel, TrainingBatch
from reward.reference import PromptReference
from reward.vocabulary import ContextBatch, ContextVocabulary, Vocabulary, prompt_words

logger = logging.getLogger(__name__)

LogMetrics = Callable[[dict[str, float], int], None]
"""``log_metrics(metrics, step)``, e.g. ``experiments.tracking.Run.log_metrics``."""
NUISANCE_LR_SCALE = 10.0
"""Learning-rate multiplier of the heads' nuisance parameters."""
EVAL_CHUNK = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class IndexedData:
    """A :class:`RewardData` with its contexts, annotators and (frozen) features turned into tensors.

    Attributes:
        data: the rows and images.
        image_words: [N, L] int64 prompt-word indices of each image.
        image_kind: [N] int64 product-kind index of each image.
        impression_segment: [n] int64 segment index of each impression.
        pair_annotator: [p] int64 annotator index (0 = not seen in training).
        features: [N, D] float32 cached features of a frozen encoder, or None.
        oov: out-of-vocabulary counts {"segment", "word", "kind", "annotator"}.
    """

    data: RewardData
    image_words: Tensor
    image_kind: Tensor
    impression_segment: Tensor
    pair_annotator: Tensor
    features: Tensor | None
    oov: dict[str, int]


def build_vocabulary(data: RewardData, config: RewardConfig) -> ContextVocabulary:
    """Vocabularies of the training split (the preference segment is always known)."""
    ctx = config.context
    segments = list(data.impressions.segment) + [ctx.preference_segment] * ctx.min_count
    words = [w for p in data.images.prompts for w in prompt_words(p)]
    return ContextVocabulary(
        segments=Vocabulary.build(segments, ctx.min_count),
        words=Vocabulary.build(words, ctx.min_count),
        kinds=Vocabulary.build(data.images.kinds, ctx.min_count),
    )


def annotator_ids(data: RewardData) -> tuple[str, ...]:
    """Annotators of the training split, sorted (the preference head's table; index 0 is for unseen ones)."""
    return tuple(sorted(set(data.pairs.annotators)))


def index_data(
    data: RewardData,
    vocabulary: ContextVocabulary,
    annotators: tuple[str, ...],
    features: Tensor | None = None,
) -> IndexedData:
    """Context and annotator indices of ``data`` (and its cached frozen features [N, D], if any)."""
    images = data.images
    context, oov = vocabulary.encode([None] * len(images), images.prompts, images.kinds)
    segment, segment_oov = vocabulary.segments.index(list(data.impressions.segment))
    lookup = {a: i + 1 for i, a in enumerate(annotators)}
    annotator = torch.tensor([lookup.get(a, 0) for a in data.pairs.annotators], dtype=torch.long)
    if features is not None and features.shape[0] != len(images):
        raise ValueError(f"features have {features.shape[0]} rows for {len(images)} images")
    counts = {
        "segment": segment_oov,
        "word": oov["word"],
        "kind": oov["kind"],
        "annotator": int((annotator == 0).sum()),
    }
    return IndexedData(data, context.words, context.kind, segment, annotator, features, counts)


def encode_frozen(encoder: nn.Module, data: RewardData, *, batch_size: int = 64, progress: bool = False) -> Tensor:
    """Features of every image of ``data`` under a frozen encoder: [N, D] float32 on the CPU."""
    images = data.images
    out = []
    starts = range(0, len(images), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="encoding images", unit="batch", disable=not progress):
            rows = slice(start, start + batch_size)
            masks = images.masks[rows] if images.masks is not None and encoder.needs_mask else None
            out.append(encoder.encode(images.pixels[rows], masks, images.image_ids[rows]).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, encoder.dim)


def _context(indexed: IndexedData, images: Tensor, segment: Tensor) -> ContextBatch:
    return ContextBatch(segment=segment, words=indexed.image_words[images], kind=indexed.image_kind[images])


def make_batch(
    indexed: IndexedData,
    preference_segment: int,
    click_rows: Tensor,
    dwell_rows: Tensor,
    pair_rows: Tensor,
    *,
    flip: Tensor | None = None,
    training: bool = False,
) -> TrainingBatch:
    """The :class:`TrainingBatch` of the given rows (impression, dwell and pair row indices [n], [m], [p]).

    Args:
        flip: [N] bool per image of the table: mirror it left-right (augmentation); None = never.
        training: ``indexed`` is the training table (its image rows index the click head's image offsets).
    """
    data = indexed.data
    imp = data.impressions
    click_images = imp.image[click_rows]
    dwell_images = imp.image[dwell_rows]
    a, b = data.pairs.image_a[pair_rows], data.pairs.image_b[pair_rows]
    unique, inverse = torch.unique(row_images(data, click_rows, dwell_rows, pair_rows), return_inverse=True)
    sizes = [len(click_images), len(dwell_images), len(a), len(b)]
    click_i, dwell_i, a_i, b_i = torch.split(inverse, sizes)
    pixels = masks = features = None
    if indexed.features is not None:
        features = indexed.features[unique]
    else:
        pixels = data.images.pixels[unique]
        masks = data.images.masks[unique] if data.images.masks is not None else None
        if flip is not None:
            mirrored = flip[unique]
            pixels = torch.where(mirrored[:, None, None, None], pixels.flip(3), pixels)
            if masks is not None:
                masks = torch.where(mirrored[:, None, None], masks.flip(2), masks)
    panel = torch.full((len(pair_rows),), preference_segment, dtype=torch.long)
    return TrainingBatch(
        features=features,
        pixels=pixels,
        masks=masks,
        click_image=click_i,
        click_table_image=click_images if training else None,
        click_context=_context(indexed, click_images, indexed.impression_segment[click_rows]),
        click_position=imp.position[click_rows],
        click_clicked=imp.clicked[click_rows],
        dwell_image=dwell_i,
        dwell_context=_context(indexed, dwell_images, indexed.impression_segment[dwell_rows]),
        dwell_ms=imp.dwell_ms[dwell_rows],
        dwell_censored=imp.censored[dwell_rows],
        pair_a=a_i,
        pair_b=b_i,
        pair_context_a=_context(indexed, a, panel),
        pair_context_b=_context(indexed, b, panel),
        pair_annotator=indexed.pair_annotator[pair_rows],
        pair_choice=data.pairs.choice[pair_rows],
    )


def row_images(data: RewardData, click_rows: Tensor, dwell_rows: Tensor, pair_rows: Tensor) -> Tensor:
    """The image index of every row, in :func:`make_batch`'s order: clicks, dwell, pairs' a, pairs' b ([n+m+2p])."""
    imp, pairs = data.impressions, data.pairs
    return torch.cat(
        [imp.image[click_rows], imp.image[dwell_rows], pairs.image_a[pair_rows], pairs.image_b[pair_rows]]
    )


def batch_to(batch: TrainingBatch, device: torch.device) -> TrainingBatch:
    """The batch with every tensor on ``device``."""
    moved = {}
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        moved[field.name] = value.to(device) if value is not None else None
    return TrainingBatch(**moved)


@dataclasses.dataclass
class MemberResult:
    """A trained member and how training went."""

    model: RewardModel
    history: list[dict[str, float]]
    """Per epoch: training and validation losses and metrics."""
    best_epoch: int
    best_validation_loss: float
    stopped_early: bool


class _Cycler:
    """Endless shuffled walk over ``rows`` (a new permutation per pass)."""

    def __init__(self, rows: Tensor, generator: torch.Generator) -> None:
        self.rows = rows
        self.generator = generator
        self.order = rows[torch.randperm(len(rows), generator=generator)] if len(rows) else rows
        self.position = 0

    def take(self, count: int) -> Tensor:
        if len(self.rows) == 0 or count == 0:
            return self.rows[:0]
        parts, needed = [], count
        while needed > 0:
            if self.position >= len(self.order):
                self.order = self.rows[torch.randperm(len(self.rows), generator=self.generator)]
                self.position = 0
            chunk = self.order[self.position : self.position + needed]
            self.position += len(chunk)
            needed -= len(chunk)
            parts.append(chunk)
        return torch.cat(parts)


def _share_of_mean(values: Tensor, weights: Tensor | None, total: float) -> Tensor:
    """This process's part of the global batch's weighted mean: sum_i w_i v_i over its rows / ``total`` (the
    global batch's sum of weights, or its row count when ``weights`` is None)."""
    if values.numel() == 0:
        return values.new_zeros(())
    summed = values.sum() if weights is None else (values * weights).sum()
    return summed / max(total, 1e-8)


def _total_weight(rows: Tensor, weights: Tensor | None) -> float:
    """The denominator of a head's weighted mean over the global batch's ``rows``."""
    return float(len(rows)) if weights is None else float(weights[rows].sum())


def initial_examination(data: RewardData, slots: int) -> Tensor:
    """Starting θ_k: each slot's CTR over slot 1's (biased toward the ranking on ranked logs, but far closer than
    a constant; the joint fit corrects it). [S] in (0, 1]."""
    imp = data.impressions
    shown = torch.bincount(imp.position - 1, minlength=slots).double().clamp(min=1)
    clicks = torch.bincount(imp.position - 1, weights=imp.clicked.double(), minlength=slots)
    ctr = clicks / shown
    if ctr[0] <= 0:
        return torch.ones(slots)
    return (ctr / ctr[0]).clamp(0.05, 0.95).float()


def build_model(
    config: RewardConfig,
    *,
    feature_dim: int,
    scene_dim: int,
    vocabulary: ContextVocabulary,
    slots: int,
    annotators: tuple[str, ...],
    encoder: nn.Module | None,
    reference: PromptReference | None = None,
    training_images: int = 0,
) -> RewardModel:
    """A fresh member (the trainable encoder and the fitted prompt reference are copied into it, so members do
    not share weights)."""
    model = RewardModel(
        config,
        feature_dim=feature_dim,
        scene_dim=scene_dim,
        vocabulary=vocabulary,
        slots=slots,
        annotators=annotators,
        encoder=copy.deepcopy(encoder) if encoder is not None else None,
        training_images=training_images,
    )
    if reference is not None and model.reference is not None:
        model.reference.load_state_dict(reference.state_dict())
        for parameter in model.reference.parameters():
            parameter.requires_grad_(False)
    return model


def fit_reference(
    config: RewardConfig,
    train: IndexedData,
    vocabulary: ContextVocabulary,
    encoder: nn.Module,
    *,
    seed: int,
) -> PromptReference | None:
    """The prompt reference fitted on the training images (``reference.py``), or None when the encoder has no
    scene statistics or prompts are ignored. Raises RewardDataError when no training image has a prompt."""
    scene_dim = encoder.scene_dim
    if not scene_dim or not config.context.prompt_dim:
        return None
    images = train.data.images
    if train.features is not None:
        scene = train.features[:, :scene_dim]
    else:
        with torch.no_grad():
            scene = torch.cat(
                [
                    encoder.encode(images.pixels[i : i + 256], images.masks[i : i + 256])[:, :scene_dim]
                    for i in range(0, len(images), 256)
                ]
            )
    has_prompt = (train.image_words != 0).any(dim=1)
    if not bool(has_prompt.any()):
        raise RewardDataError(
            f"{train.data.source}: no image has a prompt (assets.prompt), so the prompt reference cannot be fitted; "
            "set reward.context.prompt_dim = 0 to ignore prompts"
        )
    reference = PromptReference(vocabulary.words.size, scene_dim)
    error = reference.fit(train.image_words[has_prompt], scene[has_prompt].float(), seed=seed)
    logger.info(
        "prompt reference: training MSE %.3f (standardised scene statistics) on %d images",
        error,
        int(has_prompt.sum()),
    )
    return reference


def _optimizer(model: RewardModel, config: RewardConfig) -> torch.optim.Optimizer:
    nuisance_names = ("examination_logits", "log_temperature", "side_bias", "log_tie", "log_spread", "image_effects")
    nuisance, decay, plain = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.split(".")[-1] in nuisance_names:
            nuisance.append(parameter)
        elif parameter.ndim >= 2:
            decay.append(parameter)
        else:
            plain.append(parameter)
    train = config.train
    groups = [
        {"params": decay, "weight_decay": train.weight_decay, "lr": train.learning_rate},
        {"params": plain, "weight_decay": 0.0, "lr": train.learning_rate},
        {"params": nuisance, "weight_decay": 0.0, "lr": train.learning_rate * NUISANCE_LR_SCALE},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]])


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, total_steps // 30)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_member(
    config: RewardConfig,
    train: IndexedData,
    validation: IndexedData,
    model: RewardModel,
    *,
    seed: int,
    device: torch.device,
    bootstrap: bool = False,
    log_metrics: LogMetrics | None = None,
    member: int = 0,
    progress: bool = True,
) -> MemberResult:
    """Train one member (module docstring) and return it with the weights of its best validation epoch.

    Args:
        config: the reward configuration.
        train, validation: indexed splits (validation decides early stopping).
        model: a fresh :class:`RewardModel` (see :func:`build_model`).
        seed: seeds the row order, augmentation and bootstrap weights.
        device: where to train (``experiments.runtime`` resolves it).
        bootstrap: weight rows by Poisson(1) draws (a bootstrap resample of the training rows).
        log_metrics: called with per-epoch metrics (namespaced ``train/``, ``val/``, member-prefixed).
        member: index used in metric names and the progress bar.
    """
    tc = config.train
    data = train.data
    generator = torch.Generator().manual_seed(seed)
    imp_rows = torch.arange(len(data.impressions))
    dwell_rows = data.dwell_rows
    pair_rows = torch.arange(len(data.pairs))
    if config.preference.ties == "none":
        pair_rows = pair_rows[data.pairs.choice != CHOICE_TIE]
    weights = {
        "click": torch.poisson(torch.ones(len(data.impressions)), generator=generator) if bootstrap else None,
        "pairs": torch.poisson(torch.ones(len(data.pairs)), generator=generator) if bootstrap else None,
    }
    if not tc.weight("click"):
        imp_rows = imp_rows[:0]
    if not tc.weight("dwell"):
        dwell_rows = dwell_rows[:0]
    if not tc.weight("preference"):
        pair_rows = pair_rows[:0]
    steps = tc.steps_per_epoch or max(
        math.ceil(len(imp_rows) / tc.batch_impressions), math.ceil(len(pair_rows) / tc.batch_pairs), 1
    )
    if config.click.mode == "pbm" and len(data.impressions):
        theta = initial_examination(data, model.click.slots)[1:]
        with torch.no_grad():
            model.click.examination_logits.copy_(torch.log(theta) - torch.log1p(-theta))
    observed = data.impressions.has_dwell & ~data.impressions.censored
    if bool(observed.any()):
        start = torch.log(data.impressions.dwell_ms[observed].float().clamp(min=1)).mean()
        with torch.no_grad():
            model.dwell.score.bias.fill_(float(start))

    accelerator = Accelerator(cpu=device.type == "cpu")
    rank, world = accelerator.process_index, accelerator.num_processes
    if world > 1:
        model.normalise = GlobalBatchNorm1d(model.normalise)  # statistics of the global batch (module docstring)
    optimizer = _optimizer(model, config)
    scheduler = _schedule(optimizer, tc.epochs * steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    cyclers = [_Cycler(rows, generator) for rows in (imp_rows, dwell_rows, pair_rows)]
    preference_segment = int(accelerator.unwrap_model(model).preference_segment)
    pair_count = max(len(pair_rows), 1)
    impression_count = max(len(imp_rows), 1)

    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state, stale = math.inf, -1, None, 0
    bar = tqdm(range(tc.epochs), desc=f"member {member}", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        sums = dict.fromkeys(HEADS, 0.0)
        for step in range(steps):
            sampled = [
                c.take(size) for c, size in zip(cyclers, (tc.batch_impressions, tc.batch_dwell, tc.batch_pairs))
            ]
            rows = [r[rank::world] for r in sampled]  # this process's share of the global batch
            flip = torch.rand(len(data.images), generator=generator) < 0.5 if tc.flip_augment else None
            if world > 1:
                shares = [torch.unique(row_images(data, *[r[q::world] for r in sampled])) for q in range(world)]
                accelerator.unwrap_model(model).normalise.set_ownership(*owned_images(shares, rank))
            batch = batch_to(
                make_batch(train, preference_segment, *rows, flip=flip, training=True), accelerator.device
            )
            losses = model(batch)
            row_weights = (weights["click"], weights["click"], weights["pairs"])  # dwell rows are impressions
            head_loss = {}
            for h, local, everyone, w in zip(HEADS, rows, sampled, row_weights):
                local_w = w[local].to(accelerator.device) if w is not None else None
                # x world: DDP averages the processes' gradients, and their shares add up to the global mean
                head_loss[h] = world * _share_of_mean(losses[h], local_w, _total_weight(everyone, w))
            total = (
                sum(tc.weight(h) * head_loss[h] for h in HEADS)
                + losses["prior"] / pair_count
                + tc.weight("click") * losses["effects_prior"] / impression_count
            )
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(total)
            checked = {"train/loss": total.detach()}
            if tc.grad_clip:
                checked["train/grad_norm"] = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
            # before the step: a NaN here would reach every weight, and the folder is written only after fitting
            check_finite(checked, f"member {member}, epoch {epoch + 1} of {tc.epochs}, step {step + 1} of {steps}")
            optimizer.step()
            scheduler.step()
            for h in HEADS:
                sums[h] += float(head_loss[h].detach()) / steps
        if world > 1:  # each process's sums are world x its share: their mean is the global batch's
            reduced = accelerator.reduce(torch.tensor([sums[h] for h in HEADS], device=accelerator.device), "mean")
            sums = dict(zip(HEADS, reduced.tolist()))
        record = {f"train/{k}_nll": v for k, v in sums.items()}
        record["epoch"] = float(epoch)
        if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
            unwrapped = accelerator.unwrap_model(model)
            metrics = evaluate_losses(unwrapped, validation, config, device=accelerator.device)
            record.update({f"val/{k}": v for k, v in metrics.items()})
            loss = metrics["loss"]
            check_finite({"val/loss": loss}, f"member {member}, epoch {epoch + 1} of {tc.epochs}")
            if loss < best_loss - 1e-6:
                best_loss, best_epoch, stale = loss, epoch, 0
                best_state = copy.deepcopy(unwrapped.state_dict())
            else:
                stale += 1
            bar.set_postfix(val_loss=f"{loss:.4f}", best=best_epoch)
        history.append(record)
        if log_metrics is not None:
            log_metrics({f"member{member}/{k}": v for k, v in record.items() if k != "epoch"}, epoch)
        if tc.patience and stale >= tc.patience:
            logger.info("member %d: early stop after epoch %d (best %d)", member, epoch, best_epoch)
            break
    bar.close()
    final = accelerator.unwrap_model(model)
    if isinstance(final.normalise, GlobalBatchNorm1d):
        final.normalise = final.normalise.to_batch_norm()
    if best_state is not None:
        final.load_state_dict(best_state)
    final.eval()
    stopped = len(history) < tc.epochs
    return MemberResult(final.cpu(), history, best_epoch, best_loss, stopped)


@torch.no_grad()
def evaluate_losses(model: RewardModel, indexed: IndexedData, config: RewardConfig, *, device: torch.device) -> dict:
    """Validation losses and quick metrics of one member, in eval mode (no augmentation, no weights).

    Returns:
        {"loss": Σ_h weight_h · mean NLL_h (the early-stopping criterion), "<head>_nll", "click_auc",
        "pairwise_accuracy", "exam_<k>"}; metrics without rows are omitted.
    """
    was_training = model.training
    model.eval()
    data = indexed.data
    tc = config.train
    preference_segment = int(model.preference_segment)
    sums = dict.fromkeys(HEADS, 0.0)
    counts = dict.fromkeys(HEADS, 0)
    click_probability, utility_gap = [], []
    tables = {
        "click": torch.arange(len(data.impressions)),
        "dwell": data.dwell_rows,
        "preference": torch.arange(len(data.pairs)),
    }
    if config.preference.ties == "none":
        tables["preference"] = tables["preference"][data.pairs.choice != CHOICE_TIE]
    longest = max(len(rows) for rows in tables.values())
    for start in range(0, longest, EVAL_CHUNK):
        rows = [tables[h][start : start + EVAL_CHUNK] for h in HEADS]
        batch = batch_to(make_batch(indexed, preference_segment, *rows), device)
        losses = model(batch)
        for h in HEADS:
            sums[h] += float(losses[h].sum())
            counts[h] += losses[h].numel()
        if len(rows[0]) or len(rows[2]):
            raw = batch.features if batch.features is not None else model.encode(batch.pixels, batch.masks)
            features, scene = model.normalised(raw), raw[:, : model.scene_dim]

            def trunk(images: Tensor, context: ContextBatch, features=features, scene=scene) -> Tensor:
                return model.hidden(features[images], scene[images], context)

        if len(rows[0]):
            logits = model.click(trunk(batch.click_image, batch.click_context))
            click_probability.append(model.click.click_probability(logits, batch.click_position).cpu())
        if len(rows[2]):
            utility_a = model.preference(trunk(batch.pair_a, batch.pair_context_a))
            utility_b = model.preference(trunk(batch.pair_b, batch.pair_context_b))
            utility_gap.append((utility_a - utility_b).cpu())
    out: dict[str, float] = {}
    total = 0.0
    for h in HEADS:
        if counts[h]:
            out[f"{h}_nll"] = sums[h] / counts[h]
            total += tc.weight(h) * out[f"{h}_nll"]
    out["loss"] = total
    clicked = data.impressions.clicked.numpy()
    if click_probability and 0 < clicked.sum() < clicked.size:
        out["click_auc"] = binary_auc(torch.cat(click_probability).numpy(), clicked)
    if utility_gap:
        choice = data.pairs.choice[tables["preference"]].numpy()
        gap = torch.cat(utility_gap).numpy()
        decisive = choice != CHOICE_TIE
        if decisive.any():
            out["pairwise_accuracy"] = float(np.mean((gap[decisive] > 0) == (choice[decisive] == 0)))
    for k, theta in enumerate(model.click.examination().tolist()):
        out[f"exam_{k + 1}"] = theta
    model.train(was_training)
    if not counts["click"] and not counts["preference"]:
        raise RewardDataError(
            f"validation split ({data.source}) has no impressions and no pairs to evaluate on; small logs split by "
            "product can leave it empty: log more products, raise the validation fraction (backdrop data split "
            "--fractions 0.7,0.2,0.1) or split by time"
        )
    return out
