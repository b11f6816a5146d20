"""Fitting a reward model from logs: ``backdrop reward train`` without the CLI (also run by the sweep and the demo).

:func:`fit_from_logs` takes the command's root config (:func:`command_config_class`: [run], [data], [reward]) and
a folder of logs, or none: then it simulates the default studio world into the run folder. Raw tables are
validated first, a validated folder is split by product, a folder holding train/, validation/ and test/ is used
as is (:func:`prepare_splits`). It trains the ensemble (early-stopped on validation), calibrates the click head
and measures the logs-only test-split metrics; :func:`save_reward_model` writes the result into ``<run>/model``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.parquet as pq
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from experiments.config import RunConfig, dump_toml, environment_profile, load_config
from experiments.policy_runs.train import is_main_process, launched_processes
from experiments.runtime import setup_runtime
from experiments.studio.truth import prompt_family
from offline_data.assets import ASSET_ROOT_KEY
from offline_data.errors import InputUnreadableError
from offline_data.io import find_table
from offline_data.simulator import SimulatorConfig
from offline_data.simulator.simulation import simulate
from offline_data.splits import SplitConfig, split_logs
from offline_data.validation import validate_logs
from reward.config import RewardConfig, RewardDataConfig
from reward.evaluation import evaluate
from reward.pipeline import fit_reward_model
from reward.plots import write_plots

WORLD_CONFIG = Path(__file__).resolve().parent / "configs" / "studio_world.toml"
"""The world ``backdrop simulate`` makes by default (its ``DEFAULT_CONFIG``), simulated when no logs are given."""
SPLITS = ("train", "validation", "test")


@functools.cache
def command_config_class() -> type:
    """The root config of ``backdrop reward train`` ([run], [data], [reward]), built on first use."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class RewardRunConfig(RunConfig):
        """[run] of ``backdrop reward train``: RunConfig with the reward's defaults."""

        name: str = "reward"
        """Run name; results go to ``<output_dir>/<name>/<timestamp>``."""

    # make_dataclass with real type objects: string annotations of a class defined in a function would not
    # resolve in this module's namespace (the config loader reads them with typing.get_type_hints).
    RewardCommandConfig = dataclasses.make_dataclass(
        "RewardCommandConfig",
        [
            ("run", RewardRunConfig, dataclasses.field(default=RewardRunConfig())),
            ("data", RewardDataConfig, dataclasses.field(default=RewardDataConfig())),
            ("reward", RewardConfig, dataclasses.field(default=RewardConfig())),
        ],
        frozen=True,
        kw_only=True,
    )
    RewardCommandConfig.__doc__ = (
        "Root config of backdrop reward train: [run] (run directory, seed, device; member k uses seed + k * 1009), "
        "[data] (simulated world without --data, leak-free split) and [reward] (the model and its training)."
    )
    return RewardCommandConfig


def has_splits(directory: Path) -> bool:
    return all((directory / s / "impressions.parquet").is_file() or (directory / s / "preferences.parquet").is_file()
               for s in SPLITS)  # fmt: skip


def _is_validated(directory: Path) -> bool:
    return (directory / "summary.json").is_file() and (directory / "assets.parquet").is_file()


def prepare_splits(data: Path | None, run_dir: Path, config: Any, *, progress: bool) -> tuple[Path, Path | None]:
    """The folder holding train/validation/test, and the simulation folder when one was simulated."""
    split_config = SplitConfig(
        by=config.data.split_by, fractions=config.data.split_fractions, seed=config.data.split_seed
    )
    simulated = None
    if data is None:
        simulated = run_dir / "world"
        validated = _simulate_world(config.data.world_config, simulated, progress=progress)
    elif not data.is_dir():
        raise InputUnreadableError(f"{data}: folder not found")
    elif has_splits(data):
        return data, None
    elif has_splits(data / "splits" / config.data.split_by):
        return data / "splits" / config.data.split_by, None
    elif _is_validated(data):
        validated = data
    elif _is_validated(data / "validated"):
        validated = data / "validated"
    else:
        validated = _validate(data, run_dir / "validated")
    out = run_dir / "splits"
    report = split_logs(validated, out, split_config)
    record_asset_root(validated, out)
    print(report.render())
    return out, simulated


def record_asset_root(validated: Path, splits: Path) -> None:
    """Give each split's assets table the ``backdrop.asset_root`` of the validated table it came from.

    Workaround: ``split_logs`` writes the split tables without that metadata, so their relative asset paths
    would resolve against the split folder (reported to the offline_data owner).
    """
    source = validated / "assets.parquet"
    relative = (pq.read_schema(source).metadata or {}).get(ASSET_ROOT_KEY.encode())
    root = (validated / relative.decode()).resolve() if relative is not None else validated.resolve()
    for split in SPLITS:
        path = splits / split / "assets.parquet"
        table = pq.read_table(path)
        if ASSET_ROOT_KEY.encode() in (table.schema.metadata or {}):
            continue
        metadata = {
            **(table.schema.metadata or {}),
            ASSET_ROOT_KEY.encode(): os.path.relpath(root, path.parent.resolve()).encode(),
        }
        pq.write_table(table.replace_schema_metadata(metadata), path)


def _simulate_world(world_config: str, out: Path, *, progress: bool) -> Path:
    path = world_config or str(WORLD_CONFIG)
    # The world `backdrop simulate` would make: its config file, then the BACKDROP_CONFIG_OVERRIDES profile.
    config = load_config(SimulatorConfig, path, profile=environment_profile(SimulatorConfig))
    summary = simulate(config, out, progress=progress)
    (out / "config.toml").write_text(dump_toml(config), encoding="utf-8")
    print(summary.format_table())
    return _validate(out, out / "validated")


def _validate(directory: Path, out: Path) -> Path:
    sources = {t: s for t in ("assets", "impressions", "dwell", "preferences") if (s := find_table(directory, t))}
    if "assets" not in sources:
        raise InputUnreadableError(
            f"{directory}: no assets table (assets.parquet|.csv|.jsonl); reward models need images"
        )
    summary = validate_logs(sources, out)
    print(summary.render_table())
    if summary.rejected:
        print(f"note: {summary.rejected:,} rows rejected (see {out}/*.rejects.parquet); training on the rest")
    return out


class RewardFit(NamedTuple):
    """What :func:`fit_from_logs` trained and measured."""

    scorer: Any
    """The calibrated ``reward.scorer.RewardScorer``."""
    metrics: dict
    """Training metrics (``reward.pipeline.fit_reward_model``) with ``test`` and ``splits`` added."""
    test_metrics: dict
    """Logs-only metrics on the test split (``reward.evaluation.evaluate``)."""
    plots: Any
    """The data of the test-split plots."""
    splits: Path
    """The folder holding train/, validation/ and test/."""
    simulated: Path | None
    """The simulated world, when no logs were given."""


def fit_from_logs(
    config: Any,
    data: Path | None,
    work_dir: Path | None,
    *,
    log_metrics: Any = None,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
) -> RewardFit:
    """``backdrop reward train`` without the CLI: splits from ``data`` (simulated when None), then train and test.
    Finished ensemble members are saved to and loaded from ``checkpoint_dir`` (``reward.member_checkpoint``).

    Under ``accelerate launch`` every process trains (the global batch is split between them, reward/train.py);
    process 0 alone simulates/validates/splits into ``work_dir`` (other processes pass None and receive the
    paths) and should be the only one given ``log_metrics``.
    """
    runtime = setup_runtime(config.run)
    device = runtime.device
    if launched_processes() > 1 and device.type == "cuda":
        device = PartialState().device  # this process's GPU (cuda:<local rank>), not cuda:0 for every process
    splits, simulated = _from_main_process(
        lambda: prepare_splits(data, work_dir, config, progress=progress) if work_dir is not None else None
    )
    scorer, metrics = fit_reward_model(
        config.reward,
        splits / "train",
        splits / "validation",
        seed=runtime.seed,
        device=device,
        log_metrics=log_metrics,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
    )
    test_metrics, plots = evaluate(scorer, splits / "test", prompt_family=prompt_family)
    metrics["test"] = test_metrics
    metrics["splits"] = str(splits)
    return RewardFit(scorer, metrics, test_metrics, plots, splits, simulated)


def _from_main_process(make: Any) -> Any:
    """``make()`` on process 0, its result sent to the other processes of a launch (just ``make()`` without one)."""
    if launched_processes() == 1:
        return make()

    payload = [make() if is_main_process() else None]
    return broadcast_object_list(payload, from_process=0)[0]


def save_reward_model(fit: RewardFit, config: Any, run: Any) -> Path:
    """Write ``fit`` into ``<run>/model`` (scorer, config.toml, test-split plots), log its test metrics to ``run``
    and write ``reward_train.json``; returns the model folder. Shared by ``backdrop reward train`` and
    ``backdrop demo``."""
    model_dir = run.dir / "model"
    fit.scorer.save(model_dir, metrics=fit.metrics)
    (model_dir / "config.toml").write_text(dump_toml(config), encoding="utf-8")
    write_plots(fit.test_metrics, fit.plots, model_dir / "plots")
    run.log_metrics({f"test/{k}": v for k, v in fit.test_metrics.items() if isinstance(v, float)}, step=0)
    run.write_json("reward_train.json", json.loads(json.dumps(fit.metrics, default=float)))
    log_hparams = getattr(run, "log_hparams", None)  # TensorBoard / MLflow: config with the test metrics
    if log_hparams is not None:
        log_hparams(config, {f"test/{k}": v for k, v in fit.test_metrics.items() if isinstance(v, float)})
    return model_dir
