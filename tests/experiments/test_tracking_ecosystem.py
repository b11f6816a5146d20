"""Tracking as the ecosystem reads it: images and hparams in TensorBoard event files (read back with TensorBoard's
own EventAccumulator), the same in MLflow when it is installed."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest

from experiments.tracking import Run, flatten_hparams


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Optim:
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.99)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Config:
    name: str = "policy_train"
    epochs: int = 4
    checkpoint: Path | None = None
    optim: _Optim = dataclasses.field(default_factory=_Optim)


def _sheet(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 72, 3), dtype=np.uint8)


def test_flatten_hparams_keeps_scalars_and_names_the_rest() -> None:
    assert flatten_hparams(_Config()) == {
        "name": "policy_train",
        "epochs": 4,
        "checkpoint": "none",
        "optim.lr": 3e-3,
        "optim.betas": "[0.9, 0.99]",
    }
    with pytest.raises(TypeError, match="config must be a dataclass or a mapping, got int"):
        flatten_hparams(3)


def test_images_and_hparams_read_back_from_the_event_files(tmp_path: Path) -> None:
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    with Run(tmp_path, tensorboard=True) as run:
        run.log_metrics({"eval/kl_nats": 2.5}, step=1)
        run.log_image("eval/before_after", _sheet(0), step=0)
        run.log_image("eval/before_after", _sheet(1), step=1)
        run.log_hparams(_Config(), {"gold/gain_sd": 0.42, "eval/kl_nats": 2.5, "epoch": 1.0, "nan": float("nan")})
        with pytest.raises(ValueError, match=r"image must be \[H, W, 3\] uint8, got float64"):
            run.log_image("bad", np.zeros((4, 4, 3)), step=0)

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "eval/before_after" in events.Tags()["images"]
    logged = events.Images("eval/before_after")
    assert [e.step for e in logged] == [0, 1]
    decoded = np.asarray(Image.open(io.BytesIO(logged[1].encoded_image_string)).convert("RGB"))
    assert np.array_equal(decoded, _sheet(1))  # PNG: lossless

    hparams = EventAccumulator(str(tmp_path / "tb" / "hparams"))
    hparams.Reload()
    content = hparams.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optim.lr"].number_value == pytest.approx(3e-3)
    assert start.hparams["name"].string_value == "policy_train"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"final/gold/gain_sd", "final/eval/kl_nats", "final/epoch"}
    assert hparams.Scalars("final/gold/gain_sd")[0].value == pytest.approx(0.42)


def test_runs_without_sinks_accept_images_and_hparams(tmp_path: Path) -> None:
    with Run(tmp_path) as run:
        run.log_image("eval/before_after", _sheet(0), step=0)
        assert run.log_hparams(_Config(), {"x": 1.0})["optim.lr"] == 3e-3
    assert not (tmp_path / "tb").exists()


def test_mlflow_gets_the_same_images_params_and_final_metrics(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    directory = tmp_path / "policy_train" / "run1"
    directory.mkdir(parents=True)
    with Run(directory, mlflow_dir=store) as run:
        run_id = mlflow.active_run().info.run_id
        run.log_image("eval/before_after", _sheet(0), step=0)
        run.log_hparams(_Config(), {"gold/gain_sd": 0.42})
    client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
    data = client.get_run(run_id).data
    assert data.params["optim.lr"] == "0.003" and data.metrics["final.gold.gain_sd"] == pytest.approx(0.42)
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    assert any("images" in path for path in artifacts)
