"""The parts of a simulation's truth sidecar an audit reads (EVALUATION ONLY; training never sees them).

:func:`read_truth` loads, for the rows of one folder of logs: the true click probability of each impression, the
true choice probabilities of each judgement, the hidden gold of each image for every segment, and the exact
product masks, into a :class:`reward.truth.AuditTruth` that carries the simulator's hidden engagement model
(``offline_data.simulator.engagement.gold_engagement``); ``reward.truth.gold_function`` scores edited images
with it, which is how the audit's probes tell a spurious shift from a real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from offline_data.errors import InputUnreadableError
from offline_data.simulator.engagement import gold_engagement
from offline_data.simulator.truth import TRUTH_DIR, read_truth_table
from reward.data import RewardData
from reward.truth import AuditTruth


def read_truth(truth_dir: Path, data: RewardData) -> AuditTruth:
    """Click probabilities, choice probabilities, gold and exact masks for the rows and images of ``data``.

    Raises:
        InputUnreadableError: a truth table or an exact mask is missing or unreadable.
    """
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
    return AuditTruth(truth_dir, click, pair_probability, image_gold, exact_masks, gold_engagement)
