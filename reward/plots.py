"""PNG plots of a reward evaluation (matplotlib, Agg): reliability diagram, examination per slot, accuracies."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure():
    import matplotlib  # heavy: matplotlib (~0.35 s) only when a figure is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    return plt


def score_limits(values, *, floor: float = 0.4, ceiling: float = 1.0, margin: float = 0.05) -> tuple[float, float]:
    """Y limits for scores usually in [``floor``, ``ceiling``] (AUCs, accuracies, C-indices, ratios) that always
    show every finite value: the default range widened by ``margin`` past any value outside it.

    A slice at 0.2 AUC must be seen at 0.2, not cut off at the usual floor of 0.4.
    """
    finite = np.asarray([v for v in values if v is not None], dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return floor, ceiling
    low, high = float(finite.min()), float(finite.max())
    bottom = low - margin if low < floor else floor
    top = high + margin if high > ceiling else ceiling
    return bottom, top


def plot_reliability(plots: dict, path: Path) -> Path | None:
    """Reliability diagram of the calibrated (and uncalibrated) click probabilities; None without click data."""
    if "reliability" not in plots:
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for key, label, marker in (("reliability_uncalibrated", "uncalibrated", "x"), ("reliability", "calibrated", "o")):
        table = plots[key]
        filled = table["count"] > 0
        ax.plot(table["predicted"][filled], table["observed"][filled], marker=marker, label=label)
    top = (
        float(np.nanmax(plots["reliability"]["predicted"]))
        if np.isfinite(plots["reliability"]["predicted"]).any()
        else 1
    )
    ax.set_xlim(0, min(1.0, top * 1.15 + 0.02))
    ax.set_ylim(0, min(1.0, top * 1.15 + 0.02))
    ax.set_xlabel("predicted P(click | slot)")
    ax.set_ylabel("observed click rate")
    ax.set_title("click head reliability")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_examination(plots: dict, path: Path) -> Path:
    """Estimated examination per slot (relative to slot 1), with the truth when known."""
    plt = _figure()
    estimated = np.asarray(plots["examination"])
    slots = np.arange(1, len(estimated) + 1)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot(slots, estimated, marker="o", label="estimated")
    if "examination_true" in plots:
        true = np.asarray(plots["examination_true"])
        ax.plot(np.arange(1, len(true) + 1), true, marker="s", ls="--", label="true")
    ax.set_xticks(slots)
    ax.set_xlabel("slot")
    ax.set_ylabel("examination θ_k / θ_1")
    shown = [*estimated.tolist(), *np.asarray(plots.get("examination_true", [])).tolist()]
    ax.set_ylim(*score_limits(shown, floor=0.0, ceiling=1.05))
    ax.set_title("examination per slot")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_slices(metrics: dict, path: Path) -> Path | None:
    """Bars: click-pair accuracy by segment, pairwise accuracy by product kind and by prompt family; worst first."""
    panels = []
    if metrics.get("click_pairs_by_segment"):
        panels.append(("click pairs by segment", metrics["click_pairs_by_segment"]))
    for key, title in (
        ("pairwise_accuracy_by_product_kind", "pairwise by product kind"),
        ("pairwise_accuracy_by_prompt_family", "pairwise by prompt family"),
    ):
        if metrics.get(key):
            panels.append((title, metrics[key]))
    truth = metrics.get("truth", {}).get("by_segment", {})
    gold = {
        s: {"accuracy": e["gold_pair_accuracy_click"]} for s, e in truth.items() if "gold_pair_accuracy_click" in e
    }
    if gold:
        panels.append(("gold order of judged pairs, by segment", gold))
    if not panels:
        return None
    plt = _figure()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, table) in zip(axes[0], panels):
        labels = sorted(table, key=lambda k: (not np.isfinite(table[k]["accuracy"]), table[k]["accuracy"], k))
        values = [table[k]["accuracy"] for k in labels]
        ax.bar(range(len(labels)), values, color="tab:blue")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha="right")
        ax.axhline(0.5, color="grey", lw=1, ls="--")
        ax.set_ylim(*score_limits(values))
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(metrics: dict, plots: dict, out_dir: Path) -> list[Path]:
    """Every plot the data allows, into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        plot_reliability(plots, out_dir / "reliability.png"),
        plot_examination(plots, out_dir / "examination.png"),
        plot_accuracy_slices(metrics, out_dir / "pairwise_accuracy.png"),
    ]
    return [p for p in written if p is not None]
