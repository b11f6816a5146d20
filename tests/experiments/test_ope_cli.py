"""``backdrop ope`` on log files: the table and JSON agree with the library, and bad files fail with messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from experiments.cli import main
from experiments.ope import synthetic as syn
from experiments.ope.evaluate import OPEConfig, build_candidate, build_impression_log, evaluate


def write_world(folder: Path, *, n_requests: int = 600, seed: int = 0) -> dict:
    """Synthetic impressions (parquet) and candidate scores (csv, rows shuffled) for the known-truth world."""
    bandit = syn.make_slate_bandit(seed=seed, slot_count_probs=np.array([0.2, 0.3, 0.5]))
    rng = np.random.default_rng(seed)
    pi0 = syn.softmax_policy(rng.normal(size=bandit.shape), 1.0)
    pie = syn.softmax_policy(bandit.attractiveness, 0.3)
    draw = syn.draw_log(bandit, pi0, n_requests, rng)
    request, slot = np.nonzero(draw.shown)
    n = len(request)
    event_ids = [f"e{i:05d}" for i in range(n)]
    (folder / "logs").mkdir(parents=True)
    impressions = pa.table(
        {
            "event_id": event_ids,
            "request_id": [f"r{r}" for r in request],
            "image_id": [f"img{a}" for a in draw.actions[request, slot]],
            "product_id": ["p0"] * n,
            "position": (slot + 1).astype(np.int64),
            "clicked": draw.clicks[request, slot].astype(bool),
            "propensity": syn.logged_propensity(draw, pi0)[request, slot],
            "shown_at": pa.array(np.full(n, 1_700_000_000_000_000) + request, pa.timestamp("us", tz="UTC")),
            "segment": [f"s{c}" for c in draw.context[request]],
        }
    )
    pq.write_table(impressions, folder / "logs" / "impressions.parquet")
    dm_prediction, dm_logged = syn.model_predictions(bandit, draw, pie)
    perm = rng.permutation(n)
    scores = pa.table(
        {
            "event_id": [event_ids[i] for i in perm],
            "candidate_propensity": syn.logged_propensity(draw, pie)[request, slot][perm],
            "dm_prediction": dm_prediction[request, slot][perm],
            "dm_logged": dm_logged[request, slot][perm],
        }
    )
    pa_csv.write_csv(scores, folder / "scores.csv")
    # The same data through the library, with the file's string request ids (they order the requests, and so
    # the bootstrap's resamples).
    log = build_impression_log(
        impressions["request_id"].to_numpy(zero_copy_only=False),
        slot + 1,
        draw.clicks[request, slot],
        syn.logged_propensity(draw, pi0)[request, slot],
    )
    candidate = build_candidate(
        log,
        syn.logged_propensity(draw, pie)[request, slot],
        dm_prediction=dm_prediction[request, slot],
        dm_logged=dm_logged[request, slot],
    )
    return {"log": log, "candidate": candidate, "impressions": impressions}


def run_cli(tmp_path: Path, *args: str) -> int:
    return main(["ope", *args, "--set", f"run.output_dir={tmp_path / 'runs'}", "--set", "ope.n_bootstrap=300"])


def test_cli_report_matches_the_library(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = write_world(tmp_path)
    out = tmp_path / "out" / "ope.json"
    code = run_cli(tmp_path, "--logs", str(tmp_path / "logs"), "--candidate-scores", str(tmp_path / "scores.csv"),
                   "--out", str(out), "--per-slot")  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    payload = json.loads(out.read_text())
    (run_json,) = (tmp_path / "runs" / "ope").glob("*/ope.json")
    assert json.loads(run_json.read_text()) == payload
    expected = evaluate(world["log"], world["candidate"], OPEConfig(n_bootstrap=300), seed=0)
    results = {(r["estimator"], r["level"]): r for r in payload["report"]["results"]}
    for res in expected.results:
        got = results[(res.estimator, res.level)]
        assert got["value"] == pytest.approx(res.value, rel=1e-12, abs=1e-15)
        assert got["ci_low"] == pytest.approx(res.ci_low, rel=1e-12, abs=1e-15)
        assert got["ci_high"] == pytest.approx(res.ci_high, rel=1e-12, abs=1e-15)
    dr = expected.result("dr", "impression")
    assert f"{'dr':<22}{'impression':<12}{dr.value:>11.5f}" in printed
    assert "slot3" in printed and "A/B sample size to confirm the dr lift" in printed
    plan = payload["ab_test"]
    assert plan["impressions"]["baseline"] == pytest.approx(expected.result("on_policy", "impression").value)
    assert plan["impressions"]["treatment"] == pytest.approx(dr.value)
    assert plan["requests"]["n_control"] >= 1 and plan["request_reward_std"] > 0


def test_cli_dm_only_without_propensities(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = write_world(tmp_path)
    pq.write_table(world["impressions"].drop_columns(["propensity"]), tmp_path / "logs" / "impressions.parquet")
    args = ["--logs", str(tmp_path / "logs"), "--candidate-scores", str(tmp_path / "scores.csv")]
    assert run_cli(tmp_path, *args) == 1
    err = capsys.readouterr().err
    assert "have no logged propensity" in err and "--set 'ope.estimators=[\"dm\"]' --set ope.primary=dm" in err
    assert run_cli(tmp_path, *args, "--set", 'ope.estimators=["dm"]', "--set", "ope.primary=dm") == 0
    assert "A/B sample size to confirm the dm lift" in capsys.readouterr().out


HEADER = "event_id,request_id,image_id,product_id,position,clicked,propensity,shown_at,segment\n"


def impressions_csv(*rows: str) -> str:
    """An impressions CSV; each row gives event_id,request_id,position,clicked,propensity."""
    lines = []
    for row in rows:
        event, request, position, clicked, propensity = row.split(",")
        lines.append(f"{event},{request},img,p1,{position},{clicked},{propensity},2024-05-01T10:00:00Z,s1\n")
    return HEADER + "".join(lines)


def test_cli_validates_the_impressions_strictly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "impressions.csv").write_text(
        impressions_csv("e1,r1,1,true,0.5", "e2,r1,x,false,0.5", "e3,r2,1,maybe,0.5", "e4,r2,2,1,1.5")
    )
    (tmp_path / "scores.csv").write_text("event_id,candidate_propensity\ne1,0.5\ne2,0.5\ne3,0.5\ne4,0.5\n")
    assert run_cli(tmp_path, "--logs", str(tmp_path / "logs"), "--candidate-scores", str(tmp_path / "scores.csv")) == 1
    err = capsys.readouterr().err
    assert "3 of 4 rows rejected" in err and "impressions.csv: 3 problem(s)" in err
    assert "row 2, column 'position': expected integer >= 1, got 'x'" in err
    assert "row 3, column 'clicked': expected boolean (true/false, 1/0), got 'maybe'" in err
    (summary,) = (tmp_path / "runs" / "ope").glob("*/validated/summary.json")  # the rejects stay with the run
    assert json.loads(summary.read_text())["strict"] is True


def test_cli_refuses_a_slot_shown_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "impressions.csv").write_text(impressions_csv("e1,r1,1,true,0.5", "e2,r1,1,false,0.5"))
    (tmp_path / "scores.csv").write_text("event_id,candidate_propensity\ne1,0.5\ne2,0.5\n")
    assert run_cli(tmp_path, "--logs", str(tmp_path / "logs"), "--candidate-scores", str(tmp_path / "scores.csv")) == 1
    assert "row 2: request_id 'r1' already shows position 1 (row 1)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ("event_id,candidate_propensity\ne1,0.5\n", "impressions row 2: event_id 'e2' has no score row"),
        ("event_id,candidate_propensity\ne1,0.5\ne2,0.5\ne9,0.5\n", "row 3: event_id 'e9' is not in"),
        (
            "event_id,candidate_propensity\ne1,0.5\ne2,0.5\ne2,0.5\n",
            "'event_id' must be unique; 1 value(s) repeat, first 'e2' at rows 2, 3",
        ),
        (
            "event_id,candidate_propensity\ne2,0.5\ne1,1.5\n",
            "row 2, column 'candidate_propensity': expected number in [0, 1], got 1.5",
        ),
        ("event_id,propensity\ne1,0.5\n", "missing required column(s) 'candidate_propensity'"),
    ],
)
def test_cli_refuses_scores_that_do_not_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scores: str, message: str
) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "impressions.csv").write_text(impressions_csv("e1,r1,1,true,0.5", "e2,r2,1,false,0.5"))
    (tmp_path / "scores.csv").write_text(scores)
    code = run_cli(tmp_path, "--logs", str(tmp_path / "logs"), "--candidate-scores", str(tmp_path / "scores.csv"))
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err, err


def test_cli_overlap_refusal_and_unreadable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_world(tmp_path)
    args = ["--logs", str(tmp_path / "logs"), "--candidate-scores", str(tmp_path / "scores.csv")]
    assert run_cli(tmp_path, *args, "--set", "ope.min_ess_fraction=0.99") == 1
    assert "effective sample size: Kish ESS" in capsys.readouterr().err
    (tmp_path / "broken.parquet").write_text("not parquet")
    assert (
        run_cli(tmp_path, "--logs", str(tmp_path / "logs"), "--candidate-scores", str(tmp_path / "broken.parquet"))
        == 2
    )
    assert "broken.parquet: cannot read as parquet" in capsys.readouterr().err
    assert run_cli(tmp_path, "--logs", str(tmp_path / "nothing"), "--candidate-scores", "x.csv") == 2
    assert "nothing: no such folder or file" in capsys.readouterr().err


def test_cli_reads_jsonl_scores_like_csv(tmp_path: Path) -> None:
    write_world(tmp_path)
    rows = pa_csv.read_csv(tmp_path / "scores.csv").to_pylist()
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = []
    for name in ("scores.csv", "scores.jsonl"):
        out = tmp_path / f"{name}.json"
        logs = str(tmp_path / "logs" / "impressions.parquet")
        assert run_cli(tmp_path, "--logs", logs, "--candidate-scores", str(tmp_path / name), "--out", str(out)) == 0
        results.append(json.loads(out.read_text())["report"]["results"])
    assert results[0] == results[1]
