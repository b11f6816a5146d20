"""Exception types shared by every backdrop package, and the exit codes the CLI maps them to.

``offline_data`` sits at the root of the dependency graph (docs/architecture.md, "Import contracts"), so the base
class lives here and every package can raise a subclass. The CLI catches :class:`BackdropError`, prints its message
and exits with :attr:`BackdropError.exit_code`; an ``OSError`` that reaches it is an environment failure and
becomes one of the errors below (:func:`environment_error`); anything else is a bug and is reported as one. Exit
codes (codes >= 64 follow BSD ``sysexits.h``):

====  ===================================================================  =====================================
code  meaning                                                              raised as
====  ===================================================================  =====================================
0     success
1     rows rejected, or a result refused by a check (the rows are named)   LogValidationError, RewardDataError
2     bad usage, config key, or input that cannot be read or is missing    ConfigError, InputUnreadableError,
                                                                           AssetError, argparse
3     a product pixel changed (the hard invariant)                         PreservationError
4     a release gate refused                                               GateRefusedError
5     an export did not reproduce                                          ReproducibilityError
65    a number out of range for the computation (overflow)                 NumericRangeError
66    an input path that does not exist                                    InputMissingError
70    a bug in backdrop (anything not listed here)
73    an output cannot be created: folder not empty, path under a file     OutputExistsError, OutputPathError
74    an I/O error: disk full, device error                                StorageError, DiskFullError
77    permission denied (read-only folder or file)                         PermissionDeniedError
130   interrupted (Ctrl-C)
====  ===================================================================  =====================================
"""

from __future__ import annotations

import errno


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


class NumericRangeError(BackdropError):
    """A number overflowed: an input or config value too large for the computation it feeds."""

    exit_code = 65


class InputMissingError(BackdropError):
    """A path the command reads does not exist (reported by the operating system)."""

    exit_code = 66


class OutputExistsError(BackdropError):
    """An output folder already holds files; the command refuses to mix its files with them."""

    exit_code = 73


class OutputPathError(BackdropError):
    """An output cannot be created where asked: a part of its path is a regular file, not a folder."""

    exit_code = 73


class StorageError(BackdropError):
    """The operating system failed to read or write a file (an I/O error)."""

    exit_code = 74


class DiskFullError(StorageError):
    """No space (or quota) left on the device being written."""


class PermissionDeniedError(BackdropError):
    """The operating system refused access: a read-only folder or file, or one owned by someone else."""

    exit_code = 77


def environment_error(exc: OSError) -> BackdropError:
    """The named error for an ``OSError`` (a failure of the machine, not of backdrop), one line.

    The message names the path the operating system reported and what to do about it.
    """
    where = exc.filename if exc.filename is not None else "(no path given)"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = exc.errno
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"{where}: permission denied ({reason}); choose a folder you can write to")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{where}: no space left on the device ({reason}); free space or write elsewhere")
    if isinstance(exc, NotADirectoryError) or code == errno.ENOTDIR:
        return OutputPathError(f"{where}: a part of this path is a regular file, not a folder ({reason})")
    if isinstance(exc, FileExistsError) or code == errno.EEXIST:
        return OutputPathError(f"{where}: already exists ({reason}); choose a new path")
    if isinstance(exc, FileNotFoundError) or code == errno.ENOENT:
        return InputMissingError(f"{where}: not found ({reason})")
    return StorageError(f"{where}: {reason}")
