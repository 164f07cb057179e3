"""Decode attention: split-KV flash-decoding for a few new queries against a long KV cache.

``attention_decode(q, k, v, *, causal, doc_ids, window, scale)`` has the semantics of
``attention_reference`` (``kernels/attention.py``: bottom-right causal alignment, ``doc_ids`` documents
and left padding, sliding ``window``, GQA) for ``Tq <= Tk``; ``fastgpt.ops.attention`` sends it the calls
with at most ``DECODE_MAX_QUERIES`` queries that need no gradient (docs/kernels.md, "Decode attention").

Why a second kernel: the training forward gives each (query tile, batch, query head) one program. With
``Tq = 1`` its 128-row query tile holds one real row, the grid is ``B * Hq`` programs (a few dozen at
batch 1: most SMs idle while one program walks 32k keys) and every query head of a GQA group reads the
same K/V again. Decode is bound by reading the cache once, so this kernel is shaped around that read:

- **GQA packing**: one program serves one (batch, K/V head) and holds the ``GROUP x Tq`` query rows that
  read that head (row ``r`` = query head ``r // Tq`` of the group, query ``r % Tq``) in one tile of
  ``BLOCK_M`` rows (16-64; more rows take more row tiles). Each K/V tile is loaded once for all of them.
- **Split-KV** (flash-decoding): the keys are cut into ``num_splits`` contiguous ranges, one program
  each, so ``B * Hkv * num_splits`` programs fill the GPU (``decode_splits``: about two per SM, at least
  ``MIN_SPLIT_KEYS`` keys each). Each writes its rows' normalised partial output and log-sum-exp (fp32,
  log2 units); ``_decode_combine_kernel`` merges the splits: ``o = sum_s 2^(lse_s - m) o_s / sum_s
  2^(lse_s - m)`` with ``m`` the largest ``lse_s``. The combine always runs (one split too): it costs one
  small launch, and one split only happens when ``B * Hkv`` already fills the GPU, where the cache read
  dwarfs it.
- **Masks from the cache itself**: a key is visible when it exists, is at or before the query (causal,
  within the ``Tq`` new tokens too), inside the window, and has the query's document id, read straight
  from ``doc_ids`` (any strides: the cache's ``(B, max_len)`` buffer sliced to ``Tk``). One int32 per key
  against ``2 * D`` K/V elements: the mask is always evaluated, no tile classification. With a window the
  keys before the first query's window are not visited at all. K/V are read through their strides in the
  layout ``fastgpt.model.kv_cache.KVCache`` stores them (``(B, Hkv, max_len, D)`` sliced to ``Tk``): no
  copy, no expansion of the GQA heads.

Inference only: ``torch.ops.fastgpt.decode_attention`` has a fake implementation (``torch.compile``
traces it as one node) and no autograd; :func:`attention_decode` refuses inputs that need a gradient
(``ops.attention`` routes those to ``attention_triton``). Head dims 32, 64, 96, 128; fp16/bf16 (fp32
only under the interpreter, for tests), fp32 accumulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from fastgpt.kernels._aot import aot_config
from fastgpt.kernels._attention_tiles import padded_head_dim
from fastgpt.kernels._target import launch_arch, sm_count
from fastgpt.kernels.attention import SUPPORTED_HEAD_DIMS, check_inputs

__all__ = [
    "AOT_CONFIGS",
    "DECODE_MAX_QUERIES",
    "DecodeTiles",
    "aot_gpu_launch",
    "attention_decode",
    "decode_splits",
    "decode_tiles",
]

# Most new queries per row that ``fastgpt.ops.attention`` sends here. Up to 16 the packed tile (Tq x GROUP
# rows, GROUP <= 4 in the presets) stays within the 64-row tiles compiled below, and the training forward
# would fill at most 16 of its 128 query rows while reading K/V once per query head; beyond that (chunked
# prefill, long speculative drafts) its query tiles fill up and the split over keys matters less.
DECODE_MAX_QUERIES = 16
# A split reads at least this many keys: below it, the fixed cost of a split (loading its query tile,
# writing and re-reading its fp32 partial output) is no longer small against its share of the cache.
MIN_SPLIT_KEYS = 256
MAX_SPLITS = 128
_SPLITS_PER_SM = 2  # programs per SM the split count aims at (several small CTAs hide load latency)
_INTERPRETER_SPLITS = 4  # under the interpreter: several splits, so short tests cross split boundaries
_BLOCK_MS = (16, 32, 64)  # query-row tiles (tl.dot needs >= 16 rows)
_COMBINE_BLOCK_S = 16  # splits merged per step of the combine kernel
_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class DecodeTiles:
    """Launch shape of the split kernel: ``block_m`` packed query rows x ``block_n`` keys per step."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# (arch family, padded head dim) -> (BLOCK_N, num_warps, num_stages). The K and V tiles of the stages in
# flight sit in shared memory (BLOCK_N x D x 2 bytes each); the sm80 entries stay under the 99 KB an
# sm_86/89 block may use. Chosen from the build check (shared memory, registers, 0 spills); the speed of
# the alternatives is unmeasured (no GPU was available).
_GPU_TILES = {
    ("sm90", 32): (128, 4, 3),
    ("sm90", 64): (64, 4, 4),
    ("sm90", 128): (64, 4, 3),
    ("sm80", 32): (128, 4, 3),
    ("sm80", 64): (64, 4, 3),
    ("sm80", 128): (64, 4, 2),
}
_INTERPRETER_BLOCK_N = 16  # small: test lengths of a few hundred keys cross many tiles and splits


def decode_tiles(head_dim: int, rows: int, arch: str | None) -> DecodeTiles:
    """The tiles for ``rows = GROUP * Tq`` packed query rows: the smallest of 16/32/64 rows that holds them
    (more rows run in several row tiles), and the arch family's key tile (``None``: the interpreter's)."""
    block_d = padded_head_dim(head_dim, "attention_decode")
    block_m = min(_BLOCK_MS[-1], max(_BLOCK_MS[0], triton.next_power_of_2(max(rows, 1))))
    if arch is None:
        return DecodeTiles(block_m, _INTERPRETER_BLOCK_N, 4, 1)
    block_n, num_warps, num_stages = _GPU_TILES[(arch, block_d)]
    return DecodeTiles(block_m, block_n, num_warps, num_stages)


def decode_splits(programs: int, n_keys: int, block_n: int, sms: int | None) -> tuple[int, int]:
    """``(num_splits, keys per split)`` for ``programs = B * Hkv * row_tiles`` programs over ``n_keys``
    keys. On a GPU (``sms`` streaming multiprocessors) about ``_SPLITS_PER_SM`` programs per SM, each
    split at least ``MIN_SPLIT_KEYS`` keys, at most ``MAX_SPLITS``; under the interpreter (``sms`` None)
    up to ``_INTERPRETER_SPLITS`` splits of whole tiles. Splits are whole ``block_n`` tiles and none is
    empty."""
    n_tiles = max(1, triton.cdiv(n_keys, block_n))
    if sms is None:
        splits = min(_INTERPRETER_SPLITS, n_tiles)
    else:
        wanted = triton.cdiv(_SPLITS_PER_SM * sms, max(programs, 1))
        splits = max(1, min(wanted, n_tiles // max(1, MIN_SPLIT_KEYS // block_n), MAX_SPLITS))
    tiles_per_split = triton.cdiv(n_tiles, splits)
    return triton.cdiv(n_tiles, tiles_per_split), tiles_per_split * block_n


# ======================================================================================= Triton kernels
@triton.jit
def _load_tile(ptrs, row_ok, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):
    """A ``(rows, BLOCK_D)`` tile; masked rows and the columns past ``HEAD_DIM`` read as 0."""
    if BLOCK_D == HEAD_DIM:
        x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    else:
        x = tl.load(ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    if UPCAST:  # the interpreter cannot do bf16 arithmetic: compute in fp32
        x = x.to(tl.float32)
    return x


@triton.jit
def _decode_split_kernel(
    Q, K, V, DOCS, O_PART, LSE_PART,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_db, stride_dt,
    H_KV, GROUP, T_Q, T_K, KEY_LO, SPLIT_LEN, CAUSAL_SHIFT, WINDOW, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """Program ``(split, b * H_KV + h_kv, row tile)``: the packed rows of the row tile against keys
    ``[KEY_LO + split * SPLIT_LEN, + SPLIT_LEN)``. Visible: ``k <= q_pos + CAUSAL_SHIFT`` (0 causal, T_K
    not), ``k > q_pos - WINDOW`` and equal ``DOCS`` entries (strides 0 without documents: all equal).
    Writes the normalised partial output ``O_PART (B, Hq, S, Tq, D)`` and ``LSE_PART (B, Hq, S, Tq)``
    (log2 units, -inf for a row that saw no key here), both fp32 and contiguous."""
    split = tl.program_id(0)
    bh = tl.program_id(1)
    n_splits = tl.num_programs(0)
    b = (bh // H_KV).to(tl.int64)
    h_kv = (bh % H_KV).to(tl.int64)
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < GROUP * T_Q
    t = rows % T_Q  # query index; padded rows get a valid one (their results are never stored)
    h = h_kv * GROUP + (rows // T_Q)  # query head
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = Q + b * stride_qb + h[:, None] * stride_qh + t[:, None] * stride_qt + offs_d[None, :]
    q = _load_tile(q_ptrs, row_ok, offs_d, HEAD_DIM, BLOCK_D, UPCAST)
    q_pos = T_K - T_Q + t
    doc_row = DOCS + b * stride_db
    doc_q = tl.load(doc_row + q_pos * stride_dt)  # 0 <= q_pos < T_K (the launcher needs Tq <= Tk)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo = KEY_LO + split * SPLIT_LEN
    hi = tl.minimum(lo + SPLIT_LEN, T_K)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        k = _load_tile(
            k_base + offs_n[:, None] * stride_kt + offs_d[None, :], n_ok, offs_d, HEAD_DIM, BLOCK_D, UPCAST
        )
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        doc_k = tl.load(doc_row + offs_n * stride_dt, mask=n_ok, other=0)
        vis = (
            n_ok[None, :]
            & (offs_n[None, :] <= q_pos[:, None] + CAUSAL_SHIFT)
            & (offs_n[None, :] > q_pos[:, None] - WINDOW)
            & (doc_q[:, None] == doc_k[None, :])
        )
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(
            v_base + offs_n[:, None] * stride_vt + offs_d[None, :], n_ok, offs_d, HEAD_DIM, BLOCK_D, UPCAST
        )
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    part = ((b * H_KV * GROUP + h) * n_splits + split) * T_Q + t  # row of O_PART / LSE_PART
    out_mask = row_ok[:, None]
    if BLOCK_D != HEAD_DIM:
        out_mask = out_mask & (offs_d[None, :] < HEAD_DIM)
    tl.store(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], out, mask=out_mask)
    tl.store(LSE_PART + part, lse, mask=row_ok)


@triton.jit
def _decode_combine_kernel(
    O_PART,
    LSE_PART,
    O,
    stride_ob,
    stride_oh,
    stride_ot,
    H_Q,
    T_Q,
    N_SPLITS,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Program ``(b * H_Q + h) * T_Q + t``: merges the ``N_SPLITS`` partial outputs of one query row by
    their log-sum-exps and writes it to ``O`` in ``O``'s dtype (0 for a row that saw no key at all)."""
    row = tl.program_id(0).to(tl.int64)
    t = row % T_Q
    bh = row // T_Q
    b = bh // H_Q
    h = bh % H_Q
    first = bh * N_SPLITS * T_Q + t  # split s of this row is at first + s * T_Q
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    m = tl.max(tl.full([BLOCK_S], float("-inf"), dtype=tl.float32), 0)
    for s0 in range(0, N_SPLITS, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        lse = tl.load(LSE_PART + first + offs_s * T_Q, mask=offs_s < N_SPLITS, other=float("-inf"))
        m = tl.maximum(m, tl.max(lse, 0))
    m = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    total = tl.sum(tl.zeros([BLOCK_S], dtype=tl.float32), 0)
    for s0 in range(0, N_SPLITS, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < N_SPLITS
        weight = tl.math.exp2(tl.load(LSE_PART + first + offs_s * T_Q, mask=s_ok, other=float("-inf")) - m)
        part = tl.load(
            O_PART + (first + offs_s * T_Q)[:, None] * HEAD_DIM + offs_d[None, :],
            mask=s_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        acc += tl.sum(weight[:, None] * part, 0)
        total += tl.sum(weight, 0)
    out = acc / tl.where(total == 0.0, 1.0, total)
    o_ptrs = O + b * stride_ob + h * stride_oh + t * stride_ot + offs_d
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=d_ok)


# ============================================================================================ launchers
def _decode_forward(q, k, v, doc_ids, causal, window, scale, num_splits):
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    group = Hq // Hkv
    tiles = decode_tiles(D, group * Tq, launch_arch(q.device))
    key_lo = 0 if window is None else max(0, Tk - Tq + 1 - window)  # before the first query's window
    key_lo -= key_lo % tiles.block_n
    row_tiles = triton.cdiv(group * Tq, tiles.block_m)
    if num_splits > 0:
        n_tiles = triton.cdiv(Tk - key_lo, tiles.block_n)
        per_split = triton.cdiv(n_tiles, min(num_splits, n_tiles))
        num_splits, split_len = triton.cdiv(n_tiles, per_split), per_split * tiles.block_n
    else:
        num_splits, split_len = decode_splits(
            B * Hkv * row_tiles, Tk - key_lo, tiles.block_n, sm_count(q.device)
        )
    o_part = torch.empty((B, Hq, num_splits, Tq, D), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((B, Hq, num_splits, Tq), dtype=torch.float32, device=q.device)
    if doc_ids is None:  # strides 0: every key reads the query's id
        docs, doc_strides = torch.zeros(1, dtype=torch.int32, device=q.device), (0, 0)
    else:
        docs, doc_strides = doc_ids, doc_ids.stride()
    block_d = padded_head_dim(D)
    upcast = q.dtype == torch.bfloat16 and not q.is_cuda  # the interpreter's bf16 arithmetic is wrong
    _decode_split_kernel[(num_splits, B * Hkv, row_tiles)](
        q, k, v, docs, o_part, lse_part,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *doc_strides,
        Hkv, group, Tq, Tk, key_lo, split_len, 0 if causal else Tk, Tk + Tq if window is None else window,
        scale * _LOG2E,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, UPCAST=upcast,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _decode_combine_kernel[(B * Hq * Tq,)](
        o_part, lse_part, o, *o.stride()[:3], Hq, Tq, num_splits,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_S=_COMBINE_BLOCK_S,
    )  # fmt: skip
    return o


@torch.library.custom_op("fastgpt::decode_attention", mutates_args=())
def _decode_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None,
    causal: bool, window: int | None, scale: float, num_splits: int,
) -> torch.Tensor:  # fmt: skip
    """-> ``o (B, Hq, Tq, D)`` like q. ``num_splits`` 0: :func:`decode_splits` decides."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return _decode_forward(q, k, v, doc_ids, causal, window, scale, num_splits)


@_decode_attention_op.register_fake
def _(q, k, v, doc_ids, causal, window, scale, num_splits):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _check_inputs(q, k, v, doc_ids, window) -> None:
    check_inputs("attention_decode", q, k, v, doc_ids, window)
    if not 1 <= q.shape[2] <= k.shape[2]:
        raise ValueError(f"attention_decode: needs 1 <= Tq <= Tk; got Tq={q.shape[2]}, Tk={k.shape[2]}")
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise ValueError(
            "attention_decode is inference only (no backward): call it under torch.no_grad() or use "
            "attention_triton for inputs that need a gradient"
        )


def attention_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = True, doc_ids: torch.Tensor | None = None, window: int | None = None,
    scale: float | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """Split-KV decode attention: q ``(B, Hq, Tq, D)`` with ``1 <= Tq <= Tk``, k/v ``(B, Hkv, Tk, D)`` (any
    batch/head/time strides, e.g. a KV cache's buffers sliced to ``Tk``) -> ``(B, Hq, Tq, D)``.

    Same semantics as ``attention_reference``; ``doc_ids`` ``(B, Tk)`` is read in place (int32; other
    integer dtypes are converted). ``num_splits`` fixes the number of key splits (tests; None lets
    :func:`decode_splits` choose for the device). Inference only: inputs needing a gradient are refused."""
    _check_inputs(q, k, v, doc_ids, window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if doc_ids is not None and (doc_ids.dtype != torch.int32 or doc_ids.stride(-1) != 1):
        doc_ids = doc_ids.to(torch.int32).contiguous()
    return torch.ops.fastgpt.decode_attention(q, k, v, doc_ids, causal, window, scale, num_splits or 0)


# ================================================================================= ahead-of-time builds
_SIZES = ("H_KV", "GROUP", "T_Q", "T_K", "KEY_LO", "SPLIT_LEN", "CAUSAL_SHIFT", "WINDOW", "H_Q", "N_SPLITS")
_ARCH_CAPABILITY = {"sm80": 80, "sm90": 90}


def _aot_configs() -> list[dict]:
    """Every configuration a GPU launch can pick: dtype x head dim x arch family's key tile x row tile for
    the split kernel (its ``tl.dot`` must use tensor cores), dtype x head dim for the combine."""
    entries = []
    for dtype in ("bf16", "fp16"):
        for head_dim in SUPPORTED_HEAD_DIMS:
            block_d = padded_head_dim(head_dim)
            for arch, capability in _ARCH_CAPABILITY.items():
                block_n, num_warps, num_stages = _GPU_TILES[(arch, block_d)]
                for block_m in _BLOCK_MS:
                    constexprs = dict(
                        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n, UPCAST=False,
                        PRECISION="tf32",
                    )  # fmt: skip
                    name = f"decode_split d{head_dim} {dtype} {arch}-tiles M{block_m} N{block_n} w{num_warps} s{num_stages}"
                    entry = aot_config(
                        name, _decode_split_kernel, dtype, constexprs,
                        fp32_pointers=("O_PART", "LSE_PART"), i32_pointers=("DOCS",), fp32_scalars=("qk_scale",),
                        i32_scalars=_SIZES, unaligned=_SIZES + ("stride_db", "stride_dt"),
                        num_warps=num_warps, num_stages=num_stages,
                    )  # fmt: skip
                    entries.append({**entry, "archs": [capability], "tensor_cores": True})
            constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=_COMBINE_BLOCK_S)
            entry = aot_config(
                f"decode_combine d{head_dim} {dtype}", _decode_combine_kernel, dtype, constexprs,
                fp32_pointers=("O_PART", "LSE_PART"), i32_scalars=_SIZES, unaligned=_SIZES,
            )  # fmt: skip
            entries.append(entry)
    return entries


def aot_gpu_launch(launch, arch: int):
    """What a GPU of ``arch`` (80/90) launches for a recorded call (``fastgpt.kernels._launches``): the
    arch family's key tile, no interpreter upcast; nothing for fp32 inputs (on CUDA ``fastgpt.ops`` sends
    fp32 attention to SDPA and ``check_dtype`` refuses it)."""
    types = dict(launch.signature)
    if types.get("Q", types.get("O")) == "*fp32":
        return None
    if launch.kernel != "_decode_split_kernel":
        return launch
    constexprs = dict(launch.constexprs)
    block_n, num_warps, num_stages = _GPU_TILES[({80: "sm80", 90: "sm90"}[arch], constexprs["BLOCK_D"])]
    constexprs.update(BLOCK_N=block_n, UPCAST=False, PRECISION="tf32")
    return replace(launch, constexprs=tuple(constexprs.items()), num_warps=num_warps, num_stages=num_stages)


AOT_CONFIGS = _aot_configs()
