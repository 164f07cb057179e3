"""The one base class for mistakes a user can fix: a bad flag, bad data, a missing file.

Command-line entry points print a :class:`UserError` as a single ``error:`` line (set
``FASTGPT_DEBUG=1`` to see its traceback too); any other exception is a bug in fastgpt or a library
and keeps its traceback. Subclasses name the area (``DataError``, ``TokenizerError``...). It derives
from ``ValueError`` so callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

__all__ = ["UserError", "debug_enabled", "json_object", "report_user_error"]


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


def json_object(text: str | bytes, where: str, error: type[UserError], expected: str) -> dict[str, Any]:
    """``text`` (one line of a JSONL file, say) parsed as a JSON object; anything else raises ``error``
    naming ``where``: ``WHERE: not valid JSON (why)`` or ``WHERE: expected EXPECTED, got TYPE``."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise error(f"{where}: expected {expected}, got {type(record).__name__}")
    return record
