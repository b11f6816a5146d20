"""What every command records about itself in its run folder: its resolved flags, and its error on failure.

The CLI calls :func:`begin` with the parsed arguments before running a command; each run folder the command
opens (:func:`experiments.tracking.start_run`, :func:`experiments.tracking.open_run`) is :func:`attach`-ed
and receives ``command.json``::

    {"command": "policy train", "argv": ["policy", "train", "--reward", "runs/reward/..."],
     "flags": {"reward": "runs/reward/...", "resume": null, "no_progress": false, ...}}

``flags`` holds every flag of the command with its default filled in, so ``--resume RUN`` can read back what
the run was started with (:func:`recorded_flags`). A failed run says why in ``error.json`` (message, exit code,
error type; :func:`describe` maps the exception to them): a run closed by an exception writes it as it closes
(:class:`~experiments.tracking.Run`), and the CLI writes it into every folder still open when the command fails
(a completed sweep trial or demo stage is not marked by a later failure).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

from offline_data.errors import BackdropError, InputUnreadableError, NumericRangeError, environment_error

INTERNAL_ERROR_EXIT = 70
"""Exit code of a bug in backdrop (and only of a bug)."""
COMMAND_FILE = "command.json"
ERROR_FILE = "error.json"
_NOT_FLAGS = frozenset({"handler", "subparser", "debug", "command", "config_class", "set_example"})

_current: dict[str, Any] | None = None
_folders: dict[Path, Any] = {}  # run folder -> its open handle (experiments.tracking.Run), or None


@dataclasses.dataclass(frozen=True)
class Failure:
    """What a failed command reports: the one-line message, its exit code and the error's type."""

    message: str
    exit_code: int
    error: str

    def console(self) -> str:
        """The text the CLI prints on stderr."""
        if self.exit_code == INTERNAL_ERROR_EXIT:
            return (
                f"backdrop: {self.message}\n"
                "This is a bug in backdrop, not in your input; rerun with --debug for the traceback."
            )
        return f"backdrop: {self.message}" if self.exit_code == 130 else f"backdrop: error: {self.message}"


def describe(exc: BaseException) -> Failure:
    """What a command that raised ``exc`` reports.

    A BackdropError as is; an OSError as the machine's failure (:func:`~offline_data.errors.environment_error`:
    permission, disk full, path under a file, missing path, I/O); an overflow as a NumericRangeError; Ctrl-C as
    130; any other exception as a bug (exit 70).
    """
    if isinstance(exc, KeyboardInterrupt):
        return Failure("interrupted", 130, "KeyboardInterrupt")
    error: BackdropError | None = None
    if isinstance(exc, BackdropError):
        error = exc
    elif isinstance(exc, OSError):  # the machine refused: permissions, a full disk, a path under a file
        error = environment_error(exc)
    elif isinstance(exc, OverflowError | FloatingPointError):
        error = NumericRangeError(
            f"a number overflowed ({exc}); a config value or flag is too large for the computation it feeds"
        )
    if error is not None:
        return Failure(str(error), error.exit_code, type(error).__name__)
    return Failure(f"internal error: {type(exc).__name__}: {exc}", INTERNAL_ERROR_EXIT, type(exc).__name__)


def command_name(args: argparse.Namespace) -> str:
    """The command as typed, without flags: ``"policy train"``, ``"simulate"``."""
    group = getattr(args, "command", None) or ""
    sub = getattr(args, f"{group}_command", None)
    return f"{group} {sub}" if sub else group


def resolved_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Every flag of the parsed command with its value (defaults included), JSON-ready (paths as text)."""
    flags = {}
    for key, value in vars(args).items():
        if key in _NOT_FLAGS or key.endswith("_command") or callable(value):
            continue
        flags[key] = _plain(value)
    return flags


def begin(args: argparse.Namespace, argv: list[str]) -> None:
    """Start recording one command (the CLI calls this once per ``main``)."""
    global _current
    _current = {"command": command_name(args), "argv": list(argv), "flags": resolved_flags(args)}
    _folders.clear()


def attach(directory: Path, handle: Any = None) -> None:
    """Write ``command.json`` into a run folder the current command opened; on failure it gets ``error.json``.

    ``handle`` (a :class:`~experiments.tracking.Run`) is closed by :func:`end` if the command has not closed
    it, so a command may keep its run open to the end without a ``with`` block.
    """
    if _current is None:  # called from Python, not through the CLI: nothing to record
        return
    (directory / COMMAND_FILE).write_text(json.dumps(_current, indent=2) + "\n", encoding="utf-8")
    _folders[directory] = handle


def watch(directory: Path) -> None:
    """Give an existing run folder (one being resumed) ``error.json`` if the command fails; its command.json stays.

    The error of the failure being resumed from is kept as ``error.before-resume.json``: a resumed run that
    finishes holds no ``error.json``.
    """
    earlier = directory / ERROR_FILE
    if earlier.is_file():
        earlier.replace(directory / "error.before-resume.json")
    if _current is not None:
        _folders.setdefault(directory, None)


def write_error(directory: Path, failure: Failure) -> Path | None:
    """Write ``error.json`` into ``directory``; None if it cannot be written (the failure may be a full disk)."""
    payload = {
        "command": _current["command"] if _current else None,
        "exit_code": failure.exit_code,
        "error": failure.error,
        "message": failure.message,
        "time": dt.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        (directory / ERROR_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    except OSError:
        return None
    return directory / ERROR_FILE


def record_failure(failure: Failure) -> list[Path]:
    """Write ``error.json`` into every run folder of the failed command that is still open (or has no handle)."""
    written = []
    for folder, handle in _folders.items():
        if handle is None or not handle.closed:
            path = write_error(folder, failure)
            if path is not None:
                written.append(path)
    return written


def end() -> None:
    """Stop recording and close the run handles left open (the CLI calls this when the command ends)."""
    global _current
    _current = None
    for handle in _folders.values():
        if handle is not None:
            handle.close()
    _folders.clear()


def recorded_flags(run_dir: Path) -> dict[str, Any]:
    """The flags a run was started with (``command.json``); empty for a run written before it existed."""
    path = Path(run_dir) / COMMAND_FILE
    if not path.is_file():
        return {}

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputUnreadableError(f"{path}: not a command record ({type(exc).__name__})") from None
    flags = record.get("flags") if isinstance(record, dict) else None
    if not isinstance(flags, dict):
        raise InputUnreadableError(f"{path}: expected an object with a 'flags' object")
    return flags


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
