"""``backdrop policy ...``: pretrain the base model, fine-tune it with DDPO, or train offline from logs.

The subcommands live in ``experiments/commands/policy_<name>.py`` (each exposes ``add_parser``).
"""

from __future__ import annotations

from typing import Any

from experiments.commands.arguments import add_discovered_subcommands, group_parser


def register(subparsers: Any) -> None:
    group = group_parser(subparsers, "policy", "pretrain, fine-tune (DDPO) or offline-train the inpainting policy")
    add_discovered_subcommands(group, "policy")
