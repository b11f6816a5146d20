"""The parts of a simulation's truth sidecar an audit reads (EVALUATION ONLY; training never sees them).

:func:`read_truth` loads, for the rows of one folder of logs: the true click probability of each impression, the
true choice probabilities of each judgement, the hidden gold of each image for every segment, and the exact
product masks; :func:`gold_function` scores edited images with the hidden gold (``offline_data.simulator``'s
engagement model, with the exact masks), which is how the probes tell a spurious shift from a real one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from offline_data.errors import InputUnreadableError
from reward.data import RewardData


@dataclasses.dataclass(frozen=True, eq=False)
class AuditTruth:
    """The truth an audit reads for one folder of logs."""

    directory: Path
    click_probability: dict[str, float]
    pair_probability: dict[str, tuple[float, float]]
    image_gold: dict[str, dict[str, float]]
    exact_masks: dict[str, np.ndarray]


def read_truth(truth_dir: Path, data: RewardData) -> AuditTruth:
    """Click probabilities, choice probabilities, gold and exact masks for the rows and images of ``data``.

    Raises:
        InputUnreadableError: a truth table or an exact mask is missing or unreadable.
    """
    from PIL import Image

    from offline_data.simulator.truth import TRUTH_DIR, read_truth_table

    impressions = read_truth_table(truth_dir, "impressions", ["event_id", "click_probability"])
    click = dict(zip(impressions["event_id"].tolist(), impressions["click_probability"].tolist()))
    pairs = read_truth_table(truth_dir, "preferences", ["pair_id", "p_a", "p_b"])
    pair_probability = {
        pid: (float(a), float(b)) for pid, a, b in zip(pairs["pair_id"].tolist(), pairs["p_a"], pairs["p_b"])
    }
    images = read_truth_table(truth_dir, "images")
    gold_columns = [c for c in images if c.startswith("gold_")]
    wanted = set(data.images.image_ids)
    image_gold = {
        iid: {c.removeprefix("gold_"): float(images[c][i]) for c in gold_columns}
        for i, iid in enumerate(images["image_id"].tolist())
        if iid in wanted
    }
    products = read_truth_table(truth_dir, "products", ["product_id", "mask_path"])
    needed = set(data.images.product_ids)
    exact_masks = {}
    for pid, path in zip(products["product_id"].tolist(), products["mask_path"].tolist()):
        if pid in needed:
            file = truth_dir / TRUTH_DIR / path
            try:
                exact_masks[pid] = np.asarray(Image.open(file).convert("L")) >= 128
            except OSError as exc:
                raise InputUnreadableError(f"{file}: cannot read the exact mask of product {pid!r}: {exc}") from None
    missing = sorted(needed - set(exact_masks))
    if missing:
        raise InputUnreadableError(f"{truth_dir}: the truth sidecar has no exact mask for product(s) {missing[:5]}")
    return AuditTruth(truth_dir, click, pair_probability, image_gold, exact_masks)


def gold_function(
    truth: AuditTruth, data: RewardData, rows: Sequence[int], segments: Sequence[str]
) -> Callable[[np.ndarray], np.ndarray]:
    """``images [N, H, W, 3] uint8 -> [N]`` hidden gold of edited copies of the images ``rows`` of ``data``, each
    for its segment, with the exact product masks and the images' prompts."""
    from offline_data.simulator.engagement import gold_engagement

    exact = np.stack([truth.exact_masks[data.images.product_ids[r]] for r in rows])
    prompts = [data.images.prompts[r] or "" for r in rows]

    def gold(images: np.ndarray) -> np.ndarray:
        return gold_engagement(images, exact, prompts, list(segments))

    return gold
