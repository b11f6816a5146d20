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
