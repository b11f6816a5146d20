"""``backdrop runs compare``: config differences, final/best values, written table and plots, named errors."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.compare.runs import (
    RunDirectoryError,
    UnknownMetricError,
    compare_runs,
    format_table,
    load_run,
    lower_is_better_default,
    write_comparison,
)
from experiments.config import RunConfig
from experiments.tracking import start_run


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainerSection:
    learning_rate: float = 3e-4
    """AdamW learning rate."""
    kl_coef: float = 0.01
    """KL weight."""
    steps: int = 3
    """Steps."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig:
    run: RunConfig = RunConfig(tensorboard=False)
    """Run directory."""
    trainer: TrainerSection = TrainerSection()
    """Trainer."""


def make_run(tmp_path: Path, name: str, records: list[dict], **trainer: float) -> Path:
    config = ToyConfig(
        run=RunConfig(name=name, output_dir=str(tmp_path), seed=0, tensorboard=False),
        trainer=TrainerSection(**trainer),
    )
    with start_run(config.run, config, command="test") as run:
        for record in records:
            run.log_metrics({k: v for k, v in record.items() if k != "step"}, step=record["step"])
    return run.dir


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    a = make_run(
        tmp_path,
        "a",
        [
            {"step": 0, "gold/engagement": 0.1, "policy/kl": 0.0},
            {"step": 1, "gold/engagement": 0.5, "policy/kl": 0.02},
            {"step": 2, "gold/engagement": 0.3, "policy/kl": 0.01},
        ],
        kl_coef=0.1,
    )
    b = make_run(
        tmp_path,
        "b",
        [
            {"step": 0, "gold/engagement": 0.2, "policy/kl": 0.0},
            {"step": 1, "gold/engagement": float("nan"), "policy/kl": 0.05},
            {"step": 2, "policy/kl": 0.04},
        ],
        kl_coef=0.01,
    )
    return a, b


def test_comparison_values_by_hand(two_runs: tuple[Path, Path]) -> None:
    comparison = compare_runs(two_runs)
    assert comparison.config_keys == ["trainer.kl_coef"]  # run.name / run.output_dir are not listed
    assert comparison.metrics == ["gold/engagement", "policy/kl"]
    assert comparison.lower_is_better == {"gold/engagement": False, "policy/kl": True}
    header = comparison.header()
    rows = [dict(zip(header, row)) for row in comparison.rows()]
    assert rows[0]["run"] == "a" and rows[0]["trainer.kl_coef"] == 0.1
    # a: engagement 0.1, 0.5, 0.3 -> final 0.3, best (max) 0.5 at step 1; KL 0, 0.02, 0.01 -> best (min) 0 at 0.
    assert rows[0]["gold/engagement final"] == 0.3
    assert rows[0]["gold/engagement best(max)"] == 0.5 and rows[0]["gold/engagement best step"] == 1
    assert rows[0]["policy/kl final"] == 0.01
    assert rows[0]["policy/kl best(min)"] == 0.0 and rows[0]["policy/kl best step"] == 0
    # b: the NaN is not a value and step 2 has no engagement: final = best = 0.2 at step 0.
    assert rows[1]["gold/engagement final"] == 0.2 and rows[1]["gold/engagement best(max)"] == 0.2
    assert rows[1]["policy/kl final"] == 0.04


def test_writes_csv_json_and_one_plot_per_metric(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    comparison = compare_runs(two_runs, metrics=["gold/engagement"], lower_is_better=["gold/engagement"])
    assert comparison.header()[-2] == "gold/engagement best(min)"
    written = write_comparison(comparison, tmp_path / "out")
    with open(written["csv"], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["run"] for row in table] == ["a", "b"]
    assert table[0]["gold/engagement best(min)"] == "0.1"
    payload = json.loads(Path(written["json"]).read_text())
    assert payload["rows"][1]["trainer.kl_coef"] == 0.01
    assert payload["runs"][0]["path"] == str(two_runs[0])
    png = Path(written["plots"]["gold/engagement"])
    assert png.name == "gold_engagement.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_table_aligns_columns() -> None:
    text = format_table(["run", "value"], [["a", 0.5], ["long-name", None]])
    assert text.splitlines() == ["run        value", "---------  -----", "a            0.5", "long-name      —"]


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("policy/kl", True),
        ("train/bt_loss", True),
        ("rollout/sec_per_batch", True),
        ("eval/ece", True),
        ("gold/engagement", False),
        ("eval/pairwise_acc", False),
        ("policy/clipfrac", False),
    ],
)
def test_lower_is_better_default(metric: str, expected: bool) -> None:
    assert lower_is_better_default(metric) is expected


def test_errors_name_the_run_and_the_problem(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunDirectoryError, match=f"{empty}: not a run directory: no metrics.jsonl"):
        load_run(empty)
    with pytest.raises(RunDirectoryError, match="no such run directory"):
        load_run(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text('{"step": 0, "a": 1}\n\n{"step": 1, "a": \n')
    with pytest.raises(RunDirectoryError, match=r"metrics.jsonl: line 3: not JSON"):
        load_run(broken)
    (broken / "metrics.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(RunDirectoryError, match=r"line 1: expected an object with an integer 'step'"):
        load_run(broken)
    with pytest.raises(UnknownMetricError, match=r"metric 'gold/engagment' was not logged by any of the runs "):
        compare_runs(two_runs, metrics=["gold/engagment"])


def test_run_without_config_still_compares(tmp_path: Path) -> None:
    bare = tmp_path / "exp" / "20250101-000000"
    bare.mkdir(parents=True)
    (bare / "metrics.jsonl").write_text('{"step": 0, "m": 1.0}\n{"step": 4, "m": 2.0}\n')
    run = load_run(bare)
    assert (run.name, run.timestamp, run.config) == ("exp", "20250101-000000", {})
    assert run.series("m") == [(0, 1.0), (4, 2.0)]


def test_cli_compare(two_runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    argv = ["runs", "compare", *map(str, two_runs), "--metrics", "gold/engagement,policy/kl", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "trainer.kl_coef" in printed and "gold/engagement best(max)" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "command.json",  # the run record every command's output folder holds
        "comparison.csv",
        "comparison.json",
        "config.toml",
        "environment.json",
        "gold_engagement.png",
        "log.txt",
        "metrics.jsonl",
        "policy_kl.png",
    ]
    assert main(["runs", "compare", str(two_runs[0]), str(tmp_path)]) == 2
    assert f"{tmp_path}: not a run directory: no metrics.jsonl" in capsys.readouterr().err
    assert main(["runs", "compare", str(two_runs[0]), "--metrics", "nope", "--out", str(out)]) == 2


def test_wide_tables_wrap_into_blocks_and_long_cells_are_abbreviated() -> None:
    header = ["run", "note", *(f"member{k}/val/some_long_metric_name_{k} final" for k in range(12))]
    rows = [["policy_train", "x" * 300, *range(12)], ["reward_train", "short", *range(12, 24)]]
    text = format_table(header, rows)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 119
    blocks = text.split("\n\n")
    assert len(blocks) > 1 and all(block.startswith("run") for block in blocks)
    assert all("policy_train" in block and "reward_train" in block for block in blocks)
    assert "x" * 19 + "…" + "x" * 20 in text and "x" * 41 not in text
    assert "23" in blocks[-1]
