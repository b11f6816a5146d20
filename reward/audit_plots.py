"""PNG figures of a reward-model audit (matplotlib, Agg): calibration per head, slices, disagreement, probes,
the over-optimisation curve, and a strip of probe example images (Pillow)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from reward.plots import plot_examination, score_limits

DPI = 100


def _figure():
    import matplotlib  # heavy: matplotlib (~0.35 s) only when a figure is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _figure().close(fig)
    return path


def plot_calibration(plots: dict, path: Path) -> Path | None:
    """Reliability diagrams of the click and preference heads and the dwell head's PIT histogram."""
    panels = [k for k in ("reliability_click", "reliability_preference", "dwell_pit") if plots.get(k) is not None]
    if not panels:
        return None
    plt = _figure()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.9), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "dwell_pit":
            share = np.asarray(plots[key])
            bins = share.size
            ax.bar((np.arange(bins) + 0.5) / bins, share, width=0.9 / bins, color="tab:green")
            ax.axhline(1.0 / bins, color="grey", ls="--", lw=1, label="calibrated")
            ax.set_xlabel("F(dwell) under the model (PIT)")
            ax.set_ylabel("share of dwell rows")
            ax.set_title("dwell head: D-calibration")
            ax.legend(fontsize=8)
            continue
        table = plots[key]
        filled = table["count"] > 0
        predicted, observed = table["predicted"][filled], table["observed"][filled]
        top = min(1.0, float(max(predicted.max(), observed.max())) * 1.1 + 0.02) if filled.any() else 1.0
        ax.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="perfect")
        ax.plot(predicted, observed, marker="o", label="model")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        head = "click" if key == "reliability_click" else "preference"
        ax.set_xlabel("predicted P(click | slot)" if head == "click" else "predicted P(a | not a tie)")
        ax.set_ylabel("observed rate")
        ax.set_title(f"{head} head: reliability")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_slices(metrics: dict, path: Path) -> Path | None:
    """Bars per slice of click AUC, pairwise accuracy and dwell C-index (in the table's order: worst first), with
    ceilings where known; the y axis reaches every bar, ceiling and overall line."""
    panels = []
    discrimination = metrics.get("discrimination", {})
    for metric, label in (
        ("click_auc", "click AUC"),
        ("pairwise_accuracy", "pairwise accuracy"),
        ("dwell_concordance", "dwell C-index"),
    ):
        for dimension, table in discrimination.get(metric, {}).get("slices", {}).items():
            panels.append((f"{label} by {dimension}", table, discrimination[metric].get("overall")))
    if not panels:
        return None
    plt = _figure()
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.3 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, table, overall) in zip(axes.flat, panels):
        labels = list(table)
        values = [np.nan if table[k]["value"] is None else table[k]["value"] for k in labels]
        ax.bar(range(len(labels)), values, color="tab:blue", label="model")
        ceilings = [table[k].get("ceiling") for k in labels]
        if any(c is not None for c in ceilings):
            ax.scatter(
                range(len(labels)),
                [np.nan if c is None else c for c in ceilings],
                color="tab:red",
                marker="_",
                s=300,
                label="ceiling",
                zorder=3,
            )
        if overall is not None and np.isfinite(overall):
            ax.axhline(overall, color="black", lw=1, ls=":", label="overall")
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(*score_limits([*values, *ceilings, overall]))
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_disagreement(plots: dict, path: Path) -> Path | None:
    """Histogram of the ensemble's relative disagreement, and (with truth) against the error to gold."""
    data = plots.get("disagreement")
    if not data:
        return None
    plt = _figure()
    with_error = "error" in data
    fig, axes = plt.subplots(1, 2 if with_error else 1, figsize=(8.4 if with_error else 4.5, 3.6), squeeze=False)
    axes[0, 0].hist(data["relative"], bins=30, color="tab:purple")
    axes[0, 0].set_xlabel("member std of reward / reward SD across images")
    axes[0, 0].set_ylabel("images")
    axes[0, 0].set_title("ensemble disagreement")
    if with_error:
        axes[0, 1].scatter(data["relative"], data["error"], s=8, alpha=0.6)
        axes[0, 1].set_xlabel("relative disagreement")
        axes[0, 1].set_ylabel("|z(reward) − z(gold)|")
        axes[0, 1].set_title("disagreement vs error to gold")
    return _save(fig, path)


def plot_probes(metrics: dict, path: Path) -> Path | None:
    """Mean reward shift (and gold shift) per spurious edit and per product tamper, in SDs."""
    probes = metrics.get("probes", {})
    results = [*probes.get("spurious", []), *probes.get("tamper", [])]
    if not results:
        return None
    plt = _figure()
    labels = [f"{r['edit']} / {r['region']}" for r in results]
    y = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(results) + 1.4))
    ax.barh(y - 0.2, [r["reward_shift_sd"] for r in results], height=0.4, color="tab:blue", label="reward")
    if any(r.get("gold_shift_sd") is not None for r in results):
        gold = [np.nan if r.get("gold_shift_sd") is None else r["gold_shift_sd"] for r in results]
        ax.barh(y + 0.2, gold, height=0.4, color="tab:orange", label="gold (hidden)")
    threshold = metrics.get("thresholds", {}).get("max_spurious_shift_sd")
    if threshold is not None:
        for sign in (-1, 1):
            ax.axvline(sign * threshold, color="red", lw=0.8, ls="--")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean shift after the edit, in SDs across images")
    ax.set_title("probes: spurious edits (top) and product tampers (bottom)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_overoptimisation(section: dict | None, path: Path) -> Path | None:
    """Proxy, pessimistic proxy and gold gains per evaluation epoch (with the KL), and against the KL; a curve is
    drawn when every evaluation has it."""
    if not section or not section.get("evaluations"):
        return None
    points = section["evaluations"]
    plt = _figure()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [p["epoch"] for p in points]
    kl = [p["kl_nats"] for p in points]
    left.plot(epochs, [p["proxy_gain_sd"] for p in points], "o-", color="tab:blue", label="proxy")
    right.plot(kl, [p["proxy_gain_sd"] for p in points], "o-", color="tab:blue", label="proxy")
    if all("pessimistic_gain_sd" in p for p in points):
        pessimistic = [p["pessimistic_gain_sd"] for p in points]
        left.plot(epochs, pessimistic, "^--", color="tab:purple", label="pessimistic proxy")
        right.plot(kl, pessimistic, "^--", color="tab:purple", label="pessimistic proxy")
    if all("gold_gain_sd" in p for p in points):
        gold = [p["gold_gain_sd"] for p in points]
        errors = [p.get("gold_gain_se_sd") or 0.0 for p in points]
        left.errorbar(epochs, gold, yerr=errors, fmt="s-", color="tab:red", capsize=3, label="gold (hidden)")
        right.errorbar(kl, gold, yerr=errors, fmt="s-", color="tab:red", capsize=3, label="gold (hidden)")
    twin = left.twinx()
    twin.plot(epochs, kl, ":", color="grey", label="KL per sample (nats)")
    twin.set_ylabel("KL to base, nats per sample", color="grey")
    left.set_xlabel("epoch")
    left.set_ylabel("gain over base, within-request SDs")
    with_gold = all("gold_gain_sd" in p for p in points)
    left.set_title("proxy and gold per evaluation" if with_gold else "proxy per evaluation (no gold logged)")
    right.set_xlabel("KL(policy ‖ base), nats per sample")
    right.set_title("over-optimisation: gain against KL")
    for ax in (left, right):
        ax.axhline(0, color="black", lw=0.8)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def draw_probe_examples(examples: dict[str, np.ndarray], path: Path, *, scale: int = 3) -> Path | None:
    """One row of the first probed image, unedited and after each edit, with captions (Pillow)."""
    if not examples:
        return None

    names = list(examples)
    height, width = examples[names[0]].shape[:2]
    cell_w, cell_h = width * scale, height * scale
    columns = min(8, len(names))
    rows = math.ceil(len(names) / columns)
    caption = 14
    sheet = Image.new("RGB", (columns * (cell_w + 6) + 6, rows * (cell_h + caption + 6) + 6), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, name in enumerate(names):
        x = 6 + (i % columns) * (cell_w + 6)
        y = 6 + (i // columns) * (cell_h + caption + 6)
        tile = Image.fromarray(examples[name]).resize((cell_w, cell_h), Image.Resampling.NEAREST)
        sheet.paste(tile, (x, y))
        draw.text((x, y + cell_h + 1), name[: cell_w // 6], fill=(40, 40, 40))
    sheet.save(path)
    return path


def write_audit_plots(
    result_metrics: dict, plots: dict, examples: dict[str, np.ndarray], out_dir: Path
) -> dict[str, Path]:
    """Every figure the audit's data allows, into ``out_dir``: {figure name: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "calibration": plot_calibration(plots, out_dir / "calibration.png"),
        "slices": plot_slices(result_metrics, out_dir / "slices.png"),
        "examination": plot_examination(plots, out_dir / "examination.png"),
        "disagreement": plot_disagreement(plots, out_dir / "disagreement.png"),
        "probes": plot_probes(result_metrics, out_dir / "probes.png"),
        "probe_examples": draw_probe_examples(examples, out_dir / "probe_examples.png"),
        "overoptimisation": plot_overoptimisation(
            result_metrics.get("overoptimisation"), out_dir / "overoptimisation.png"
        ),
    }
    return {name: path for name, path in written.items() if path is not None}
