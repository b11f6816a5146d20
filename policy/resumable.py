"""What makes the DDPO trainer resumable: its state as JSON, checked before it is loaded, and checkpoints.

A checkpoint folder (``policy.checkpoint``) holds the adapter, the optimiser, the RNGs and ``state.json``, whose
``trainer`` part is :meth:`ResumableTrainer.state_dict`: epoch, optimiser steps, seed, CPU seconds trained, the
advantage tracker, the KL controller, the evaluator's cached base statistics and the metric history. A resumed run
continues bit-exactly (same process and thread count).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policy.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_state, save_checkpoint

logger = logging.getLogger(__name__)

STATE_FORMAT = "backdrop.ddpo_trainer"


class ResumableTrainer:
    """Checkpointing for ``policy.trainer.DDPOTrainer``: it provides ``config`` (``epochs``), ``seed``, ``epoch``,
    ``optimizer_steps``, ``train_cpu_seconds``, ``tracker``, ``kl_controller``, ``evaluator``, ``history``,
    ``policy``, ``optimizer``, ``output_dir`` and ``is_main_process``."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable trainer state (everything but the adapter, optimiser and global RNGs)."""
        return {
            "format": STATE_FORMAT,
            "epoch": self.epoch,
            "optimizer_steps": self.optimizer_steps,
            "seed": self.seed,
            "train_cpu_seconds": self.train_cpu_seconds,
            "tracker": self.tracker.state_dict(),
            "kl_controller": self.kl_controller.state_dict(),
            "evaluator": None if self.evaluator is None else self.evaluator.state_dict(),
            "history": self.history,
        }

    def _check_state(self, state: Mapping[str, Any], folder: Path) -> None:
        """The trainer part of a checkpoint's state.json has every key :meth:`load_state_dict` reads, with its type,
        and an epoch this run can continue from."""
        kinds = {
            "epoch": int, "optimizer_steps": int, "seed": int, "train_cpu_seconds": (int, float), "tracker": dict,
            "kl_controller": dict, "history": list,
        }  # fmt: skip
        where = folder / "state.json"
        for key, kind in kinds.items():
            value = state.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
                raise CheckpointError(f"{where}: trainer.{key} is {value!r}, not what a DDPO checkpoint holds")
        if not all(isinstance(record, dict) for record in state["history"]):
            raise CheckpointError(f"{where}: trainer.history must be a list of metric records")
        if state["epoch"] > self.config.epochs:
            raise CheckpointError(
                f"{where}: trainer.epoch = {state['epoch']} is past this run's trainer.epochs = {self.config.epochs}; "
                "the checkpoint belongs to a longer run"
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the seed must match)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a DDPO trainer state (expected format {STATE_FORMAT!r})")
        if int(state["seed"]) != self.seed:
            raise ValueError(f"the checkpoint was trained with seed {state['seed']}, this trainer has {self.seed}")
        self.epoch = int(state["epoch"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.train_cpu_seconds = float(state["train_cpu_seconds"])
        self.tracker.load_state_dict(state["tracker"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        if self.evaluator is not None and state.get("evaluator") is not None:
            self.evaluator.load_state_dict(state["evaluator"])
        self.history = [dict(h) for h in state["history"]]

    def save_checkpoint(self) -> Path | None:
        """Write ``<output_dir>/checkpoints/epoch-NNNNNN`` (main process only)."""
        if self.output_dir is None or not self.is_main_process:
            return None
        folder = save_checkpoint(
            self.output_dir / "checkpoints",
            f"epoch-{self.epoch:06d}",
            policy=self.policy,
            optimizer=self.optimizer,
            trainer_state=self.state_dict(),
        )
        logger.info("checkpoint: %s", folder)
        return folder

    def resume(self, folder: str | Path) -> None:
        """Continue from a checkpoint folder written by :meth:`save_checkpoint` (adapter, optimiser, RNGs,
        tracker, controller, epoch, history); its state is checked before any of it is loaded.

        Raises:
            CheckpointError: a state of the wrong shape, or an epoch past ``config.epochs``.
        """
        self._check_state(read_checkpoint_state(folder)["trainer"], Path(folder))
        state = load_checkpoint(folder, policy=self.policy, optimizer=self.optimizer)
        self.load_state_dict(state)
        logger.info("resumed from %s at epoch %d", folder, self.epoch)
