"""Causal attention: torch references and a Triton flash-attention kernel (forward and backward).

Layout everywhere: q ``(B, Hq, Tq, D)``, k/v ``(B, Hkv, Tk, D)`` with ``Hq % Hkv == 0`` (grouped-query
attention shares each K/V head among ``Hq // Hkv`` query heads). Causality is aligned to the *end*:
query ``i`` sits at key position ``Tk - Tq + i``, which is what a KV cache needs (``Tq == Tk`` in
training). ``doc_ids`` ``(B, Tk)`` marks documents of packed sequences (and left padding in batched
generation): a query only sees keys with the same id. ``window`` limits a query to the last ``window``
keys (itself included).

Implementations, all with the same signature and semantics:

- ``attention_reference``: ``F.scaled_dot_product_attention`` with a boolean mask (the torch path).
- ``attention_naive``: materialised fp32 softmax; the obviously-correct baseline of the tests.
- ``attention_math``: materialised, with the two GEMMs in the inputs' dtype and the softmax in fp32;
  what ``ops.attention`` uses for short bf16 training sequences on CPU under ``torch.compile``.
- ``attention_triton``: flash attention (FA2 scheme). The forward walks key tiles with an online
  softmax in fp32 and never holds a ``Tq x Tk`` matrix; it saves only the output and the per-row
  log-sum-exp. The backward recomputes the probabilities from that log-sum-exp: one small kernel for
  ``delta = rowsum(dO * O)``, one kernel per key tile for dK/dV (looping over query tiles and over the
  query heads that share the K/V head, so GQA needs no copy and no atomics) and one per query tile for
  dQ. Tiles that the causal, window or document structure hides entirely are never visited, and the
  elementwise mask is evaluated only on tiles that are partly visible. See docs/attention.md.
- ``attention_flash_attn``: a thin wrapper over the ``flash-attn`` package (GPU only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from fastgpt.kernels._target import arch_family, forced_arch, launch_arch


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


def attention_math(q, k, v, *, causal=True, doc_ids=None, window=None, scale=None) -> torch.Tensor:
    """Materialised attention with the two GEMMs in the inputs' dtype (fp32 accumulation) and the
    masked softmax in fp32, probabilities rounded to that dtype for the second GEMM (as the fused
    kernels do). Why it exists: on a CPU with native bf16 and short sequences, compiled by inductor
    (which fuses scale, mask and softmax, forward and backward, into one pass each), its batched GEMMs
    beat the CPU flash kernel's small tiles, although it does not skip the masked half (measured in
    docs/pretraining.md). Memory is ``B x Hq x Tq x Tk`` fp32 scores, so it is for short sequences only."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if Hq % Hkv != 0:
        raise ValueError(f"attention: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    if Hq != Hkv:
        k, v = k.repeat_interleave(Hq // Hkv, dim=1), v.repeat_interleave(Hq // Hkv, dim=1)
    s = (q @ k.transpose(-1, -2)).float() * scale  # (B, Hq, Tq, Tk)
    mask = attention_mask(Tq, Tk, causal=causal, doc_ids=doc_ids, window=window, device=q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if doc_ids is not None or window is not None:
        p = p.nan_to_num(0.0)  # a query with no visible key (padding) gives zeros, as SDPA does
    return p.to(v.dtype) @ v  # (B, Hq, Tq, D)


# ============================================================================================ tile sizes
@dataclass(frozen=True)
class TileConfig:
    """Launch shape of one attention kernel: a ``block_m`` (queries) x ``block_n`` (keys) tile."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


SUPPORTED_HEAD_DIMS = (32, 64, 96, 128)
_PREPROCESS_BLOCK_M = 64  # rows per program of the delta = rowsum(dO * O) kernel (memory bound)

# Chosen by compiling candidates for sm_80 and sm_90 with every feature variant (docs/attention.md has the
# measured table): the largest tiles that fit shared memory and spill no registers. With 8 warps a tile
# needs 128 rows to fill two Hopper warpgroups; the dK/dV kernel holds two fp32 accumulators of
# BLOCK_N x head-dim each, which is why its query tiles are short. The sm_80 family also serves sm_86/89
# (99 KB of shared memory per block), so its tiles stay below that. Head dim 96 runs on the 128 tiles
# with the last 32 columns masked off.
_T = TileConfig
_GPU_TILES: dict[tuple[str, int], dict[str, TileConfig]] = {
    ("sm90", 32): {"fwd": _T(128, 128, 8, 3), "bwd_dkdv": _T(32, 128, 8, 3), "bwd_dq": _T(128, 64, 8, 3)},
    ("sm90", 64): {"fwd": _T(128, 64, 8, 3), "bwd_dkdv": _T(32, 128, 8, 3), "bwd_dq": _T(128, 64, 8, 3)},
    ("sm90", 128): {"fwd": _T(128, 64, 8, 3), "bwd_dkdv": _T(16, 128, 8, 3), "bwd_dq": _T(128, 64, 8, 2)},
    ("sm80", 32): {"fwd": _T(128, 128, 8, 3), "bwd_dkdv": _T(32, 128, 8, 3), "bwd_dq": _T(128, 64, 8, 3)},
    ("sm80", 64): {"fwd": _T(128, 64, 8, 3), "bwd_dkdv": _T(16, 128, 8, 3), "bwd_dq": _T(128, 64, 8, 3)},
    ("sm80", 128): {"fwd": _T(128, 64, 8, 2), "bwd_dkdv": _T(32, 64, 8, 2), "bwd_dq": _T(128, 32, 8, 2)},
}
# Under the interpreter tiles are small and deliberately unequal (M != N, dkdv transposed) so that short
# test sequences cross several tiles and every masked/unmasked tile boundary is exercised.
_INTERPRETER_TILES = {
    "fwd": TileConfig(32, 16, 4, 1),
    "bwd_dkdv": TileConfig(16, 32, 4, 1),
    "bwd_dq": TileConfig(32, 16, 4, 1),
}


def padded_head_dim(head_dim: int) -> int:
    """Width of the register tile holding one row of q/k/v (a power of two, as ``tl.arange`` needs)."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"attention_triton: head dim {head_dim} is not supported; "
            f"supported head dims are {', '.join(map(str, SUPPORTED_HEAD_DIMS))}"
        )
    return triton.next_power_of_2(head_dim)


def tile_configs(head_dim: int, arch: str | None) -> dict[str, TileConfig]:
    """The one place that picks tile sizes: per kernel role, head dim and arch family.

    ``arch`` is ``"sm80"`` / ``"sm90"`` (see :func:`arch_family`) or ``None`` for the interpreter's own
    small tiles. The launcher passes :func:`fastgpt.kernels._target.launch_arch` of the inputs' device:
    the GPU's family, or ``FASTGPT_KERNEL_ARCH`` under the interpreter (the tests' GPU-tiles mode).
    """
    block_d = padded_head_dim(head_dim)
    if arch is None:
        return dict(_INTERPRETER_TILES)
    return dict(_GPU_TILES[(arch, block_d)])


__all__ = [
    "AOT_CONFIGS",
    "SUPPORTED_HEAD_DIMS",
    "TileConfig",
    "arch_family",
    "attention_flash_attn",
    "attention_math",
    "attention_naive",
    "attention_reference",
    "attention_triton",
    "check_dtype",
    "tile_configs",
]


# ======================================================================================= Triton kernels
@triton.jit
def _load_rows(
    base,
    offs_t,
    offs_d,
    stride_t,
    n_rows,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CHECK_ROWS: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Rows ``offs_t`` of a ``(T, HEAD_DIM)`` matrix as a ``(len(offs_t), BLOCK_D)`` tile; rows past
    ``n_rows`` (when ``CHECK_ROWS``) and columns past ``HEAD_DIM`` read as 0."""
    ptrs = base + offs_t[:, None] * stride_t + offs_d[None, :]
    if CHECK_ROWS:
        if BLOCK_D == HEAD_DIM:
            x = tl.load(ptrs, mask=offs_t[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(ptrs, mask=(offs_t[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    if UPCAST:  # the interpreter cannot do bf16 arithmetic: compute in fp32
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_rows(base, x, offs_t, offs_d, stride_t, n_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    ptrs = base + offs_t[:, None] * stride_t + offs_d[None, :]
    x = x.to(base.dtype.element_ty)
    if BLOCK_D == HEAD_DIM:
        tl.store(ptrs, x, mask=offs_t[:, None] < n_rows)
    else:
        tl.store(ptrs, x, mask=(offs_t[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _visible(
    q_pos,
    k_pos,
    doc_q,
    doc_k,
    T_K,
    WINDOW,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
):
    """Which (query, key) pairs may attend; arguments broadcast to the tile (either orientation)."""
    vis = (k_pos < T_K) & (k_pos >= 0)
    if CAUSAL:
        vis = vis & (k_pos <= q_pos)
    if HAS_WINDOW:
        vis = vis & (k_pos > q_pos - WINDOW)
    if HAS_DOCS:
        vis = vis & (doc_q == doc_k)
    return vis


@triton.jit
def _key_tiles(
    m0,
    T_Q,
    T_K,
    WINDOW,
    tok_lo_row,
    tok_hi_row,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
):
    """Key tiles a query tile ``[m0, m0 + BLOCK_M)`` must visit, as ``BLOCK_N``-aligned bounds
    ``start <= full_start <= full_end <= end``: tiles in ``[full_start, full_end)`` are entirely visible
    (no elementwise mask), those in ``[start, full_start)`` and ``[full_end, end)`` are partly visible;
    everything outside is hidden and skipped."""
    off = T_K - T_Q  # query i sits at key position off + i
    lo = off * 0  # runtime scalars (T_K may arrive as a constexpr when it is 1) that the branches narrow
    hi = T_K + 0
    if CAUSAL:  # keys <= last query's position
        hi = tl.minimum(hi, off + m0 + BLOCK_M)
    if HAS_WINDOW:  # keys > first query's position - WINDOW
        lo = tl.maximum(lo, off + m0 - WINDOW + 1)
    if HAS_DOCS:  # keys within the extent of the documents of this tile's queries
        rows = m0 + tl.arange(0, BLOCK_M)
        in_range = rows < T_Q
        lo = tl.maximum(lo, tl.min(tl.load(tok_lo_row + off + rows, mask=in_range, other=T_K), 0))
        hi = tl.minimum(hi, tl.max(tl.load(tok_hi_row + off + rows, mask=in_range, other=0), 0))
    hi = tl.maximum(hi, 0)
    start = (lo // BLOCK_N) * BLOCK_N
    end = tl.cdiv(hi, BLOCK_N) * BLOCK_N
    if HAS_DOCS:  # document edges can fall anywhere: mask every tile
        full_start = tl.maximum(end, start)
        full_end = full_start
    else:
        full_start = start
        if HAS_WINDOW:  # first key tile with k0 > last query's position - WINDOW
            full_start = tl.maximum(
                start, tl.cdiv(tl.maximum(off + m0 + BLOCK_M - WINDOW, 0), BLOCK_N) * BLOCK_N
            )
        full_end = (T_K // BLOCK_N) * BLOCK_N  # the ragged last key tile needs the mask
        if CAUSAL:  # tiles whose last key <= first query's position
            full_end = tl.minimum(full_end, (tl.maximum(off + m0 + 1, 0) // BLOCK_N) * BLOCK_N)
        full_start = tl.minimum(full_start, end)
        full_end = tl.minimum(tl.maximum(full_end, full_start), end)
    return start, full_start, full_end, end


@triton.jit
def _fwd_tiles(
    acc,
    m_i,
    l_i,
    q,
    q_pos,
    doc_q,
    k_base,
    v_base,
    doc_row,
    stride_kt,
    stride_vt,
    start,
    end,
    T_K,
    WINDOW,
    qk_scale,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Online softmax over key tiles ``[start, end)``; scores are in log2 units (``qk_scale`` folds in
    log2(e)), the running max ``m_i``, normaliser ``l_i`` and output ``acc`` stay in fp32."""
    offs_d = tl.arange(0, BLOCK_D)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, offs_d, stride_kt, T_K, HEAD_DIM, BLOCK_D, MASKED, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            doc_k = offs_n
            if HAS_DOCS:
                doc_k = tl.load(doc_row + offs_n, mask=offs_n < T_K, other=0)
            vis = _visible(
                q_pos[:, None], offs_n[None, :], doc_q[:, None], doc_k[None, :], T_K, WINDOW,
                CAUSAL, HAS_DOCS, HAS_WINDOW,
            )  # fmt: skip
            s = tl.where(vis, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_ref = m_new
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_base, offs_n, offs_d, stride_vt, T_K, HEAD_DIM, BLOCK_D, MASKED, UPCAST)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    DOC,
    TOK_LO,
    TOK_HI,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_ob,
    stride_oh,
    stride_ot,
    H_Q,
    GROUP,
    T_Q,
    T_K,
    WINDOW,
    qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program = one query tile of one (batch, query head). Writes O and the row log-sum-exp (log2
    units; +inf for a row that sees no key, so the backward's probabilities come out as 0)."""
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H_Q).to(tl.int64)
    h = (bh % H_Q).to(tl.int64)
    h_kv = h // GROUP  # GQA: the shared K/V head is indexed, never copied
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    doc_row = DOC + b * T_K
    tok_lo_row = TOK_LO + b * T_K
    tok_hi_row = TOK_HI + b * T_K

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_pos = T_K - T_Q + offs_m
    q = _load_rows(q_base, offs_m, offs_d, stride_qt, T_Q, HEAD_DIM, BLOCK_D, True, UPCAST)
    doc_q = q_pos
    if HAS_DOCS:
        doc_q = tl.load(doc_row + q_pos, mask=offs_m < T_Q, other=0)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    start, full_start, full_end, end = _key_tiles(
        m0, T_Q, T_K, WINDOW, tok_lo_row, tok_hi_row, BLOCK_M, BLOCK_N, CAUSAL, HAS_DOCS, HAS_WINDOW
    )
    if HAS_DOCS or HAS_WINDOW:  # leading partly-visible tiles (window edge, documents)
        acc, m_i, l_i = _fwd_tiles(
            acc, m_i, l_i, q, q_pos, doc_q, k_base, v_base, doc_row, stride_kt, stride_vt,
            start, full_start, T_K, WINDOW, qk_scale,
            BLOCK_N, HEAD_DIM, BLOCK_D, True, CAUSAL, HAS_DOCS, HAS_WINDOW, UPCAST, PRECISION,
        )  # fmt: skip
    if not HAS_DOCS:
        acc, m_i, l_i = _fwd_tiles(  # fully visible tiles: no mask
            acc, m_i, l_i, q, q_pos, doc_q, k_base, v_base, doc_row, stride_kt, stride_vt,
            full_start, full_end, T_K, WINDOW, qk_scale,
            BLOCK_N, HEAD_DIM, BLOCK_D, False, CAUSAL, HAS_DOCS, HAS_WINDOW, UPCAST, PRECISION,
        )  # fmt: skip
        acc, m_i, l_i = _fwd_tiles(  # trailing partly-visible tiles (diagonal, ragged end)
            acc, m_i, l_i, q, q_pos, doc_q, k_base, v_base, doc_row, stride_kt, stride_vt,
            full_end, end, T_K, WINDOW, qk_scale,
            BLOCK_N, HEAD_DIM, BLOCK_D, True, CAUSAL, HAS_DOCS, HAS_WINDOW, UPCAST, PRECISION,
        )  # fmt: skip

    empty = l_i == 0.0  # no visible key: output 0, not 0/0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    _store_rows(O + b * stride_ob + h * stride_oh, out, offs_m, offs_d, stride_ot, T_Q, HEAD_DIM, BLOCK_D)
    tl.store(LSE + bh.to(tl.int64) * T_Q + offs_m, lse, mask=offs_m < T_Q)


@triton.jit
def _attn_bwd_preprocess_kernel(
    O,
    DO,
    DELTA,
    stride_ob,
    stride_oh,
    stride_ot,
    stride_dob,
    stride_doh,
    stride_dot,
    H_Q,
    T_Q,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """``delta = rowsum(dO * O)`` in fp32: the softmax-Jacobian term both gradient kernels need."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1)
    b = (bh // H_Q).to(tl.int64)
    h = (bh % H_Q).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_rows(
        O + b * stride_ob + h * stride_oh, offs_m, offs_d, stride_ot, T_Q, HEAD_DIM, BLOCK_D, True, True
    )
    do = _load_rows(
        DO + b * stride_dob + h * stride_doh, offs_m, offs_d, stride_dot, T_Q, HEAD_DIM, BLOCK_D, True, True
    )
    tl.store(DELTA + bh.to(tl.int64) * T_Q + offs_m, tl.sum(o * do, 1), mask=offs_m < T_Q)


@triton.jit
def _query_tiles(
    n0,
    T_Q,
    T_K,
    WINDOW,
    tok_lo_row,
    tok_hi_row,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
):
    """Mirror of :func:`_key_tiles` for a key tile ``[n0, n0 + BLOCK_N)``: ``BLOCK_M``-aligned query
    bounds ``start <= full_start <= full_end <= end``, fully visible in the middle range."""
    off = T_K - T_Q
    lo = off * 0  # runtime scalars, as in _key_tiles
    hi = T_Q + 0
    if CAUSAL:  # queries at or after the first key
        lo = tl.maximum(lo, n0 - off)
    if HAS_WINDOW:  # queries whose window still reaches the last key
        hi = tl.minimum(hi, n0 + BLOCK_N - 1 + WINDOW - off)
    if HAS_DOCS:
        keys = n0 + tl.arange(0, BLOCK_N)
        in_range = keys < T_K
        lo = tl.maximum(lo, tl.min(tl.load(tok_lo_row + keys, mask=in_range, other=T_K), 0) - off)
        hi = tl.minimum(hi, tl.max(tl.load(tok_hi_row + keys, mask=in_range, other=0), 0) - off)
    lo = tl.maximum(lo, 0)
    hi = tl.maximum(hi, 0)
    start = (lo // BLOCK_M) * BLOCK_M
    end = tl.cdiv(hi, BLOCK_M) * BLOCK_M
    if HAS_DOCS:
        full_start = tl.maximum(end, start)
        full_end = full_start
    else:
        full_start = start
        if CAUSAL:  # query tiles whose first position >= the last key
            full_start = tl.maximum(start, tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - off, 0), BLOCK_M) * BLOCK_M)
        full_end = (T_Q // BLOCK_M) * BLOCK_M  # the ragged last query tile needs the mask
        if HAS_WINDOW:  # query tiles whose last position < first key + WINDOW
            full_end = tl.minimum(full_end, (tl.maximum(n0 + WINDOW - off, 0) // BLOCK_M) * BLOCK_M)
        full_start = tl.minimum(full_start, end)
        full_end = tl.minimum(tl.maximum(full_end, full_start), end)
    return start, full_start, full_end, end


@triton.jit
def _dkdv_tiles(
    dk,
    dv,
    k,
    v,
    offs_n,
    doc_k,
    q_base,
    do_base,
    lse_row,
    delta_row,
    doc_row,
    stride_qt,
    stride_dot,
    start,
    full_start,
    full_end,
    end,
    T_Q,
    T_K,
    WINDOW,
    qk_scale,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Accumulate dK, dV of one key tile over query tiles ``[start, end)`` of one query head, working
    on transposed scores ``(BLOCK_N, BLOCK_M)`` so the results land in key-major layout.

    Unlike the forward and dQ walks, this is one loop with a per-tile (uniform) branch for the mask
    instead of one loop per masked/unmasked range: with the dK and dV accumulators both live in
    registers, separate loops pushed the kernel into register spills on sm_90."""
    offs_d = tl.arange(0, BLOCK_D)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        q = _load_rows(q_base, offs_m, offs_d, stride_qt, T_Q, HEAD_DIM, BLOCK_D, True, UPCAST)
        do = _load_rows(do_base, offs_m, offs_d, stride_dot, T_Q, HEAD_DIM, BLOCK_D, True, UPCAST)
        lse = tl.load(lse_row + offs_m, mask=offs_m < T_Q, other=float("inf"))  # +inf: p = 0
        delta = tl.load(delta_row + offs_m, mask=offs_m < T_Q, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.math.exp2(s_t - lse[None, :])  # recomputed probabilities, from the saved LSE
        if (m0 < full_start) | (m0 >= full_end):  # a partly visible tile
            q_pos = T_K - T_Q + offs_m
            doc_q = q_pos
            if HAS_DOCS:
                doc_q = tl.load(doc_row + q_pos, mask=offs_m < T_Q, other=0)
            vis = _visible(
                q_pos[None, :], offs_n[:, None], doc_q[None, :], doc_k[:, None], T_K, WINDOW,
                CAUSAL, HAS_DOCS, HAS_WINDOW,
            )  # fmt: skip
            p_t = tl.where(vis & (offs_m[None, :] < T_Q), p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    DOC,
    TOK_LO,
    TOK_HI,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_dob,
    stride_doh,
    stride_dot,
    stride_dkb,
    stride_dkh,
    stride_dkt,
    stride_dvb,
    stride_dvh,
    stride_dvt,
    H_Q,
    H_KV,
    GROUP,
    T_Q,
    T_K,
    WINDOW,
    qk_scale,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program = one key tile of one (batch, K/V head); it loops over the ``GROUP`` query heads that
    share the K/V head and over their visible query tiles, so dK/dV need neither atomics nor a copy."""
    n0 = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = (bh // H_KV).to(tl.int64)
    h_kv = (bh % H_KV).to(tl.int64)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(
        K + b * stride_kb + h_kv * stride_kh, offs_n, offs_d, stride_kt, T_K, HEAD_DIM, BLOCK_D, True, UPCAST
    )
    v = _load_rows(
        V + b * stride_vb + h_kv * stride_vh, offs_n, offs_d, stride_vt, T_K, HEAD_DIM, BLOCK_D, True, UPCAST
    )
    doc_row = DOC + b * T_K
    doc_k = offs_n
    if HAS_DOCS:
        doc_k = tl.load(doc_row + offs_n, mask=offs_n < T_K, other=0)
    start, full_start, full_end, end = _query_tiles(
        n0,
        T_Q,
        T_K,
        WINDOW,
        TOK_LO + b * T_K,
        TOK_HI + b * T_K,
        BLOCK_M,
        BLOCK_N,
        CAUSAL,
        HAS_DOCS,
        HAS_WINDOW,
    )
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for g in range(GROUP):
        h = h_kv * GROUP + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        lse_row = LSE + (b * H_Q + h) * T_Q
        delta_row = DELTA + (b * H_Q + h) * T_Q
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, offs_n, doc_k, q_base, do_base, lse_row, delta_row, doc_row, stride_qt, stride_dot,
            start, full_start, full_end, end, T_Q, T_K, WINDOW, qk_scale,
            BLOCK_M, HEAD_DIM, BLOCK_D, CAUSAL, HAS_DOCS, HAS_WINDOW, UPCAST, PRECISION,
        )  # fmt: skip
    _store_rows(
        DK + b * stride_dkb + h_kv * stride_dkh,
        dk * sm_scale,
        offs_n,
        offs_d,
        stride_dkt,
        T_K,
        HEAD_DIM,
        BLOCK_D,
    )
    _store_rows(
        DV + b * stride_dvb + h_kv * stride_dvh, dv, offs_n, offs_d, stride_dvt, T_K, HEAD_DIM, BLOCK_D
    )


@triton.jit
def _dq_tiles(
    dq,
    q,
    do,
    lse,
    delta,
    q_pos,
    doc_q,
    k_base,
    v_base,
    doc_row,
    stride_kt,
    stride_vt,
    start,
    end,
    T_K,
    WINDOW,
    qk_scale,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Accumulate dQ of one query tile over key tiles ``[start, end)``."""
    offs_d = tl.arange(0, BLOCK_D)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, offs_d, stride_kt, T_K, HEAD_DIM, BLOCK_D, MASKED, UPCAST)
        v = _load_rows(v_base, offs_n, offs_d, stride_vt, T_K, HEAD_DIM, BLOCK_D, MASKED, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            doc_k = offs_n
            if HAS_DOCS:
                doc_k = tl.load(doc_row + offs_n, mask=offs_n < T_K, other=0)
            vis = _visible(
                q_pos[:, None], offs_n[None, :], doc_q[:, None], doc_k[None, :], T_K, WINDOW,
                CAUSAL, HAS_DOCS, HAS_WINDOW,
            )  # fmt: skip
            p = tl.where(vis, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    DOC,
    TOK_LO,
    TOK_HI,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_dob,
    stride_doh,
    stride_dot,
    stride_dqb,
    stride_dqh,
    stride_dqt,
    H_Q,
    GROUP,
    T_Q,
    T_K,
    WINDOW,
    qk_scale,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program = one query tile of one (batch, query head); same tile walk as the forward."""
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // H_Q).to(tl.int64)
    h = (bh % H_Q).to(tl.int64)
    h_kv = h // GROUP
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    doc_row = DOC + b * T_K
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_pos = T_K - T_Q + offs_m
    q = _load_rows(
        Q + b * stride_qb + h * stride_qh, offs_m, offs_d, stride_qt, T_Q, HEAD_DIM, BLOCK_D, True, UPCAST
    )
    do = _load_rows(
        DO + b * stride_dob + h * stride_doh, offs_m, offs_d, stride_dot, T_Q, HEAD_DIM, BLOCK_D, True, UPCAST
    )
    lse = tl.load(LSE + bh.to(tl.int64) * T_Q + offs_m, mask=offs_m < T_Q, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * T_Q + offs_m, mask=offs_m < T_Q, other=0.0)
    doc_q = q_pos
    if HAS_DOCS:
        doc_q = tl.load(doc_row + q_pos, mask=offs_m < T_Q, other=0)
    start, full_start, full_end, end = _key_tiles(
        m0,
        T_Q,
        T_K,
        WINDOW,
        TOK_LO + b * T_K,
        TOK_HI + b * T_K,
        BLOCK_M,
        BLOCK_N,
        CAUSAL,
        HAS_DOCS,
        HAS_WINDOW,
    )
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_DOCS or HAS_WINDOW:
        dq = _dq_tiles(
            dq, q, do, lse, delta, q_pos, doc_q, k_base, v_base, doc_row, stride_kt, stride_vt,
            start, full_start, T_K, WINDOW, qk_scale,
            BLOCK_N, HEAD_DIM, BLOCK_D, True, CAUSAL, HAS_DOCS, HAS_WINDOW, UPCAST, PRECISION,
        )  # fmt: skip
    if not HAS_DOCS:
        dq = _dq_tiles(
            dq, q, do, lse, delta, q_pos, doc_q, k_base, v_base, doc_row, stride_kt, stride_vt,
            full_start, full_end, T_K, WINDOW, qk_scale,
            BLOCK_N, HEAD_DIM, BLOCK_D, False, CAUSAL, HAS_DOCS, HAS_WINDOW, UPCAST, PRECISION,
        )  # fmt: skip
        dq = _dq_tiles(
            dq, q, do, lse, delta, q_pos, doc_q, k_base, v_base, doc_row, stride_kt, stride_vt,
            full_end, end, T_K, WINDOW, qk_scale,
            BLOCK_N, HEAD_DIM, BLOCK_D, True, CAUSAL, HAS_DOCS, HAS_WINDOW, UPCAST, PRECISION,
        )  # fmt: skip
    _store_rows(
        DQ + b * stride_dqb + h * stride_dqh,
        dq * sm_scale,
        offs_m,
        offs_d,
        stride_dqt,
        T_Q,
        HEAD_DIM,
        BLOCK_D,
    )


# ============================================================================================ launchers
def _doc_extents(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each token, the first position and one past the last position of its document in its row,
    ``(B, Tk)`` int32 each. Keys outside that extent cannot share the token's document, so the kernels
    skip tiles outside the union of their rows' extents. Works for any id layout (a document need not be
    one contiguous run) and stays on the device (no host sync)."""
    B, T = doc_ids.shape
    sorted_ids, order = doc_ids.sort(dim=1, stable=True)
    starts = torch.ones_like(sorted_ids, dtype=torch.long)
    starts[:, 1:] = (sorted_ids[:, 1:] != sorted_ids[:, :-1]).long()
    group = torch.empty_like(starts).scatter_(1, order, starts.cumsum(1) - 1)  # (B, T) document index
    pos = torch.arange(T, device=doc_ids.device).expand(B, T)
    first = torch.full((B, T), T, device=doc_ids.device).scatter_reduce(1, group, pos, "amin")
    last = torch.full((B, T), -1, device=doc_ids.device).scatter_reduce(1, group, pos, "amax")
    return first.gather(1, group).int().contiguous(), (last.gather(1, group) + 1).int().contiguous()


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The kernels take any batch/head/time strides but need unit stride along the head dim."""
    return x if x.stride(-1) == 1 else x.contiguous()


# Whether the kernels were jitted for the interpreter (decided when triton first read TRITON_INTERPRET).
# Read once here: ``torch.compile`` cannot trace triton's C++ knob lookup, and the answer cannot change.
_INTERPRETER = bool(triton.knobs.runtime.interpret)


def check_dtype(dtype: torch.dtype, arch: str | None) -> None:
    """Raise unless ``attention_triton`` takes inputs of ``dtype`` when launched for ``arch`` (``sm80`` /
    ``sm90`` or ``cuda``: a GPU's tiles; None: the interpreter's). A pure function of the two, so the tests can ask it
    what a GPU run would accept without a GPU.

    fp32 runs only on the interpreter's tiles: on a GPU, full-precision fp32 dots run on CUDA cores and
    spill heavily at these tile sizes (measured), and TF32 would silently lose precision."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"attention_triton: inputs must be float16, bfloat16 or float32; got {dtype}")
    if arch is not None and dtype == torch.float32:
        raise ValueError(
            f"attention_triton on a GPU ({arch} tiles) takes float16 or bfloat16 inputs (it accumulates in "
            "fp32); for float32 use attention_reference (FASTGPT_ATTENTION=sdpa)"
        )


def _check_inputs(q, k, v, doc_ids, window) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "attention_triton: q, k, v must be 4-D (B, H, T, D); "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, Hq, Tq, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"attention_triton: k and v must be (B={B}, Hkv, Tk, D={D}); got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if Hq % k.shape[1] != 0:
        raise ValueError(
            f"attention_triton: query heads ({Hq}) must be a multiple of key/value heads ({k.shape[1]})"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(
            f"attention_triton: q, k, v must share one dtype of float16/bfloat16/float32; "
            f"got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError("attention_triton: q, k, v must be on one device")
    padded_head_dim(D)
    check_dtype(q.dtype, "cuda" if q.is_cuda else forced_arch())  # what the launcher targets
    if q.device.type != "cuda" and not _INTERPRETER:
        raise RuntimeError(
            "attention_triton on CPU tensors runs only under the Triton interpreter: set TRITON_INTERPRET=1 "
            "before triton is imported (or use fastgpt.ops with the torch backend)"
        )
    if window is not None and window < 1:
        raise ValueError(f"attention_triton: window must be >= 1 token; got {window}")
    if doc_ids is not None:
        if tuple(doc_ids.shape) != (B, k.shape[2]):
            raise ValueError(
                f"attention_triton: doc_ids must be (B, Tk) = ({B}, {k.shape[2]}); got {tuple(doc_ids.shape)}"
            )
        if Tq > k.shape[2]:
            raise ValueError(f"attention_triton: doc_ids need Tq <= Tk; got Tq={Tq}, Tk={k.shape[2]}")


def _kernel_flags(q: torch.Tensor, causal: bool, has_docs: bool, window: int | None) -> dict:
    """The constexpr arguments every attention kernel takes."""
    return dict(
        HEAD_DIM=q.shape[-1],
        BLOCK_D=padded_head_dim(q.shape[-1]),
        CAUSAL=causal,
        HAS_DOCS=has_docs,
        HAS_WINDOW=window is not None,
        UPCAST=q.dtype == torch.bfloat16 and not q.is_cuda,  # the interpreter's bf16 arithmetic is wrong
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 (interpreter only): exact dots
    )


def _tiles_for(q: torch.Tensor) -> dict[str, TileConfig]:
    return tile_configs(q.shape[-1], launch_arch(q.device))


def _attention_forward(q, k, v, docs, causal, window, scale, tiles, flags):
    """Launch the forward kernel; returns ``o (B, Hq, Tq, D)`` and ``lse (B, Hq, Tq)`` fp32 (log2)."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Tq), dtype=torch.float32, device=q.device)
    doc, tok_lo, tok_hi = docs if docs is not None else (lse, lse, lse)  # unused placeholders
    cfg = tiles["fwd"]
    grid = (triton.cdiv(Tq, cfg.block_m), B * Hq)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse, doc, tok_lo, tok_hi,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        Hq, Hq // Hkv, Tq, Tk, window or 0, scale * _LOG2E,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **flags,
    )  # fmt: skip
    return o, lse


_LOG2E = 1.4426950408889634


def _attention_backward(q, k, v, o, lse, do, docs, window, scale, tiles, flags):
    """Launch delta, dK/dV and dQ kernels; gradients come back in the inputs' dtypes."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    delta = torch.empty_like(lse)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    doc, tok_lo, tok_hi = docs if docs is not None else (lse, lse, lse)  # unused placeholders
    _attn_bwd_preprocess_kernel[(triton.cdiv(Tq, _PREPROCESS_BLOCK_M), B * Hq)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], Hq, Tq,
        HEAD_DIM=D, BLOCK_D=flags["BLOCK_D"], BLOCK_M=_PREPROCESS_BLOCK_M,
    )  # fmt: skip
    scales = (scale * _LOG2E, scale)
    cfg = tiles["bwd_dkdv"]
    _attn_bwd_dkdv_kernel[(triton.cdiv(Tk, cfg.block_n), B * Hkv)](
        q, k, v, do, lse, delta, dk, dv, doc, tok_lo, tok_hi,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
        Hq, Hkv, Hq // Hkv, Tq, Tk, window or 0, *scales,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **flags,
    )  # fmt: skip
    cfg = tiles["bwd_dq"]
    _attn_bwd_dq_kernel[(triton.cdiv(Tq, cfg.block_m), B * Hq)](
        q, k, v, do, lse, delta, dq, doc, tok_lo, tok_hi,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
        Hq, Hq // Hkv, Tq, Tk, window or 0, *scales,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **flags,
    )  # fmt: skip
    return dq, dk, dv


# ``torch.ops.fastgpt.flash_attention`` (forward: output and log-sum-exp) and
# ``torch.ops.fastgpt.flash_attention_backward`` (dQ, dK, dV): torch custom ops with fake implementations
# (``torch.compile`` traces through them without a graph break) and the backward registered as the
# forward's autograd. Document ids and their extents are computed by the caller (plain torch ops, which
# compile too) and passed to both.
@torch.library.custom_op("fastgpt::flash_attention", mutates_args=())
def _flash_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc: torch.Tensor | None,
    tok_lo: torch.Tensor | None,
    tok_hi: torch.Tensor | None,
    causal: bool,
    window: int | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ``(o (B, Hq, Tq, D) like q, lse (B, Hq, Tq) fp32, log2 units)``."""
    q, k, v = _rows_contiguous(q), _rows_contiguous(k), _rows_contiguous(v)
    docs = None if doc is None else (doc, tok_lo, tok_hi)
    flags = _kernel_flags(q, causal, docs is not None, window)
    return _attention_forward(q, k, v, docs, causal, window, scale, _tiles_for(q), flags)


@_flash_attention_op.register_fake
def _(q, k, v, doc, tok_lo, tok_hi, causal, window, scale):
    B, Hq, Tq, _ = q.shape
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    return o, torch.empty((B, Hq, Tq), dtype=torch.float32, device=q.device)


@torch.library.custom_op("fastgpt::flash_attention_backward", mutates_args=())
def _flash_attention_backward_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    doc: torch.Tensor | None,
    tok_lo: torch.Tensor | None,
    tok_hi: torch.Tensor | None,
    causal: bool,
    window: int | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> ``(dq, dk, dv)`` in the inputs' dtypes."""
    q, k, v = _rows_contiguous(q), _rows_contiguous(k), _rows_contiguous(v)
    docs = None if doc is None else (doc, tok_lo, tok_hi)
    flags = _kernel_flags(q, causal, docs is not None, window)
    return _attention_backward(
        q, k, v, o, lse, _rows_contiguous(do), docs, window, scale, _tiles_for(q), flags
    )


@_flash_attention_backward_op.register_fake
def _(do, q, k, v, o, lse, doc, tok_lo, tok_hi, causal, window, scale):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


def _flash_attention_setup(ctx, inputs, output):
    q, k, v, doc, tok_lo, tok_hi, causal, window, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], doc, tok_lo, tok_hi)
    ctx.attrs = (causal, window, scale)


def _flash_attention_grad(ctx, do, _dlse):
    q, k, v, o, lse, doc, tok_lo, tok_hi = ctx.saved_tensors
    dq, dk, dv = torch.ops.fastgpt.flash_attention_backward(
        do, q, k, v, o, lse, doc, tok_lo, tok_hi, *ctx.attrs
    )
    return dq, dk, dv, None, None, None, None, None, None


_flash_attention_op.register_autograd(_flash_attention_grad, setup_context=_flash_attention_setup)


def attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    doc_ids: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Flash attention in Triton: q ``(B, Hq, Tq, D)``, k/v ``(B, Hkv, Tk, D)`` -> ``(B, Hq, Tq, D)``.

    Same semantics as :func:`attention_reference`. Head dims 32, 64, 96, 128; any sequence lengths;
    float16/bfloat16 with fp32 accumulation (float32 too on the interpreter's tiles, for tests; see
    :func:`check_dtype`). Differentiable in q, k and v; runs ``torch.ops.fastgpt.flash_attention``, which
    ``torch.compile`` traces without a graph break.
    """
    _check_inputs(q, k, v, doc_ids, window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    doc = tok_lo = tok_hi = None
    if doc_ids is not None:
        doc = doc_ids.to(torch.int32).contiguous()
        tok_lo, tok_hi = _doc_extents(doc_ids)
    return torch.ops.fastgpt.flash_attention(q, k, v, doc, tok_lo, tok_hi, causal, window, scale)[0]


# ================================================================================= ahead-of-time builds
_TRITON_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_ARCH_CAPABILITY = {"sm80": 80, "sm90": 90}
# Feature variants compiled by the build check: every combination the model launches (it is always causal:
# plain for inference and unpacked rows, documents for packed pretraining/SFT rows, a window for
# sliding-window models, both), and non-causal (encoders, reward heads calling attention_triton directly).
_AOT_VARIANTS = {
    "causal": dict(CAUSAL=True, HAS_DOCS=False, HAS_WINDOW=False),
    "causal+docs": dict(CAUSAL=True, HAS_DOCS=True, HAS_WINDOW=False),
    "causal+window": dict(CAUSAL=True, HAS_DOCS=False, HAS_WINDOW=True),
    "causal+docs+window": dict(CAUSAL=True, HAS_DOCS=True, HAS_WINDOW=True),
    "noncausal": dict(CAUSAL=False, HAS_DOCS=False, HAS_WINDOW=False),
}
_KERNELS = {
    "attn_fwd": ("fwd", _attn_fwd_kernel),
    "attn_bwd_dkdv": ("bwd_dkdv", _attn_bwd_dkdv_kernel),
    "attn_bwd_dq": ("bwd_dq", _attn_bwd_dq_kernel),
}


def _aot_signature(fn, dtype: str, constexprs: dict) -> dict[str, str]:
    """Argument types as the launcher passes them (tensor element types, i32 sizes/strides, fp32 scales).
    Without documents the launcher passes the fp32 LSE as placeholder document pointers (never read)."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("LSE", "DELTA"):
            sig[name] = "*fp32"
        elif name in ("DOC", "TOK_LO", "TOK_HI"):
            sig[name] = "*i32" if constexprs.get("HAS_DOCS") else "*fp32"
        elif name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV"):
            sig[name] = f"*{dtype}"
        elif name in ("qk_scale", "sm_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _aot_attrs(fn, signature: dict[str, str]) -> dict:
    """16-byte divisibility of pointers and strides, as the JIT assumes for aligned torch tensors."""
    aligned = [
        i for i, name in enumerate(fn.arg_names) if signature[name].startswith("*") or "stride" in name
    ]
    return {(i,): [["tt.divisibility", 16]] for i in aligned}


def _aot_entry(name: str, fn, dtype: str, constexprs: dict, options: dict, archs: list[int]) -> dict:
    """One entry in the format of kernels/build_check.py, plus the keys it may use: ``attrs`` (pass to
    ``ASTSource`` to compile what the JIT compiles), ``archs`` (where the launcher picks this entry) and
    ``tensor_cores`` (the kernel's ``tl.dot`` must become HGMMA/HMMA: the build check fails otherwise)."""
    signature = _aot_signature(fn, dtype, constexprs)
    return {
        "name": name,
        "fn": fn,
        "signature": signature,
        "constexprs": constexprs,
        **options,  # num_warps, num_stages
        "attrs": _aot_attrs(fn, signature),
        "archs": archs,
        "tensor_cores": fn is not _attn_bwd_preprocess_kernel,
    }


def aot_configs() -> list[dict]:
    """Every compiled configuration the launcher can pick on a GPU: kernel x head dim x dtype x arch
    family's tiles x feature variant, plus the delta preprocess kernel per head dim and dtype."""
    entries = []
    for dtype in _TRITON_DTYPES:
        for head_dim in SUPPORTED_HEAD_DIMS:
            block_d = padded_head_dim(head_dim)
            constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=_PREPROCESS_BLOCK_M)
            entries.append(
                _aot_entry(
                    f"attn_bwd_preprocess d{head_dim} {dtype} M{_PREPROCESS_BLOCK_M}",
                    _attn_bwd_preprocess_kernel,
                    dtype,
                    constexprs,
                    dict(num_warps=4, num_stages=3),  # the launcher passes neither: triton's defaults
                    [80, 90],
                )  # fmt: skip
            )
            for arch, capability in _ARCH_CAPABILITY.items():
                tiles = tile_configs(head_dim, arch)
                for kernel, (role, fn) in _KERNELS.items():
                    cfg = tiles[role]
                    for variant, flags in _AOT_VARIANTS.items():
                        constexprs = dict(
                            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                            UPCAST=False, PRECISION="tf32", **flags,
                        )  # fmt: skip
                        name = (
                            f"{kernel} d{head_dim} {dtype} {arch}-tiles M{cfg.block_m} N{cfg.block_n} "
                            f"w{cfg.num_warps} s{cfg.num_stages} {variant}"
                        )
                        options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                        entries.append(_aot_entry(name, fn, dtype, constexprs, options, [capability]))
    return entries


AOT_CONFIGS = aot_configs()
_ROLES = {fn.fn.__name__ if hasattr(fn, "fn") else fn.__name__: role for role, fn in _KERNELS.values()}


def aot_gpu_launch(launch, arch: int):
    """What a GPU of ``arch`` (80 or 90) launches for the call recorded as ``launch`` (a
    :class:`fastgpt.kernels._launches.Launch`, recorded under the interpreter or on any GPU): the arch
    family's tiles for the kernel's role and head dim, no interpreter upcast, and nothing at all for fp32
    inputs (``fastgpt.ops`` sends fp32 attention on CUDA to SDPA; ``check_dtype`` refuses it)."""
    from dataclasses import replace

    types = dict(launch.signature)
    if types.get("Q", types.get("O")) == "*fp32":  # every attention kernel takes Q, or O (preprocess)
        return None
    constexprs = dict(launch.constexprs)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    if "UPCAST" in constexprs:
        constexprs.update(UPCAST=False, PRECISION="tf32")
    role = _ROLES.get(launch.kernel)
    if role is not None:
        cfg = tile_configs(constexprs["HEAD_DIM"], {80: "sm80", 90: "sm90"}[arch])[role]
        constexprs.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n)
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    return replace(launch, constexprs=tuple(constexprs.items()), **options)


# ========================================================================================== flash-attn
def doc_ids_to_cu_seqlens(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Packed rows ``(B, T)`` -> flash-attn varlen boundaries over the ``B * T`` flattened tokens.

    Each maximal run of equal ids in a row is one sequence. Returns ``cu_seqlens`` (int32, ``(n + 1,)``)
    and the longest run. A document id that reappears later in its row cannot be expressed this way
    (the runs would not see each other, unlike in :func:`attention_reference`): that is an error.
    """
    B, T = doc_ids.shape
    run_start = torch.ones(B, T, dtype=torch.bool, device=doc_ids.device)
    run_start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    sorted_ids = doc_ids.sort(dim=1).values
    distinct = (sorted_ids[:, 1:] != sorted_ids[:, :-1]).sum(1) + 1
    if not torch.equal(run_start.sum(1), distinct):
        raise ValueError(
            "attention_flash_attn: doc_ids must mark each document as one contiguous run per row "
            "(an id reappears after another document); use attention_triton or attention_reference"
        )
    starts = run_start.flatten().nonzero().flatten()
    cu_seqlens = torch.cat([starts, starts.new_tensor([B * T])]).to(torch.int32)
    return cu_seqlens, int(cu_seqlens.diff().max())


def attention_flash_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    doc_ids: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The ``flash-attn`` package (``pip install 'fastgpt[gpu]'``) behind the same signature, for
    benchmarks. CUDA and fp16/bf16 only; flash-attn has the same bottom-right causal alignment and GQA.
    Documents go through its varlen entry point (``Tq == Tk``, each document one contiguous run).
    Untested here: the development machines have no GPU (see docs/attention.md)."""
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func
    except ImportError as err:
        raise ImportError(
            "attention_flash_attn needs the flash-attn package on a CUDA machine: pip install 'fastgpt[gpu]'"
        ) from err
    if not q.is_cuda:
        raise RuntimeError("attention_flash_attn runs on CUDA tensors only")
    # ours: key k is visible from position p when p - window < k (<= p if causal); flash-attn: (left, right)
    window_size = (-1, -1) if window is None else (window - 1, 0 if causal else -1)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, T, H, D): flash-attn's layout
    if doc_ids is None:
        out = flash_attn_func(qt, kt, vt, softmax_scale=scale, causal=causal, window_size=window_size)
        return out.transpose(1, 2)
    B, Tq = q.shape[0], q.shape[2]
    if Tq != k.shape[2]:
        raise NotImplementedError(
            "attention_flash_attn: doc_ids with Tq != Tk (KV-cache decode) is not supported"
        )
    cu_seqlens, max_len = doc_ids_to_cu_seqlens(doc_ids)
    out = flash_attn_varlen_func(
        qt.reshape(B * Tq, *qt.shape[2:]), kt.reshape(B * Tq, *kt.shape[2:]), vt.reshape(B * Tq, *vt.shape[2:]),
        cu_seqlens, cu_seqlens, max_len, max_len,
        softmax_scale=scale, causal=causal, window_size=window_size,
    )  # fmt: skip
    return out.view(B, Tq, *out.shape[1:]).transpose(1, 2)
