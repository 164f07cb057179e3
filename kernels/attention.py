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

This file holds the forward kernel and the entry point; the backward kernels are in
``attention_backward.py``, the pieces both share (tile sizes, the tile-range decision, document extents,
AOT lists) in ``_attention_tiles.py``. The ``flash-attn`` package's wrapper, another backend of
``fastgpt.ops.attention``, is ``attention_flash_attn.py``.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from fastgpt.kernels._attention_tiles import (
    _LOG2E,
    SUPPORTED_HEAD_DIMS,
    TileConfig,
    _kernel_flags,
    _key_walk,
    _keys_visible,
    _load_rows,
    _program_tile,
    _query_rows,
    _rows_contiguous,
    _store_rows,
    document_extents,
    padded_head_dim,
    tile_configs,
    tiled_aot_configs,
)
from fastgpt.kernels._attention_tiles import (
    aot_gpu_launch as _tiled_gpu_launch,
)
from fastgpt.kernels._target import arch_family, forced_arch, launch_arch
from fastgpt.kernels.attention_backward import _attention_backward
from triton.tools.tensor_descriptor import TensorDescriptor


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
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = True, doc_ids: torch.Tensor | None = None, window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:  # fmt: skip
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


__all__ = [
    "AOT_CONFIGS",
    "SUPPORTED_HEAD_DIMS",
    "TileConfig",
    "aot_gpu_launch",
    "arch_family",
    "attention_math",
    "attention_naive",
    "attention_reference",
    "attention_triton",
    "check_dtype",
    "check_inputs",
    "document_extents",
    "tile_configs",
]


# ======================================================================================= Triton kernels
@triton.jit
def _load_tile(
    base, b, h, row0, offs_t, offs_d, stride_t, n_rows,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr, CHECK_ROWS: tl.constexpr,
    UPCAST: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """Rows ``offs_t = row0 + arange(ROWS)`` of one head as a ``(ROWS, BLOCK_D)`` tile. With ``TMA``
    ``base`` is a ``(B, H, T, D)`` tensor descriptor read at batch ``b``, head ``h`` (int32; rows past ``T``
    arrive as 0, as the masked pointer loads give them); otherwise the head's base pointer, read by
    :func:`_load_rows` (``b``/``h`` unused)."""
    if TMA:
        x = base.load([b, h, row0, 0]).reshape(ROWS, BLOCK_D)
        if UPCAST:
            x = x.to(tl.float32)
    else:
        x = _load_rows(base, offs_t, offs_d, stride_t, n_rows, HEAD_DIM, BLOCK_D, CHECK_ROWS, UPCAST)
    return x


@triton.jit
def _fwd_tiles(
    acc, m_i, l_i, q, q_pos, doc_q,
    k_base, v_base, kv_b, kv_h, doc_row, stride_kt, stride_vt,
    start, end, gap_start, gap_end, T_K, WINDOW, qk_scale,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, SKIP_GAP: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """Online softmax over key tiles ``[start, end)``, less ``[gap_start, gap_end)`` when ``SKIP_GAP``;
    scores are in log2 units (``qk_scale`` folds in log2(e)), the running max ``m_i``, normaliser ``l_i``
    and output ``acc`` stay in fp32. The gap lets one loop cover the partly visible tiles on both sides
    of the fully visible ones: a third loop pushed the sm_80 head-dim-128 kernels into spills.
    ``k_base``/``v_base``: see :func:`_load_tile` (read at batch ``kv_b``, head ``kv_h`` with ``TMA``)."""
    offs_d = tl.arange(0, BLOCK_D)
    stop = end
    if SKIP_GAP:
        stop = end - (gap_end - gap_start)
    for j in range(start, stop, BLOCK_N):
        n0 = j
        if SKIP_GAP:
            n0 = tl.where(j >= gap_start, j + (gap_end - gap_start), j)
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = _load_tile(
            k_base, kv_b, kv_h, n0, offs_n, offs_d, stride_kt, T_K,
            HEAD_DIM, BLOCK_D, BLOCK_N, MASKED, UPCAST, TMA,
        )  # fmt: skip
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            vis = _keys_visible(q_pos, doc_q, offs_n, doc_row, T_K, WINDOW, CAUSAL, HAS_DOCS, HAS_WINDOW)
            s = tl.where(vis, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_ref = m_new
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(
            v_base, kv_b, kv_h, n0, offs_n, offs_d, stride_vt, T_K,
            HEAD_DIM, BLOCK_D, BLOCK_N, MASKED, UPCAST, TMA,
        )  # fmt: skip
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, DOCS,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    H_Q, GROUP, T_Q, T_K, WINDOW, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, HAS_WINDOW: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
):  # fmt: skip
    """One program = one query tile of one (batch, query head). Writes O and the row log-sum-exp (log2
    units; +inf for a row that sees no key, so the backward's probabilities come out as 0).

    ``TMA`` (the Hopper build): Q, K, V and O are host-made ``(B, H, T, D)`` tensor descriptors with
    ``[1, 1, rows, D]`` blocks, so every tile moves through the Tensor Memory Accelerator (bounds checked
    in hardware: rows past ``T`` load as 0 and are not stored); the strides are then unused. Everything
    else (tile walk, masks, online-softmax order, dots) is the same code as the pointer build."""
    m0, bh, b, h = _program_tile(H_Q, BLOCK_M)
    h_kv = h // GROUP  # GQA: the shared K/V head is indexed, never copied
    if TMA:
        q_base, k_base, v_base = Q, K, V
    else:
        q_base = Q + b * stride_qb + h * stride_qh
        k_base = K + b * stride_kb + h_kv * stride_kh
        v_base = V + b * stride_vb + h_kv * stride_vh
    offs_m, q_pos, doc_row, doc_q = _query_rows(DOCS, b, m0, T_Q, T_K, BLOCK_M, HAS_DOCS)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(
        q_base, b.to(tl.int32), h.to(tl.int32), m0, offs_m, offs_d, stride_qt, T_Q,
        HEAD_DIM, BLOCK_D, BLOCK_M, True, UPCAST, TMA,
    )  # fmt: skip

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    start, full_start, full_end, end = _key_walk(
        m0, doc_row, T_Q, T_K, WINDOW, BLOCK_M, BLOCK_N, CAUSAL, HAS_DOCS, HAS_WINDOW
    )
    if HAS_DOCS and HAS_WINDOW:  # every visited tile masked: an unmasked loop spills at sm_80 d96/d128
        full_start = end
        full_end = end
    else:
        acc, m_i, l_i = _fwd_tiles(  # fully visible tiles: no mask
            acc, m_i, l_i, q, q_pos, doc_q, k_base, v_base, b.to(tl.int32), h_kv.to(tl.int32), doc_row,
            stride_kt, stride_vt, full_start, full_end, full_end, full_end, T_K, WINDOW, qk_scale,
            BLOCK_N, HEAD_DIM, BLOCK_D, False, CAUSAL, HAS_DOCS, HAS_WINDOW, UPCAST, PRECISION, False, TMA,
        )  # fmt: skip
    # partly visible tiles: before the full range only with a window or documents (window edge,
    # document edges), after it always (diagonal, document edges, ragged end)
    masked_start = full_end
    if HAS_DOCS or HAS_WINDOW:
        masked_start = start
    acc, m_i, l_i = _fwd_tiles(
        acc, m_i, l_i, q, q_pos, doc_q, k_base, v_base, b.to(tl.int32), h_kv.to(tl.int32), doc_row,
        stride_kt, stride_vt, masked_start, end, full_start, full_end, T_K, WINDOW, qk_scale,
        BLOCK_N, HEAD_DIM, BLOCK_D, True, CAUSAL, HAS_DOCS, HAS_WINDOW, UPCAST, PRECISION,
        HAS_DOCS or HAS_WINDOW, TMA,
    )  # fmt: skip

    empty = l_i == 0.0  # no visible key: output 0, not 0/0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    if TMA:
        O.store([b.to(tl.int32), h.to(tl.int32), m0, 0], out.to(O.dtype).reshape(1, 1, BLOCK_M, BLOCK_D))
    else:
        _store_rows(O + b * stride_ob + h * stride_oh, out, offs_m, offs_d, stride_ot, T_Q, HEAD_DIM, BLOCK_D)
    tl.store(LSE + bh.to(tl.int64) * T_Q + offs_m, lse, mask=offs_m < T_Q)


# ============================================================================================ launchers
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


def check_inputs(op: str, q, k, v, doc_ids, window) -> None:
    """Raise unless ``op`` (this kernel or ``attention_decode``) can take q ``(B, Hq, Tq, D)`` and k/v
    ``(B, Hkv, Tk, D)``: GQA head counts, one dtype that :func:`check_dtype` accepts for the launch target,
    one device (CPU only under the interpreter), a supported head dim, ``window >= 1`` and ``doc_ids``
    ``(B, Tk)``. The messages name ``op``."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"{op}: q, k, v must be 4-D (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, Hq, Tq, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"{op}: k and v must be (B={B}, Hkv, Tk, D={D}); got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if Hq % k.shape[1] != 0:
        raise ValueError(f"{op}: query heads ({Hq}) must be a multiple of key/value heads ({k.shape[1]})")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{op}: q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{op}: q, k, v must be on one device")
    padded_head_dim(D, op)
    check_dtype(q.dtype, "cuda" if q.is_cuda else forced_arch())  # what the launcher targets
    if q.device.type != "cuda" and not _INTERPRETER:
        raise RuntimeError(
            f"{op} on CPU tensors runs only under the Triton interpreter: set TRITON_INTERPRET=1 "
            "before triton is imported (or use fastgpt.ops with the torch backend)"
        )
    if window is not None and window < 1:
        raise ValueError(f"{op}: window must be >= 1 token; got {window}")
    if doc_ids is not None and tuple(doc_ids.shape) != (B, k.shape[2]):
        raise ValueError(f"{op}: doc_ids must be (B, Tk) = ({B}, {k.shape[2]}); got {tuple(doc_ids.shape)}")


def _tiles_for(q: torch.Tensor) -> dict[str, TileConfig]:
    return tile_configs(q.shape[-1], launch_arch(q.device))


def tma_eligible(*tensors: torch.Tensor) -> bool:
    """Whether the forward can read/write ``tensors`` through TMA descriptors: the head dim is a tile
    width (32/64/128; head dim 96 would need the padded columns) and every base address and batch/head/
    time stride is a multiple of 16 bytes (the Tensor Memory Accelerator's rule)."""
    for t in tensors:
        size = t.element_size()
        if t.shape[-1] != padded_head_dim(t.shape[-1]) or t.stride(-1) != 1 or t.data_ptr() % 16:
            return False
        for n, stride in zip(t.shape[:3], _descriptor_strides(t)[:3]):
            if n > 1 and (stride <= 0 or (stride * size) % 16):  # broadcast (stride 0) dims too
                return False
    return True


def _descriptor_strides(x: torch.Tensor) -> list[int]:
    """``x``'s strides with those of size-1 dims (never stepped along; PyTorch leaves them arbitrary)
    replaced by the head dim, which is TMA-aligned."""
    return [stride if n > 1 else x.shape[-1] for n, stride in zip(x.shape, x.stride())]


def use_tma(q: torch.Tensor, *tensors: torch.Tensor) -> bool:
    """The launcher's rule: the TMA build of the forward on an sm_90 GPU (capability (9, 0)) whenever
    :func:`tma_eligible`; the pointer build everywhere else (it is the same kernel without descriptors).
    Under the interpreter the sm_90 GPU-tiles mode (``FASTGPT_KERNEL_ARCH=sm90``) runs it too, so that
    mode checks what an H100 runs. ``FASTGPT_ATTENTION_TMA=0`` turns it off (A/B benchmarks)."""
    if os.environ.get("FASTGPT_ATTENTION_TMA", "1") == "0":
        return False
    if q.is_cuda:
        hopper = torch.cuda.get_device_capability(q.device) == (9, 0)
    else:
        hopper = _INTERPRETER and forced_arch() == "sm90"
    return hopper and tma_eligible(q, *tensors)


def _descriptor(x: torch.Tensor, rows: int) -> TensorDescriptor:
    """``(B, H, T, D)`` tensor descriptor over ``x`` moving ``[1, 1, rows, D]`` blocks."""
    return TensorDescriptor(x, list(x.shape), _descriptor_strides(x), [1, 1, rows, x.shape[-1]])


def _attention_forward(q, k, v, docs, causal, window, scale, tiles, flags, tma: bool | None = None):
    """Launch the forward kernel; returns ``o (B, Hq, Tq, D)`` and ``lse (B, Hq, Tq)`` fp32 (log2).
    ``tma``: force the descriptor build on or off (None: :func:`use_tma`; the interpreter runs both)."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, Hq, Tq), dtype=torch.float32, device=q.device)
    docs = lse if docs is None else docs  # never read without documents
    cfg = tiles["fwd"]
    grid = (triton.cdiv(Tq, cfg.block_m), B * Hq)
    tma = use_tma(q, k, v, o) if tma is None else tma
    q_in, k_in, v_in, o_out = q, k, v, o
    if tma:
        q_in, o_out = _descriptor(q, cfg.block_m), _descriptor(o, cfg.block_m)
        k_in, v_in = _descriptor(k, cfg.block_n), _descriptor(v, cfg.block_n)
    _attn_fwd_kernel[grid](
        q_in, k_in, v_in, o_out, lse, docs,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        Hq, Hq // Hkv, Tq, Tk, window or 0, scale * _LOG2E,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        TMA=tma, **flags,
    )  # fmt: skip
    return o, lse


# ``torch.ops.fastgpt.flash_attention`` (forward: output and log-sum-exp) and
# ``torch.ops.fastgpt.flash_attention_backward`` (dQ, dK, dV): torch custom ops with fake implementations
# (``torch.compile`` traces through them without a graph break) and the backward registered as the
# forward's autograd. Document ids and their extents are computed by the caller (plain torch ops, which
# compile too) and passed to both.
@torch.library.custom_op("fastgpt::flash_attention", mutates_args=())
def _flash_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: torch.Tensor | None,
    causal: bool, window: int | None, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """-> ``(o (B, Hq, Tq, D) like q, lse (B, Hq, Tq) fp32, log2 units)``."""
    q, k, v = _rows_contiguous(q), _rows_contiguous(k), _rows_contiguous(v)
    flags = _kernel_flags(q, causal, docs is not None, window)
    return _attention_forward(q, k, v, docs, causal, window, scale, _tiles_for(q), flags)


@_flash_attention_op.register_fake
def _(q, k, v, docs, causal, window, scale):
    B, Hq, Tq, _ = q.shape
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    return o, torch.empty((B, Hq, Tq), dtype=torch.float32, device=q.device)


@torch.library.custom_op("fastgpt::flash_attention_backward", mutates_args=())
def _flash_attention_backward_op(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
    docs: torch.Tensor | None, causal: bool, window: int | None, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """-> ``(dq, dk, dv)`` in the inputs' dtypes."""
    q, k, v = _rows_contiguous(q), _rows_contiguous(k), _rows_contiguous(v)
    flags = _kernel_flags(q, causal, docs is not None, window)
    return _attention_backward(
        q, k, v, o, lse, _rows_contiguous(do), docs, window, scale, _tiles_for(q), flags
    )


@_flash_attention_backward_op.register_fake
def _(do, q, k, v, o, lse, docs, causal, window, scale):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


def _flash_attention_setup(ctx, inputs, output):
    q, k, v, docs, causal, window, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], docs)
    ctx.attrs = (causal, window, scale)


def _flash_attention_grad(ctx, do, _dlse):
    q, k, v, o, lse, docs = ctx.saved_tensors
    dq, dk, dv = torch.ops.fastgpt.flash_attention_backward(do, q, k, v, o, lse, docs, *ctx.attrs)
    return dq, dk, dv, None, None, None, None


_flash_attention_op.register_autograd(_flash_attention_grad, setup_context=_flash_attention_setup)


def attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = True, doc_ids: torch.Tensor | None = None, window: int | None = None,
    scale: float | None = None, doc_extents: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Flash attention in Triton: q ``(B, Hq, Tq, D)``, k/v ``(B, Hkv, Tk, D)`` -> ``(B, Hq, Tq, D)``.

    Same semantics as :func:`attention_reference`. Head dims 32, 64, 96, 128; any sequence lengths;
    float16/bfloat16 with fp32 accumulation (float32 too on the interpreter's tiles, for tests; see
    :func:`check_dtype`). Differentiable in q, k and v; runs ``torch.ops.fastgpt.flash_attention``, which
    ``torch.compile`` traces without a graph break.

    ``doc_extents`` is :func:`document_extents` of ``doc_ids``, computed here when not given: a model
    computes it once per forward and passes it to every layer (it is only read, never checked against
    ``doc_ids`` beyond its shape).
    """
    check_inputs("attention_triton", q, k, v, doc_ids, window)
    if doc_ids is not None and q.shape[2] > k.shape[2]:
        raise ValueError(f"attention_triton: doc_ids need Tq <= Tk; got Tq={q.shape[2]}, Tk={k.shape[2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    docs = None
    if doc_ids is not None:
        docs = document_extents(doc_ids) if doc_extents is None else doc_extents
        if tuple(docs.shape) != (q.shape[0], 4, k.shape[2]) or docs.dtype != torch.int32:
            raise ValueError(
                f"attention_triton: doc_extents must be document_extents(doc_ids), int32 (B, 4, Tk) = "
                f"({q.shape[0]}, 4, {k.shape[2]}); got {docs.dtype} {tuple(docs.shape)}"
            )
    return torch.ops.fastgpt.flash_attention(q, k, v, docs, causal, window, scale)[0]


# ================================================================================= ahead-of-time builds
_TMA_ROWS = {"Q": "BLOCK_M", "K": "BLOCK_N", "V": "BLOCK_N", "O": "BLOCK_M"}  # descriptor -> block rows


def _tensordesc(dtype: str, rows: int, block_d: int) -> str:
    """The signature type Triton gives a host ``TensorDescriptor`` with ``[1, 1, rows, block_d]`` blocks."""
    return f"tensordesc<{dtype}[1, 1, {rows}, {block_d}]>"


def _with_tma(signature: dict, constexprs: dict, dtype: str) -> dict:
    """``signature`` with Q/K/V/O as the descriptors the sm_90 launcher passes."""
    return {
        arg: _tensordesc(dtype, constexprs[_TMA_ROWS[arg]], constexprs["BLOCK_D"]) if arg in _TMA_ROWS else t
        for arg, t in signature.items()
    }


def _tma_aot_configs(pointer_configs: list[dict]) -> list[dict]:
    """The descriptor build of every sm_90 forward configuration whose head dim is a tile width: same
    tiles and variants as the pointer build, Q/K/V/O as tensor descriptors (no divisibility hints: a
    descriptor carries its own alignment rule)."""
    entries = []
    for cfg in pointer_configs:
        consts = cfg["constexprs"]
        if cfg["archs"] != [90] or consts["HEAD_DIM"] != consts["BLOCK_D"]:
            continue
        dtype = cfg["signature"]["Q"][1:]
        names = _attn_fwd_kernel.arg_names
        entries.append(
            dict(
                cfg,
                name=cfg["name"].replace(" sm90-tiles", " sm90-tiles tma"),
                signature=_with_tma(cfg["signature"], consts, dtype),
                constexprs=dict(consts, TMA=True),
                attrs={i: a for i, a in cfg["attrs"].items() if names[i[0]] not in _TMA_ROWS},
            )
        )
    return entries


def aot_gpu_launch(launch, arch: int):
    """What a GPU of ``arch`` launches for the recorded ``launch`` (see ``_attention_tiles``): for the
    forward, additionally the TMA build on sm_90 when the head dim is a tile width (the launcher's
    :func:`use_tma` for aligned tensors), the pointer build on sm_80."""
    gpu = _tiled_gpu_launch(launch, arch)
    if gpu is None or launch.kernel != "_attn_fwd_kernel":
        return gpu
    consts = dict(gpu.constexprs)
    signature = dict(gpu.signature)
    kind = signature["K"]  # "*bf16", or "tensordesc<bf16[...]>" when recorded from a TMA launch
    dtype = kind[1:] if kind.startswith("*") else kind[len("tensordesc<") :].split("[")[0]
    tma = arch == 90 and consts["HEAD_DIM"] == consts["BLOCK_D"]
    consts["TMA"] = tma
    if tma:
        signature = _with_tma(signature, consts, dtype)
    else:
        signature.update({arg: f"*{dtype}" for arg in _TMA_ROWS})
    return replace(gpu, signature=tuple(signature.items()), constexprs=tuple(consts.items()))


_POINTER_AOT_CONFIGS = tiled_aot_configs("attn_fwd", _attn_fwd_kernel, {"TMA": False})
AOT_CONFIGS = _POINTER_AOT_CONFIGS + _tma_aot_configs(_POINTER_AOT_CONFIGS)
