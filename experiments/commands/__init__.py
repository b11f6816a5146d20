"""CLI subcommands, one module per command group; each exposes ``register(subparsers)``.

A command module imports only the standard library and light modules at module level; each handler imports its
command's library (torch, pyarrow, diffusers, optuna...) when it runs, under one ``# heavy (...)`` comment, so
``backdrop --help`` stays fast (``tests/experiments/test_cli.py`` checks that no heavy library is loaded).
"""
