"""The one base class for mistakes a user can fix: a bad flag, bad data, a missing file.

Command-line entry points print a :class:`UserError` as a single ``error:`` line (set
``FASTGPT_DEBUG=1`` to see its traceback too); any other exception is a bug in fastgpt or a library
and keeps its traceback. Subclasses name the area (``DataError``, ``TokenizerError``...). It derives
from ``ValueError`` so callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations

import os
import sys
import traceback

__all__ = ["UserError", "debug_enabled", "report_user_error"]


class UserError(ValueError):
    """Raised for input the user controls (flags, files, data, model dirs); the message is one line
    that names the flag/file/field and what was expected."""


def debug_enabled() -> bool:
    """``FASTGPT_DEBUG`` set to anything but ``""``/``0``: user errors show their traceback too."""
    return os.environ.get("FASTGPT_DEBUG", "") not in ("", "0")


def report_user_error(command: str, error: BaseException, status: int = 2) -> int:
    """Print ``error`` as ``fastgpt <command>: error: <message>`` on stderr (after its traceback when
    :func:`debug_enabled`) and return ``status``, the command's exit status. Call it from an
    ``except UserError`` clause."""
    if debug_enabled():
        traceback.print_exception(error)
    print(f"fastgpt {command}: error: {error}", file=sys.stderr)
    return status
