"""From split folders to a saved ``RewardScorer``: load, train the ensemble, calibrate, normalise, report.

train/ validation/   (validated tables, e.g. ``backdrop data split`` output)
    -> load_reward_data              (no truth: training never sees the simulator's sidecar)
    -> train_ensemble                (K members, early stopping on validation)
    -> choose_calibrator             (click head, on validation impressions; kept only if held-out ECE drops)
    -> head statistics               (mean/std of each head over the training impressions)
    -> RewardScorer + training metrics
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from reward.calibration import CalibrationChoice, Calibrator, choose_calibrator
from reward.config import RewardConfig
from reward.data import load_reward_data
from reward.encoders import build_encoder
from reward.ensemble import head_statistics, score_rows, train_ensemble
from reward.scorer import RewardScorer
from reward.train import LogMetrics

logger = logging.getLogger(__name__)


def fit_reward_model(
    config: RewardConfig,
    train_dir: str | Path,
    validation_dir: str | Path,
    *,
    seed: int,
    device: torch.device,
    log_metrics: LogMetrics | None = None,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
) -> tuple[RewardScorer, dict]:
    """Train, calibrate and assemble a reward model from two folders of validated tables.

    Args:
        checkpoint_dir: finished members are saved there and loaded from there (a resumed run; see
            ``reward.ensemble.train_ensemble``).

    Returns:
        ``(scorer, metrics)``: metrics hold per-member histories and best epochs, validation metrics, the
        estimated examination, the calibrator and out-of-vocabulary counts.

    Raises:
        RewardDataError / MissingImageError / EmbeddingError: the data cannot train this model (named).
    """
    started = time.perf_counter()
    encoder = build_encoder(config.encoder)
    needs_mask = bool(encoder.needs_mask)
    train = load_reward_data(train_dir, load_masks=needs_mask, progress=progress)
    validation = load_reward_data(validation_dir, load_masks=needs_mask, progress=progress)
    logger.info(
        "train: %d images, %d impressions, %d pairs; validation: %d images, %d impressions, %d pairs",
        len(train.images), len(train.impressions), len(train.pairs),
        len(validation.images), len(validation.impressions), len(validation.pairs),
    )  # fmt: skip
    result = train_ensemble(config, train, validation, encoder, seed=seed, device=device, log_metrics=log_metrics,
                            progress=progress, checkpoint_dir=checkpoint_dir)  # fmt: skip
    ensemble = result.ensemble
    theta = torch.stack([m.click.examination() for m in ensemble.members]).detach().cpu().numpy()

    imp = validation.impressions
    calibrator_method = config.calibration.method
    if len(imp) and 0 < int(imp.clicked.sum()) < len(imp):
        scores = score_rows(ensemble, result.validation, imp.image, result.validation.impression_segment)
        logits = scores["click"].double().mean(dim=0).numpy()
        exam = theta.mean(axis=0)[imp.position.numpy() - 1]
        choice = choose_calibrator(calibrator_method, logits, exam, imp.clicked.numpy(), seed=seed)
        logger.info("calibration: %s", choice.reason)
    else:
        reason = (
            f"validation has {len(imp):,} impressions and {int(imp.clicked.sum()):,} clicks (needs rows with and "
            "without clicks): click head left uncalibrated"
        )
        logger.warning(reason)
        choice = CalibrationChoice(Calibrator("none", note=reason), calibrator_method, False, None, None, 0, reason)
    calibrator = choice.calibrator

    train_imp = train.impressions
    panel = int(ensemble.members[0].preference_segment)
    if len(train_imp):
        rows_scores = score_rows(ensemble, result.train, train_imp.image, result.train.impression_segment)
    else:
        images = torch.arange(len(train.images))
        rows_scores = score_rows(ensemble, result.train, images, torch.full((len(images),), panel))
    images = torch.arange(len(train.images))
    panel_scores = score_rows(ensemble, result.train, images, torch.full((len(images),), panel))
    rows_scores["click"] = torch.from_numpy(calibrator.probability(rows_scores["click"].double().numpy(), 1.0))
    stats = head_statistics(
        {"click": rows_scores["click"], "dwell": rows_scores["dwell"], "preference": panel_scores["preference"]}
    )
    scorer = RewardScorer(ensemble, config, calibrator, stats, result.product_kinds)
    metrics = {
        "seconds": time.perf_counter() - started,
        "train": {
            "dir": str(train_dir),
            "images": len(train.images),
            "impressions": len(train.impressions),
            "pairs": len(train.pairs),
            "dwell": int(train.impressions.has_dwell.sum()),
        },
        "validation": {
            "dir": str(validation_dir),
            "images": len(validation.images),
            "impressions": len(validation.impressions),
            "pairs": len(validation.pairs),
        },
        "members": [
            {
                "best_epoch": r.best_epoch,
                "best_validation_loss": r.best_validation_loss,
                "stopped_early": r.stopped_early,
                "epochs_run": len(r.history),
                "best": r.history[r.best_epoch] if 0 <= r.best_epoch < len(r.history) else {},
            }
            for r in result.members
        ],
        "examination": theta.mean(axis=0).tolist(),
        "examination_members": theta.tolist(),
        "calibrator": calibrator.to_dict(),
        "calibration": choice.to_dict(),
        "normalisation": {h: list(v) for h, v in stats.items()},
        "out_of_vocabulary": {"train": result.train.oov, "validation": result.validation.oov},
        "history": [r.history for r in result.members],
    }
    return scorer, metrics
