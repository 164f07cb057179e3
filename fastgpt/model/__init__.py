"""Transformer core: configuration, the model, its KV cache and the Hugging Face format."""

from fastgpt.model.config import PRESETS, GPTConfig
from fastgpt.model.gpt import GPT
from fastgpt.model.hf import ModelFormatError
from fastgpt.model.kv_cache import KVCache
from fastgpt.model.load import from_pretrained
from fastgpt.model.sampling import sample_next_token

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "ModelFormatError",
    "PRESETS",
    "from_pretrained",
    "sample_next_token",
]
