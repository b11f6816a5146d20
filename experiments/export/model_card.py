"""``MODEL_CARD.md`` of a candidate bundle, written from its manifest: what it is, how it was trained and
evaluated, the gates (and any override), the reward-model audit, the contact sheet and how to load it.

The card follows the Hugging Face Hub's model-card format: YAML front matter (``base_model``, ``library_name:
diffusers``, ``pipeline_tag``, ``tags`` and a ``model-index`` with the export's measured metrics) before the
markdown, so a Hub upload or any tool that reads that metadata finds them. It names runs and models by their
folder names only: the manifest keeps full paths for provenance, but a card travels with the bundle to other
machines and must not embed the paths of the one that wrote it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import yaml

CARD_FILE = "MODEL_CARD.md"


OPE_CAVEAT = (
    "What this estimate can see: the candidate is scored as a chooser among the logged base-model images, re-weighted "
    "by its ELBO likelihood ratio to the base; gains from painting images unlike any logged one are invisible to it. "
    "On the studio world it did not rank five candidates by their held-out gold gain (Spearman <= 0.03 at every "
    "temperature and draw count tried; `python -m experiments.bench.export_ope_fidelity`). Read it as a "
    "non-inferiority check among logged images, not as the A/B effect."
)
"""Printed under the OPE table of every model card (the logged non-inferiority gate; this says what passing it
means)."""


def _lift_lines(lift: dict | None) -> list[str]:
    """The direct lift: estimate, interval, the reward model's share of its width, and its measured agreement."""
    if lift is None:
        return ["", "### Direct lift over the base", "", "Not measured (see the lift gate above)."]
    measured = lift.get("calibration") or {}
    if lift["calibration_margin_sd"] is not None:
        calibration = f"widened by {lift['calibration_margin_sd']:.3f} SD each side for the held-out click ECE"
    elif measured.get("click_ece") is not None:
        calibration = (
            f"the held-out click calibration error (ECE {measured['click_ece']:.4f}, {measured['margin_sd']:.3f} SD) "
            "is not included ([export.lift] calibration = false)"
        )
    else:
        calibration = "the calibration error is not included (not measured)"
    members = ", ".join(f"{v:+.3f}" for v in lift["member_lifts_sd"])
    lines = [
        "",
        "### Direct lift over the base",
        "",
        f"The candidate and the base sampled on {lift['requests']} held-out requests x {lift['seeds']} seeds (same "
        "seeds), scored by the reward ensemble: lift "
        f"**{lift['lift_sd']:+.3f}** within-request SDs of the base's reward, {lift['confidence']:.0%} interval "
        f"[{lift['lower_sd']:+.3f}, {lift['upper_sd']:+.3f}] (threshold {lift['threshold']:+g}). The interval "
        f"resamples requests{' and the ' + str(lift['members']) + ' members' if lift['resample_members'] else ''}; "
        f"{calibration}. {lift['reward_model_share']:.0%} of its width is the reward model's own uncertainty "
        f"(request sampling alone: {lift['requests_only_width_sd']:.3f} SD wide). Members' own lifts: {members}.",
        "",
    ]
    lines += [*_correction_lines(lift.get("logged_correction")), ""]
    validation = lift.get("validation")
    if validation:
        lines.append(
            f"Measured agreement with gold on the studio world ({validation.get('candidates')} candidates, "
            f"`{validation.get('command')}`): Spearman {_number(validation.get('spearman'), 3)} between this lift "
            f"and the gold gain, {validation.get('false_passes')} false pass(es), regret of the top pick "
            f"{_number(validation.get('regret_sd'), 3)} gold SD."
        )
        corrected = validation.get("corrected")
        if corrected:
            lines[-1] += (
                f" With the logs' correction, as this gate decides (applied to {corrected.get('corrections_applied')}"
                f" of {corrected.get('candidates')}): Spearman {_number(corrected.get('spearman'), 3)}, "
                f"{corrected.get('false_passes')} false pass(es), regret {_number(corrected.get('regret_sd'), 3)} "
                "gold SD."
            )
    else:
        lines.append(
            "Agreement with gold: **unmeasured** (no experiments/bench/results/gate_truth.json; run "
            "`python -m experiments.bench.gate_truth`). The lift is the reward model's opinion of fresh samples."
        )
    return lines


def _correction_lines(correction: dict | None) -> list[str]:
    """The logs' correction of the lift: applied (with its terms and the corrected interval), abstained or not
    applied, each with why."""
    if not correction:
        return ["Logged correction: not recorded."]
    if correction["status"].startswith("not applied"):
        return [f"Logged correction: {correction['status']}; the gate used the plain direct lift."]
    where = (
        f"{correction['clusters']} k-means clusters of {correction['logged_images']} logged images' reward "
        f"embeddings ({correction['eligible_clusters']} with >= {correction['min_impressions_per_cluster']} of the "
        f"{correction['logged_impressions']} logged impressions); {correction['coverage']:.0%} of the candidate's "
        f"samples inside one (base {correction['base_coverage']:.0%}), {correction['overlap_share']:.0%} overlapping "
        f"a logged image within {correction['overlap_distance']:.3g} (base {correction['base_overlap_share']:.0%})"
    )
    terms = (
        f"{correction['correction_sd']:+.3f} SD (clusters {correction['cluster_term_sd']:+.3f}, overlap/DR "
        f"{correction['dr_term_sd']:+.3f}; {correction['correction_clicks']:+.4f} slot-1 clicks), its own interval "
        f"[{correction['correction_lower_sd']:+.3f}, {correction['correction_upper_sd']:+.3f}]"
    )
    if correction["applied"]:
        return [
            f"Logged correction (click residuals of the reward model on the logs): {terms}; {where}. Corrected lift "
            f"**{correction['lift_sd']:+.3f}**, interval [{correction['lower_sd']:+.3f}, "
            f"{correction['upper_sd']:+.3f}]: the gate used the corrected lower bound."
        ]
    return [
        f"Logged correction **{correction['status']}**; the gate used the plain direct lift. It would have been "
        f"{terms}; {where}."
    ]


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


def short_name(path: str | os.PathLike | None, parts: int = 2) -> str:
    """The last ``parts`` components of a path (``policy_train/20260101-120000``): a name, never a machine path."""
    if path is None:
        return "–"
    names = [p for p in Path(path).parts if p != Path(path).anchor]
    return "/".join(names[-parts:]) if names else str(path)


_ABSOLUTE = re.compile(r"(?<![\w.])/(?:[^\s/'\"]+/)*[^\s'\"]*")


def without_machine_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its last three components (e.g. a recorded command line)."""
    return _ABSOLUTE.sub(lambda m: short_name(m.group(0), 3), text)


def base_model_name(base: dict) -> str:
    """The base model's name: its ``pretrained`` name, else its folder's name."""
    return str(base.get("pretrained") or Path(base["folder"]).name)


def front_matter(manifest: dict) -> dict:
    """The Hub metadata of the card (module docstring): base model, library, pipeline, tags and model-index."""
    metrics, training = manifest["metrics"], manifest["training"]
    measured = [
        {"type": "kl_per_sample", "name": "KL per sample to the base (nats, export evaluation)",
         "value": metrics["kl_nats_mean"]},
        {"type": "product_pixels_changed", "name": "product pixels changed (export evaluation)",
         "value": metrics["preservation_changed_pixels"]},
    ]  # fmt: skip
    final = training.get("final_eval") or {}
    for key, name in (
        ("gold/gain_sd", "held-out gold gain over the base (within-request SDs)"),
        ("eval/proxy_gain_sd", "held-out proxy-reward gain over the base (within-request SDs)"),
    ):
        if isinstance(final.get(key), int | float) and math.isfinite(final[key]):
            measured.append({"type": key.replace("/", "_"), "name": name, "value": float(final[key])})
    lift = metrics.get("direct_lift")
    if lift and math.isfinite(lift["lift_sd"]):
        measured.append({"type": "direct_lift_sd", "name": "direct lift over the base (within-request SDs of the "
                         "reward, fresh samples)", "value": float(lift["lift_sd"])})  # fmt: skip
    correction = (lift or {}).get("logged_correction") or {}
    if correction.get("applied") and math.isfinite(correction["lift_sd"]):
        measured.append({"type": "corrected_lift_sd", "name": "direct lift corrected by the logs' click residuals "
                         "(within-request SDs)", "value": float(correction["lift_sd"])})  # fmt: skip
    for key, res in (metrics.get("ope") or {}).items():
        if isinstance(res.get("value"), int | float) and math.isfinite(res["value"]):
            measured.append({"type": f"ope_{key.replace(':', '_')}",
                             "name": f"logged non-inferiority, off-policy {key} (clicks per request)",
                             "value": float(res["value"])})  # fmt: skip
    gates = "passed" if all(g["passed"] for g in manifest["gates"]) else "overridden"
    return {
        "base_model": base_model_name(manifest["base_model"]),
        "library_name": "diffusers",
        "pipeline_tag": "image-to-image",
        "tags": ["lora", "inpainting", "diffusers", "ddpo", "backdrop", f"gates-{gates}"],
        "model-index": [
            {
                "name": f"backdrop candidate from {short_name(manifest['candidate']['run'])}",
                "results": [
                    {
                        "task": {"type": "image-to-image", "name": "background inpainting behind product photos"},
                        "dataset": {"type": "held-out-requests", "name": "held-out evaluation requests"},
                        "metrics": measured,
                    }
                ],
            }
        ],
    }


def render_model_card(manifest: dict) -> str:
    """The card: YAML front matter, then markdown."""
    candidate, base, reward = manifest["candidate"], manifest["base_model"], manifest["reward_model"]
    metrics, training = manifest["metrics"], manifest["training"]
    header = yaml.safe_dump(front_matter(manifest), sort_keys=False, allow_unicode=True)
    lines = [
        "---",
        header.rstrip("\n"),
        "---",
        "",
        "# Candidate inpainting model (LoRA) for an A/B test",
        "",
        f"Exported {manifest['created']} from the policy run `{short_name(candidate['run'])}` "
        f"({without_machine_paths(str(candidate['adapter_source']))}).",
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
        f"- base: `{base_model_name(base)}` ({base.get('pipeline_class') or 'diffusers folder'}), "
        f"sha256 of its {len(base['files'])} files combined: `{base['sha256']}`",
        f"- adapter: `{candidate['adapter']}` (sha256 `{candidate['adapter_sha256']}`), LoRA rank "
        f"{candidate['lora']['rank']}, alpha {candidate['lora']['alpha']}, targets "
        f"{', '.join(candidate['lora']['target_modules'])}",
        f"- merged UNet: `{candidate['merged_unet']}`" if candidate["merged_unet"] else "- merged UNet: not exported",
        f"- reward model: `{short_name(reward['folder'], 3)}` ({reward['format']}, {reward['members']} members, "
        f"encoder {reward['encoder']}, weights sha256 `{reward['weights_sha256']}`)",
        f"- sampler: {manifest['sampler']['num_steps']} DDIM steps, eta {manifest['sampler']['eta']}, guidance "
        f"{manifest['sampler']['guidance_scale']}",
        "",
        "## Training and evaluation",
        "",
        f"- command: `{without_machine_paths(training['command'])}`"
        if training["command"]
        else "- command: not recorded",
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
            f"{_number(final.get('eval/proxy_gain_sd'))} SD, {gold}KL per sample "
            f"{_number(final.get('eval/kl_nats'))} nats"
        )
    requests = manifest.get("data", {}).get("requests")
    if requests:
        lines.append(
            f"- requests: the run's manifest `{requests['manifest']}` ({requests['train']} train, {requests['eval']} "
            f"held-out; sha256 `{requests['sha256']}`)"
        )
    lines.append(
        f"- export evaluation: {metrics['evaluation_samples']} samples, KL per sample "
        f"{_number(metrics['kl_nats_mean'])} nats, {_number(metrics['preservation_changed_pixels'])} product "
        "pixels changed"
    )
    lines += _lift_lines(metrics.get("direct_lift"))
    ope = metrics.get("ope")
    if ope:
        lines += [
            "",
            "### Logged non-inferiority: off-policy estimate among logged images (clicks per request)",
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
        report = files["html"] if not Path(files["html"]).is_absolute() else short_name(files["html"])
        lines += ["", f"Full report: [{report}]({report})"]
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
        f'pipe = StableDiffusionInpaintPipeline.from_pretrained("{base_model_name(base)}")  # the base\'s folder',
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
