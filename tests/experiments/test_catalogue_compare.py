"""`backdrop policy compare` without gold: catalogue runs (trained with --requests) ranked by the reward model's
held-out estimate, `--requests FILE` on compare, and the refusals, at a tiny budget (fixtures of test_catalogue)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from experiments.catalogue_example import write_example
from experiments.cli import main
from experiments.compare.methods import check_same_evaluation
from experiments.compare.proxy import held_out_member_gain, pessimistic_gain
from experiments.compare.rows import RANKED_BY_PROXY, ComparisonError
from experiments.compare.runs import load_run
from policy.evaluation import BestOfN
from tests.experiments.test_catalogue import TINY, reward_model  # noqa: F401  (the fixture, reused)
from tests.policy.test_offline_compare import evaluation, write_run


@pytest.fixture(scope="module")
def catalogue_runs(reward_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    """One DDPO run and one DPO run on the example catalogue (no gold), and the table they were trained on."""
    root = tmp_path_factory.mktemp("catalogue_compare")
    table = write_example(root / "my_catalogue")
    out = root / "runs"
    code = main(["policy", "train", "--requests", str(table), "--reward", str(reward_model), "--no-progress",
                 "--set", f"run.output_dir={out}", *TINY])  # fmt: skip
    assert code == 0
    splits = Path(json.loads((reward_model / "metrics.json").read_text())["splits"])
    settings = ["run.threads=1", "run.tensorboard=false", "offline.steps=2", "offline.batch_size=4",
                "offline.eval_every=1", "sampler.num_steps=2", "sampler.batch_size=8", "eval.seeds_per_request=2",
                f"run.output_dir={out}"]  # fmt: skip
    code = main(["policy", "offline", "--method", "dpo", "--data", str(splits / "train"), "--requests", str(table),
                 "--reward", str(reward_model), *[a for s in settings for a in ("--set", s)]])  # fmt: skip
    assert code == 0
    (ddpo,) = (out / "policy_train").iterdir()
    (dpo,) = (out / "policy_offline_dpo").iterdir()
    return {"table": table, "ddpo": ddpo, "dpo": dpo, "root": root}


def rows_by_method(payload: dict) -> dict[str, dict]:
    return {r["method"]: r for r in payload["rows"]}


def test_catalogue_runs_are_ranked_by_the_reward_models_estimate(catalogue_runs: dict[str, Path]) -> None:
    out = catalogue_runs["root"] / "compare"
    code = main(["policy", "compare", "--ddpo", str(catalogue_runs["ddpo"]), "--dpo", str(catalogue_runs["dpo"]),
                 "--best-of", "2", "--out", str(out)])  # fmt: skip
    assert code == 0
    table = (out / "compare.md").read_text()
    payload = json.loads((out / "compare.json").read_text())
    rows = rows_by_method(payload)
    methods = [r["method"] for r in payload["rows"]]
    assert methods[:3] == ["base (adapter off)", "best-of-2 (base)", "DDPO (1 seed)"]
    assert methods[-1] == "best-of-2 on DDPO (first run)"
    assert any(m.startswith("DPO (matched KL, step ") for m in methods)
    # No gold is claimed anywhere: no gold column, no gold value; the ranking key is named.
    assert "gold gain" not in table and all(r["gold_gain"] is None and r["gold_ci"] is None for r in payload["rows"])
    assert "| pessimistic gain (SD) | held-out member (SD) | rank |" in table
    assert payload["ranked_by"] == RANKED_BY_PROXY == "reward model estimate, no gold"
    assert payload["context"]["ranked by"].startswith(RANKED_BY_PROXY)
    assert "optimistic by construction" in rows["best-of-2 (base)"]["note"]

    # The DDPO row is the run's final evaluation, rescaled by the comparison's base proxy SD.
    final = json.loads((catalogue_runs["ddpo"] / "final_eval.json").read_text())
    scale = payload["details"]["within_request_sd"]
    ddpo = rows["DDPO (1 seed)"]
    assert ddpo["proxy_gain"] == final["eval/proxy_gain"] and ddpo["kl_nats"] == final["eval/kl_nats"]
    assert ddpo["pessimistic_gain_sd"] == pytest.approx(final["eval/pessimistic_gain"] / scale, rel=1e-12)
    assert ddpo["held_out_gain_sd"] is None and math.isnan(ddpo["proxy_ci"][0])  # one seed: no interval
    best = rows["best-of-2 (base)"]
    assert best["kl_nats"] == pytest.approx(math.log(2) - 0.5)
    assert best["proxy_gain"] >= 0  # the max of the two candidates' proxy is at least their mean
    assert best["held_out_gain_sd"] is not None  # the reward model is a 2-member ensemble
    base = rows["base (adapter off)"]
    assert (base["proxy_gain"], base["pessimistic_gain_sd"]) == (0.0, 0.0)

    # The ranking: every row, ordered by the held-out gain for best-of-n rows and the pessimistic gain otherwise.
    values = [entry["value"] for entry in payload["ranking"]]
    assert values == sorted(values, reverse=True) and len(values) == len(methods)
    expected = {m: r["held_out_gain_sd"] if r["held_out_gain_sd"] is not None else r["pessimistic_gain_sd"]
                for m, r in rows.items()}  # fmt: skip
    assert {e["method"]: e["value"] for e in payload["ranking"]} == expected
    first = payload["ranking"][0]["method"]
    assert f"| {first} |" in table and table.split(f"| {first} |")[1].splitlines()[0].endswith("| 1 |")


def write_other_table(folder: Path, splits: dict[str, str]) -> Path:
    """The example catalogue with only the rows of ``splits`` (request_id -> split) and other prompts."""
    table = write_example(folder)
    with open(table, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["request_id"] in splits]
    for row in rows:
        row["split"] = splits[row["request_id"]]
        row["prompt"] = row["prompt"].replace("minimal", "with plants") + ", again"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return table


def test_compare_on_another_request_table(catalogue_runs: dict[str, Path]) -> None:
    other = write_other_table(
        catalogue_runs["root"] / "other", {"gift-0": "eval", "china-1": "eval", "gift-2": "train"}
    )
    out = catalogue_runs["root"] / "compare_other"
    code = main(["policy", "compare", "--ddpo", str(catalogue_runs["ddpo"]), "--dpo", str(catalogue_runs["dpo"]),
                 "--requests", str(other), "--best-of", "2", "--no-stack", "--out", str(out)])  # fmt: skip
    assert code == 0
    payload = json.loads((out / "compare.json").read_text())
    assert payload["details"]["requests"] == 2 and payload["ranked_by"] == RANKED_BY_PROXY
    assert payload["context"]["requests"].startswith(f"--requests {other}")
    import pyarrow.parquet as pq

    manifest = pq.read_table(out / "requests" / "requests.parquet").to_pylist()
    assert sorted((r["request_id"], r["split"]) for r in manifest) == [
        ("china-1", "eval"), ("gift-0", "eval"), ("gift-2", "train"),
    ]  # fmt: skip
    for run in ("ddpo", "dpo"):  # trained on the example catalogue: other prompts, so none of these requests
        line = payload["context"][f"run {catalogue_runs[run]}"]
        assert "0 of the 2 compared requests are in its manifest - other requests than the ones compared" in line
    # Every run was evaluated again on the two requests: the DDPO final adapter, each DPO snapshot.
    (final,) = payload["ddpo_runs"]
    assert final["adapter"] == str(catalogue_runs["ddpo"] / "adapter") and final["eval/kl_nats"] >= 0
    dpo_rows = [r for r in payload["rows"] if r["method"].startswith("DPO")]
    snapshots = sorted(p.name for p in (catalogue_runs["dpo"] / "adapters").iterdir())
    assert dpo_rows and all(f"step-{int(r['method'].split('step ')[1][:-1]):06d}" in snapshots for r in dpo_rows)

    # The table the runs were trained on: its eval rows are all in their manifests.
    same = catalogue_runs["root"] / "compare_same"
    code = main(["policy", "compare", "--ddpo", str(catalogue_runs["ddpo"]), "--requests",
                 str(catalogue_runs["table"]), "--best-of", "2", "--no-stack", "--out", str(same)])  # fmt: skip
    assert code == 0
    line = json.loads((same / "compare.json").read_text())["context"][f"run {catalogue_runs['ddpo']}"]
    assert line.endswith("8 of the 8 compared requests are in its manifest")


def test_compare_requests_refusals(catalogue_runs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    no_eval = write_other_table(catalogue_runs["root"] / "no_eval", {"gift-0": "train", "china-1": "train"})
    bad = catalogue_runs["root"] / "bad.csv"
    bad.write_text("request_id,product_id,image,prompt\nr1,p1,missing.png,white marble tabletop\n")
    cases = [
        (no_eval, 2, f"{no_eval}: no eval request to compare on; give some rows split = eval"),
        (
            bad,
            1,
            f"{bad}: no request was accepted (1 read):\n  {bad}: row 1, column 'image': expected a readable "
            "8-bit photo within the size limits, got 'missing.png'",
        ),
    ]
    for table, code, message in cases:
        out = catalogue_runs["root"] / f"refused_{table.stem}"
        argv = ["policy", "compare", "--ddpo", str(catalogue_runs["ddpo"]), "--requests", str(table),
                "--best-of", "2", "--no-stack", "--out", str(out)]  # fmt: skip
        assert main(argv) == code
        assert message in capsys.readouterr().err


def test_base_model_and_adapter_mismatches_are_refused_by_name(tmp_path: Path) -> None:
    records = [evaluation(1, 1.0, 0.1)]
    a = load_run(
        write_run(tmp_path / "a", records, "[policy.model]\ninit_seed = 0\n[catalogue]\nrequests = 'x.csv'\n")
    )
    b = load_run(
        write_run(tmp_path / "b", records, "[policy.model]\ninit_seed = 1\n[catalogue]\nrequests = 'x.csv'\n")
    )
    c = load_run(
        write_run(tmp_path / "c", records, "[policy.model]\ninit_seed = 0\n[catalogue]\nrequests = 'y.csv'\n")
    )
    d = load_run(write_run(tmp_path / "d", records, "[policy.model]\ninit_seed = 0\n[policy.lora]\nrank = 8\n"))
    with pytest.raises(ComparisonError, match=rf"{b.path} does not fit {a.path}'s base model: policy.model.init_seed"):
        check_same_evaluation([a, b])
    with pytest.raises(ComparisonError, match=r"catalogue.requests differ; compare runs with the same \[requests\]"):
        check_same_evaluation([a, c])
    check_same_evaluation([a, c], requests_given=True)  # both evaluated again on the given table
    with pytest.raises(ComparisonError, match=r"policy.lora.rank differ; .* with the same adapter shape"):
        check_same_evaluation([a, d], requests_given=True)


def test_pessimistic_gain_is_converted_to_the_comparisons_k() -> None:
    record = {"step": 3, "eval/proxy_gain": 0.5, "eval/pessimistic_gain": 0.3, "eval/pessimism": 1.0}
    assert pessimistic_gain(record, 1.0, "run") == 0.3
    assert pessimistic_gain(record, 2.0, "run") == pytest.approx(0.5 - 2 * 0.2)  # std gain 0.2 per unit of k
    with pytest.raises(ComparisonError, match="run: evaluated with pessimism 0, the comparison uses 2"):
        pessimistic_gain({**record, "eval/pessimism": 0.0}, 2.0, "run")
    with pytest.raises(ComparisonError, match="run: step 3 logged no eval/pessimistic_gain"):
        pessimistic_gain({"step": 3, "eval/proxy_gain": 0.5}, 1.0, "run")


def test_held_out_member_gain_by_hand() -> None:
    # One request, two candidates, two members that disagree: member 0 prefers candidate 0, member 1 candidate 1.
    members = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # [M=2, R=1, n=2]
    spread = members.std(dim=0, unbiased=False)  # [1, 2]: 0.5 and 1.0
    picks = BestOfN(proxy=members.mean(dim=0), gold=None, chosen=torch.tensor([1]), uncertainty=spread,
                    members=members)  # fmt: skip
    # Member 0 is valued where member 1 picks (candidate 1): 0 - 1.0 minus its candidate mean ((1 - 0.5) + (0 - 1)) / 2
    # = -0.75; member 1 where member 0 picks (candidate 0): 0 - 0.5 minus ((0 - 0.5) + (2 - 1)) / 2 = -0.75.
    assert held_out_member_gain(picks, 1.0) == pytest.approx(-0.75)
    # The in-sample pick (candidate 1, proxy 1.0 vs mean 0.75) looks like a gain; held out it is a loss.
    assert held_out_member_gain(BestOfN(proxy=picks.proxy, gold=None, chosen=picks.chosen), 1.0) is None
    agreed = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]]])
    same = BestOfN(proxy=agreed.mean(dim=0), gold=None, chosen=torch.tensor([0]),
                   uncertainty=agreed.std(dim=0, unbiased=False), members=agreed)  # fmt: skip
    # Both members pick candidate 0: the held-out value is the pessimistic gain of that pick, (2 - 1) - (0 + 1) / 2.
    assert held_out_member_gain(same, 1.0) == pytest.approx((2.0 - 1.0) - (1.0 + 0.0) / 2)
