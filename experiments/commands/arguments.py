"""Argument helpers shared by the subcommands: ``--config`` / ``--set`` and loading the root config."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Any, TypeVar

import experiments.commands
from experiments.config import environment_profile, load_config

T = TypeVar("T")


def add_config_arguments(
    parser: argparse.ArgumentParser, *, config_class: str, example: str, default_config: str | None = None
) -> None:
    """Add ``--config FILE`` and repeatable ``--set KEY=VALUE`` (precedence: defaults < file < --set).

    Args:
        config_class: ``"module:ATTRIBUTE"`` of the command's root config class (or of a function returning it),
            kept on the parser so that a test checks ``example`` against it without importing it here.
        example: a ``KEY=VALUE`` of that config shown in ``--help`` (valid for this command, not another's).
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default_config,
        help="TOML config file"
        + (f" (default: {default_config})" if default_config else " (default: built-in defaults)"),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help=f"override one config key, e.g. --set {example} (repeatable; applied after --config)",
    )
    parser.set_defaults(config_class=config_class, set_example=example)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: hide backdrop's progress bars and the libraries' own (the CLI silences those)."""
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def load_root_config(cls: type[T], args: argparse.Namespace) -> T:
    """Load the command's root config from ``args.config``, the ``BACKDROP_CONFIG_OVERRIDES`` profile and
    ``args.overrides`` (``experiments.config.environment_profile``)."""
    return load_config(
        cls, getattr(args, "config", None), getattr(args, "overrides", ()), profile=environment_profile(cls)
    )


def group_parser(subparsers: Any, name: str, help_text: str) -> Any:
    """A command group (``backdrop reward ...``) whose bare invocation prints its own help."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(subparser=parser)
    return parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", title="subcommands")


def add_discovered_subcommands(subparsers: Any, group: str) -> None:
    """Let modules named ``experiments/commands/<group>_<name>.py`` add subcommands to ``backdrop <group>``.

    Each such module exposes ``add_parser(subparsers)``; several engineers can then own the subcommands of one
    group (``policy pretrain``, ``policy train``, ...) without sharing a file. Discovery order is alphabetical.
    """

    prefix = f"{group}_"
    names = sorted(m.name for m in pkgutil.iter_modules(experiments.commands.__path__) if m.name.startswith(prefix))
    for name in names:
        module = importlib.import_module(f"experiments.commands.{name}")
        add_parser = getattr(module, "add_parser", None)
        if add_parser is not None:
            add_parser(subparsers)
