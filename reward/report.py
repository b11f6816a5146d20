"""The audit as files: ``audit.json`` (the numbers), ``plots/*.png`` and a self-contained ``audit.html``.

The HTML embeds every figure as a base64 PNG (it can be mailed or attached to a model card on its own) and lists
the flags first, then the headline numbers, calibration, discrimination by slice with the ceilings, ensemble
disagreement, the probes and the over-optimisation curve. The PNGs are also written beside it.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from collections.abc import Iterable
from pathlib import Path

from reward.audit import AuditResult
from reward.audit_plots import write_audit_plots

JSON_FILE = "audit.json"
HTML_FILE = "audit.html"
PLOTS_DIR = "plots"

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; background: #f4f5f7;
       color: #1d2330; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { margin: 32px 0 10px; font-size: 19px; border-bottom: 2px solid #e3e6eb; padding-bottom: 4px; }
h3 { margin: 18px 0 6px; font-size: 15px; }
p.meta { margin: 2px 0; color: #5a6275; font-size: 13px; }
p.note { color: #5a6275; font-size: 13px; max-width: 900px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d8dce3; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #eef0f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fdecec; }
.flags { border-left: 6px solid #c62828; background: #fdf1f1; padding: 8px 16px; margin: 10px 0; }
.flags.none { border-left-color: #2e7d32; background: #eef7ef; }
.flags li { margin: 4px 0; }
figure { margin: 8px 0 16px; }
figure img { max-width: 100%; border: 1px solid #e3e6eb; }
figcaption { font-size: 12px; color: #5a6275; }
.grid { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
"""


def write_audit(result: AuditResult, out_dir: str | Path, *, title: str = "Reward-model audit") -> dict[str, Path]:
    """Write ``audit.json``, the PNGs under ``plots/`` and ``audit.html`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / JSON_FILE
    json_path.write_text(json.dumps(result.metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    figures = write_audit_plots(result.metrics, result.plots, result.examples, out_dir / PLOTS_DIR)
    html_path = out_dir / HTML_FILE
    html_path.write_text(render_html(result.metrics, figures, title=title), encoding="utf-8")
    return {"json": json_path, "html": html_path, **{f"plot:{k}": v for k, v in figures.items()}}


# ----------------------------------------------------------------------------------------------------------
# HTML pieces


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: Iterable[str], rows: Iterable[Iterable[object]], bad: Iterable[bool] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    flags = list(bad) if bad is not None else None
    for i, row in enumerate(rows):
        cells = "".join(
            f'<td class="num">{_fmt(v)}</td>'
            if isinstance(v, int | float) and not isinstance(v, bool)
            else f"<td>{_fmt(v)}</td>"
            for v in row
        )
        marker = ' class="bad"' if flags is not None and flags[i] else ""
        body.append(f"<tr{marker}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(figures: dict[str, Path], name: str, caption: str) -> str:
    path = figures.get(name)
    if path is None:
        return ""
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)} (also {PLOTS_DIR}/{html.escape(Path(path).name)})</figcaption></figure>"
    )


def _flags_section(flags: list[dict]) -> str:
    if not flags:
        return '<div class="flags none"><strong>No flags:</strong> nothing crossed its threshold.</div>'
    items = "".join(
        f"<li><strong>{html.escape(f['id'])}</strong> ({html.escape(f['section'])}): {html.escape(f['message'])} "
        f"<em>[value {_fmt(f['value'])}, threshold {_fmt(f['threshold'])}]</em></li>"
        for f in flags
    )
    return f'<div class="flags"><strong>{len(flags)} flag(s)</strong><ul>{items}</ul></div>'


def _headline_section(metrics: dict) -> str:
    names = {
        "click_auc": "click AUC",
        "click_ece": "click ECE (calibrated)",
        "pairwise_accuracy": "pairwise accuracy",
        "preference_ece": "preference ECE",
        "dwell_c_index": "dwell C-index",
        "dwell_d_calibration": "dwell D-calibration (TV)",
        "click_auc_ratio_to_ceiling": "click AUC / ceiling",
        "pairwise_ratio_to_ceiling": "pairwise accuracy / ceiling",
        "disagreement_median": "median disagreement (reward SDs)",
        "worst_spurious": "largest spurious shift",
        "worst_spurious_shift_sd": "its spurious shift (SD)",
        "flags": "flags",
    }
    headline = metrics.get("headline", {})
    rows = [(names.get(k, k), v) for k, v in headline.items() if k != "tamper_shift_sd"]
    for edit, shift in (headline.get("tamper_shift_sd") or {}).items():
        rows.append((f"tamper {edit}: reward shift (SD)", shift))
    return _table(["number", "value"], rows)


def _calibration_section(metrics: dict, figures: dict[str, Path]) -> str:
    calibration = metrics.get("calibration", {})
    thresholds = metrics["thresholds"]
    dwell_p = calibration.get("dwell", {}).get("p_value")
    measures = (
        ("click", "ECE of calibrated P(click | slot)", "ece", "max_click_ece"),
        ("preference", "ECE of P(a | not a tie)", "ece", "max_preference_ece"),
        ("dwell", f"D-calibration TV (χ² p = {_fmt(dwell_p, 3)})", "tv", "max_dwell_calibration"),
    )
    rows = [
        (head, label, calibration[head][key], thresholds[limit])
        for head, label, key, limit in measures
        if head in calibration
    ]
    bad = [r[2] is not None and r[2] > r[3] for r in rows]
    click = calibration.get("click", {})
    kept = (
        f'<p class="note">Click calibrator: {html.escape(click["calibrator"])}'
        + (f" ({html.escape(click['calibrator_note'])})" if click.get("calibrator_note") else "")
        + ".</p>"
        if click.get("calibrator")
        else ""
    )
    return (
        "<h2>Calibration</h2>"
        + _table(["head", "measure", "value", "threshold"], rows, bad)
        + kept
        + _figure(figures, "calibration", "reliability diagrams (click, preference) and the dwell PIT histogram")
        + _figure(figures, "examination", "estimated examination per slot (true values where the truth is known)")
    )


def _discrimination_section(metrics: dict, figures: dict[str, Path]) -> str:
    discrimination = metrics.get("discrimination", {})
    parts = ["<h2>Discrimination, overall and by slice</h2>"]
    overall = []
    for key, label in (
        ("click_auc", "click AUC"),
        ("pairwise_accuracy", "pairwise accuracy (realised)"),
        ("dwell_concordance", "dwell C-index (Harrell)"),
    ):
        section = discrimination.get(key)
        if section:
            overall.append((label, section.get("overall"), section.get("ceiling"), section.get("ratio")))
    parts.append(_table(["metric", "value", "Bayes ceiling", "ratio to ceiling"], overall))
    evaluation_truth = metrics.get("evaluation", {}).get("truth")
    if evaluation_truth:
        ceilings = evaluation_truth["ceilings"]
        parts.append(
            "<p class=\"note\">Ceilings from the simulator's truth on the same rows: the Bayes predictor's expected "
            f"pairwise accuracy {_fmt(ceilings['pairwise_accuracy'])} (realised "
            f"{_fmt(ceilings['pairwise_accuracy_realised'])}, gold oracle {_fmt(ceilings['pairwise_gold_oracle'])}, "
            f"{ceilings['pairs']:,} pairs); click AUC of the true "
            f"click probability {_fmt(ceilings['click_auc'])} ({ceilings['impressions']:,} impressions). The pairwise "
            "ratio compares the model's <em>expected</em> accuracy with the expected ceiling.</p>"
        )
    parts.append(_figure(figures, "slices", "discrimination by slice (red: the slice's ceiling; dotted: overall)"))
    parts.append('<div class="grid">')
    min_rows = metrics["thresholds"]["min_slice_size"]
    for key, label in (
        ("click_auc", "click AUC"),
        ("pairwise_accuracy", "pairwise accuracy"),
        ("dwell_concordance", "dwell C-index"),
    ):
        for dimension, table in discrimination.get(key, {}).get("slices", {}).items():
            rows = [(name, e["rows"], e["value"], e.get("ceiling"), e.get("ratio")) for name, e in table.items()]
            bad = [
                r[1] >= min_rows and r[4] is not None and r[4] < metrics["thresholds"]["min_slice_ceiling_ratio"]
                for r in rows
            ]
            parts.append(f"<div><h3>{html.escape(label)} by {html.escape(dimension)}</h3>")
            parts.append(_table([dimension, "rows", label, "ceiling", "ratio"], rows, bad) + "</div>")
    parts.append("</div>")
    return "".join(parts)


def _disagreement_section(metrics: dict, figures: dict[str, Path]) -> str:
    section = metrics.get("disagreement", {})
    if not section:
        return ""
    rows = [
        ("images scored", section.get("images")),
        ("reward SD across images", section.get("reward_sd")),
        ("median member std / reward SD", section.get("relative_median")),
        ("mean member std / reward SD", section.get("relative_mean")),
        ("90th percentile", section.get("relative_p90")),
        ("Spearman(disagreement, |z reward − z gold|)", section.get("gold_error_spearman")),
        ("Spearman(reward, gold) on these images", section.get("reward_gold_spearman")),
        ("AUC of pair disagreement at finding wrong pairs", section.get("pair_error_auc")),
    ]
    return (
        "<h2>Ensemble disagreement</h2>"
        + _table(["measure", "value"], [r for r in rows if r[1] is not None])
        + '<p class="note">A useful uncertainty is larger where the reward is wrong: a positive Spearman with the '
        "error to gold, and a pair AUC above 0.5.</p>" + _figure(figures, "disagreement", "ensemble disagreement")
    )


def _gold_cell(value: float | None, probes: dict) -> float | str | None:
    """A gold shift, or "no spread" when gold was given but does not vary across the probed images."""
    return "no spread" if probes.get("gold_sd") is not None and not probes.get("gold_has_spread", True) else value


def _probes_section(metrics: dict, figures: dict[str, Path]) -> str:
    probes = metrics.get("probes", {})
    if "skipped" in probes:
        return f'<h2>Probes</h2><p class="note">Skipped: {html.escape(probes["skipped"])}</p>'
    limit = metrics["thresholds"]["max_spurious_shift_sd"]
    with_gold = probes.get("gold_sd") is not None  # gold only with the simulator's truth
    spurious = probes.get("spurious", [])
    rows = [
        (
            r["edit"],
            r["region"],
            r["reward_shift_sd"],
            r["reward_abs_shift_sd"],
            r["reward_rank_correlation"],
            r["share_up"],
            *((_gold_cell(r.get("gold_shift_sd"), probes),) if with_gold else ()),
            r["spurious_shift_sd"],
        )
        for r in spurious
    ]
    if with_gold:
        gold_note = f", gold SD {_fmt(probes['gold_sd'])}" + ("" if probes.get("gold_has_spread", True) else
                                                              ": no spread, gold shifts left out")  # fmt: skip
        spurious_note = (
            " The spurious part is the reward's shift minus gold's (an edit that moves gold is not spurious)."
        )
    else:
        gold_note = ""
        spurious_note = " No truth was given: every reward shift counts as spurious."
    parts = [
        "<h2>Spurious-feature probes</h2>",
        f'<p class="note">{probes["images"]} images; shifts are in SDs across these images (reward SD '
        f"{_fmt(probes['reward_sd'])}{gold_note}). <em>background</em>: the edit is applied outside "
        + html.escape(probes["mask"])
        + f"; <em>whole</em>: to every pixel.{html.escape(spurious_note)}</p>",
        _table(
            ["edit", "region", "reward shift", "|shift|", "rank corr.", "share up"]
            + (["gold shift"] if with_gold else [])
            + ["spurious part"],
            rows,
            [abs(r[-1]) > limit for r in rows],
        ),
    ]
    tamper = probes.get("tamper", [])
    if tamper:
        drop = metrics["thresholds"]["min_tamper_drop_sd"]
        rows = [
            (
                r["edit"],
                r["reward_shift_sd"],
                1.0 - r["share_up"],
                *((_gold_cell(r.get("gold_shift_sd"), probes),) if with_gold else ()),
                "yes" if r["reward_shift_sd"] <= -drop else "NO",
            )
            for r in tamper
        ]
        parts += [
            "<h2>Product-tamper probe</h2>",
            '<p class="note">The product itself altered (inside its mask). The reward should drop; the export gate '
            "does not rely on it: it verifies product pixels bit-exactly.</p>",
            _table(
                ["tamper", "reward shift (SD)", "share of images lower"]
                + (["gold shift (SD)"] if with_gold else [])
                + ["noticed"],
                rows,
                [r[-1] == "NO" for r in rows],
            ),
        ]
    parts.append(_figure(figures, "probes", "mean shift per edit"))
    parts.append(_figure(figures, "probe_examples", "the first probed image, unedited and after each edit"))
    return "".join(parts)


def _overoptimisation_section(metrics: dict, figures: dict[str, Path]) -> str:
    section = metrics.get("overoptimisation")
    if not section:
        return ""
    with_gold = any(p.get("gold_gain_sd") is not None for p in section["evaluations"])
    rows = [
        (p["epoch"], p["kl_nats"], p["proxy_gain_sd"])
        + ((p.get("gold_gain_sd"), p.get("gold_gain_se_sd")) if with_gold else ())
        for p in section["evaluations"]
    ]
    trend = (
        "Gao et al. 2023: the proxy keeps rising while gold turns over"
        if with_gold
        else "the run logged no gold, so only the proxy (the reward model itself) is shown"
    )
    return (
        "<h2>Over-optimisation (policy run)</h2>"
        + f'<p class="note">{html.escape(section["run"])}: gains over the base model on held-out requests, in '
        f"within-request SDs of the base ({trend}).</p>"
        + _table(
            ["epoch", "KL per sample (nats)", "proxy gain (SD)"]
            + (["gold gain (SD)", "gold se (SD)"] if with_gold else []),
            rows,
        )
        + _figure(figures, "overoptimisation", "proxy vs gold vs KL" if with_gold else "proxy vs KL")
    )


def render_html(metrics: dict, figures: dict[str, Path], *, title: str = "Reward-model audit") -> str:
    """The audit page (flags first)."""
    meta = [
        f"model members: {metrics['model']['members']}, encoder: {metrics['model']['encoder']}",
        f"data: {metrics['data']}",
        f"truth: {metrics['truth'] or 'none (logs-only audit)'}",
        f"policy run: {metrics['run'] or 'none'}",
        f"written {dt.datetime.now().isoformat(timespec='seconds')}",
    ]
    thresholds = _table(["threshold", "value"], list(metrics.get("thresholds", {}).items()))
    body = "".join(
        [
            f"<h1>{html.escape(title)}</h1>",
            "".join(f'<p class="meta">{html.escape(m)}</p>' for m in meta),
            "<h2>Flags</h2>",
            _flags_section(metrics.get("flags", [])),
            "<h2>Headline numbers</h2>",
            _headline_section(metrics),
            _calibration_section(metrics, figures),
            _discrimination_section(metrics, figures),
            _disagreement_section(metrics, figures),
            _probes_section(metrics, figures),
            _overoptimisation_section(metrics, figures),
            "<h2>Thresholds</h2>",
            thresholds,
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
        "</body>\n</html>\n"
    )
