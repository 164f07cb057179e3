"""Building blocks shared by the attention kernels (``attention.py``: forward, ``attention_backward.py``:
dQ, dK/dV): tile sizes, row loads and stores, the visibility rule, the one function that decides which
tiles a program visits and which of them need the elementwise mask, the document extents those decisions
read, and the ahead-of-time configuration lists. See docs/attention.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from fastgpt.kernels._aot import aot_config


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


def padded_head_dim(head_dim: int, op: str = "attention_triton") -> int:
    """Width of the register tile holding one row of q/k/v (a power of two, as ``tl.arange`` needs);
    an unsupported head dim raises, naming ``op``."""
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"{op}: head dim {head_dim} is not supported; "
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


# ======================================================================================= Triton helpers
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
def _program_tile(N_HEADS, BLOCK: tl.constexpr):
    """This program's tile start ``program_id(0) * BLOCK``, its ``program_id(1) = b * N_HEADS + h`` and
    that batch row ``b`` and head ``h`` (int64, for address arithmetic)."""
    bh = tl.program_id(1)
    return tl.program_id(0) * BLOCK, bh, (bh // N_HEADS).to(tl.int64), (bh % N_HEADS).to(tl.int64)


@triton.jit
def _query_rows(DOCS, b, m0, T_Q, T_K, BLOCK_M: tl.constexpr, HAS_DOCS: tl.constexpr):
    """Query tile ``[m0, m0 + BLOCK_M)`` of batch row ``b``: ``offs_m``, their key positions ``q_pos``,
    ``doc_row`` (the row's :func:`document_extents`; plane 0 identifies the document) and the queries'
    documents ``doc_q`` (``q_pos`` itself without documents, never compared then)."""
    doc_row = DOCS + b * 4 * T_K
    offs_m = m0 + tl.arange(0, BLOCK_M)
    q_pos = T_K - T_Q + offs_m
    doc_q = q_pos
    if HAS_DOCS:
        doc_q = tl.load(doc_row + q_pos, mask=offs_m < T_Q, other=0)
    return offs_m, q_pos, doc_row, doc_q


@triton.jit
def _keys_visible(
    q_pos,
    doc_q,
    offs_n,
    doc_row,
    T_K,
    WINDOW,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
):
    """:func:`_visible` of a query tile (rows) against key tile ``offs_n`` (columns), the key walks'
    orientation (forward, dQ); the keys' documents are read from ``doc_row``."""
    doc_k = offs_n
    if HAS_DOCS:
        doc_k = tl.load(doc_row + offs_n, mask=offs_n < T_K, other=0)
    return _visible(
        q_pos[:, None], offs_n[None, :], doc_q[:, None], doc_k[None, :], T_K, WINDOW,
        CAUSAL, HAS_DOCS, HAS_WINDOW,
    )  # fmt: skip


@triton.jit
def _tile_range(
    own0,
    own_off,
    n_own,
    other_off,
    n_other,
    below,
    above,
    docs_row,
    doc_plane,
    OWN_BLOCK: tl.constexpr,
    OTHER_BLOCK: tl.constexpr,
    HAS_BELOW: tl.constexpr,
    HAS_ABOVE: tl.constexpr,
    HAS_DOCS: tl.constexpr,
):
    """Which tiles of the other axis one program's tile ``[own0, own0 + OWN_BLOCK)`` must visit, and which
    of them need the elementwise mask, for both walks: a query tile over key tiles (forward, dQ) and a
    key tile over query tiles (dK/dV).

    Everything is reasoned in key positions: index ``i`` of an axis sits at position ``off + i``
    (``own_off``/``other_off``: ``Tk - Tq`` for queries, 0 for keys). A pair is visible when the other
    row's position lies in ``[own + below, own + above]`` (bounds present when ``HAS_BELOW``/``HAS_ABOVE``:
    causal and window give one each, on opposite sides for the two walks), both rows are in range and,
    with documents, they share one. ``docs_row`` points at this batch row's :func:`document_extents`
    (planes ``doc_plane`` apart, indexed by position). Returns ``OTHER_BLOCK``-aligned other-axis indices
    ``start <= full_start <= full_end <= end``: tiles outside ``[start, end)`` hold no visible pair and
    are skipped; tiles in ``[full_start, full_end)`` are visible for every pair (no elementwise mask);
    the rest are partly visible. With documents, the own tile's rows must all be in one document for any
    tile to be fully visible, and then only other tiles inside that document's run qualify. The ragged
    last other tile is never fully visible; the own tile's ragged tail only widens the ranges."""
    first = own_off + own0  # position of the own tile's first and last row
    last = first + OWN_BLOCK - 1
    lo = own0 * 0 + other_off  # runtime scalars (sizes equal to 1 arrive as constexprs)
    hi = own0 * 0 + other_off + n_other
    if HAS_BELOW:
        lo = tl.maximum(lo, first + below)
    if HAS_ABOVE:
        hi = tl.minimum(hi, last + above + 1)
    if HAS_DOCS:  # other rows within the extent of the documents of the own tile's rows
        rows = own0 + tl.arange(0, OWN_BLOCK)
        in_range = rows < n_own
        doc_first = tl.load(docs_row + own_off + rows, mask=in_range, other=-1)  # identifies the document
        first_min = tl.min(tl.where(in_range, doc_first, 2147483647), 0)
        one_doc = first_min == tl.max(doc_first, 0)
        lo = tl.maximum(lo, first_min)
        hi = tl.minimum(hi, tl.max(tl.load(docs_row + doc_plane + own_off + rows, mask=in_range, other=0), 0))
    lo = tl.maximum(lo - other_off, 0)  # positions -> other-axis indices
    hi = tl.maximum(hi - other_off, 0)
    start = (lo // OTHER_BLOCK) * OTHER_BLOCK
    end = tl.cdiv(hi, OTHER_BLOCK) * OTHER_BLOCK
    full_start = start
    if HAS_BELOW:  # other tiles whose first row >= the last own row's lower bound
        full_start = tl.cdiv(tl.maximum(last + below - other_off, 0), OTHER_BLOCK) * OTHER_BLOCK
    full_end = (n_other // OTHER_BLOCK) * OTHER_BLOCK  # the ragged last other tile needs the mask
    if HAS_ABOVE:  # other tiles whose last row <= the first own row's upper bound
        full_end = tl.minimum(
            full_end, (tl.maximum(first + above + 1 - other_off, 0) // OTHER_BLOCK) * OTHER_BLOCK
        )
    if HAS_DOCS:  # other tiles inside the run of the own tile's one document; none if it holds several
        run_lo = tl.load(docs_row + 2 * doc_plane + first)
        run_hi = tl.load(docs_row + 3 * doc_plane + first)
        full_start = tl.maximum(
            full_start, tl.cdiv(tl.maximum(run_lo - other_off, 0), OTHER_BLOCK) * OTHER_BLOCK
        )
        full_end = tl.minimum(full_end, (tl.maximum(run_hi - other_off, 0) // OTHER_BLOCK) * OTHER_BLOCK)
        full_end = tl.where(one_doc, full_end, 0)
    full_start = tl.minimum(tl.maximum(full_start, start), end)
    full_end = tl.minimum(tl.maximum(full_end, full_start), end)
    return start, full_start, full_end, end


@triton.jit
def _key_walk(
    m0,
    doc_row,
    T_Q,
    T_K,
    WINDOW,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
):
    """:func:`_tile_range` of query tile ``m0`` over key tiles (forward, dQ): each query's keys lie in
    ``[pos - WINDOW + 1, pos]``."""
    return _tile_range(
        m0, T_K - T_Q, T_Q, 0, T_K, 1 - WINDOW, 0, doc_row, T_K,
        BLOCK_M, BLOCK_N, HAS_WINDOW, CAUSAL, HAS_DOCS,
    )  # fmt: skip


@triton.jit
def _query_walk(
    n0,
    doc_row,
    T_Q,
    T_K,
    WINDOW,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
):
    """:func:`_tile_range` of key tile ``n0`` over query tiles (dK/dV): each key's queries lie in
    ``[pos, pos + WINDOW - 1]``."""
    return _tile_range(
        n0, 0, T_K, T_K - T_Q, T_Q, 0, WINDOW - 1, doc_row, T_K,
        BLOCK_N, BLOCK_M, CAUSAL, HAS_WINDOW, HAS_DOCS,
    )  # fmt: skip


@triton.jit
def _tile_range_probe(
    DOCS,
    OUT,
    T_Q,
    T_K,
    WINDOW,
    OWN_BLOCK: tl.constexpr,
    OTHER_BLOCK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_DOCS: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    KEY_WALK: tl.constexpr,
):
    """Instrumentation, not launched by the op: writes the ``_tile_range`` bounds of own tile
    ``program_id(0)`` of batch row ``program_id(1)`` through the walks the kernels call (:func:`_key_walk`
    of the forward and dQ kernels, or :func:`_query_walk` of the dK/dV kernel)."""
    own0 = tl.program_id(0) * OWN_BLOCK
    b = tl.program_id(1)
    doc_row = DOCS + b * 4 * T_K
    if KEY_WALK:
        start, full_start, full_end, end = _key_walk(
            own0, doc_row, T_Q, T_K, WINDOW, OWN_BLOCK, OTHER_BLOCK, CAUSAL, HAS_DOCS, HAS_WINDOW
        )
    else:
        start, full_start, full_end, end = _query_walk(
            own0, doc_row, T_Q, T_K, WINDOW, OWN_BLOCK, OTHER_BLOCK, CAUSAL, HAS_DOCS, HAS_WINDOW
        )
    out = OUT + (b * tl.num_programs(0) + tl.program_id(0)) * 4
    tl.store(out, start)
    tl.store(out + 1, full_start)
    tl.store(out + 2, full_end)
    tl.store(out + 3, end)


def tile_ranges(
    doc_ids: torch.Tensor | None,
    t_q: int,
    t_k: int,
    tiles: TileConfig,
    *,
    key_walk: bool,
    causal: bool = True,
    window: int | None = None,
) -> torch.Tensor:
    """``(B, n_own_tiles, 4)`` int32: ``start, full_start, full_end, end`` of every own tile, as the
    kernels decide them: query tiles of ``tiles.block_m`` over key tiles of ``tiles.block_n``
    (``key_walk``: forward, dQ) or key tiles of ``block_n`` over query tiles of ``block_m`` (dK/dV).
    Runs :func:`_tile_range` itself (on CPU under the Triton interpreter), so the counts in
    docs/attention.md are the kernels' own decisions. ``doc_ids`` ``(B, t_k)`` or None."""
    batch = 1 if doc_ids is None else doc_ids.shape[0]
    docs = None if doc_ids is None else document_extents(doc_ids)
    own, other = (tiles.block_m, tiles.block_n) if key_walk else (tiles.block_n, tiles.block_m)
    n_tiles = triton.cdiv(t_q if key_walk else t_k, own)
    out = torch.empty(batch, n_tiles, 4, dtype=torch.int32, device=None if docs is None else docs.device)
    _tile_range_probe[(n_tiles, batch)](
        out if docs is None else docs, out, t_q, t_k, window or 0,
        OWN_BLOCK=own, OTHER_BLOCK=other, CAUSAL=causal, HAS_DOCS=docs is not None,
        HAS_WINDOW=window is not None, KEY_WALK=key_walk,
    )  # fmt: skip
    return out


# ================================================================================================= host
def document_extents(doc_ids: torch.Tensor) -> torch.Tensor:
    """What the attention kernels read about packed documents: ``(B, 4, T)`` int32, per position ``t``:

    - ``[:, 0]`` the first and ``[:, 1]`` one past the last position of ``t``'s id in its row (the id's
      extent; the first position also identifies the id within the row, so the kernels compare it
      instead of the ids themselves),
    - ``[:, 2]`` the first and ``[:, 3]`` one past the last position of the run of equal ids around ``t``.

    Keys outside a query's id extent cannot share its document (tiles beyond the union are skipped); keys
    inside its run all share it (tiles there need no mask). A document need not be one contiguous run
    (then extent and runs differ). Plain torch on the device, no host sync; one sort per call, so compute
    it once per forward and pass it to every layer (``fastgpt.ops.attention(doc_extents=...)``)."""
    B, T = doc_ids.shape
    device = doc_ids.device
    sorted_ids, order = doc_ids.sort(dim=1, stable=True)
    starts = torch.ones_like(sorted_ids, dtype=torch.long)
    starts[:, 1:] = (sorted_ids[:, 1:] != sorted_ids[:, :-1]).long()
    group = torch.empty_like(starts).scatter_(1, order, starts.cumsum(1) - 1)  # (B, T) document index
    pos = torch.arange(T, device=device).expand(B, T)
    first = torch.full((B, T), T, device=device).scatter_reduce(1, group, pos, "amin")
    last = torch.full((B, T), -1, device=device).scatter_reduce(1, group, pos, "amax")
    new_run = torch.ones(B, T, dtype=torch.bool, device=device)
    new_run[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    run_lo = torch.where(new_run, pos, 0).cummax(1).values
    run_ends = torch.ones(B, T, dtype=torch.bool, device=device)
    run_ends[:, :-1] = new_run[:, 1:]
    run_hi = torch.where(run_ends, pos, T).flip(1).cummin(1).values.flip(1) + 1
    planes = (first.gather(1, group), last.gather(1, group) + 1, run_lo, run_hi)
    return torch.stack(planes, dim=1).to(torch.int32).contiguous()


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The kernels take any batch/head/time strides but need unit stride along the head dim."""
    return x if x.stride(-1) == 1 else x.contiguous()


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


_LOG2E = 1.4426950408889634


# ================================================================================= ahead-of-time builds
_AOT_DTYPES = ("bf16", "fp16")
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
_DOC_POINTERS = ("DOCS",)
_SIZES = ("H_Q", "H_KV", "GROUP", "T_Q", "T_K", "WINDOW")  # upper-case integers, any value
# kernel -> its role in tile_configs (the delta preprocess kernel has no tiles)
_ROLES = {"_attn_fwd_kernel": "fwd", "_attn_bwd_dkdv_kernel": "bwd_dkdv", "_attn_bwd_dq_kernel": "bwd_dq"}


def attention_aot_config(
    name: str, fn, dtype: str, constexprs: dict, *, num_warps: int, num_stages: int, archs: list[int]
) -> dict:
    """One ``AOT_CONFIGS`` entry with the argument types the launchers pass: tensors in ``dtype``, the
    LSE and delta in fp32, document arrays int32 (the fp32 LSE as never-read placeholders without
    documents), sizes and strides i32, scales fp32. Besides the build check's keys: ``attrs`` (16-byte
    divisibility of pointers and strides, as the JIT assumes for aligned torch tensors), ``archs`` (where
    the launcher picks this entry) and ``tensor_cores`` (the kernel's ``tl.dot`` must become HGMMA/HMMA)."""
    has_docs = bool(constexprs.get("HAS_DOCS"))
    entry = aot_config(
        name,
        fn,
        dtype,
        constexprs,
        fp32_pointers=("LSE", "DELTA") + (() if has_docs else _DOC_POINTERS),
        i32_pointers=_DOC_POINTERS if has_docs else (),
        fp32_scalars=("qk_scale", "sm_scale"),
        i32_scalars=_SIZES,
        unaligned=_SIZES,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    entry.update(archs=archs, tensor_cores=getattr(fn, "fn", fn).__name__ in _ROLES)
    return entry


def tiled_aot_configs(kernel: str, fn, extra: dict | None = None) -> list[dict]:
    """Every configuration of a tiled kernel the launcher can pick on a GPU: head dim x dtype x arch
    family's tiles for the kernel's role x feature variant (plus the ``extra`` constexprs, fixed)."""
    role = _ROLES[getattr(fn, "fn", fn).__name__]
    entries = []
    for dtype in _AOT_DTYPES:
        for head_dim in SUPPORTED_HEAD_DIMS:
            for arch, capability in _ARCH_CAPABILITY.items():
                cfg = tile_configs(head_dim, arch)[role]
                for variant, flags in _AOT_VARIANTS.items():
                    constexprs = dict(
                        HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim), BLOCK_M=cfg.block_m,
                        BLOCK_N=cfg.block_n, UPCAST=False, PRECISION="tf32", **flags, **(extra or {}),
                    )  # fmt: skip
                    name = (
                        f"{kernel} d{head_dim} {dtype} {arch}-tiles M{cfg.block_m} N{cfg.block_n} "
                        f"w{cfg.num_warps} s{cfg.num_stages} {variant}"
                    )
                    entries.append(
                        attention_aot_config(
                            name,
                            fn,
                            dtype,
                            constexprs,
                            num_warps=cfg.num_warps,
                            num_stages=cfg.num_stages,
                            archs=[capability],
                        )  # fmt: skip
                    )
    return entries


def aot_gpu_launch(launch, arch: int):
    """What a GPU of ``arch`` (80 or 90) launches for the call recorded as ``launch`` (a
    :class:`fastgpt.kernels._launches.Launch`, recorded under the interpreter or on any GPU): the arch
    family's tiles for the kernel's role and head dim, no interpreter upcast, and nothing at all for fp32
    inputs (``fastgpt.ops`` sends fp32 attention on CUDA to SDPA; ``check_dtype`` refuses it)."""
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
