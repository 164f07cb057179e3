"""Next-token sampling shared by ``GPT.generate`` and the inference engine."""

from __future__ import annotations

import torch

from fastgpt.errors import UserError


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
    logits = filter_logits(logits, temperature, top_k, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_sampling(
    temperature: float, top_k: int | None = None, top_p: float | None = None, *, flag: str = ""
) -> None:
    """Sampling settings in range, checked before a model is loaded: one ``ValueError`` naming the
    setting (``flag="--"`` for a command's flags)."""
    if temperature < 0:
        raise UserError(f"{flag}temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"{flag}top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"{flag}top_p must be in (0, 1], got {top_p}")


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """fp32 logits ``(B, V)`` divided by ``temperature`` (> 0) with the tokens outside ``top_k`` /
    ``top_p`` set to ``-inf``: the distribution :func:`sample_next_token` draws from, as logits."""
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p  # keep tokens until p is reached
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_with_uniforms(
    logits: torch.Tensor,
    uniforms: torch.Tensor | None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """logits ``(B, V)`` -> token ids ``(B,)`` from the same distribution as :func:`sample_next_token`,
    drawn by inverting each row's CDF at a caller-supplied uniform ``uniforms`` ``(B,)`` in [0, 1).
    Because the randomness is an input (one number per row), a row's draw depends only on its own
    uniform, not on which rows share the batch or how a generator was consumed for them; one uniform
    per row is also far cheaper than vocabulary-sized noise. ``temperature <= 0`` is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    cdf = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1).cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1])[:, None]
    # the first token whose cumulative probability exceeds the target (zero-probability tokens never)
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=cdf.shape[-1] - 1)
