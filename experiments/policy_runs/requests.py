"""Where a policy run's requests come from: a team's request table (``--requests``) or the studio world.

:func:`run_requests` is shared by ``policy train`` and ``policy offline``:

- with ``[catalogue] requests`` (``--requests FILE``) the table is validated (``offline_data.requests``; prompts
  through the guards' blocklist), copied into the run's request manifest
  (``experiments.policy_runs.request_manifest``), and its ``train`` / ``eval`` rows become model-resolution
  requests (``rollout.photo``). There is no gold: evaluation reports the reward model's proxy and the KL.
- without it the studio world gives the requests and the hidden gold (evaluation only), and its requests are
  written to the manifest too.

A resumed run (its manifest already written) reads its requests back from the manifest. :func:`manifest_eval` gives
``export`` and ``policy compare`` a finished run's held-out requests from its manifest, never re-simulating them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from experiments.config import ConfigError
from experiments.policy_runs.request_manifest import (
    MANIFEST_DIR,
    guard_fn,
    manifest_requests,
    write_studio_manifest,
    write_table_manifest,
)
from experiments.studio.requests import StudioGold, studio_requests
from offline_data.errors import AssetError
from offline_data.requests import RequestTableConfig, read_requests, require_requests
from rollout.guards import GuardConfig, PromptGuard
from rollout.photo import table_requests


@dataclasses.dataclass(frozen=True, kw_only=True)
class CatalogueSourceConfig:
    """A team's own request table, used instead of the studio world's products when set."""

    requests: Path | None = None
    """Request table (.parquet/.csv/.jsonl; ``offline_data.requests``); ``--requests`` sets it. Unset = studio."""
    allow_outside: bool = False
    """Accept image/mask paths outside the table's folder."""
    default_segment: str = "panel"
    """Segment of rows that give none."""
    eval_fraction: float = 0.2
    """Share of products held out for evaluation when the table has no split column."""
    split_seed: int = 0
    """Salt of that default split."""

    def __post_init__(self) -> None:
        if not self.default_segment or not 0.0 < self.eval_fraction < 1.0 or self.split_seed < 0:
            raise ValueError("need a non-empty default_segment, 0 < eval_fraction < 1 and split_seed >= 0")


@dataclasses.dataclass(frozen=True, eq=False)
class RunRequests:
    """Training and held-out requests of a run, and the gold the studio world adds (None for a catalogue)."""

    train: list
    evaluation: list
    world: Any
    gold_fn: Any
    source: str
    """``catalogue <file>`` or ``studio world``."""


def run_requests(
    config: Any, run_dir: Path | None, resolution: int, world: Any, *, need_train: bool = True
) -> RunRequests:
    """The requests of a run of ``config`` (``[catalogue]``, ``[world]``, ``[requests]``; module docstring).

    Args:
        config: a ``policy train`` / ``policy offline`` root config.
        run_dir: the run folder the manifest is written to (read from when it exists: a resumed run); None for a
            process of a multi-process launch other than the first, which writes nothing.
        resolution: the model's resolution (catalogue photos are letterboxed onto it).
        world: the studio world of ``config.world`` (``experiments.policy_runs.train.load_world``), None for a
            catalogue.
        need_train: refuse a table without train rows (``policy offline`` trains on logs and needs eval rows only).

    Raises:
        ConfigError: a split without requests, or unusable studio settings.
        LogValidationError: no row of the table was accepted.
    """
    folder = run_dir / MANIFEST_DIR if run_dir is not None else None
    catalogue = config.catalogue.requests
    gold_fn = _gold(world)
    source = f"catalogue {catalogue}" if catalogue is not None else "studio world"
    if folder is not None and (folder / "requests.parquet").is_file():
        train, evaluation = (
            manifest_requests(folder, resolution, "train"),
            manifest_requests(folder, resolution, "eval"),
        )
    elif catalogue is not None:
        train, evaluation = catalogue_requests(config.catalogue, folder, resolution)
    else:
        try:
            studio = studio_requests(config.requests, world)
        except ValueError as exc:
            raise ConfigError(f"[requests]: {exc}") from None
        train, evaluation = list(studio.train), list(studio.evaluation)
        if folder is not None:
            write_studio_manifest(train, evaluation, folder)
    for split, requests in (("train", train), ("eval", evaluation)):
        if not requests and (split == "eval" or need_train):
            raise ConfigError(f"{source}: no {split} request; give some rows split = {split} (or another split)")
    return RunRequests(train, evaluation, world, gold_fn, source)


def with_requests(config: Any, requests: str | None) -> Any:
    """``config`` with ``[catalogue] requests`` set to ``--requests`` when given."""
    if not requests:
        return config
    return dataclasses.replace(config, catalogue=dataclasses.replace(config.catalogue, requests=Path(requests)))


def manifest_eval(run_dir: Path, resolution: int) -> list:
    """The held-out requests a finished run evaluated, from its manifest.

    Raises:
        AssetError: the run has no manifest, or a file of it changed.
    """
    folder = Path(run_dir) / MANIFEST_DIR
    if not (folder / "requests.parquet").is_file():
        raise AssetError(
            f"{run_dir}: no request manifest ({MANIFEST_DIR}/requests.parquet); the run predates request manifests, "
            "train it again to export or compare it"
        )
    return manifest_requests(folder, resolution, "eval")


def catalogue_requests(config: CatalogueSourceConfig, folder: Path | None, resolution: int) -> tuple[list, list]:
    """A request table validated (prompts through the guards' blocklist; rejected rows logged) and written to
    ``folder`` as a request manifest (when given): its train and eval rows as model-resolution requests.

    Raises:
        LogValidationError: no row of the table was accepted.
    """
    table_config = RequestTableConfig(
        allow_outside=config.allow_outside, default_segment=config.default_segment,
        eval_fraction=config.eval_fraction, split_seed=config.split_seed,
    )  # fmt: skip
    # The table's prompts are the training distribution, so only the blocklist applies here.
    guard = guard_fn(PromptGuard(GuardConfig(check_distribution=False)))
    table = require_requests(read_requests(config.requests, guard=guard, config=table_config))
    for message in table.problems():
        logging.getLogger("backdrop").warning("rejected: %s", message)
    if folder is not None:
        table = write_table_manifest(table, folder)
    return table_requests(table, resolution, "train"), table_requests(table, resolution, "eval")


def _gold(world: Any) -> Any:
    if world is None:
        return None

    return StudioGold(world)
