"""``backdrop sweep``: an optuna study over any config keys of a training command, stored in SQLite, resumable.

A sweep directory (``<run.output_dir>/<space name>/<timestamp>``) holds everything needed to continue:

- ``config.toml``: the base config of the target (defaults < --config < --set), what every trial starts from;
- ``space.toml``: the resolved search space; ``sweep.json``: target, study name, sessions;
- ``study.db``: the optuna study (SQLite, shared by the worker processes);
- ``trials/<number>/``: one run directory per trial (see experiments/sweep/trial.py);
- after each session: ``summary.json``, ``best_trials.csv``, ``metrics.jsonl`` (one line per trial) and
  ``plots/*.png`` (see experiments/sweep/summary.py).

Budget and resume: ``trials`` counts trials that *finished* (complete, pruned, or failed with an error from the
target). Resuming (``--resume DIR``) reopens the same study; finished trials are never rerun. A trial that was
RUNNING when the sweep was killed, or that was stopped by Ctrl-C, is marked failed and queued again with the
same params (``retry_of`` records which trial it repeats), and does not count towards the budget. Suggestions
are seeded per trial (experiments/sweep/sampler.py), so a resumed one-worker sweep gives the uninterrupted
sweep's trials.

Parallel trials: ``--workers N`` starts N worker processes (spawned, not forked: torch's thread pools do not
survive a fork) that share study.db, each with torch threads = cores / N; the remaining trials are split between
them up front so that exactly the requested number finish. TPE's constant liar keeps concurrent workers from
suggesting the same point.

GPUs: when this process sees CUDA devices and the base config's run.device is "auto" or "cuda", worker i is
spawned with ``CUDA_VISIBLE_DEVICES`` set to the i-th device of the pool (round-robin; the pool is this process's
own ``CUDA_VISIBLE_DEVICES`` list, else 0..n-1), so its trials' "auto"/"cuda" resolve to its own GPU as cuda:0.
More workers than GPUs share them (experiments/sweep/devices.py). ``sweep.json`` records each session's
assignment.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import multiprocessing
import os
import socket
import sqlite3
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm.auto import tqdm

from experiments import run_record
from experiments.config import ConfigError, dump_toml, load_config
from experiments.sweep.devices import (
    describe_devices,
    spawn_environment,
    sweep_gpu_pool,
    warn_shared_devices,
    worker_devices,
    worker_environment,
)
from experiments.sweep.sampler import make_trial_seeded_sampler
from experiments.sweep.space import SweepSpaceConfig, check_space, load_space
from experiments.sweep.targets import import_target, target_import_path
from experiments.sweep.trial import TrialRunner, read_trial_record, trial_dir, write_trial_record
from experiments.tracking import git_state, new_run_dir, package_versions
from offline_data.errors import BackdropError, InputUnreadableError

logger = logging.getLogger(__name__)

STUDY_NAME = "backdrop-sweep"
FAILURES_BEFORE_STOP = 3
"""The sweep stops when this many trials failed with an error and none has finished otherwise (a bug, not a
bad parameter value)."""


class SweepError(BackdropError):
    """The sweep cannot start or continue (still running elsewhere, a worker died, every trial failed)."""

    exit_code = 1


class SweepDirectoryError(InputUnreadableError):
    """A path given to --resume is not a sweep directory."""


@dataclasses.dataclass(frozen=True)
class SweepPaths:
    """The files of a sweep directory."""

    dir: Path

    @property
    def db(self) -> Path:
        return self.dir / "study.db"

    @property
    def config(self) -> Path:
        return self.dir / "config.toml"

    @property
    def space(self) -> Path:
        return self.dir / "space.toml"

    @property
    def meta(self) -> Path:
        return self.dir / "sweep.json"

    @property
    def lock(self) -> Path:
        return self.dir / "sweep.lock"

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.db.resolve()}"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """An opened sweep directory: its space, base config and the target's import path."""

    paths: SweepPaths
    space: SweepSpaceConfig
    base_config: Any
    target_import_path: str


def open_storage(paths: SweepPaths) -> Any:
    """optuna's RDB storage on the sweep's study.db (see :func:`connect_sqlite`)."""
    creator = functools.partial(connect_sqlite, str(paths.db.resolve()))
    return optuna.storages.RDBStorage(paths.storage_url, engine_kwargs={"creator": creator})


def connect_sqlite(path: str) -> sqlite3.Connection:
    """A connection to study.db in WAL mode with synchronous=NORMAL.

    optuna commits every intermediate report; with SQLite's default rollback journal each commit is an fsync
    (12 ms here, two thirds of a synthetic trial's time). WAL with synchronous=NORMAL syncs at checkpoints only
    and lets the worker processes read while one writes; a crash can lose the last commits but never corrupts
    the file, and --resume reruns what was lost. The timeout lets workers wait for the write lock. WAL needs a
    local filesystem (not NFS) for the sweep directory.
    """
    connection = sqlite3.connect(path, timeout=120, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def create_sweep(space: SweepSpaceConfig, base_config: Any, *, space_source: str = "space") -> Sweep:
    """Check the space against the target's config, then create the sweep directory and its empty study.

    Raises:
        SweepSpaceError / TargetError / ConfigError: before anything is written.
    """
    import_path = target_import_path(space.target)
    check_space(space, base_config, source=space_source)
    _quiet_optuna()
    paths = SweepPaths(new_run_dir(base_config.run.output_dir, space.name))
    paths.config.write_text(dump_toml(base_config), encoding="utf-8")
    paths.space.write_text(dump_toml(space), encoding="utf-8")
    environment = {
        "command": "sweep",
        "argv": sys.argv,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "git": git_state(),
        "packages": package_versions(),
    }
    (paths.dir / "environment.json").write_text(json.dumps(environment, indent=2, default=str) + "\n")
    run_record.attach(paths.dir)  # command.json, and error.json if the sweep fails
    _write_meta(paths, {"target": space.target, "reference": import_path, "study_name": STUDY_NAME, "sessions": []})
    optuna.create_study(storage=open_storage(paths), study_name=STUDY_NAME, direction=space.direction)
    logger.info("sweep directory: %s", paths.dir)
    return Sweep(paths, space, base_config, import_path)


def open_sweep(directory: str | Path) -> Sweep:
    """Reopen a sweep directory (for --resume and for worker processes) and re-check its space."""
    paths = SweepPaths(Path(directory))
    missing = [p.name for p in (paths.meta, paths.space, paths.config, paths.db) if not p.is_file()]
    if missing:
        raise SweepDirectoryError(
            f"{paths.dir}: not a sweep directory (missing {', '.join(missing)}; a sweep directory is what "
            "'backdrop sweep --space ...' printed as 'sweep directory:')"
        )
    meta = json.loads(paths.meta.read_text(encoding="utf-8"))
    space = load_space(paths.space)
    try:
        import_path = target_import_path(meta["target"])
    except ConfigError:
        # a target registered by the process that created the sweep; sweep.json's key keeps its first name
        import_path = meta["reference"]
    target = import_target(import_path, meta["target"])
    base_config = load_config(target.config_class, paths.config)
    check_space(space, base_config, source=str(paths.space))
    return Sweep(paths, space, base_config, import_path)


def _write_meta(paths: SweepPaths, meta: dict[str, Any]) -> None:
    paths.meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------
# Running


def make_sampler(space: SweepSpaceConfig, seed: int) -> Any:
    """The space's optuna sampler, reseeded before each trial from (``seed``, the trial's place) so that a resumed
    sweep suggests what the uninterrupted one did (experiments/sweep/sampler.py); TPE uses the constant liar so
    parallel workers spread out."""
    return make_trial_seeded_sampler(space.sampler, seed)


def make_pruner(space: SweepSpaceConfig) -> Any:
    """The space's optuna pruner (median, hyperband or none) from its [pruner] section."""
    cfg = space.pruner
    if cfg.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps, interval_steps=cfg.interval_steps
        )
    if cfg.type == "hyperband":
        max_resource = cfg.max_resource if cfg.max_resource > 0 else "auto"
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg.min_resource, max_resource=max_resource, reduction_factor=cfg.reduction_factor
        )
    return optuna.pruners.NopPruner()


def counted_trials(trials: list[Any]) -> int:
    """Trials that count towards the budget: complete, pruned, or failed with an error from the target."""
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and "error" in t.user_attrs)
        for t in trials
    )


def requeue_interrupted(sweep: Sweep) -> list[int]:
    """Mark trials left RUNNING by a killed sweep as failed and queue every interrupted trial again.

    Only safe while no other process runs this sweep (:func:`run_sweep` holds the lock). Returns the numbers of
    the trials queued again.
    """
    storage = open_storage(sweep.paths)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    trials = study.get_trials(deepcopy=False)
    already = {t.user_attrs.get("retry_of") for t in trials}
    requeued = []
    for trial in trials:
        interrupted = trial.state == TrialState.RUNNING or (
            trial.state == TrialState.FAIL and "error" not in trial.user_attrs
        )
        if not interrupted:
            continue
        if trial.state == TrialState.RUNNING:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        directory = trial_dir(sweep.paths.dir, trial.number)
        record = read_trial_record(directory)
        if record is not None and record.get("state") in ("RUNNING", "INTERRUPTED"):
            record.update(state="INTERRUPTED", note="marked failed on resume and queued again with the same params")
            write_trial_record(directory, record)
        if trial.number not in already:
            study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
            requeued.append(trial.number)
    if requeued:
        logger.info("queued again with the same params: interrupted trial(s) %s", requeued)
    return requeued


def _stop_after_failures(study: Any, _trial: Any) -> None:
    """optuna callback: stop when the first FAILURES_BEFORE_STOP finished trials all failed with an error."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    if any(t.state != TrialState.FAIL for t in trials):
        return
    if sum("error" in t.user_attrs for t in trials) >= FAILURES_BEFORE_STOP:
        study.stop()


def optimize(sweep: Sweep, *, n_trials: int, timeout: float | None, threads: int, seed: int, progress: Any) -> None:
    """Run ``n_trials`` trials of ``sweep`` in this process (one worker)."""
    target = import_target(sweep.target_import_path)
    study = optuna.load_study(
        study_name=STUDY_NAME,
        storage=open_storage(sweep.paths),
        sampler=make_sampler(sweep.space, seed),
        pruner=make_pruner(sweep.space),
    )
    runner = TrialRunner(
        sweep_dir=sweep.paths.dir, target=target, base_config=sweep.base_config, space=sweep.space, threads=threads
    )
    callbacks = [_stop_after_failures]
    if progress is not None:
        callbacks.append(lambda _study, _trial: progress.update(1))
    with warnings.catch_warnings():
        # set_constraint / heartbeat-free RDB use are stable; optuna flags some arguments as experimental.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(runner, n_trials=n_trials, timeout=timeout, catch=(Exception,), callbacks=callbacks)


def _worker_main(directory: str, n_trials: int, timeout: float | None, threads: int, seed: int) -> None:
    """Entry point of a worker process: optimize its share of the trials."""
    logging.basicConfig(level=logging.INFO, format=f"[worker {os.getpid()}] %(message)s")
    _quiet_optuna()
    optimize(open_sweep(directory), n_trials=n_trials, timeout=timeout, threads=threads, seed=seed, progress=None)


def _quiet_optuna() -> None:
    # One line per trial comes from experiments.sweep.trial's logger; optuna's own INFO lines would repeat it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_sweep(
    sweep: Sweep,
    *,
    trials: int | None = None,
    timeout: float | None = None,
    workers: int = 1,
    progress: bool = True,
) -> int:
    """Run the sweep until ``trials`` (default: the space's) have finished, or ``timeout`` seconds have passed.

    Each worker gets torch threads = cores / workers, unless the base config sets run.threads (then that).
    Returns the number of trials this session finished. Raises :class:`SweepError` when the sweep is being run
    by another live process, or when a worker process died.
    """
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    total = trials if trials is not None else sweep.space.trials
    _quiet_optuna()
    with _SweepLock(sweep.paths.lock):
        requeue_interrupted(sweep)
        storage = open_storage(sweep.paths)
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        done_before = counted_trials(study.get_trials(deepcopy=False))
        remaining = total - done_before
        if remaining <= 0:
            logger.info(
                "the sweep already has %d finished trial(s) of %d requested; nothing to run", done_before, total
            )
            return 0
        meta = json.loads(sweep.paths.meta.read_text(encoding="utf-8"))
        workers = min(workers, remaining)
        base_threads = sweep.base_config.run.threads
        threads = base_threads if base_threads > 0 else max(1, available_cores() // workers)
        devices = worker_devices(workers, sweep_gpu_pool(sweep.base_config.run.device))
        meta["sessions"].append(
            {
                "started": dt.datetime.now().isoformat(timespec="seconds"),
                "trials": total,
                "workers": workers,
                "worker_devices": devices,
            }
        )
        _write_meta(sweep.paths, meta)
        logger.info(
            "sweep %s: %d trial(s) to run (%d of %d finished before), %d worker(s) x %d thread(s)%s",
            sweep.paths.dir, remaining, done_before, total, workers, threads, describe_devices(devices),
        )  # fmt: skip
        warn_shared_devices(devices)
        seed = sweep.space.seed  # every session and worker: suggestions are seeded per trial (make_sampler)
        bar = tqdm(total=remaining, desc="sweep trials", unit="trial", disable=not progress)
        try:
            if workers == 1:
                optimize(sweep, n_trials=remaining, timeout=timeout, threads=threads, seed=seed, progress=bar)
            else:
                _run_workers(sweep, remaining, devices, timeout, threads, seed, bar, done_before)
        finally:
            bar.close()
        done_after = counted_trials(optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials())
    return done_after - done_before


def _run_workers(
    sweep: Sweep,
    remaining: int,
    devices: list[str | None],
    timeout: float | None,
    threads: int,
    seed: int,
    bar: Any,
    done_before: int,
) -> None:
    """Spawn one process per entry of ``devices`` (its CUDA_VISIBLE_DEVICES, None: inherited) and wait for all."""
    context = multiprocessing.get_context("spawn")
    workers = len(devices)
    shares = [remaining // workers + (i < remaining % workers) for i in range(workers)]
    processes = [
        context.Process(
            target=_worker_main,
            args=(str(sweep.paths.dir), share, timeout, threads, seed),
            name=f"sweep-worker-{index}",
        )
        for index, share in enumerate(shares)
    ]
    # One process started at a time, each under its own environment: spawn copies os.environ at start().
    for process, device in zip(processes, devices, strict=True):
        with spawn_environment(worker_environment(threads, device)):
            process.start()
    storage = open_storage(sweep.paths)
    shown = 0
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(0.5)
            done = counted_trials(optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials()) - done_before
            bar.update(max(0, done - shown))
            shown = max(shown, done)
    finally:
        for process in processes:
            process.join()
    crashed = [f"{p.name} (pid {p.pid}) exit code {p.exitcode}" for p in processes if p.exitcode != 0]
    if crashed:
        raise SweepError(
            f"{len(crashed)} worker process(es) ended abnormally: {'; '.join(crashed)}; their trials are marked "
            f"failed on --resume {sweep.paths.dir} and run again"
        )


class _SweepLock:
    """``sweep.lock`` holding the pid and host of the process running the sweep; refuses a second live runner."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _SweepLock:
        if self.path.is_file():
            try:
                holder = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == socket.gethostname() and _pid_alive(holder.get("pid")):
                raise SweepError(
                    f"{self.path.parent}: the sweep is still being run by process {holder['pid']} on this host; "
                    "stop it before resuming (or wait for it to finish)"
                )
        self.path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def finished_summary_line(sweep_dir: Path) -> str:
    """The command's last line: where the summary is."""
    return f"sweep summary: {sweep_dir / 'summary.json'} (best trials, importances; plots in {sweep_dir / 'plots'})"
