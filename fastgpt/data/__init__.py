"""Data for pretraining: built-in corpora, text sources -> token shards (``prepare``), ShardLoader.

The ``prepare`` function lives in ``fastgpt.data.prepare`` (the module of ``fastgpt prepare``).
Names are imported lazily: ``prepare``'s worker processes import this package and must not pay for
torch, which only the loader needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BUILTIN_CORPORA": "fastgpt.data.corpora",
    "corpus_documents": "fastgpt.data.corpora",
    "DataError": "fastgpt.data.errors",
    "TokenizerMismatchError": "fastgpt.data.errors",
    "ShardLoader": "fastgpt.data.loader",
    "check_tokenizer": "fastgpt.data.manifest",
    "read_manifest": "fastgpt.data.manifest",
    "resolve_pretrain_data": "fastgpt.data.resolve",
    "ShardError": "fastgpt.data.shards",
    "open_shard": "fastgpt.data.shards",
    "write_shard": "fastgpt.data.shards",
    "ReadOptions": "fastgpt.data.sources",
    "expand_sources": "fastgpt.data.sources",
    "iter_documents": "fastgpt.data.sources",
    "cache_dir": "fastgpt.data.fetch",
}

if TYPE_CHECKING:  # pragma: no cover
    from fastgpt.data.corpora import BUILTIN_CORPORA, corpus_documents
    from fastgpt.data.errors import DataError, TokenizerMismatchError
    from fastgpt.data.fetch import cache_dir
    from fastgpt.data.loader import ShardLoader
    from fastgpt.data.manifest import check_tokenizer, read_manifest
    from fastgpt.data.resolve import resolve_pretrain_data
    from fastgpt.data.shards import ShardError, open_shard, write_shard
    from fastgpt.data.sources import ReadOptions, expand_sources, iter_documents


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastgpt.data' has no attribute {name!r}")


__all__ = [
    "BUILTIN_CORPORA",
    "DataError",
    "ReadOptions",
    "ShardError",
    "ShardLoader",
    "TokenizerMismatchError",
    "cache_dir",
    "check_tokenizer",
    "corpus_documents",
    "expand_sources",
    "iter_documents",
    "open_shard",
    "read_manifest",
    "resolve_pretrain_data",
    "write_shard",
]
