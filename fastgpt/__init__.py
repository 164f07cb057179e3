"""fastgpt: train ChatGPT-style language models end to end.

The public API is imported lazily so that ``import fastgpt`` stays cheap (no transformers, no
DeepSpeed) until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "GPT": "fastgpt.model",
    "GPTConfig": "fastgpt.model",
    "from_pretrained": "fastgpt.model",
    "Tokenizer": "fastgpt.tokenizer",
    "Engine": "fastgpt.engine",
}

if TYPE_CHECKING:  # pragma: no cover
    from fastgpt.engine import Engine
    from fastgpt.model import GPT, GPTConfig, from_pretrained
    from fastgpt.tokenizer import Tokenizer


_SUBMODULES = ("ops", "model", "data", "train", "dist", "checkpoint", "tokenizer", "engine", "conversation")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"fastgpt.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastgpt' has no attribute {name!r}")


__all__ = ["Engine", "GPT", "GPTConfig", "Tokenizer", "from_pretrained"]
