"""The one base class for mistakes a user can fix: a bad flag, bad data, a missing file.

Command-line entry points print a :class:`UserError` as a single ``error:`` line (set
``FASTGPT_DEBUG=1`` to see its traceback too); any other exception is a bug in fastgpt or a library
and keeps its traceback. Subclasses name the area (``DataError``, ``TokenizerError``...). It derives
from ``ValueError`` so callers that already catch ``ValueError`` keep working.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Raised for input the user controls (flags, files, data, model dirs); the message is one line
    that names the flag/file/field and what was expected."""
