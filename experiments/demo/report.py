"""report.html of ``backdrop demo`` and the headline lines the command prints last.

The report is one self-contained HTML file (figures embedded as PNG data URIs) next to the stage folders it links
to: headline numbers, stage times, before/after contact sheet, the reward / gold / KL curves of the DDPO run, the
best-of-n comparison, the export gates, the audit's flags, and links to the audit report, the bundle's model
card and manifest. Everything in it is read from the stages' results (``experiments/demo/stages.py``) and the
runs' own files; nothing is recomputed here.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from experiments.demo.stages import DemoPaths
from experiments.tracking import read_metrics
from policy.evaluation import KL_PER_SAMPLE, KL_PER_STEP

Z_95 = 1.959964


# ----------------------------------------------------------------------------------------------------------
# Headline numbers


def ddpo_gain(final: dict[str, float]) -> tuple[float, float, float]:
    """DDPO's paired gold gain over the base in within-request SDs of the base, with a normal 95 % interval
    (gain ± 1.96 se over held-out requests, both divided by the base's within-request SD)."""
    sd = final["gold/base_within_sd"]
    gain, half = final["gold/gain"] / sd, Z_95 * final["gold/gain_se"] / sd
    return gain, gain - half, gain + half


def changed_product_pixels(results: dict[str, Any]) -> int:
    """Product pixels that differ from the input over every checked output (training, export, report)."""
    return (
        int(results["ddpo"]["training_changed_product_pixels"])
        + int(results["export"].get("changed_product_pixels", 0))
        + int(results["report"]["changed_product_pixels"])
    )


def _row(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["method"].startswith(prefix)), None)


def _signed_interval(low: float, high: float) -> str:
    return "—" if math.isnan(low) else f"[{low:+.2f}, {high:+.2f}]"


def headline_lines(results: dict[str, Any], paths: DemoPaths) -> list[str]:
    """The numbers a reader takes away, one per line (printed last, and at the top of the report)."""
    final = results["ddpo"]["final"]
    gain, low, high = ddpo_gain(final)
    rows = results["compare"]["rows"]
    requests = results["compare"]["details"]["requests"]
    lines = [
        f"gold lift of DDPO over the base: {gain:+.2f} within-request SD, 95% CI {_signed_interval(low, high)} "
        f"(raw {final['gold/gain']:+.3f} gold; {requests} held-out products x {results['eval_seeds']} seeds; "
        f"{100 * final['gold/improved_requests']:.0f}% of products improved; {results['ddpo']['epochs']} epochs)",
        f"{KL_PER_SAMPLE} to the base: {final['eval/kl_nats']:.1f} (held-out evaluation); proxy gain "
        f"{final['eval/proxy_gain_sd']:+.2f} SD",
    ]
    best = _row(rows, "best-of-")
    if best is not None:
        scale = results["compare"]["details"]["within_request_sd"]
        text = (
            f"{best['method']}: {best['gold_gain_sd']:+.2f} SD, 95% CI "
            f"{_signed_interval(best['gold_ci'][0] / scale, best['gold_ci'][1] / scale)} at KL <= "
            f"{best['kl_nats']:.2f} nats"
        )
        stacked = _row(rows, f"best-of-{results['best_of']} on DDPO")
        if stacked is not None:
            text += f"; {stacked['method'].split(' (')[0]}: {stacked['gold_gain_sd']:+.2f} SD"
        lines.append(text + " (no training)")
    lines.append(
        f"product preservation: {changed_product_pixels(results)} product pixels changed (must be 0) over training "
        "rollouts, held-out evaluations, the export gate's samples and the report's images"
    )
    audit = results["audit"]["headline"]
    ceilings = results["simulate"]["ceilings"]
    lines.append(
        f"reward model: pairwise accuracy {audit['pairwise_accuracy']:.3f} on held-out pairs (Bayes ceiling of the "
        f"world {ceilings['pairwise_accuracy']:.3f}; expected accuracy = "
        f"{100 * audit['pairwise_ratio_to_ceiling']:.0f}% of the ceiling), click AUC {audit['click_auc']:.3f} = "
        f"{100 * audit['click_auc_ratio_to_ceiling']:.0f}% of its ceiling; {len(results['audit']['flags'])} audit "
        "flag(s)"
    )
    lines.append(export_line(results["export"]))
    totals = results["totals"]
    lines.append(
        f"time: {totals['wall_s']:.0f} s wall, {totals['cpu_s']:.0f} s CPU ({results['config_threads']} torch threads)"
    )
    return lines


def export_line(export: dict[str, Any]) -> str:
    """One line on the export: bundle and status, an override or a refusal said loudly."""
    status = export["status"]
    if status == "exported":
        return f"export: every gate passed; bundle {export['bundle']}/manifest.json"
    if status == "overridden":
        return (
            f"export: GATES FAILED ({', '.join(export['failed'])}); EXPORTED WITH OVERRIDE: {export['override']!r}; "
            f"bundle {export['bundle']}/manifest.json"
        )
    if status == "refused":
        return "export: REFUSED by the gates, nothing exported (set [demo] export_override to export anyway)"
    return f"export: RELOAD CHECK FAILED, the bundle is not reproducible: {export['message'].splitlines()[0]}"


# ----------------------------------------------------------------------------------------------------------
# Figures


def curves_figure(records: list[dict[str, float]]) -> bytes:
    """PNG: training reward per epoch, held-out gold and proxy gains (SD, with 95 % intervals), and KL."""
    # matplotlib loads only when a figure is drawn, and with the Agg backend selected before pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when first imported

    train = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if "gold/gain_sd" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["reward/mean"] for r in train], ".-", color="tab:blue", lw=1)
    ax.set(title="reward model (training samples)", xlabel="epoch", ylabel="mean proxy reward")
    ax = axes[1]
    steps = [r["step"] for r in evals]
    sd = [r["gold/base_within_sd"] or 1.0 for r in evals]
    gold = [r["gold/gain_sd"] for r in evals]
    half = [Z_95 * r["gold/gain_se"] / s for r, s in zip(evals, sd)]
    ax.errorbar(steps, gold, yerr=half, fmt="o-", color="tab:green", capsize=3, label="gold (hidden)")
    ax.plot(steps, [r["eval/proxy_gain_sd"] for r in evals], "s--", color="tab:orange", label="proxy (reward model)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(title="held-out gain over the base", xlabel="epoch", ylabel="within-request SD of the base")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(steps, [r["eval/kl_nats"] for r in evals], "o-", color="tab:red", label=f"held-out {KL_PER_SAMPLE}")
    ax.set(title="KL to the base", xlabel="epoch", ylabel=KL_PER_SAMPLE)
    twin = ax.twinx()
    twin.plot([r["step"] for r in train], [r.get("policy/kl", float("nan")) for r in train], ":", color="tab:purple",
              label=f"training {KL_PER_STEP}")  # fmt: skip
    twin.set_ylabel(f"training {KL_PER_STEP}", color="tab:purple", fontsize=8)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _img_file(path: Path, alt: str) -> str:
    return _img(path.read_bytes(), alt) if path.is_file() else f"<p><em>{html.escape(alt)}: not written</em></p>"


def _link(paths: DemoPaths, path: str | Path, text: str) -> str:
    target = Path(path)
    relative = target.relative_to(paths.root) if target.is_relative_to(paths.root) else target
    if not target.exists():
        return f"{html.escape(text)} (not written)"
    return f'<a href="{html.escape(str(relative))}">{html.escape(text)}</a>'


def _links(paths: DemoPaths, targets: list[tuple[Path, str]]) -> str:
    return "<p>" + " · ".join(_link(paths, target, text) for target, text in targets) + "</p>"


# ----------------------------------------------------------------------------------------------------------
# HTML


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _compare_table(results: dict[str, Any]) -> str:
    rows = []
    for r in results["compare"]["rows"]:
        low, high = r["gold_ci"]
        rows.append([
            html.escape(r["method"]),
            "—" if r["kl_nats"] is None or math.isnan(r["kl_nats"]) else f"{r['kl_nats']:.2f}",
            f"{r['gold_gain']:+.3f}",
            "—" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]",
            f"{r['gold_gain_sd']:+.2f}",
            "—" if r["proxy_gain_sd"] is None else f"{r['proxy_gain_sd']:+.2f}",
            "—" if r["improved"] is None else f"{100 * r['improved']:.0f}%",
        ])  # fmt: skip
    return _table(["method", "KL (nats)", "gold gain (raw)", "95% CI", "gold gain (SD)", "proxy (SD)", "improved"],
                  rows)  # fmt: skip


def _gates_table(export: dict[str, Any]) -> str:
    rows = [[html.escape(g["name"]), "passed" if g["passed"] else "<b class=bad>FAILED</b>", html.escape(g["message"])]
            for g in export["gates"]]  # fmt: skip
    return _table(["gate", "result", "measured"], rows) if rows else ""


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; max-width: 1250px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
.headline li { margin: 4px 0; } .bad { color: #b00; } .loud { background: #fff3cd; padding: 8px; }
img { max-width: 100%; } code { background: #f4f4f4; padding: 1px 4px; }
"""


def write_report(paths: DemoPaths, results: dict[str, Any]) -> Path:
    """Write ``report.html`` into the demo folder and return its path."""
    records = read_metrics(paths.policy)
    export = results["export"]
    headline = headline_lines(results, paths)
    timing_rows = [[t["stage"], f"{t['wall_s']:.1f}", f"{t['cpu_s']:.1f}"] for t in results["timings"]]
    totals = results["totals"]
    timing_rows.append(["<b>total so far</b>", f"<b>{totals['wall_s']:.1f}</b>", f"<b>{totals['cpu_s']:.1f}</b>"])
    bundle = Path(export["bundle"]) if export.get("bundle") else paths.bundle
    loud = "" if export["status"] == "exported" else f'<p class="loud">{html.escape(export_line(export))}</p>'
    flags = results["audit"]["flags"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>backdrop demo</title><style>{STYLE}</style>"
        "</head><body>",
        "<h1>backdrop demo: the whole loop on the studio world</h1>",
        f"<p>Folder <code>{html.escape(str(paths.root))}</code>. The world is demo-sized "
        f"({results['simulate']['products']} products, {results['simulate']['rows']['impressions']:,} impressions, "
        f"{results['simulate']['rows']['preferences']:,} pairwise judgements) and DDPO trains for "
        f"{html.escape(results['ddpo_budget'])} (it ran {results['ddpo']['epochs']}), so the gains are smaller and "
        "the intervals wider than the full recipe's (<code>experiments/configs/studio_ddpo.toml</code>, 15 "
        "CPU-minutes). Gold is the simulator's hidden engagement: no model saw it.</p>",
        "<h2>Headline</h2><ul class='headline'>" + "".join(f"<li>{html.escape(h)}</li>" for h in headline) + "</ul>",
        loud,
        "<h2>Before / after on held-out products</h2>"
        "<p>Same seed per row; captions give hidden gold (g) and the reward model's score (r). Product pixels are "
        "copied from the input and verified.</p>",
        _img_file(paths.contact_sheet, "before/after contact sheet"),
        "<h2>Reward, gold and KL during DDPO</h2>",
        _img(curves_figure(records), "curves"),
        _img_file(paths.policy / "overoptimisation.png", "proxy and gold against KL"),
        "<h2>DDPO vs best-of-n</h2>",
        _compare_table(results),
        "<p>Best-of-n KL is the upper bound log n − (n − 1)/n. The comparison's base samples use other seeds than "
        "the training evaluation, so its SD scale differs slightly.</p>",
        _links(paths, [(Path(results["compare"]["markdown"]), "compare.md")]),
        "<h2>Export</h2>",
        _gates_table(export),
        _links(
            paths,
            [
                (bundle / "MODEL_CARD.md", "model card"),
                (bundle / "manifest.json", "manifest.json"),
                (bundle / "contact_sheet.png", "bundle contact sheet"),
            ],
        ),
        "<h2>Reward model audit</h2>",
        _links(paths, [(Path(results["audit"]["html"]), "audit report (HTML)")]),
        "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in flags) + "</ul>" if flags else "<p>No flags.</p>",
        "<h2>Stage times</h2>",
        _table(["stage", "wall (s)", "CPU (s)"], timing_rows),
        "<h2>The world</h2>",
        _img_file(paths.world / "contact_sheet.png", "studio world contact sheet"),
        _links(
            paths,
            [
                (paths.root / "config.toml", "demo config"),
                (paths.reward_model, "reward model"),
                (paths.policy / "metrics.jsonl", "DDPO metrics.jsonl"),
                (paths.world / "summary.json", "world summary"),
            ],
        ),
        "</body></html>",
    ]
    path = paths.root / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
