"""The CLI surface: help for every command, errors as messages with exit codes, never tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from experiments.cli import build_parser, main


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "backdrop" in out and "commands" in out


def _all_parsers(parser, prefix=()):
    import argparse

    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, (*prefix, name))


def test_every_option_has_help() -> None:
    import argparse

    for prefix, parser in _all_parsers(build_parser()):
        for action in parser._actions:
            if action.dest == "help" or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, (
                f"'backdrop {' '.join(prefix)}' option {action.option_strings or action.dest} has no help"
            )


def test_python_dash_m_experiments_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "experiments", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: backdrop" in result.stdout


def test_building_every_command_parser_imports_no_heavy_library() -> None:
    """``backdrop --help`` stays fast: command modules import torch, pyarrow, numpy, optuna... inside handlers only."""
    code = (
        "import sys\n"
        "from experiments.cli import build_parser\n"
        "build_parser()\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'numpy', 'pyarrow', 'scipy', 'optuna', 'matplotlib')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"imported by the parsers: {done.stdout.strip()}"
