"""Backward kernels of the Triton flash attention (FlashAttention-2 scheme): ``delta = rowsum(dO * O)``,
one program per key tile for dK/dV (looping over the query heads that share the K/V head, so GQA needs
no copy and no atomics) and one per query tile for dQ, all recomputing the probabilities from the
forward's log-sum-exp. The forward and the entry point are in ``attention.py``; see docs/attention.md.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastgpt.kernels._attention_tiles import (
    _LOG2E,
    _PREPROCESS_BLOCK_M,
    SUPPORTED_HEAD_DIMS,
    _key_walk,
    _keys_visible,
    _load_rows,
    _program_tile,
    _query_rows,
    _query_walk,
    _store_rows,
    _visible,
    aot_gpu_launch,
    attention_aot_config,
    padded_head_dim,
    tiled_aot_configs,
)

__all__ = ["AOT_CONFIGS", "aot_gpu_launch"]


@triton.jit
def _attn_bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_ot,
    stride_dob, stride_doh, stride_dot,
    H_Q, T_Q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """``delta = rowsum(dO * O)`` in fp32: the softmax-Jacobian term both gradient kernels need."""
    m0, bh, b, h = _program_tile(H_Q, BLOCK_M)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o_base = O + b * stride_ob + h * stride_oh
    do_base = DO + b * stride_dob + h * stride_doh
    o = _load_rows(o_base, offs_m, offs_d, stride_ot, T_Q, HEAD_DIM, BLOCK_D, True, True)
    do = _load_rows(do_base, offs_m, offs_d, stride_dot, T_Q, HEAD_DIM, BLOCK_D, True, True)
    tl.store(DELTA + bh.to(tl.int64) * T_Q + offs_m, tl.sum(o * do, 1), mask=offs_m < T_Q)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, offs_n, doc_k,
    q_base, do_base, lse_row, delta_row, doc_row, stride_qt, stride_dot,
    start, full_start, full_end, end, T_Q, T_K, WINDOW, qk_scale,
    BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
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
    Q, K, V, DO, LSE, DELTA, DK, DV, DOCS,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    H_Q, H_KV, GROUP, T_Q, T_K, WINDOW, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program = one key tile of one (batch, K/V head); it loops over the ``GROUP`` query heads that
    share the K/V head and over their visible query tiles, so dK/dV need neither atomics nor a copy."""
    n0, bh, b, h_kv = _program_tile(H_KV, BLOCK_N)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(
        K + b * stride_kb + h_kv * stride_kh, offs_n, offs_d, stride_kt, T_K, HEAD_DIM, BLOCK_D, True, UPCAST
    )
    v = _load_rows(
        V + b * stride_vb + h_kv * stride_vh, offs_n, offs_d, stride_vt, T_K, HEAD_DIM, BLOCK_D, True, UPCAST
    )
    doc_row = DOCS + b * 4 * T_K  # document_extents of this row; plane 0 identifies the document
    doc_k = offs_n
    if HAS_DOCS:
        doc_k = tl.load(doc_row + offs_n, mask=offs_n < T_K, other=0)
    start, full_start, full_end, end = _query_walk(
        n0, doc_row, T_Q, T_K, WINDOW, BLOCK_N, BLOCK_M, CAUSAL, HAS_DOCS, HAS_WINDOW
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
    dq, q, do, lse, delta, q_pos, doc_q,
    k_base, v_base, doc_row, stride_kt, stride_vt,
    start, end, T_K, WINDOW, qk_scale,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Accumulate dQ of one query tile over key tiles ``[start, end)``."""
    offs_d = tl.arange(0, BLOCK_D)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, offs_d, stride_kt, T_K, HEAD_DIM, BLOCK_D, MASKED, UPCAST)
        v = _load_rows(v_base, offs_n, offs_d, stride_vt, T_K, HEAD_DIM, BLOCK_D, MASKED, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            vis = _keys_visible(q_pos, doc_q, offs_n, doc_row, T_K, WINDOW, CAUSAL, HAS_DOCS, HAS_WINDOW)
            p = tl.where(vis, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, DOCS,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    H_Q, GROUP, T_Q, T_K, WINDOW, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program = one query tile of one (batch, query head); same tile walk as the forward."""
    m0, bh, b, h = _program_tile(H_Q, BLOCK_M)
    h_kv = h // GROUP
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh
    offs_m, q_pos, doc_row, doc_q = _query_rows(DOCS, b, m0, T_Q, T_K, BLOCK_M, HAS_DOCS)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(
        Q + b * stride_qb + h * stride_qh, offs_m, offs_d, stride_qt, T_Q, HEAD_DIM, BLOCK_D, True, UPCAST
    )
    do = _load_rows(
        DO + b * stride_dob + h * stride_doh, offs_m, offs_d, stride_dot, T_Q, HEAD_DIM, BLOCK_D, True, UPCAST
    )
    lse = tl.load(LSE + bh.to(tl.int64) * T_Q + offs_m, mask=offs_m < T_Q, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * T_Q + offs_m, mask=offs_m < T_Q, other=0.0)
    start, full_start, full_end, end = _key_walk(  # the forward's key tiles
        m0, doc_row, T_Q, T_K, WINDOW, BLOCK_M, BLOCK_N, CAUSAL, HAS_DOCS, HAS_WINDOW
    )
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if HAS_DOCS or HAS_WINDOW:
        dq = _dq_tiles(
            dq, q, do, lse, delta, q_pos, doc_q, k_base, v_base, doc_row, stride_kt, stride_vt,
            start, full_start, T_K, WINDOW, qk_scale,
            BLOCK_N, HEAD_DIM, BLOCK_D, True, CAUSAL, HAS_DOCS, HAS_WINDOW, UPCAST, PRECISION,
        )  # fmt: skip
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


def _attention_backward(q, k, v, o, lse, do, docs, window, scale, tiles, flags):
    """Launch delta, dK/dV and dQ kernels; gradients come back in the inputs' dtypes."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    delta = torch.empty_like(lse)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    docs = lse if docs is None else docs  # never read without documents
    _attn_bwd_preprocess_kernel[(triton.cdiv(Tq, _PREPROCESS_BLOCK_M), B * Hq)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], Hq, Tq,
        HEAD_DIM=D, BLOCK_D=flags["BLOCK_D"], BLOCK_M=_PREPROCESS_BLOCK_M,
    )  # fmt: skip
    scales = (scale * _LOG2E, scale)
    cfg = tiles["bwd_dkdv"]
    _attn_bwd_dkdv_kernel[(triton.cdiv(Tk, cfg.block_n), B * Hkv)](
        q, k, v, do, lse, delta, dk, dv, docs,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
        Hq, Hkv, Hq // Hkv, Tq, Tk, window or 0, *scales,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **flags,
    )  # fmt: skip
    cfg = tiles["bwd_dq"]
    _attn_bwd_dq_kernel[(triton.cdiv(Tq, cfg.block_m), B * Hq)](
        q, k, v, do, lse, delta, dq, docs,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dq.stride()[:3],
        Hq, Hq // Hkv, Tq, Tk, window or 0, *scales,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **flags,
    )  # fmt: skip
    return dq, dk, dv


# ================================================================================= ahead-of-time builds
def _preprocess_aot_configs() -> list[dict]:
    """The delta kernel per head dim and dtype, with triton's default options (the launcher passes none)."""
    return [
        attention_aot_config(
            f"attn_bwd_preprocess d{head_dim} {dtype} M{_PREPROCESS_BLOCK_M}",
            _attn_bwd_preprocess_kernel,
            dtype,
            dict(HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim), BLOCK_M=_PREPROCESS_BLOCK_M),
            num_warps=4,
            num_stages=3,
            archs=[80, 90],
        )
        for dtype in ("bf16", "fp16")
        for head_dim in SUPPORTED_HEAD_DIMS
    ]


AOT_CONFIGS = (
    _preprocess_aot_configs()
    + tiled_aot_configs("attn_bwd_dkdv", _attn_bwd_dkdv_kernel)
    + tiled_aot_configs("attn_bwd_dq", _attn_bwd_dq_kernel)
)
