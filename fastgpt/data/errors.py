"""The one exception type of the data pipeline: every message names the file (or field) and what was
expected, so a bad input fails loudly at the point it is read."""

from __future__ import annotations

from fastgpt.errors import UserError

__all__ = ["DataError", "TokenizerMismatchError"]


class DataError(UserError):
    """Unusable data input: a missing or empty source, a bad record, a corrupt shard or manifest."""


class TokenizerMismatchError(DataError):
    """Token shards read with a tokenizer other than the one that produced them."""
