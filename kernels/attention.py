"""Causal attention: torch reference (the Triton flash-attention kernel is added beside it).

Layout everywhere: q ``(B, Hq, Tq, D)``, k/v ``(B, Hkv, Tk, D)`` with ``Hq % Hkv == 0`` (grouped-query
attention shares each K/V head among ``Hq // Hkv`` query heads). Causality is aligned to the *end*:
query ``i`` sits at key position ``Tk - Tq + i``, which is what a KV cache needs (``Tq == Tk`` in
training). ``doc_ids`` ``(B, Tk)`` marks documents of packed sequences (and left padding in batched
generation): a query only sees keys with the same id. ``window`` limits a query to the last ``window``
keys (itself included).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_mask(
    tq: int, tk: int, *, causal: bool, doc_ids: torch.Tensor | None, window: int | None, device
) -> torch.Tensor | None:
    """Boolean mask ``(B or 1, 1, Tq, Tk)``, True where a query may attend a key; None if all may."""
    if not causal and doc_ids is None and window is None:
        return None
    q_pos = torch.arange(tk - tq, tk, device=device)[:, None]  # (Tq, 1)
    k_pos = torch.arange(tk, device=device)[None, :]  # (1, Tk)
    mask = torch.ones(tq, tk, dtype=torch.bool, device=device)
    if causal:
        mask = mask & (k_pos <= q_pos)
    if window is not None:
        mask = mask & (k_pos > q_pos - window)
    mask = mask[None, None]  # (1, 1, Tq, Tk)
    if doc_ids is not None:
        q_doc = doc_ids[:, tk - tq :]  # (B, Tq)
        mask = mask & (q_doc[:, None, :, None] == doc_ids[:, None, None, :])  # (B, 1, Tq, Tk)
    return mask


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    doc_ids: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention through ``F.scaled_dot_product_attention`` (math or fused CPU/GPU kernels)."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if Hq % Hkv != 0:
        raise ValueError(f"attention: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    gqa = Hq != Hkv
    if causal and doc_ids is None and window is None and Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    mask = attention_mask(Tq, Tk, causal=causal, doc_ids=doc_ids, window=window, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def attention_naive(q, k, v, *, causal=True, doc_ids=None, window=None, scale=None) -> torch.Tensor:
    """Materialised softmax in fp32: the slow, obviously-correct baseline tests compare against."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    rep = Hq // Hkv
    kf = k.float().repeat_interleave(rep, dim=1)
    vf = v.float().repeat_interleave(rep, dim=1)
    s = (q.float() @ kf.transpose(-1, -2)) * scale  # (B, Hq, Tq, Tk)
    mask = attention_mask(Tq, Tk, causal=causal, doc_ids=doc_ids, window=window, device=q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no visible key give zeros
    return (p @ vf).to(q.dtype)
