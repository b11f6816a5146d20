"""The reward-model audit on a small simulated world: sections, ceilings, flags, the policy-run curve, the
HTML report (well-formed, every link resolves) and the CLI."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.cli import main
from experiments.studio.audit_truth import read_truth
from experiments.studio.truth import StudioTruth, prompt_family
from offline_data.errors import InputUnreadableError
from reward.audit import audit_reward_model
from reward.audit_config import AuditConfig, AuditThresholds, ProbeConfig
from reward.audit_flags import collect_flags
from reward.audit_run import read_overoptimisation
from reward.data import load_reward_data
from reward.report import write_audit

SMALL = AuditConfig(images=24, probes=ProbeConfig(edits=("brightness", "jpeg", "text")))


@pytest.fixture(scope="module")
def trained(small_splits: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from reward.pipeline import fit_reward_model
    from tests.reward.conftest import fast_config

    scorer, _ = fit_reward_model(
        fast_config(),
        small_splits / "train",
        small_splits / "validation",
        seed=0,
        device=torch.device("cpu"),
        progress=False,
    )
    folder = tmp_path_factory.mktemp("audit_model") / "model"
    scorer.save(folder)
    return {"scorer": scorer, "model": folder, "test": small_splits / "test", "world": small_splits.parent / "world"}


@pytest.fixture(scope="module")
def audited(trained: dict):
    return audit_reward_model(
        trained["scorer"],
        trained["test"],
        truth=StudioTruth(trained["world"]),
        prompt_family=prompt_family,
        config=SMALL,
    )


def test_audit_sections_and_ceilings(audited, trained: dict) -> None:
    metrics = audited.metrics
    json.dumps(metrics, allow_nan=False)  # strict JSON: NaN became null
    data = load_reward_data(trained["test"], load_masks=False)
    click = metrics["discrimination"]["click_auc"]
    for dimension in ("segment", "slot", "product_kind", "prompt_family"):
        table = click["slices"][dimension]
        assert sum(entry["rows"] for entry in table.values()) == len(data.impressions)
        for entry in table.values():
            if entry["value"] is not None and entry["ceiling"] is not None:
                assert entry["ratio"] == pytest.approx(entry["value"] / entry["ceiling"])
    assert set(click["slices"]["slot"]) == {str(p) for p in set(data.impressions.position.tolist())}
    assert 0 < click["ratio"] <= 1.05  # no model beats the Bayes ceiling (beyond sampling noise)
    pairwise = metrics["discrimination"]["pairwise_accuracy"]
    assert 0 < pairwise["ratio"] <= 1.05
    dwell = metrics["discrimination"]["dwell_concordance"]
    assert 0 <= dwell["overall"] <= 1 and dwell["rows"] == int(data.impressions.has_dwell.sum())
    calibration = metrics["calibration"]
    assert {"click", "preference", "dwell"} <= set(calibration)
    assert calibration["click"]["ece"] == metrics["evaluation"]["click_ece"]
    assert len(audited.plots["dwell_pit"]) == SMALL.dwell_bins
    assert sum(audited.plots["dwell_pit"]) == pytest.approx(1.0)
    assert metrics["disagreement"]["images"] == SMALL.images
    assert -1 <= metrics["disagreement"]["reward_gold_spearman"] <= 1
    probes = metrics["probes"]
    assert len(probes["spurious"]) == 3 * 2 and len(probes["tamper"]) == 3
    assert all(r["gold_shift_sd"] is not None for r in probes["spurious"])
    assert metrics["headline"]["flags"] == len(audited.flags) == len(metrics["flags"])


def test_background_examples_keep_the_product(audited, trained: dict) -> None:
    data = load_reward_data(trained["test"], load_masks=True)
    original = audited.examples["original"]
    (row,) = [
        i for i in range(len(data.images)) if np.array_equal(data.images.pixels[i].permute(1, 2, 0).numpy(), original)
    ]
    mask = data.images.masks[row].numpy()
    for name, image in audited.examples.items():
        if name.endswith("/background"):
            assert np.array_equal(image[mask], original[mask]), name
        if name.endswith("/product"):
            assert np.array_equal(image[~mask], original[~mask]), name


def test_gold_recomputed_from_exact_masks_matches_the_truth_table(trained: dict) -> None:
    from offline_data.simulator.engagement import gold_engagement

    data = load_reward_data(trained["test"], load_masks=False)
    truth = read_truth(trained["world"], data)
    rows = list(range(min(12, len(data.images))))
    images = data.images.pixels[rows].permute(0, 2, 3, 1).numpy()
    masks = np.stack([truth.exact_masks[data.images.product_ids[r]] for r in rows])
    prompts = [data.images.prompts[r] for r in rows]
    for segment in ("warm", "panel"):
        gold = gold_engagement(images, masks, prompts, [segment] * len(rows))
        table = [truth.image_gold[data.images.image_ids[r]][segment] for r in rows]
        assert gold == pytest.approx(table, abs=1e-9)


def test_audit_from_the_logs_alone_has_no_truth_and_one_prompt_family(audited, trained: dict) -> None:
    alone = audit_reward_model(trained["scorer"], trained["test"], config=SMALL).metrics
    assert alone["truth"] is None and "truth" not in alone["evaluation"]
    families = alone["discrimination"]["click_auc"]["slices"]["prompt_family"]
    assert set(families) <= {"all", "none"}
    assert not any("ceiling" in entry for entry in families.values())
    studio = audited.metrics["discrimination"]["click_auc"]["slices"]["prompt_family"]
    assert sum(e["rows"] for e in families.values()) == sum(e["rows"] for e in studio.values())
    assert len(studio) > len(families)  # the studio world's families are materials
    # the same model and logs: what does not depend on the truth is the same number
    assert alone["evaluation"]["click_auc"] == audited.metrics["evaluation"]["click_auc"]


def test_audit_is_deterministic(audited, trained: dict) -> None:
    again = audit_reward_model(
        trained["scorer"],
        trained["test"],
        truth=StudioTruth(trained["world"]),
        prompt_family=prompt_family,
        config=SMALL,
    )
    assert again.metrics == audited.metrics


def test_flags_follow_their_thresholds(audited) -> None:
    metrics = audited.metrics
    strict = collect_flags(metrics, AuditThresholds(max_click_ece=0.0, max_disagreement=0.0, min_tamper_drop_sd=50))
    by_id = {f["id"]: f for f in strict}
    click = by_id["click_calibration"]
    assert click["value"] == metrics["calibration"]["click"]["ece"] and click["threshold"] == 0.0
    assert f"{click['value']:.4f}" in click["message"] and "above 0.0" in click["message"]
    assert by_id["ensemble_disagreement"]["value"] == metrics["disagreement"]["relative_median"]
    assert sum(f["id"] == "tamper_not_noticed" for f in strict) == 3
    lenient = AuditThresholds(
        max_click_ece=1,
        max_preference_ece=1,
        max_dwell_calibration=1,
        min_ceiling_ratio=0,
        min_slice_ceiling_ratio=0,
        max_spurious_shift_sd=100,
        min_spurious_rank_correlation=-1,
        min_tamper_drop_sd=0,
        max_disagreement=100,
    )
    remaining = collect_flags(metrics, lenient)
    # With a zero drop threshold a tamper is "noticed" only when the reward strictly does not rise.
    assert all(f["id"] == "tamper_not_noticed" and f["value"] > 0 for f in remaining)


def write_run(folder: Path, evaluations: list[tuple[int, float, float, float]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for epoch, kl, proxy, gold in evaluations:
        lines.append(
            {
                "step": epoch,
                "eval/kl_nats": kl,
                "eval/proxy_gain_sd": proxy,
                "gold/gain_sd": gold,
                "gold/gain_se": 0.02,
                "gold/base_within_sd": 0.2,
            }
        )
        lines.append({"step": epoch, "reward/mean": proxy, "policy/kl": kl / 1000})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_overoptimisation_curve_and_its_flags(tmp_path: Path) -> None:
    turned = read_overoptimisation(write_run(tmp_path / "a", [(0, 0, 0, 0), (10, 50, 0.4, 0.5), (20, 90, 0.9, 0.1)]))
    assert [p["epoch"] for p in turned["evaluations"]] == [0, 10, 20]
    assert turned["evaluations"][1]["gold_gain_se_sd"] == pytest.approx(0.1)
    assert turned["training"]["kl"] == [0, 0.05, 0.09]
    flags = {f["id"]: f for f in collect_flags({"overoptimisation": turned}, AuditThresholds())}
    assert flags["overoptimisation"]["value"] == pytest.approx(0.4)  # gold 0.5 -> 0.1, proxy 0.4 -> 0.9
    assert "epoch 10" in flags["overoptimisation"]["message"]
    assert "proxy_gold_gap" not in flags  # 0.8 <= 1.0
    steady = read_overoptimisation(write_run(tmp_path / "b", [(0, 0, 0, 0), (10, 50, 0.4, 0.3), (20, 90, 0.5, 0.35)]))
    assert collect_flags({"overoptimisation": steady}, AuditThresholds()) == []


def test_overoptimisation_curve_of_a_run_without_gold(tmp_path: Path) -> None:
    from reward.audit_plots import plot_overoptimisation

    records = [
        {"step": step, "eval/kl_nats": kl, "eval/proxy_gain_sd": proxy, "eval/pessimistic_gain_sd": lower}
        for step, kl, proxy, lower in [(0, 0.0, 0.0, 0.0), (10, 40.0, 0.6, 0.2)]
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    curve = read_overoptimisation(tmp_path)
    assert [p.get("pessimistic_gain_sd") for p in curve["evaluations"]] == [0.0, 0.2]
    assert not any("gold_gain_sd" in p for p in curve["evaluations"])
    assert collect_flags({"overoptimisation": curve}, AuditThresholds()) == []  # the gold flags need gold
    assert plot_overoptimisation(curve, tmp_path / "curve.png").stat().st_size > 5000


def test_overoptimisation_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputUnreadableError, match="metrics.jsonl: not found"):
        read_overoptimisation(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "reward/mean": 1}\nnot json\n')
    with pytest.raises(InputUnreadableError, match="line 2 is not JSON"):
        read_overoptimisation(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "reward/mean": 1}\n')
    with pytest.raises(InputUnreadableError, match="no evaluation record"):
        read_overoptimisation(tmp_path)


VOID = {"meta", "img", "br", "hr", "link", "input"}


class Checker(HTMLParser):
    """Collects tag-balance errors and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.links += [value for name, value in attrs if name in ("src", "href")]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]} at {self.getpos()}")
        else:
            self.stack.pop()


def test_report_is_well_formed_and_references_only_existing_files(audited, tmp_path: Path) -> None:
    written = write_audit(audited, tmp_path / "audit")
    text = written["html"].read_text(encoding="utf-8")
    checker = Checker()
    checker.feed(text)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    assert text.startswith("<!DOCTYPE html>")
    assert checker.links, "the report embeds its figures"
    for link in checker.links:
        assert link.startswith("data:image/png;base64,") or (written["html"].parent / link).is_file(), link
    assert text.index("<h2>Flags</h2>") < text.index("<h2>Headline numbers</h2>") < text.index("<h2>Calibration")
    for flag in audited.flags:
        assert flag["id"] in text
    assert json.loads(written["json"].read_text()) == audited.metrics
    assert {"plot:calibration", "plot:slices", "plot:probes", "plot:probe_examples"} <= set(written)


def test_cli_writes_the_report_and_names_a_bad_run(trained: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    args = [
        "reward",
        "audit",
        str(trained["model"]),
        "--data",
        str(trained["test"]),
        "--out",
        str(out),
        "--set",
        "audit.images=8",
        "--set",
        'audit.probes.edits=["blur"]',
    ]
    assert main(args) == 0
    assert (out / "audit.html").is_file() and (out / "plots" / "calibration.png").is_file()
    metrics = json.loads((out / "audit.json").read_text())
    assert metrics["truth"] is None and "ceiling" not in metrics["discrimination"]["click_auc"]
    assert "flag(s)" in capsys.readouterr().out
    assert main([*args, "--run", str(tmp_path / "nowhere")]) == 73  # the folder holds the first audit
    assert main([*args, "--run", str(tmp_path / "nowhere"), "--overwrite"]) == 2
    assert "metrics.jsonl: not found" in capsys.readouterr().err
    assert json.loads((out / "error.json").read_text())["exit_code"] == 2


def test_nan_free_headline(audited) -> None:
    for key, value in audited.metrics["headline"].items():
        assert value is None or not (isinstance(value, float) and math.isnan(value)), key
