"""The ``backdrop`` command line (also ``python -m experiments``).

Subcommands live in ``experiments/commands/<name>.py``; each module exposes ``register(subparsers)``
and is discovered here, so adding a command never edits this file. Command modules import only argparse
at module level and do their heavy imports (torch, diffusers) inside the handler, so ``backdrop --help``
stays fast.

Errors: a :class:`~offline_data.errors.BackdropError` (bad input the user can fix) prints its message and
exits with its ``exit_code``; Ctrl-C exits 130; any other exception is a bug, reported in one line
(``--debug`` shows the traceback) with exit code 70.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

import experiments.commands
from offline_data.errors import BackdropError

# Order in `backdrop --help`; modules not listed here are appended alphabetically.
COMMAND_ORDER = ("demo", "simulate", "data", "reward", "rollout", "policy", "ope", "export", "sweep", "runs")
INTERNAL_ERROR_EXIT = 70


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
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # `backdrop` or `backdrop reward` alone: show the relevant help.
        (getattr(args, "subparser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    except BackdropError as exc:
        print(f"backdrop: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("backdrop: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"backdrop: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in backdrop, not in your input; rerun with --debug for the traceback.",
            file=sys.stderr,
        )
        return INTERNAL_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
