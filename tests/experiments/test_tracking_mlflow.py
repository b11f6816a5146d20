"""Optional MLflow tracking: ``run.mlflow = true`` logs a run's metrics to a local file store under output_dir."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from experiments.config import RunConfig
from experiments.tracking import read_metrics, start_run

mlflow = pytest.importorskip("mlflow")


def test_run_with_mlflow_writes_the_local_file_store(tmp_path: Path) -> None:
    config = RunConfig(name="mlflow-check", output_dir=str(tmp_path / "runs"), tensorboard=False, mlflow=True)
    with start_run(config, config, command="test") as run:
        run.log_metrics({"policy/kl": 0.5, "gold/engagement": math.nan}, step=0)
        run.log_metrics({"policy/kl": 0.25}, step=1)
    store = tmp_path / "runs" / "mlruns"
    assert store.is_dir()

    client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("mlflow-check")  # the experiment is the run name
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == run.dir.name and logged.info.status == "FINISHED"
    history = client.get_metric_history(logged.info.run_id, "policy.kl")  # '/' is not allowed in MLflow keys
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.25)]
    # A NaN is kept in metrics.jsonl but not sent to MLflow.
    assert client.get_metric_history(logged.info.run_id, "gold.engagement") == []
    assert math.isnan(read_metrics(run.dir)[0]["gold/engagement"])
