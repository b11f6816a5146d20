"""The lift gate's validation benchmark (experiments/bench/gate_truth.py): its summary on hand-made rows, and a
``--tiny`` dry run end to end on a tiny policy run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.bench.gate_truth import main, summarise
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


def test_tiny_dry_run_writes_every_candidate_and_both_controls(tmp_path: Path) -> None:
    from tests.experiments.test_export import build_run

    run = build_run(tmp_path)
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
