"""Next-token sampling shared by ``GPT.generate`` and the inference engine."""

from __future__ import annotations

import torch


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits ``(B, V)`` -> token ids ``(B,)``. ``temperature <= 0`` is greedy (argmax); ``top_k`` keeps
    the k most likely tokens; ``top_p`` keeps the smallest set whose probability reaches p (nucleus)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep tokens until p is reached
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_sampling(
    temperature: float, top_k: int | None = None, top_p: float | None = None, *, flag: str = ""
) -> None:
    """Sampling settings in range, checked before a model is loaded: one ``ValueError`` naming the
    setting (``flag="--"`` for a command's flags)."""
    if temperature < 0:
        raise ValueError(f"{flag}temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"{flag}top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"{flag}top_p must be in (0, 1], got {top_p}")
