"""The few exception types a user sees.

Every error that is the user's to fix (bad input, bad options, an output that
already exists) derives from :class:`DaskgenError` and carries the exit code the
command line returns for it. The CLI prints ``str(error)`` on one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class DaskgenError(Exception):
    """Base class of the errors daskgen reports to users on one line."""

    exit_code = 1


class InputError(DaskgenError, ValueError):
    """Input data, a job file or an option is wrong; names the file, column or class at fault."""

    exit_code = 2


class OutputExistsError(DaskgenError, FileExistsError):
    """The output path holds something daskgen may not replace without ``overwrite``."""

    exit_code = 2


class OutputError(DaskgenError, OSError):
    """An output location cannot be written (not a folder, no permission, disk full)."""

    exit_code = 2


class ModelError(DaskgenError):
    """A model store is missing, incomplete, corrupted or from an incompatible version."""

    exit_code = 2


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """At the API edge: a plain ``ValueError`` of the numeric code (kernels, models) is the
    user's input or options at fault; raise it as an :class:`InputError` (exit code 2)."""
    try:
        yield
    except DaskgenError:
        raise
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """An exception's whole message on one line (its type name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__
