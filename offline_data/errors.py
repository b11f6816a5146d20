"""Exception types shared by every backdrop package.

``offline_data`` sits at the root of the dependency graph (DESIGN.md section 1), so the base class lives
here and every package can raise a subclass. The CLI catches :class:`BackdropError`, prints its message
and exits with :attr:`BackdropError.exit_code`; anything else is a bug and is reported as one.
"""

from __future__ import annotations


class BackdropError(Exception):
    """Bad input or an unmet precondition that the user can fix; the message says where and what."""

    exit_code: int = 2
    """Process exit status the CLI uses for this error."""


class InputUnreadableError(BackdropError):
    """An input file cannot be read at all: missing, truncated, wrong format or encoding, missing column."""

    exit_code = 2


class LogValidationError(BackdropError):
    """Rows of a log table failed validation (strict mode), or a table is unusable for a stage."""

    exit_code = 1


class AssetError(BackdropError):
    """An asset (image, mask, weights file) is missing, unreadable or does not match its recorded hash."""

    exit_code = 2


class PreservationError(BackdropError):
    """A product pixel changed. Product pixels are a hard invariant: this always stops the run."""

    exit_code = 3
