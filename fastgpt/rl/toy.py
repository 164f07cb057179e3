"""Toy pieces for exercising the RL stages in seconds: a tiny random model directory and dense rewards.

A random tiny model cannot solve arithmetic, so tests and smoke runs use rewards it can climb from
scratch: :func:`digit_fraction` (share of digit characters in the completion, about 4% for a random
model over a 300-token vocabulary) gives every sample a different, graded reward, so GRPO has a signal
from the first step. These are for testing the machinery; docs/rl.md has the real demonstration.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from fastgpt.model import GPT, GPTConfig
from fastgpt.tokenizer import Tokenizer

__all__ = ["TOY_TEXT", "digit_fraction", "tiny_model_dir"]

TOY_TEXT = (
    "What is 12 + 30? Let me add: 12 + 30 = 42.\n#### 42\n"
    "Which is larger, 7 or 9? The larger number is 9.\n#### 9\n"
    "Good answers are short and end with the number. digits 0123456789 "
)


def digit_fraction(completion: str, problem: Any = None) -> float:
    """Share of the completion's characters that are digits (0 for an empty completion)."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


def tiny_model_dir(
    path: str | Path,
    *,
    vocab_size: int = 320,
    n_layer: int = 2,
    n_embd: int = 64,
    max_seq_len: int = 160,
    seed: int = 0,
) -> Path:
    """Write a tiny random llama-family model with a fastgpt tokenizer (chat special tokens included)
    to ``path`` and return it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a toy corpus supports fewer merges than asked for
        tokenizer = Tokenizer.train([TOY_TEXT * 20], vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = GPTConfig.from_preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        n_layer=n_layer,
        n_head=2,
        n_kv_head=2,
        n_embd=n_embd,
        max_seq_len=max_seq_len,
    )
    path = Path(path)
    GPT(config).save_pretrained(path)
    tokenizer.save(path)
    return path
