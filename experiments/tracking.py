"""Run directories and metric tracking.

A run lives in ``<output_dir>/<name>/<timestamp>``, created fresh and never overwritten. It always holds

- ``config.toml``: the resolved configuration (defaults < file < --set), loadable again with ``--config``;
- ``environment.json``: command line, package versions, git sha and dirty flag, python, host, process count, device;
- ``metrics.jsonl``: one JSON object per logged step (``{"step": 3, "policy/kl": 0.01, ...}``), strict JSON: a NaN
  or infinite value is written as null and its key listed under ``"non_finite"`` (``offline_data.finite``);
- ``log.txt``: the text log (Python ``logging``), also shown on the console;
- ``command.json``: the command and every flag with its resolved value (``--resume`` reads it back), and,
  when the command failed, ``error.json`` with the message and exit code (:mod:`experiments.run_record`);

and, when enabled, TensorBoard event files (``tb/``) and a local MLflow file store. Besides scalars
(:meth:`Run.log_metrics`) both get images (:meth:`Run.log_image`: the policy trainer's before/after contact sheet
of each evaluation) and the run's hyperparameters with its final metrics (:meth:`Run.log_hparams`: TensorBoard's
HPARAMS tab, MLflow params), as the ecosystem's trainers log them.
Components never import this module: trainers take a ``log_metrics(metrics, step)`` callable, and
:meth:`Run.log_metrics` is the one passed in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib.metadata
import json
import logging
import math
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from experiments import run_record
from experiments.config import ConfigError, RunConfig, dump_toml
from offline_data.errors import InputUnreadableError
from offline_data.finite import dumps_strict, strict_json

logger = logging.getLogger("backdrop")

TRACKED_PACKAGES = (
    "backdrop", "torch", "diffusers", "peft", "transformers", "accelerate", "safetensors", "datasets",
    "pandas", "pyarrow", "numpy", "scikit-learn", "optuna", "matplotlib",
)  # fmt: skip


@functools.cache
def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide a run's numbers (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(path: Path | None = None) -> dict[str, Any]:
    """The git sha of the source tree and whether it has uncommitted changes (None outside a checkout)."""
    root = path or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root, capture_output=True, text=True, timeout=10, check=True,
            ).stdout.strip()
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha, "dirty": dirty}


def new_run_dir(output_dir: str | Path, name: str, now: dt.datetime | None = None) -> Path:
    """Create ``<output_dir>/<name>/<timestamp>`` atomically; a clash gets a ``-1``, ``-2``... suffix."""
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    parent = Path(output_dir) / name
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(10_000):
        candidate = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"could not create a fresh run directory under {parent}")


class _ConsoleHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time (tests and notebooks swap it)."""

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging for the ``backdrop`` logger (idempotent); run directories add a file handler."""
    root = logging.getLogger("backdrop")
    root.setLevel(level)
    if not any(getattr(h, "_backdrop_console", False) for h in root.handlers):
        console = _ConsoleHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        console._backdrop_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
    root.propagate = False


class Run:
    """An open run directory: metrics, artifacts and optional TensorBoard / MLflow sinks.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self, directory: Path, *, tensorboard: bool = False, mlflow_dir: Path | None = None, record_errors: bool = True
    ) -> None:
        self.dir = directory
        self.record_errors = record_errors
        """Write error.json into the folder when the run is left by an exception (off for sweep trials, which
        record their own failures and leave by optuna's TrialPruned)."""
        self._metrics = (directory / "metrics.jsonl").open("a", encoding="utf-8")
        self._file_handler: logging.Handler | None = None
        self._tb = None
        if tensorboard:
            # heavy (torch): this module is imported by every command's parser (run folders); TensorBoard only here
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(directory / "tb"))
        self._mlflow = None
        if mlflow_dir is not None:
            self._mlflow = _start_mlflow(mlflow_dir, directory)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Append one step's scalar metrics to metrics.jsonl (and TensorBoard / MLflow when enabled)."""
        clean = {k: _to_float(v) for k, v in metrics.items()}
        record = {"step": int(step), "time": round(dt.datetime.now().timestamp(), 3), **clean}
        self._metrics.write(dumps_strict(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if value is not None and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._mlflow is not None:
            finite = {k.replace("/", "."): v for k, v in clean.items() if v is not None and math.isfinite(v)}
            self._mlflow.log_metrics(finite, step=int(step))

    def log_image(self, tag: str, image: Any, step: int) -> None:
        """Log an ``[H, W, 3]`` uint8 image (e.g. a contact sheet) to TensorBoard (``add_image``) and MLflow
        (``log_image`` with key and step) when enabled; no-op otherwise (the run's PNGs are the record)."""
        import numpy as np  # kept out of `backdrop --help`, which imports this module

        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"image must be [H, W, 3] uint8, got {array.dtype} {list(array.shape)}")
        if self._tb is not None:
            self._tb.add_image(tag, array, int(step), dataformats="HWC")
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_image(array, key=tag.replace("/", "."), step=int(step))

    def log_hparams(self, config: Any, final_metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Log the run's hyperparameters (the resolved config flattened to dotted keys, scalars only) with its
        final metrics: TensorBoard ``add_hparams`` (a ``tb/hparams`` sub-run, so the HPARAMS tab compares runs),
        MLflow ``log_params`` plus ``final.*`` metrics. Returns the flattened hyperparameters."""
        hparams = flatten_hparams(config)
        finals = {
            k: v
            for k, v in ((k, _to_float(v)) for k, v in final_metrics.items())
            if v is not None and math.isfinite(v)
        }
        if self._tb is not None:
            self._tb.add_hparams(hparams, {f"final/{k}": v for k, v in finals.items()}, run_name="hparams")
            self._tb.flush()
        if self._mlflow is not None:
            params = {k: str(v)[:500] for k, v in hparams.items()}  # MLflow's value limit on older stores
            keys = sorted(params)
            for start in range(0, len(keys), 100):  # MLflow's batch limit
                self._mlflow.log_params({k: params[k] for k in keys[start : start + 100]})
            self._mlflow.log_metrics({f"final.{k.replace('/', '.')}": v for k, v in finals.items()})
        return hparams

    def write_json(self, name: str, payload: Any) -> Path:
        """Write ``payload`` as pretty strict JSON to ``<run>/<name>`` and return the path (a NaN/inf value is
        written as null, listed under ``"non_finite"`` and named in a warning)."""
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        clean, non_finite = strict_json(payload)
        path.write_text(json.dumps(clean, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8")
        if non_finite:
            logger.warning("%s: non-finite value(s) written as null: %s", path, ", ".join(non_finite))
        return path

    @property
    def closed(self) -> bool:
        return self._metrics.closed

    def close(self) -> None:
        if self.closed:  # closed already (by the command, then by the CLI's run record)
            return
        self._metrics.close()
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()
        if self._file_handler is not None:
            logging.getLogger("backdrop").removeHandler(self._file_handler)
            self._file_handler.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        if exc is not None and self.record_errors:  # the run ends in a failure: say why in its folder
            run_record.write_error(self.dir, run_record.describe(exc))
        self.close()


def flatten_hparams(config: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A config dataclass (or mapping) as ``{"trainer.optim.lr": 0.003, ...}``: scalars kept, paths and
    sequences as strings, None as "none" (TensorBoard and MLflow take scalars only)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        items = [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)]
    elif isinstance(config, Mapping):
        items = list(config.items())
    else:
        raise TypeError(f"config must be a dataclass or a mapping, got {type(config).__name__}")
    flat: dict[str, bool | int | float | str] = {}
    for name, value in items:
        key = f"{prefix}{name}"
        if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or isinstance(value, Mapping):
            flat |= flatten_hparams(value, f"{key}.")
        elif isinstance(value, bool | int | float | str):
            flat[key] = value
        elif value is None:
            flat[key] = "none"
        else:
            flat[key] = str(list(value)) if isinstance(value, list | tuple) else str(value)
    return flat


def _to_float(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


def _start_mlflow(store: Path, run_dir: Path):
    try:
        import mlflow  # optional (the mlflow extra)
    except ImportError:
        raise ConfigError("run.mlflow = true needs MLflow: pip install 'backdrop[mlflow]'") from None
    # MLflow >= 3.7 refuses a file store unless opted in; the local file store is what run.mlflow promises.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(store.resolve().as_uri())
    mlflow.set_experiment(run_dir.parent.name)
    mlflow.start_run(run_name=run_dir.name)
    return mlflow


def start_run(
    run: RunConfig,
    config: Any,
    *,
    command: str,
    extra: Mapping[str, Any] | None = None,
    directory: Path | None = None,
    record_errors: bool = True,
) -> Run:
    """Create a fresh run directory, write the resolved config and environment, attach the text log.

    Args:
        run: the ``[run]`` section (name, output_dir, tracking switches).
        config: the whole resolved root config, written to ``config.toml``.
        command: the CLI command that started the run (``"policy train"``), recorded in environment.json.
        extra: more fields for environment.json (e.g. the resolved device).
        directory: create exactly this (new) folder instead of ``<output_dir>/<name>/<timestamp>``; a sweep
            puts each trial at ``<sweep>/trials/<number>``.
        record_errors: write error.json when the run is left by an exception (see :attr:`Run.record_errors`).
    """
    if directory is None:
        directory = new_run_dir(run.output_dir, run.name)
    else:
        directory.mkdir(parents=True, exist_ok=False)
    return open_run(
        directory,
        config,
        command=command,
        extra=extra,
        tensorboard=run.tensorboard,
        mlflow_dir=Path(run.output_dir) / "mlruns" if run.mlflow else None,
        record_errors=record_errors,
    )


def open_run(
    directory: Path,
    config: Any,
    *,
    command: str,
    extra: Mapping[str, Any] | None = None,
    tensorboard: bool = False,
    mlflow_dir: Path | None = None,
    announce: bool = True,
    record_errors: bool = True,
) -> Run:
    """Make an existing (empty) folder a run folder: config.toml, environment.json, command.json, log, metrics.

    Commands whose output folder is the run folder (``data validate``, ``rollout sample``...) call this on
    it; ``config`` is then their resolved flags (``{"flags": {...}}``) when they have no config file, and
    ``announce=False`` (the user named the folder; the log does not repeat it).
    """
    (directory / "config.toml").write_text(dump_toml(config), encoding="utf-8")
    environment = {
        "command": command,
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "processes": int(os.environ.get("WORLD_SIZE", "1")),  # > 1 under accelerate launch / torchrun
        "git": git_state(),
        "packages": dict(package_versions()),
        **(dict(extra) if extra else {}),
    }
    (directory / "environment.json").write_text(json.dumps(environment, indent=2, default=str) + "\n")
    setup_logging()
    handle = Run(directory, tensorboard=tensorboard, mlflow_dir=mlflow_dir, record_errors=record_errors)
    if record_errors:
        run_record.attach(directory, handle)
    file_handler = logging.FileHandler(directory / "log.txt", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("backdrop").addHandler(file_handler)
    handle._file_handler = file_handler
    if announce:
        logger.info("run directory: %s", directory)
    return handle


def filter_metrics(run_dir: str | Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite ``metrics.jsonl`` with the records ``keep`` accepts (a resume drops what was logged after its
    checkpoint; a torn last line goes too, see :func:`read_metrics`). Returns how many records were dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return 0
    records = read_metrics(run_dir)
    kept = [record for record in records if keep(record)]
    path.write_text("".join(dumps_strict(record) + "\n" for record in kept), encoding="utf-8")
    return len(records) - len(kept)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Read a run's metrics.jsonl back as a list of records (in logged order).

    A last line without its newline that is not JSON was cut short by a kill while it was written: it is dropped
    with a warning (a resume logs that step again). Any other line that is not a JSON object is an error.

    Raises:
        InputUnreadableError: a line before the last, or a complete last line, that is not a JSON object with an
            integer ``step``.
    """
    path = Path(run_dir) / "metrics.jsonl"
    text = path.read_text(encoding="utf-8", errors="replace")  # a torn multi-byte character is part of a torn line
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # the last line, and the file does not end with a newline
                logger.warning(
                    "%s: line %d was cut short (killed while writing?); dropped: %r", path, number, line[:80]
                )
                continue
            raise InputUnreadableError(f"{path}: line {number}: not JSON ({exc.msg}): {line[:80]!r}") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise InputUnreadableError(
                f"{path}: line {number}: expected an object with an integer 'step', got {line.strip()[:80]}"
            )
        records.append(record)
    return records
