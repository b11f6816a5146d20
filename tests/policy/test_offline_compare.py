"""experiments.compare.methods: the rows of the comparison table from run records, checked by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from experiments.compare.methods import check_same_evaluation, ddpo_row, format_markdown, offline_rows
from experiments.compare.rows import ComparisonError, MethodRow, t_interval
from experiments.compare.runs import load_run


def write_run(folder: Path, records: list[dict], config: str = "[eval]\nseeds_per_request = 4\n") -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "config.toml").write_text(config)
    return folder


def evaluation(step: int, kl: float, gain: float, se: float = 0.02) -> dict:
    return {
        "step": step, "eval/kl_nats": kl, "gold/gain": gain, "gold/gain_se": se, "eval/proxy_gain_sd": 2 * gain,
        "gold/improved_requests": 0.75,
    }  # fmt: skip


def test_t_interval_by_hand() -> None:
    mean, low, high = t_interval([0.1, 0.2, 0.3])
    # sd 0.1, t(0.975, 2) = 4.302653
    assert mean == pytest.approx(0.2)
    assert high - mean == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5) and low == pytest.approx(
        2 * mean - high
    )
    assert math.isnan(t_interval([1.0])[1])


def test_ddpo_row_averages_final_evaluations_over_seeds(tmp_path: Path) -> None:
    runs = [
        load_run(
            write_run(
                tmp_path / f"seed{s}",
                [evaluation(0, 0.0, 0.0), {"step": 5, "policy/kl": 1.0}, evaluation(10, 20.0 + s, gain)],
            )
        )
        for s, gain in enumerate([0.1, 0.2, 0.3])
    ]
    row, finals = ddpo_row(runs, scale=0.5)
    assert row.kl_nats == pytest.approx(21.0) and row.gold_gain == pytest.approx(0.2)
    assert row.gold_gain_sd == pytest.approx(0.4) and row.proxy_gain_sd == pytest.approx(0.4)
    assert row.gold_ci == pytest.approx(t_interval([0.1, 0.2, 0.3])[1:])
    assert [f["step"] for f in finals] == [10, 10, 10] and "+0.100, +0.200, +0.300" in row.note


def test_offline_rows_pick_the_evaluation_at_matched_kl(tmp_path: Path) -> None:
    records = [
        evaluation(0, 0.0, 0.0),
        evaluation(100, 8.0, 0.05),
        evaluation(200, 19.0, 0.08),
        evaluation(300, 40.0, 0.02),
    ]
    run = load_run(write_run(tmp_path / "dpo", records))
    matched, final = offline_rows("DPO", run, target_kl=21.0, scale=0.5)
    assert matched.method == "DPO (matched KL, step 200)" and matched.kl_nats == 19.0
    assert matched.gold_gain_sd == pytest.approx(0.16)
    assert matched.gold_ci == pytest.approx((0.08 - 1.959964 * 0.02, 0.08 + 1.959964 * 0.02))
    assert final.method == "DPO (final, step 300)" and final.gold_gain == 0.02
    only = offline_rows("RWR", run, target_kl=50.0, scale=0.5)
    assert len(only) == 1 and only[0].method == "RWR (matched KL, step 300)"  # the final one is the match


def test_runs_evaluated_differently_are_refused(tmp_path: Path) -> None:
    a = load_run(write_run(tmp_path / "a", [evaluation(1, 1.0, 0.1)], "[trainer.sampler]\nnum_steps = 20\n"))
    b = load_run(write_run(tmp_path / "b", [evaluation(1, 1.0, 0.1)], "[sampler]\nnum_steps = 20\n"))
    c = load_run(write_run(tmp_path / "c", [evaluation(1, 1.0, 0.1)], "[sampler]\nnum_steps = 10\n"))
    check_same_evaluation([a, b])  # an offline run's [sampler] is the DDPO run's [trainer.sampler]
    with pytest.raises(ComparisonError, match="trainer.sampler.num_steps differ"):
        check_same_evaluation([a, c])
    with pytest.raises(ComparisonError, match="no evaluation with gold"):
        ddpo_row([load_run(write_run(tmp_path / "d", [{"step": 1, "policy/kl": 0.1}]))], scale=1.0)


def test_markdown_table() -> None:
    rows = [
        MethodRow(method="base", kl_nats=0.0, gold_gain=0.0, gold_ci=(0.0, 0.0), gold_gain_sd=0.0, proxy_gain_sd=0.0,
                  improved=None, note="n"),
        MethodRow(method="DDPO", kl_nats=12.345, gold_gain=0.1, gold_ci=(0.05, 0.15), gold_gain_sd=0.4,
                  proxy_gain_sd=1.2, improved=0.8, note="seeds"),
    ]  # fmt: skip
    text = format_markdown(rows, {"held-out requests": 32})
    assert "| DDPO | 12.35 | +0.100 | [+0.050, +0.150] | +0.40 | +1.20 | 80% |" in text
    assert "| base | 0 | +0.000 |" in text and "- held-out requests: 32" in text
