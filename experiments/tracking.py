"""Run directories and metric tracking.

A run lives in ``<output_dir>/<name>/<timestamp>``, created fresh and never overwritten. It always holds

- ``config.toml``: the resolved configuration (defaults < file < --set), loadable again with ``--config``;
- ``environment.json``: command line, package versions, git sha and dirty flag, python, host, process count, device;
- ``metrics.jsonl``: one JSON object per logged step (``{"step": 3, "policy/kl": 0.01, ...}``), strict JSON: a NaN
  or infinite value is written as null and its key listed under ``"non_finite"`` (``offline_data.finite``);
- ``log.txt``: the text log (Python ``logging``), also shown on the console;

and, when enabled, TensorBoard event files (``tb/``) and a local MLflow file store.
Components never import this module: trainers take a ``log_metrics(metrics, step)`` callable, and
:meth:`Run.log_metrics` is the one passed in.
"""

from __future__ import annotations

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

from experiments.config import RunConfig, dump_toml
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


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging for the ``backdrop`` logger (idempotent); run directories add a file handler."""
    root = logging.getLogger("backdrop")
    root.setLevel(level)
    if not any(getattr(h, "_backdrop_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        console._backdrop_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
    root.propagate = False


class Run:
    """An open run directory: metrics, artifacts and optional TensorBoard / MLflow sinks.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, directory: Path, *, tensorboard: bool = False, mlflow_dir: Path | None = None) -> None:
        self.dir = directory
        self._metrics = (directory / "metrics.jsonl").open("a", encoding="utf-8")
        self._file_handler: logging.Handler | None = None
        self._tb = None
        if tensorboard:
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

    def close(self) -> None:
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

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_float(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


def _start_mlflow(store: Path, run_dir: Path):
    try:
        import mlflow
    except ImportError:
        from experiments.config import ConfigError

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
) -> Run:
    """Create a fresh run directory, write the resolved config and environment, attach the text log.

    Args:
        run: the ``[run]`` section (name, output_dir, tracking switches).
        config: the whole resolved root config, written to ``config.toml``.
        command: the CLI command that started the run (``"policy train"``), recorded in environment.json.
        extra: more fields for environment.json (e.g. the resolved device).
        directory: create exactly this (new) folder instead of ``<output_dir>/<name>/<timestamp>``; a sweep
            puts each trial at ``<sweep>/trials/<number>``.
    """
    if directory is None:
        directory = new_run_dir(run.output_dir, run.name)
    else:
        directory.mkdir(parents=True, exist_ok=False)
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
    handle = Run(
        directory,
        tensorboard=run.tensorboard,
        mlflow_dir=Path(run.output_dir) / "mlruns" if run.mlflow else None,
    )
    file_handler = logging.FileHandler(directory / "log.txt", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("backdrop").addHandler(file_handler)
    handle._file_handler = file_handler
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
