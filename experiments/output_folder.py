"""Output folders that never mix one run's files with another's.

A command writes into an output folder that is new or empty. A folder that already holds anything is refused
(:class:`~offline_data.errors.OutputExistsError`, exit 73) unless ``--overwrite`` is given, which empties it
first; a command given no ``--out`` writes to its default folder under the same rule, or to a fresh
timestamped folder (:func:`experiments.tracking.new_run_dir`) where its default is one.

Emptying is careful: only the entries of that one folder are removed (a symlink inside it is unlinked, never
followed), and a folder that is the filesystem root, the home folder, the working folder or one of its
parents, a symlink, or one that holds one of the command's inputs is never emptied.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.run_record import command_name, resolved_flags
from experiments.tracking import open_run
from offline_data.errors import OutputExistsError, OutputPathError

if TYPE_CHECKING:
    from experiments.tracking import Run


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: empty a non-empty output folder before writing (default: refuse it)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="empty a non-empty output folder first (default: refuse it, so runs never mix their files)",
    )


def prepare_output_folder(path: str | Path, *, overwrite: bool, inputs: Iterable[str | Path] = ()) -> Path:
    """Make ``path`` an empty folder for a command's outputs and return it.

    Args:
        path: the output folder (created with its parents when missing).
        overwrite: empty the folder when it holds anything; otherwise such a folder is refused.
        inputs: the command's input files and folders; a folder holding one of them is never emptied.

    Raises:
        OutputPathError: ``path`` (or a part of it) is a regular file.
        OutputExistsError: the folder holds files and ``overwrite`` is False, or it may not be emptied.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path}: the output folder is a file; choose a folder for --out")
    if path.is_dir():
        entries = sorted(entry.name for entry in path.iterdir())
        if entries:
            if not overwrite:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise OutputExistsError(
                    f"{path}: output folder is not empty ({len(entries)} entries: {shown}); pass --overwrite to "
                    "empty it first, or choose a new --out"
                )
            _check_may_empty(path, inputs)
            empty_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def empty_folder(path: Path) -> None:
    """Remove every entry of ``path`` (not ``path`` itself); symlinks are unlinked, never followed."""
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_may_empty(path: Path, inputs: Iterable[str | Path]) -> None:
    if path.is_symlink():
        raise OutputExistsError(f"{path}: --overwrite does not empty a folder reached through a symlink")
    resolved = path.resolve()
    cwd = Path(os.getcwd()).resolve()
    protected = {Path(resolved.anchor), Path.home().resolve(), cwd, *cwd.parents}
    if resolved in protected:
        raise OutputExistsError(f"{path}: --overwrite will not empty the root, home or working folder (or a parent)")
    for item in inputs:
        source = Path(item).resolve()
        if source == resolved or resolved in source.parents:
            raise OutputExistsError(
                f"{path}: --overwrite would delete the input {item}; write the outputs somewhere else"
            )


def open_output_run(
    args: argparse.Namespace, out: str | Path, *, inputs: Iterable[str | Path] = (), config: object = None
) -> Run:
    """Prepare ``out`` (:func:`prepare_output_folder` with ``args.overwrite``) and make it the run folder.

    For commands whose output folder is their run folder (``data validate``, ``rollout sample``...): it
    receives config.toml (``config``, or the resolved flags when the command has no config file),
    environment.json, command.json, log.txt and metrics.jsonl, and error.json if the command fails.
    """
    folder = prepare_output_folder(out, overwrite=getattr(args, "overwrite", False), inputs=inputs)
    config = config if config is not None else {"flags": resolved_flags(args)}
    return open_run(folder, config, command=command_name(args), announce=False)
