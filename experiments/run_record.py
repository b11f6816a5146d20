"""What every command records about itself in its run folder: its resolved flags, and its error on failure.

The CLI calls :func:`begin` with the parsed arguments before running a command; each run folder the command
opens (:func:`experiments.tracking.start_run`, :func:`experiments.tracking.open_run`) is :func:`attach`-ed
and receives ``command.json``::

    {"command": "policy train", "argv": ["policy", "train", "--reward", "runs/reward/..."],
     "flags": {"reward": "runs/reward/...", "resume": null, "no_progress": false, ...}}

``flags`` holds every flag of the command with its default filled in, so ``--resume RUN`` can read back what
the run was started with (:func:`recorded_flags`). When the command fails, the CLI calls :func:`record_failure`
and every attached folder receives ``error.json`` (message, exit code, error type), so a failed run says why.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

COMMAND_FILE = "command.json"
ERROR_FILE = "error.json"
_NOT_FLAGS = frozenset({"handler", "subparser", "debug", "command", "config_class", "set_example"})

_current: dict[str, Any] | None = None
_folders: list[Path] = []
_open: list[Any] = []  # run handles (experiments.tracking.Run) still open; closed by end()


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
    """Write ``command.json`` into a run folder the current command opened; it will get ``error.json`` too.

    ``handle`` (a :class:`~experiments.tracking.Run`) is closed by :func:`end` if the command has not closed
    it, so a command may keep its run open to the end without a ``with`` block.
    """
    if _current is None:  # called from Python, not through the CLI: nothing to record
        return
    if handle is not None:
        _open.append(handle)
    (directory / COMMAND_FILE).write_text(json.dumps(_current, indent=2) + "\n", encoding="utf-8")
    if directory not in _folders:
        _folders.append(directory)


def watch(directory: Path) -> None:
    """Give an existing run folder (one being resumed) ``error.json`` if the command fails; its command.json stays."""
    if _current is not None and directory not in _folders:
        _folders.append(directory)


def record_failure(message: str, exit_code: int, error_type: str) -> list[Path]:
    """Write ``error.json`` into every run folder the failed command opened; returns the files written.

    A folder that can no longer be written (the failure may be a full disk) is skipped: the error is
    still printed by the CLI.
    """
    payload = {
        "command": _current["command"] if _current else None,
        "exit_code": exit_code,
        "error": error_type,
        "message": message,
        "time": dt.datetime.now().isoformat(timespec="seconds"),
    }
    written = []
    for folder in _folders:
        try:
            (folder / ERROR_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        except OSError:
            continue
        written.append(folder / ERROR_FILE)
    return written


def end() -> None:
    """Stop recording and close the run handles left open (the CLI calls this when the command ends)."""
    global _current
    _current = None
    _folders.clear()
    while _open:
        _open.pop().close()


def recorded_flags(run_dir: Path) -> dict[str, Any]:
    """The flags a run was started with (``command.json``); empty for a run written before it existed."""
    path = Path(run_dir) / COMMAND_FILE
    if not path.is_file():
        return {}
    from offline_data.errors import InputUnreadableError

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
