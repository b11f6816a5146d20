"""``MODEL_CARD.md`` of a candidate bundle, written from its manifest: what it is, how it was trained and
evaluated, the gates (and any override), the reward-model audit, the contact sheet and how to load it."""

from __future__ import annotations

import math
from pathlib import Path

CARD_FILE = "MODEL_CARD.md"


OPE_CAVEAT = (
    "What this estimate can see: the candidate is scored as a chooser among the logged base-model images, re-weighted "
    "by its ELBO likelihood ratio to the base; gains from painting images unlike any logged one are invisible to it. "
    "On the studio world it did not rank five candidates by their held-out gold gain (Spearman <= 0.03 at every "
    "temperature and draw count tried; `python -m experiments.bench.export_ope_fidelity`). Read it as a "
    "non-inferiority check among logged images, not as the A/B effect."
)
"""Printed under the OPE table of every model card (the export's OPE gate is required by the export spec; this
says what passing it means)."""


def _number(value: object, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def _gates(manifest: dict) -> list[str]:
    lines = ["| gate | result | value | threshold | detail |", "|---|---|---|---|---|"]
    for gate in manifest["gates"]:
        result = "passed" if gate["passed"] else "**FAILED**"
        message = gate["message"].replace("|", "\\|")
        lines.append(
            f"| {gate['name']} | {result} | {_number(gate['value'])} | {_number(gate['threshold'])} | {message} |"
        )
    return lines


def render_model_card(manifest: dict) -> str:
    """The card's markdown."""
    candidate, base, reward = manifest["candidate"], manifest["base_model"], manifest["reward_model"]
    metrics, training = manifest["metrics"], manifest["training"]
    lines = [
        "# Candidate inpainting model (LoRA) for an A/B test",
        "",
        f"Exported {manifest['created']} from the policy run `{candidate['run']}` ({candidate['adapter_source']}).",
        "Product pixels are never modified: every evaluation output was verified bit-identical inside the product",
        "mask.",
        "",
    ]
    override = manifest.get("override")
    if override:
        lines += [
            "> **Exported with an override.** Reason: " + override["reason"],
            "> Failed gates: " + ", ".join(override["failed_gates"]) + " (details below).",
            "",
        ]
    lines += ["## Gates", "", *_gates(manifest), ""]
    reload = manifest.get("reload")
    if reload:
        shown = ", ".join(
            f"{name}: {'bit-identical' if r.get('identical') else 'DIFFERENT'}"
            + (f" (max pixel difference {r['max_abs_pixel_difference']})" if "max_abs_pixel_difference" in r else "")
            for name, r in reload.items()
            if isinstance(r, dict)
        )
        lines += [f"Reload check of the {len(manifest['reference_images'])} reference images: {shown}.", ""]
    lines += [
        "## Model",
        "",
        f"- base: `{base['pretrained'] or base['folder']}` ({base.get('pipeline_class') or 'diffusers folder'}), "
        f"sha256 of its {len(base['files'])} files combined: `{base['sha256']}`",
        f"- adapter: `{candidate['adapter']}` (sha256 `{candidate['adapter_sha256']}`), LoRA rank "
        f"{candidate['lora']['rank']}, alpha {candidate['lora']['alpha']}, targets "
        f"{', '.join(candidate['lora']['target_modules'])}",
        f"- merged UNet: `{candidate['merged_unet']}`" if candidate["merged_unet"] else "- merged UNet: not exported",
        f"- reward model: `{reward['folder']}` ({reward['format']}, {reward['members']} members, encoder "
        f"{reward['encoder']}, weights sha256 `{reward['weights_sha256']}`)",
        f"- sampler: {manifest['sampler']['num_steps']} DDIM steps, eta {manifest['sampler']['eta']}, guidance "
        f"{manifest['sampler']['guidance_scale']}",
        "",
        "## Training and evaluation",
        "",
        f"- command: `{training['command']}`" if training["command"] else "- command: not recorded",
        f"- run seed {manifest['seeds']['run']}; git {(training.get('git') or {}).get('sha')}",
    ]
    final = training.get("final_eval")
    if final:
        gold = "no gold (a catalogue run), "
        if "gold/gain_sd" in final:
            se = (final.get("gold/gain_se") or math.nan) / (final.get("gold/base_within_sd") or math.nan)
            gold = f"gold gain {_number(final['gold/gain_sd'])} SD (se {_number(se)}), "
        lines.append(
            f"- the run's last held-out evaluation (epoch {final.get('step')}): proxy gain "
            f"{_number(final.get('eval/proxy_gain_sd'))} SD, {gold}KL {_number(final.get('eval/kl_nats'))} nats"
        )
    requests = manifest["data"].get("requests")
    if requests:
        lines.append(
            f"- requests: the run's manifest `{requests['manifest']}` ({requests['train']} train, {requests['eval']} "
            f"held-out; sha256 `{requests['sha256']}`)"
        )
    lines.append(
        f"- export evaluation: {metrics['evaluation_samples']} samples, KL {_number(metrics['kl_nats_mean'])} nats "
        f"per sample, {_number(metrics['preservation_changed_pixels'])} product pixels changed"
    )
    ope = metrics.get("ope")
    if ope:
        lines += [
            "",
            "### Off-policy estimate (clicks per request)",
            "",
            "| estimate | value | interval | ESS |",
            "|---|---|---|---|",
        ]
        for key, res in ope.items():
            lines.append(
                f"| {key} | {_number(res['value'])} | [{_number(res['ci_low'])}, {_number(res['ci_high'])}] | "
                f"{_number(res['ess'])} |"
            )
        lines += ["", OPE_CAVEAT]
    lines += ["", "## Reward-model audit", ""]
    flags = manifest["audit"]["flags"]
    lines.append(f"{len(flags)} flag(s)." if flags else "No flags.")
    lines += [f"- **{f['id']}**: {f['message']}" for f in flags]
    headline = metrics.get("audit_headline") or {}
    if headline:
        lines += ["", "| number | value |", "|---|---|"]
        for key, value in headline.items():
            shown = (
                ", ".join(f"{k} {_number(v)}" for k, v in value.items()) if isinstance(value, dict) else _number(value)
            )
            lines.append(f"| {key} | {shown} |")
    files = manifest["audit"]["files"]
    if files.get("html"):
        lines += ["", f"Full report: [{files['html']}]({files['html']})"]
    lines += [
        "",
        "## Samples",
        "",
        f"![product, base, candidate]({manifest['contact_sheet']})",
        "",
        "Each row: the product, the base model's background and the candidate's (same seed), with the proxy reward.",
        "",
        "## Loading",
        "",
        "```python",
        "from diffusers import StableDiffusionInpaintPipeline",
        f'pipe = StableDiffusionInpaintPipeline.from_pretrained("{base["folder"]}")',
        'pipe.load_lora_weights("adapter")  # this bundle\'s adapter/ folder',
        "```",
        "",
        "Serve through backdrop's sampler (`rollout.sampler.sample_trajectories`), which composites and verifies the",
        "product pixels; the plain pipeline call does not.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(bundle: Path, manifest: dict) -> Path:
    """Write ``<bundle>/MODEL_CARD.md``."""
    path = Path(bundle) / CARD_FILE
    path.write_text(render_model_card(manifest), encoding="utf-8")
    return path
