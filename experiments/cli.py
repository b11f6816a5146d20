"""The ``backdrop`` command line (also ``python -m experiments``).

Subcommands live in ``experiments/commands/<name>.py``; each module exposes ``register(subparsers)``
and is discovered here, so adding a command never edits this file. Command modules import only the standard
library and light modules (no numpy, pyarrow or torch) at module level and do their heavy imports (torch,
diffusers, pyarrow, optuna) inside the handler, so ``backdrop --help`` stays fast (a test checks it).

Errors: a :class:`~offline_data.errors.BackdropError` (bad input the user can fix) prints its message and
exits with its ``exit_code``; an ``OSError`` (permissions, a full disk, a path under a regular file) becomes
the named error of :func:`~offline_data.errors.environment_error`; Ctrl-C exits 130; any other exception is
a bug, reported in one line (``--debug`` shows the traceback) with exit code 70 (the mapping is
:func:`experiments.run_record.describe`; the exit-code table is in ``offline_data/errors.py``). A run folder
the failure passed through receives ``error.json``.

``--no-progress`` (on every long command) also silences the libraries' own bars (tqdm, huggingface_hub,
transformers' and diffusers' "Loading weights").
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import pkgutil
import sys
from collections.abc import Sequence

import experiments.commands
from experiments import run_record

# Order in `backdrop --help`; modules not listed here are appended alphabetically.
COMMAND_ORDER = ("demo", "simulate", "data", "reward", "rollout", "policy", "ope", "export", "sweep", "runs")
INTERNAL_ERROR_EXIT = run_record.INTERNAL_ERROR_EXIT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backdrop",
        description=(
            "Learn what shoppers respond to from engagement logs (impressions with clicks, dwell, pairwise "
            "preferences) and fine-tune an inpainting diffusion model that paints backgrounds behind product "
            "photos, never modifying a product pixel. Every command runs on the built-in studio world by default."
        ),
        epilog="Run 'backdrop COMMAND --help' for a command's options.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for unexpected errors")
    parser.add_argument("--version", action="version", version=f"backdrop {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    found = [m.name for m in pkgutil.iter_modules(experiments.commands.__path__) if not m.name.startswith("_")]
    ordered = [n for n in COMMAND_ORDER if n in found] + sorted(n for n in found if n not in COMMAND_ORDER)
    for name in ordered:
        module = importlib.import_module(f"experiments.commands.{name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # No downloads at run time: every model is built from a config or loaded from a local folder.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # `backdrop` or `backdrop reward` alone: show the relevant help.
        (getattr(args, "subparser", None) or parser).print_help(sys.stderr)
        return 2
    if getattr(args, "no_progress", False):
        silence_library_progress()
    run_record.begin(args, argv)
    try:
        return int(handler(args) or 0)
    except BaseException as exc:
        if not isinstance(exc, Exception | KeyboardInterrupt):
            raise  # SystemExit and the like pass through
        failure = run_record.describe(exc)
        if failure.exit_code == INTERNAL_ERROR_EXIT and args.debug:
            raise
        run_record.record_failure(failure)
        print(failure.console(), file=sys.stderr)
        return failure.exit_code
    finally:
        run_record.end()


def silence_library_progress() -> None:
    """Hide every progress bar: tqdm's and the Hugging Face libraries' (their "Loading weights" bars).

    The environment variables reach libraries imported later (a command imports them lazily); libraries
    already imported (in tests, or by another command) are told directly.
    """
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None:
            module.disable_progress_bar()
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        hub.disable_progress_bars()


def _version() -> str:
    try:
        return importlib.metadata.version("backdrop")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


if __name__ == "__main__":
    sys.exit(main())
