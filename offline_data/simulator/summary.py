"""``SimulationSummary``: what a simulation produced, written to ``summary.json`` and printed as a table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimulationSummary:
    """Headline numbers of one ``simulate()`` run (all measured on the written data)."""

    out_dir: str
    """Folder holding the tables, assets, truth sidecar, summary.json and contact_sheet.png."""
    seed: int
    rows: dict[str, int]
    """Rows per table: impressions, dwell, preferences, assets."""
    products: int
    variants: int
    """Generated images (products x variants_per_product)."""
    requests: int
    ctr_per_slot: tuple[float, ...]
    """Empirical click-through rate of each slot (1-based order)."""
    examination: tuple[float, ...]
    """True θ_k (θ_1 = 1)."""
    censoring_rate: float
    """Share of dwell rows that are censored."""
    target_censoring_rate: float
    tie_rate: float
    """Share of preference rows that are ties."""
    target_tie_rate: float
    segmenter_iou_mean: float
    segmenter_iou_min: float
    gold_mean: dict[str, float]
    """Mean gold of the generated images per segment."""
    gold_std: dict[str, float]
    """Spread of gold over the generated images per segment."""
    ceilings: dict[str, float | int]
    """Bayes ceilings over all rows (``ceilings.Ceilings``)."""
    seconds: float
    """Wall-clock time of the simulation."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def format_table(self) -> str:
        """A human-readable table of the numbers above."""
        ctr = "  ".join(f"{c:.3f}" for c in self.ctr_per_slot)
        ratio = (
            "  ".join(f"{c / self.ctr_per_slot[0]:.3f}" for c in self.ctr_per_slot) if self.ctr_per_slot[0] else "-"
        )
        theta = "  ".join(f"{t:.3f}" for t in self.examination)
        gold = ", ".join(f"{s} {self.gold_mean[s]:+.2f}±{self.gold_std[s]:.2f}" for s in self.gold_mean)
        c = self.ceilings
        lines = [
            ("output", self.out_dir),
            ("seed", str(self.seed)),
            ("catalogue", f"{self.products} products, {self.variants} generated images"),
            ("rows", ", ".join(f"{name} {count:,}" for name, count in self.rows.items())),
            ("requests", f"{self.requests:,}"),
            ("CTR per slot", ctr),
            ("CTR ratio to slot 1", ratio),
            ("true examination θ", theta),
            ("censoring rate", f"{self.censoring_rate:.3f} (target {self.target_censoring_rate:.3f})"),
            ("tie rate", f"{self.tie_rate:.3f} (target {self.target_tie_rate:.3f})"),
            ("segmenter IoU", f"mean {self.segmenter_iou_mean:.3f}, min {self.segmenter_iou_min:.3f}"),
            ("gold (images)", gold),
            (
                "pairwise ceiling",
                f"Bayes {c['pairwise_accuracy']:.4f} (realised {c['pairwise_accuracy_realised']:.4f}), "
                f"gold oracle {c['pairwise_gold_oracle']:.4f}, {c['pairs']:,} non-tie pairs",
            ),
            ("click AUC ceiling", f"{c['click_auc']:.4f} over {c['impressions']:,} impressions"),
            ("time", f"{self.seconds:.1f} s"),
        ]
        width = max(len(k) for k, _ in lines)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
