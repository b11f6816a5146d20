"""The studio world's hidden truth as the reward evaluation and audit read it (EVALUATION ONLY).

:class:`StudioTruth` satisfies ``reward.truth.WorldTruth`` over a ``backdrop simulate`` folder (its ``truth/``
sidecar: ``world.json``, the truth tables, the exact masks), and :func:`prompt_family` groups studio prompts by
material for the by-family slices of ``reward.evaluation`` and ``reward.audit``. The reward package takes both
as arguments; this module is where they meet ``offline_data.simulator``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.studio.audit_truth import read_truth
from offline_data.simulator.ceilings import Ceilings, bayes_ceilings
from offline_data.simulator.prompts import PromptError
from offline_data.simulator.prompts import prompt_family as studio_family
from offline_data.simulator.truth import WORLD_FILE, read_truth_table, truth_path
from reward.data import RewardData
from reward.truth import AuditTruth


def prompt_family(prompt: str | None) -> str:
    """A studio prompt's family (its material); "none" for no prompt, "other" for a prompt of another world."""
    if not prompt:
        return "none"
    try:
        return studio_family(prompt)
    except PromptError:
        return "other"


class StudioTruth:
    """The truth sidecar of one ``backdrop simulate`` folder (``reward.truth.WorldTruth``)."""

    def __init__(self, directory: str | Path) -> None:
        self._directory = Path(directory)

    @property
    def directory(self) -> Path:
        """The simulation folder."""
        return self._directory

    def examination(self) -> np.ndarray:
        """True examination probability per slot ``[S]``, from the sidecar's world.json."""
        world_file = truth_path(self._directory, "images").parent / WORLD_FILE
        world = json.loads(world_file.read_text(encoding="utf-8"))
        return np.asarray(world["examination"], dtype=np.float64)

    def ceilings(self, *, pair_ids: Sequence[str] | None, event_ids: Sequence[str] | None) -> Ceilings:
        """Bayes ceilings of the given judgements and impressions (``offline_data.simulator.ceilings``)."""
        return bayes_ceilings(self._directory, pair_ids=pair_ids, event_ids=event_ids)

    def choice_probabilities(self, pair_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """True (P(a chosen), P(b chosen)) of each pair, in ``pair_ids`` order."""
        table = read_truth_table(self._directory, "preferences", ["pair_id", "p_a", "p_b"])
        where = {pid: i for i, pid in enumerate(table["pair_id"])}
        rows = np.array([where[p] for p in pair_ids], dtype=np.int64)
        return table["p_a"][rows], table["p_b"][rows]

    def image_gold(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Hidden gold of each image per segment, from the sidecar's ``gold_<segment>`` columns."""
        images = read_truth_table(self._directory, "images")
        where = {iid: i for i, iid in enumerate(images["image_id"])}
        rows = np.array([where[i] for i in image_ids], dtype=np.int64)
        return {c.removeprefix("gold_"): images[c][rows] for c in images if c.startswith("gold_")}

    def audit_truth(self, data: RewardData) -> AuditTruth:
        """Click and choice probabilities, gold and exact masks for the rows of ``data``."""
        return read_truth(self._directory, data)


def studio_truth(directory: str | Path | None) -> StudioTruth | None:
    """:class:`StudioTruth` of ``directory``, or None without one (the command-line ``--truth`` is optional)."""
    return StudioTruth(directory) if directory is not None else None
