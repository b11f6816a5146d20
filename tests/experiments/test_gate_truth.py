"""The lift gate's validation benchmark (experiments/bench/gate_truth.py): its summaries (plain and logs-corrected)
on hand-made rows, the corrected columns of a row under an applied, an abstained and no correction, and a
``--tiny`` dry run end to end on a tiny policy run (with the logs' correction, and with --no-correction)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.bench.gate_truth import Candidate, Judge, Scored, judge_row, main, summarise
from experiments.export.logged_correction import LoggedCorrection
from experiments.export.manifest import gate_validation


def row(name: str, kind: str, lift: float, lower: float, passed: bool, gold: float) -> dict:
    return {"name": name, "kind": kind, "lift_sd": lift, "lower_sd": lower, "passed": passed, "gold_gain_sd": gold}


def test_summary_counts_false_passes_and_the_regret_of_the_top_pick() -> None:
    rows = [
        row("base", "base", 0.0, 0.0, False, 0.0),
        row("a", "final", 0.9, 0.5, True, 0.4),
        row("b", "final", 0.5, 0.2, True, -0.1),  # passed while gold fell: a false pass
        row("c", "checkpoint", 0.3, -0.2, False, 0.6),  # the best gold, refused
    ]
    summary = summarise(rows, {"overoptimised": {"right": True}})
    assert summary["false_passes"] == 1 and summary["false_pass_names"] == ["b"]
    assert summary["pick"] == "a" and summary["regret_sd"] == pytest.approx(0.6 - 0.4)
    # ranks of lift (1, 4, 3, 2) vs gold (2, 3, 1, 4): sum d^2 = 10, rho = 1 - 6 * 10 / (4 * 15) = 0
    assert summary["spearman"] == pytest.approx(0.0, abs=1e-12)
    assert summary["controls"] == {"overoptimised": True} and summary["candidates"] == 4
    none_pass = summarise([row("base", "base", 0.0, 0.0, False, 0.0), row("a", "final", 1, -1, False, 0.3)], {})
    assert none_pass["pick"] == "base" and none_pass["regret_sd"] == pytest.approx(0.3)


def corrected(row: dict, lift: float, lower: float, passed: bool, status: str = "applied") -> dict:
    return {**row, "corrected_lift_sd": lift, "corrected_lower_sd": lower, "corrected_passed": passed,
            "correction_status": status, "correction_applied": status == "applied"}  # fmt: skip


def test_the_corrected_summary_reads_the_corrected_columns_and_leaves_the_plain_one_as_it_was() -> None:
    rows = [
        corrected(row("base", "base", 0.0, 0.0, False, 0.0), 0.0, 0.0, False),
        corrected(row("a", "final", 0.9, 0.5, True, 0.4), 0.7, 0.3, True),
        corrected(row("b", "final", 0.5, 0.2, True, -0.1), -0.2, -0.5, False),  # the logs pull the false pass down
        corrected(row("c", "checkpoint", 0.3, -0.2, False, 0.6), 0.8, 0.4, True),  # and lift the best gold up
        corrected(row("d", "final", 0.1, -0.1, False, 0.1), 0.1, -0.1, False, "abstained: coverage 0.2 < 0.5"),
    ]
    controls = {
        "same_weights_other_seed": {"right": False, "corrected_right": True},
        "overoptimised": {"right": True, "corrected_right": False},
    }
    plain, fixed = summarise(rows, controls), summarise(rows, controls, "corrected")
    # plain: ranks of lift (1, 5, 4, 3, 2) vs gold (2, 4, 1, 5, 3): sum d^2 = 16, rho = 1 - 6 * 16 / (5 * 24) = 0.2
    assert plain["spearman"] == pytest.approx(0.2, abs=1e-12)
    assert plain["false_pass_names"] == ["b"] and plain["pick"] == "a" and plain["regret_sd"] == pytest.approx(0.2)
    assert plain["controls"] == {"same_weights_other_seed": False, "overoptimised": True}
    assert "corrections_applied" not in plain
    # corrected: ranks of lift (2, 4, 1, 5, 3) are gold's, rho = 1; c passes with the highest lower bound
    assert fixed["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert fixed["false_passes"] == 0 and fixed["passed"] == 2 and fixed["pick"] == "c" and fixed["regret_sd"] == 0
    assert fixed["controls"] == {"same_weights_other_seed": True, "overoptimised": False}
    assert fixed["corrections_applied"] == 4 and fixed["corrections_abstained"] == 1 and fixed["candidates"] == 5


def test_a_row_holds_what_the_gate_decided_on_under_each_correction_state() -> None:
    rng = np.random.default_rng(0)
    base = Scored(rng.normal(size=(2, 4, 2)), rng.normal(size=(4, 2)), None)
    scored = Scored(base.rewards + 0.3 + 0.05 * rng.normal(size=(2, 4, 2)), base.gold + 0.2, None)
    settings = {"threshold": 0.0, "min_member_share": 1.0, "lift": {"n_bootstrap": 200, "seed": 0}}
    candidate = Candidate("a", "final", None, None)
    plain = judge_row(candidate, scored, base, settings)
    assert "corrected_lift_sd" not in plain and "correction_status" not in plain and plain["passed"]
    assert plain["gold_gain_sd"] > 0

    def applied(lift):  # a correction that pulls the lift below 0: the corrected gate must refuse
        return LoggedCorrection(
            status="applied", applied=True, correction_sd=-2.0, coverage=0.9, overlap_share=0.0, clusters=3,
            lift_sd=lift.lift_sd - 2, lower_sd=lift.lower_sd - 2.5, upper_sd=lift.upper_sd - 1.5,
            member_lifts_sd=tuple(v - 2 for v in lift.member_lifts_sd),
        )  # fmt: skip

    row = judge_row(candidate, scored, base, settings, lambda s, b, lift: applied(lift))
    assert {k: row[k] for k in plain} == plain  # the plain columns do not move
    assert row["corrected_lift_sd"] == pytest.approx(plain["lift_sd"] - 2)
    assert row["corrected_lower_sd"] == pytest.approx(plain["lower_sd"] - 2.5)
    assert row["corrected_upper_sd"] == pytest.approx(plain["upper_sd"] - 1.5)
    assert not row["corrected_passed"] and row["correction_applied"] and row["correction_sd"] == -2.0
    assert row["correction_coverage"] == 0.9 and "cluster_table" not in row["logged_correction"]

    abstained = LoggedCorrection(status="abstained: coverage 0.100 < 0.5", applied=False, correction_sd=-2.0,
                                 coverage=0.1)  # fmt: skip
    row = judge_row(candidate, scored, base, settings, lambda *_: abstained)
    assert [row[f"corrected_{k}"] for k in ("lift_sd", "lower_sd", "upper_sd", "passed")] == [
        plain[k] for k in ("lift_sd", "lower_sd", "upper_sd", "passed")
    ]
    assert row["correction_status"].startswith("abstained") and row["correction_sd"] == -2.0
    assert row["correction_coverage"] == 0.1 and not row["correction_applied"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.experiments.test_export import build_run

    return build_run(tmp_path_factory.mktemp("gate_truth"))


def test_tiny_dry_run_writes_every_candidate_and_both_controls(run_dir: Path, tmp_path: Path) -> None:
    run = run_dir
    out = tmp_path / "gate_truth.json"
    args = ["--tiny", "--runs", str(run), "--overoptimised", str(run), "--best-of", "2", "--extrapolate", "3",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    names = [r["name"] for r in result["candidates"]]
    assert names == ["base", "base best-of-2", "run final", "run x3", "run final"]
    base = result["candidates"][0]
    assert base["lift_sd"] == 0.0 and base["upper_sd"] == 0.0 and not base["passed"]
    assert base["gold_gain_sd"] == 0.0
    assert result["requests"] == 3 and result["seeds_per_request"] == 2 and result["tiny"]
    assert set(result["controls"]) == {"same_weights_other_seed", "overoptimised"}
    control = result["controls"]["same_weights_other_seed"]
    assert control["right"] == (not control["passed"] and control["lower_sd"] <= 0 <= control["upper_sd"])
    assert result["summary"]["candidates"] == 5 and -1 <= result["summary"]["spearman"] <= 1
    assert gate_validation(out) is None  # a dry run measures nothing: the model card says "unmeasured"
    # The logs' correction: the reward model's test split, judged for every candidate and the control.
    assert result["settings"]["logged_correction"]["logs"].endswith("test")
    for judged in [*result["candidates"], control]:
        status = judged["correction_status"]
        assert status == "applied" or status.startswith(("abstained: coverage", "not applied: "))
        if judged["correction_applied"]:
            assert judged["corrected_lift_sd"] == pytest.approx(judged["lift_sd"] + judged["correction_sd"])
        else:
            assert [judged[f"corrected_{k}"] for k in ("lift_sd", "lower_sd", "upper_sd", "passed")] == [
                judged[k] for k in ("lift_sd", "lower_sd", "upper_sd", "passed")
            ]
    assert not any(r["correction_status"].startswith("not applied") for r in result["candidates"])  # logs, pixels
    assert base["correction_sd"] == 0.0 and base["corrected_lift_sd"] == 0.0 and not base["corrected_passed"]
    right = not control["corrected_passed"] and control["corrected_lower_sd"] <= 0 <= control["corrected_upper_sd"]
    assert control["corrected_right"] == right
    fixed = result["summary_corrected"]
    assert fixed["candidates"] == 5 and set(fixed) == {
        *result["summary"],
        "corrections_applied",
        "corrections_abstained",
    }
    assert fixed["passed"] == sum(r["corrected_passed"] for r in result["candidates"])


def test_no_correction_judges_the_plain_lift_only(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "plain.json"
    assert main(["--tiny", "--runs", str(run_dir), "--no-correction", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["summary_corrected"] is None and result["settings"]["logged_correction"] is None
    assert not any(k.startswith("correct") for r in result["candidates"] for k in r)
    assert set(result["controls"]["same_weights_other_seed"]) >= {"right", "passed"}
    assert result["summary"]["candidates"] == 2


def test_the_judge_without_a_correction_samples_as_the_truth_table_reads_it(run_dir: Path) -> None:
    judge = Judge(run_dir, 2, 2, 2_000_000_011, 1)  # experiments/bench/truth.py's call
    rewards, gold = judge.sample(Candidate("base", "base", None, None))
    assert rewards.shape[1:] == (2, 2) and gold.shape == (2, 2) and judge.logged is None
    assert judge.evaluate(Candidate("base", "base", None, None)).embeddings is None  # nothing embedded


def test_a_measured_file_brings_both_agreements_to_the_model_card(tmp_path: Path) -> None:
    from experiments.export.direct import direct_lift
    from experiments.export.logged_correction import not_applied
    from experiments.export.model_card import render_model_card
    from tests.experiments.test_model_card import manifest

    plain = {"candidates": 5, "spearman": 0.2, "false_passes": 1, "regret_sd": 0.2}
    fixed = {**plain, "spearman": 1.0, "false_passes": 0, "regret_sd": 0.0, "corrections_applied": 3}
    path = tmp_path / "gate_truth.json"
    path.write_text(json.dumps({"tiny": False, "command": "c", "summary": plain, "summary_corrected": fixed}))
    validation = gate_validation(path)
    assert validation["spearman"] == 0.2 and validation["corrected"] == fixed and validation["command"] == "c"
    path.write_text(json.dumps({"tiny": False, "command": "c", "summary": plain, "summary_corrected": None}))
    assert gate_validation(path)["corrected"] is None  # measured with --no-correction
    lift = direct_lift(np.array([[[0.3, 1.3], [0.2, 1.4]]]), np.array([[[0.0, 1.0], [0.0, 1.0]]]), n_bootstrap=200)
    document = manifest(tmp_path)
    document["metrics"]["direct_lift"] = {
        **lift.to_dict(), "calibration": {}, "logged_correction": not_applied("no logs").to_dict(), "threshold": 0.0,
        "validation": validation,
    }  # fmt: skip
    card = render_model_card(document)
    assert "Spearman 0.2 between this lift and the gold gain, 1 false pass(es), regret of the top pick 0.2" in card
    assert "With the logs' correction, as this gate decides (applied to 3 of 5): Spearman 1, 0 false pass(es)" in card
