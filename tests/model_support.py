"""Shared by the engine and rollout tests: a tiny GPT and the uncached greedy reference.

Not a test module (no ``test_`` prefix): imported by tests/test_engine*.py and test_rollout_batching.py.
"""

from __future__ import annotations

import torch

from fastgpt.model import GPT, GPTConfig


def tiny_model(vocab_size: int = 300, family: str = "llama", seq_len: int = 192, **overrides) -> GPT:
    """A 2-layer, 64-wide model in eval mode, seeded; GQA (2 K/V heads for 4 query heads) in the llama
    family, one K/V head per query head in gpt2. ``overrides``: other GPTConfig fields (``init_std``...)."""
    torch.manual_seed(0)
    config = GPTConfig.from_preset(
        "tiny",
        family=family,
        vocab_size=vocab_size,
        n_layer=2,
        n_head=4,
        n_kv_head=2 if family == "llama" else 4,
        n_embd=64,
        max_seq_len=seq_len,
        **overrides,
    )
    return GPT(config).eval()


def full_recompute_greedy(model: GPT, prompt: list[int], steps: int) -> list[int]:
    """Reference: re-run the whole sequence for every new token, no cache."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]
