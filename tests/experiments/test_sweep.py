"""``backdrop sweep`` end to end on the synthetic quadratic target (tests/experiments/test_sweep_target.py)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import optuna
import pytest
import torch

from experiments.cli import main
from experiments.config import RunConfig, load_config
from experiments.sweep.space import ConstraintConfig, ParamConfig, PrunerConfig, SweepSpaceConfig
from experiments.sweep.study import (
    FAILURES_BEFORE_STOP,
    STUDY_NAME,
    SweepError,
    available_cores,
    counted_trials,
    create_sweep,
    make_pruner,
    open_storage,
    open_sweep,
    run_sweep,
)
from experiments.sweep.summary import summarize_sweep
from experiments.sweep.targets import register_target, unregister_target

HERE = Path(__file__).resolve().parent
XY = {"quad.x": ParamConfig(type="float", low=-2.0, high=2.0), "quad.y": ParamConfig(type="float", low=-2.0, high=2.0)}


@pytest.fixture
def quadratic(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The synthetic target, importable as ``test_sweep_target`` here and in spawned workers."""
    monkeypatch.syspath_prepend(str(HERE))
    module = importlib.import_module("test_sweep_target")
    module.CALLS.update(count=0, interrupt_on=0)
    register_target("quadratic", "test_sweep_target:QUADRATIC")
    yield module
    unregister_target("quadratic")
    module.CALLS.update(count=0, interrupt_on=0)


def base_config(module: ModuleType, tmp_path: Path, **quad: object) -> object:
    run = RunConfig(name="quadratic", output_dir=str(tmp_path / "runs"), tensorboard=False)
    return module.QuadraticRootConfig(run=run, quad=module.QuadraticConfig(**quad))


def make_space(**fields: object) -> SweepSpaceConfig:
    values = {"target": "quadratic", "objective": "toy/score", "params": XY, "pruner": PrunerConfig(type="none")}
    return SweepSpaceConfig(**{**values, **fields})


def load(sweep) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=open_storage(sweep.paths))


def test_best_trial_is_near_the_optimum_and_outputs_are_written(quadratic: ModuleType, tmp_path: Path) -> None:
    sweep = create_sweep(make_space(trials=20, seed=0), base_config(quadratic, tmp_path))
    assert run_sweep(sweep, progress=False) == 20
    study = load(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 20
    best = study.best_trial
    distance = ((best.params["quad.x"] - 1.0) ** 2 + (best.params["quad.y"] + 0.5) ** 2) ** 0.5
    assert distance < 0.5, best.params
    values = [t.value for t in study.trials]
    assert best.value > statistics.median(values) + 1.0

    summary = summarize_sweep(sweep)
    assert sweep.paths.db.is_file()
    for plot in ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate", "slice"):
        assert (sweep.paths.dir / "plots" / f"{plot}.png").stat().st_size > 1000
    assert summary["best"][0]["number"] == best.number and len(summary["best"]) == 5
    assert [row["value"] for row in summary["best"]] == sorted(values, reverse=True)[:5]
    assert set(summary["importances"]) == {"quad.x", "quad.y"}
    assert sum(summary["importances"].values()) == pytest.approx(1.0)
    assert len((sweep.paths.dir / "best_trials.csv").read_text().splitlines()) == 6
    sweep_curve = [json.loads(line) for line in (sweep.paths.dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in sweep_curve] == list(range(20))
    assert sweep_curve[-1]["sweep/best_value"] == best.value

    # Each trial is a run directory holding its resolved config, its curve and its record.
    trial = study.trials[7]
    trial_dir = sweep.paths.dir / trial.user_attrs["run_dir"]
    config = load_config(quadratic.QuadraticRootConfig, trial_dir / "config.toml")
    assert (config.quad.x, config.quad.y) == (trial.params["quad.x"], trial.params["quad.y"])
    assert config.run.name == "trial-0007" and config.run.threads >= 1
    record = json.loads((trial_dir / "trial.json").read_text())
    assert record["state"] == "COMPLETE" and record["value"] == trial.value
    assert len((trial_dir / "metrics.jsonl").read_text().splitlines()) == 8


def test_median_pruner_prunes_and_keeps_the_pruned_runs(quadratic: ModuleType, tmp_path: Path) -> None:
    space = make_space(trials=14, sampler="random", pruner=PrunerConfig(type="median", n_startup_trials=3))
    sweep = create_sweep(space, base_config(quadratic, tmp_path))
    run_sweep(sweep, progress=False)
    trials = load(sweep).trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "a random sampler on the quadratic leaves trials below the median"
    for trial in pruned:
        step = trial.last_step
        # MedianPruner: the trial's value at its step is worse than the median of the trials that COMPLETED before it
        # (optuna's PercentilePruner reads completed trials only; pruned ones do not enter the median).
        earlier = [
            t.intermediate_values[step]
            for t in trials
            if t.number < trial.number and t.state.name == "COMPLETE" and step in t.intermediate_values
        ]
        assert trial.intermediate_values[step] < statistics.median(earlier)
        directory = sweep.paths.dir / trial.user_attrs["run_dir"]
        record = json.loads((directory / "trial.json").read_text())
        assert (record["state"], record["pruned_at_step"]) == ("PRUNED", step)
        logged = [json.loads(line)["step"] for line in (directory / "metrics.jsonl").read_text().splitlines()]
        assert logged == list(range(step + 1))  # stopped right after the step it was pruned at
    assert counted_trials(trials) == 14


def test_hyperband_and_median_pruners_are_built_from_the_space() -> None:
    hyperband = make_pruner(make_space(pruner=PrunerConfig(type="hyperband", max_resource=8, reduction_factor=2)))
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(make_space(pruner=PrunerConfig())), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(make_space()), optuna.pruners.NopPruner)


def test_resume_keeps_finished_trials_and_retries_interrupted_ones(quadratic: ModuleType, tmp_path: Path) -> None:
    space = make_space(trials=5, sampler="random")
    sweep = create_sweep(space, base_config(quadratic, tmp_path))
    quadratic.CALLS["interrupt_on"] = 3  # Ctrl-C during trial 2
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, progress=False)
    assert not sweep.paths.lock.exists()
    study = load(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    finished = {t.number: t.value for t in study.trials[:2]}
    assert json.loads((sweep.paths.dir / "trials/0002/trial.json").read_text())["state"] == "INTERRUPTED"
    # A killed process leaves its trial RUNNING and its lock behind.
    killed = study.ask()
    killed.suggest_float("quad.x", -2.0, 2.0)
    killed.suggest_float("quad.y", -2.0, 2.0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    sweep.paths.lock.write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))

    resumed = open_sweep(sweep.paths.dir)
    assert run_sweep(resumed, progress=False) == 3
    trials = load(resumed).trials
    assert {t.number: t.value for t in trials[:2]} == finished  # not rerun
    assert [t.state.name for t in trials[2:4]] == ["FAIL", "FAIL"]  # the interrupted and the killed trial
    retries = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    assert set(retries) == {2, 3}
    assert all(retries[n].params == trials[n].params and retries[n].state.name == "COMPLETE" for n in (2, 3))
    assert counted_trials(trials) == 5 and len(trials) == 7
    assert len(json.loads(resumed.paths.meta.read_text())["sessions"]) == 2
    # A second resume has nothing left to do and queues nothing again.
    assert run_sweep(open_sweep(sweep.paths.dir), progress=False) == 0
    assert len(load(sweep).trials) == 7


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_sweep_gives_the_uninterrupted_sweeps_trials(
    quadratic: ModuleType, tmp_path: Path, sampler: str
) -> None:
    def finished(sweep) -> list[tuple[dict, float]]:
        return [(t.params, t.value) for t in load(sweep).trials if t.state.name == "COMPLETE"]

    space = make_space(trials=6, sampler=sampler)
    straight = create_sweep(space, base_config(quadratic, tmp_path / "straight"))
    assert run_sweep(straight, progress=False) == 6
    quadratic.CALLS.update(count=0, interrupt_on=3)  # Ctrl-C during trial 2; a kill leaves it RUNNING, the same
    interrupted = create_sweep(space, base_config(quadratic, tmp_path / "interrupted"))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(interrupted, progress=False)
    quadratic.CALLS.update(interrupt_on=0)
    assert run_sweep(open_sweep(interrupted.paths.dir), progress=False) == 4  # a new session, a new process's RNG
    assert finished(interrupted) == finished(straight)  # the same params in the same order, hence the same values


def test_resume_refuses_a_sweep_that_is_still_running(quadratic: ModuleType, tmp_path: Path) -> None:
    sweep = create_sweep(make_space(trials=2), base_config(quadratic, tmp_path))
    sweep.paths.lock.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    with pytest.raises(SweepError, match=f"still being run by process {os.getpid()}"):
        run_sweep(open_sweep(sweep.paths.dir), progress=False)
    assert load(sweep).trials == []


def test_two_worker_processes_finish_the_requested_trials(
    quadratic: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # the no-GPU case, also on a GPU host
    omp_before = os.environ.get("OMP_NUM_THREADS")
    sweep = create_sweep(make_space(trials=6, seed=3), base_config(quadratic, tmp_path))
    assert run_sweep(sweep, workers=2, progress=False) == 6
    trials = load(sweep).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 6
    pids = {json.loads((sweep.paths.dir / t.user_attrs["run_dir"] / "trial.json").read_text())["pid"] for t in trials}
    assert len(pids) == 2 and os.getpid() not in pids
    assert len({(t.params["quad.x"], t.params["quad.y"]) for t in trials}) == 6
    config = load_config(
        quadratic.QuadraticRootConfig, sweep.paths.dir / trials[0].user_attrs["run_dir"] / "config.toml"
    )
    assert config.run.threads == max(1, available_cores() // 2)
    assert os.environ.get("OMP_NUM_THREADS") == omp_before  # only the workers' environment was changed
    # Without a GPU nothing is assigned: the workers inherit this process's CUDA_VISIBLE_DEVICES (usually unset).
    assert json.loads(sweep.paths.meta.read_text())["sessions"][0]["worker_devices"] == [None, None]
    records = [json.loads((sweep.paths.dir / t.user_attrs["run_dir"] / "trial.json").read_text()) for t in trials]
    assert {r["cuda_visible_devices"] for r in records} == {os.environ.get("CUDA_VISIBLE_DEVICES")}


def test_each_worker_is_spawned_with_its_own_gpu(
    quadratic: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Two GPUs visible to the parent as physical devices 6 and 3; three workers: round-robin 6, 3, 6.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6,3")
    sweep = create_sweep(make_space(trials=3, seed=5), base_config(quadratic, tmp_path))
    with caplog.at_level(logging.INFO, logger="experiments.sweep.study"):
        assert run_sweep(sweep, workers=3, progress=False) == 3
    trials = load(sweep).trials
    records = [json.loads((sweep.paths.dir / t.user_attrs["run_dir"] / "trial.json").read_text()) for t in trials]
    # Each trial.json is written in its worker from that worker's os.environ.
    assert len({r["pid"] for r in records}) == 3
    assert sorted(r["cuda_visible_devices"] for r in records) == ["3", "6", "6"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6,3"  # restored in this process
    assert json.loads(sweep.paths.meta.read_text())["sessions"][0]["worker_devices"] == ["6", "3", "6"]
    threads = max(1, available_cores() // 3)
    assert f"3 worker(s) x {threads} thread(s), worker GPUs (CUDA_VISIBLE_DEVICES): 6, 3, 6" in caplog.text
    assert "3 worker(s) on 2 GPU(s): workers share GPUs (memory and compute) round-robin (GPU 6: workers [0, 2])" in (
        caplog.text
    )


def test_kl_budget_objective_and_infeasible_trials(quadratic: ModuleType, tmp_path: Path) -> None:
    params = {**XY, "quad.kl_rate": ParamConfig(type="float", low=1e-3, high=0.5, log=True)}
    space = make_space(
        trials=10, sampler="random", params=params, constraint=ConstraintConfig(metric="toy/kl", max=0.05)
    )
    base = base_config(quadratic, tmp_path)
    sweep = create_sweep(space, base)
    run_sweep(sweep, progress=False)
    study = load(sweep)
    feasible = infeasible = 0
    for trial in study.trials:
        config = dataclasses.replace(
            base,
            quad=dataclasses.replace(
                base.quad, x=trial.params["quad.x"], y=trial.params["quad.y"], kl_rate=trial.params["quad.kl_rate"]
            ),
        )
        logged = []
        quadratic.run_quadratic(config, lambda metrics, step, out=logged: out.append(dict(metrics)))
        within = [m["toy/score"] for m in logged if m["toy/kl"] <= 0.05]
        if within:
            feasible += 1
            assert trial.value == max(within)
            assert trial.user_attrs["feasible"] is True and trial.constraints["toy/kl"] <= 0
        else:
            infeasible += 1
            first = logged[0]  # KL rises with the step: the least-violating point is step 0
            assert trial.value == first["toy/score"]
            assert trial.constraints["toy/kl"] == pytest.approx(first["toy/kl"] - 0.05)
            assert trial.user_attrs["feasible"] is False
    assert feasible and infeasible
    assert study.best_trial.user_attrs["feasible"] is True
    summary = summarize_sweep(sweep)
    assert all(row["feasible"] for row in summary["best"])
    assert f"{infeasible} completed trial(s) never met the budget on 'toy/kl'" in summary["notes"][0]


def test_failed_trials_are_recorded_and_the_sweep_goes_on(quadratic: ModuleType, tmp_path: Path) -> None:
    sweep = create_sweep(make_space(trials=8, sampler="random"), base_config(quadratic, tmp_path, fail="x_above_1"))
    run_sweep(sweep, progress=False)
    trials = load(sweep).trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(trials) == 8 and failed and len(failed) < 8
    assert all(t.params["quad.x"] > 1 for t in failed)
    assert all(t.user_attrs["error"] == f"RuntimeError: synthetic failure at x = {t.params['quad.x']}" for t in failed)
    error_file = sweep.paths.dir / failed[0].user_attrs["run_dir"] / "error.txt"
    assert "Traceback" in error_file.read_text() and "synthetic failure" in error_file.read_text()


def write_space(path: Path, params: str, **lines: str) -> Path:
    head = 'target = "quadratic"\nobjective = "toy/score"\n' + "".join(f"{k} = {v}\n" for k, v in lines.items())
    path.write_text(head + "[params]\n" + params, encoding="utf-8")
    return path


def test_cli_stops_when_every_trial_fails(quadratic: ModuleType, tmp_path: Path, capsys) -> None:
    space = write_space(tmp_path / "space.toml", '"quad.x" = { type = "float", low = 0, high = 1 }\n')
    argv = ["sweep", "--space", str(space), "--set", f"run.output_dir={tmp_path}", "--set", 'quad.fail="always"']
    assert main([*argv, "--trials", "10", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "every trial failed; first error (trial 0): RuntimeError: synthetic failure at x =" in err
    (sweep_dir,) = (tmp_path / "sweep").iterdir()
    assert len(list((sweep_dir / "trials").iterdir())) == FAILURES_BEFORE_STOP


def test_cli_runs_and_resumes(quadratic: ModuleType, tmp_path: Path, capsys) -> None:
    params = '"quad.x" = { type = "float", low = -2, high = 2 }\n"quad.steps" = { type = "int", choices = [2, 4] }\n'
    space = write_space(tmp_path / "space.toml", params, name='"toy"')
    assert (
        main(["sweep", "--space", str(space), "--set", f"run.output_dir={tmp_path}", "--trials", "3", "--no-progress"])
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    (sweep_dir,) = (tmp_path / "toy").iterdir()
    assert out[-1].startswith(f"sweep summary: {sweep_dir / 'summary.json'}")
    assert any(line.startswith("best trials (maximize toy/score)") for line in out)
    assert main(["sweep", "--resume", str(sweep_dir), "--trials", "4", "--no-progress"]) == 0
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["states"] == {"COMPLETE": 4}
    assert main(["sweep", "--resume", str(sweep_dir), "--space", str(space)]) == 2
    assert "--resume uses the sweep's own space.toml and config.toml; drop --space" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(sweep_dir.parent)]) == 2
    err = capsys.readouterr().err
    assert f"{sweep_dir.parent}: not a sweep directory (missing sweep.json, space.toml, config.toml, study.db" in err


@pytest.mark.parametrize(
    ("params", "target", "message"),
    [
        (
            '"quad.z" = { type = "float", low = 0, high = 1 }\n',
            "quadratic",
            "params.quad.z: 'quad.z' is not a key of the QuadraticRootConfig config (did you mean 'quad.y', 'quad.x', "
            "'quad.fail'?)",
        ),
        ('"quad.steps" = { type = "int", low = 0, high = 4 }\n', "quadratic", "quad: steps must be >= 1, got 0"),
        (
            '"quad.x" = { type = "float", low = 0, high = 1 }\n',
            "quadratc",
            "unknown sweep target 'quadratc' (did you mean 'quadratic'?)",
        ),
    ],
)
def test_cli_bad_space_fails_before_the_first_trial(
    quadratic, tmp_path: Path, capsys, params, target, message
) -> None:
    space = write_space(tmp_path / "space.toml", params)
    space.write_text(space.read_text().replace('target = "quadratic"', f'target = "{target}"'))
    assert main(["sweep", "--space", str(space), "--set", f"run.output_dir={tmp_path / 'runs'}", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert quadratic.CALLS["count"] == 0 and not (tmp_path / "runs").exists()
