"""Rotary position embedding: torch reference (Triton kernel beside it).

Half-split convention (as Hugging Face Llama): the head dim is split into two halves ``(x1, x2)`` and
rotated as ``(x1 cos - x2 sin, x2 cos + x1 sin)``. ``cos``/``sin`` are ``(B or 1, T, D/2)`` in fp32,
already gathered at each token's position id (so packed documents restart at 0) and already carrying
any frequency scaling (Llama-3.1) chosen by the caller.
"""

from __future__ import annotations

import torch


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D/2): broadcast over heads
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q ``(B, Hq, T, D)`` and k ``(B, Hkv, T, D)``."""
    return _rotate(q, cos, sin), _rotate(k, cos, sin)
