"""Errors of the reward package: bad training data, bad embedding files, unreadable model folders.

All subclass :class:`offline_data.errors.BackdropError`, so the CLI prints the message (which names the file,
row, column or id, what was expected and what was found) and exits with the error's code, never a traceback.
"""

from __future__ import annotations

from offline_data.errors import AssetError, BackdropError, InputUnreadableError


class RewardDataError(BackdropError):
    """The logs cannot train or evaluate a reward model: an empty split, a head with no labels, an impression
    outside the slots the model knows, an image with no mask for a mask-aware encoder."""

    exit_code = 1


class MissingImageError(RewardDataError, AssetError):
    """A log row refers to an image id that the assets table does not have."""

    exit_code = 1


class EmbeddingError(InputUnreadableError):
    """A precomputed-embeddings file is unreadable, lacks ids the logs use, holds NaN/inf, or has the wrong width."""

    exit_code = 2


class CheckpointError(InputUnreadableError):
    """A reward-model folder is missing files or does not match the code that reads it."""

    exit_code = 2
