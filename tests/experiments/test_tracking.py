"""Run directories write strict JSON: a NaN metric is null, named, never a bare NaN another reader refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

from experiments.tracking import Run, read_metrics


def test_metrics_and_summaries_are_strict_json(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        run.log_metrics({"policy/kl": math.nan, "reward/mean": 0.5}, 3)
        run.write_json("final_eval.json", {"gold/gain": math.inf, "epoch": 3})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line
    (record,) = read_metrics(tmp_path)
    assert record["policy/kl"] is None and record["reward/mean"] == 0.5 and record["non_finite"] == ["policy/kl"]
    final = json.loads((tmp_path / "final_eval.json").read_text())  # json.loads accepts NaN: check the text too
    assert "Infinity" not in (tmp_path / "final_eval.json").read_text()
    assert final == {"gold/gain": None, "epoch": 3, "non_finite": ["gold/gain"]}


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path: Path, caplog) -> None:
    import pytest

    from experiments.policy_runs.train import truncate_metrics
    from offline_data.errors import InputUnreadableError

    whole = '{"step": 1, "reward/mean": 0.1}\n{"step": 2, "reward/mean": 0.2}\n'
    (tmp_path / "metrics.jsonl").write_text(whole + '{"step": 3, "rew')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert "line 3 was cut short (killed while writing?); dropped" in caplog.text
    assert truncate_metrics(tmp_path, 1) == 1  # step 2 dropped; the torn line too, without counting
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "reward/mean": 0.1}\n'
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "rew\n{"step": 3}\n')  # not a kill: an error
    with pytest.raises(InputUnreadableError, match=r"metrics.jsonl: line 2: not JSON"):
        read_metrics(tmp_path)
