"""The ``truth/`` sidecar of a simulation: hidden quantities for evaluation only.

Training code must never read it (a reward model that does would be grading itself with the answer key).
Evaluation code (ceilings, reward-model audits, policy evaluation) reads it through :func:`read_truth_table`.

Layout under ``<out>/truth/``:

- ``images.parquet`` (one row per generated image): image_id, product_id, variant, prompt, family,
  gold_<segment> for every segment, attractiveness_<segment> for every shopper segment, the gold terms
  (``engagement.FEATURES``), logging_score, p_variant.
- ``products.parquet``: product_id, kind, source, hue, saturation, value, segmenter_error_level,
  segmenter_iou, mask_path.
- ``impressions.parquet``: event_id, segment, position, clicked, examination, attractiveness, gold,
  click_probability, p_variant, p_slot.
- ``dwell.parquet`` (clicked impressions): event_id, gold, true_dwell_ms, session_left_ms, censored, p_censored.
- ``preferences.parquet``: pair_id, image_a, image_b, annotator_id, cross_product, gold_a, gold_b, p_a, p_b,
  p_tie, choice.
- ``world.json``: examination, click and dwell parameters (incl. the true dwell-gold slope and the session
  scale), annotator temperatures and biases, the tie strength, gold weights and normalisation, ceilings.
- ``masks/<product_id>.png``: the exact masks (the logs carry only the segmenter's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from offline_data.errors import InputUnreadableError

TRUTH_DIR = "truth"
TRUTH_TABLES: dict[str, str] = {
    "images": "images.parquet",
    "products": "products.parquet",
    "impressions": "impressions.parquet",
    "dwell": "dwell.parquet",
    "preferences": "preferences.parquet",
}
"""Truth table name -> file name under ``truth/``."""
WORLD_FILE = "world.json"
MASKS_DIR = "masks"

README = """EVALUATION ONLY. These files hold the studio world's hidden truth (gold engagement, true click and
choice probabilities, annotator and dwell parameters, exact masks). Training code must never read them:
they exist so evaluations can compare learned models with the truth and with the Bayes ceilings.
See offline_data/simulator/truth.py for the layout.
"""


def truth_path(sim_dir: str | Path, name: str) -> Path:
    """Path of truth table ``name`` (a key of :data:`TRUTH_TABLES`) in a simulation directory."""
    if name not in TRUTH_TABLES:
        raise ValueError(f"unknown truth table {name!r}; expected one of {', '.join(TRUTH_TABLES)}")
    return Path(sim_dir) / TRUTH_DIR / TRUTH_TABLES[name]


def read_truth_table(sim_dir: str | Path, name: str, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read one truth table as {column: [n] numpy array} (strings as object arrays).

    Raises:
        InputUnreadableError: the file is missing or not a readable Parquet file.
    """
    path = truth_path(sim_dir, name)
    try:
        table = pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise InputUnreadableError(
            f"{path}: truth table not found (is {sim_dir} a `backdrop simulate` output?)"
        ) from None
    except (OSError, pa.ArrowException) as exc:
        raise InputUnreadableError(f"{path}: cannot read truth table: {exc}") from None
    return {column: table.column(column).to_numpy(zero_copy_only=False) for column in table.column_names}
