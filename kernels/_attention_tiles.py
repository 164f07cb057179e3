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
def _tile_range(
    own0,
    own_off,
    n_own,
    other_off,
    n_other,
    below,
    above,
    tok_lo_row,
    tok_hi_row,
    OWN_BLOCK: tl.constexpr,
    OTHER_BLOCK: tl.constexpr,
    HAS_BELOW: tl.constexpr,
    HAS_ABOVE: tl.constexpr,
    HAS_DOCS: tl.constexpr,
):
    """Which tiles of the other axis one program's tile ``[own0, own0 + OWN_BLOCK)`` must visit, for both
    walks: a query tile over key tiles (forward, dQ) and a key tile over query tiles (dK/dV).

    Everything is reasoned in key positions: index ``i`` of an axis sits at position ``off + i``
    (``own_off``/``other_off``: ``Tk - Tq`` for queries, 0 for keys). A pair is visible when the other
    row's position lies in ``[own + below, own + above]`` (bounds present when ``HAS_BELOW``/``HAS_ABOVE``:
    causal and window give one each, on opposite sides for the two walks), both rows are in range and,
    with documents, they share one (``tok_lo_row``/``tok_hi_row``: per position, the extent of its
    document). Returns ``OTHER_BLOCK``-aligned other-axis indices ``start <= full_start <= full_end <=
    end``: tiles outside ``[start, end)`` hold no visible pair and are skipped; tiles in ``[full_start,
    full_end)`` are visible for every pair (no elementwise mask); the rest are partly visible. The
    ragged last other tile is never fully visible; the own tile's ragged tail only widens the ranges."""
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
        lo = tl.maximum(lo, tl.min(tl.load(tok_lo_row + own_off + rows, mask=in_range, other=hi), 0))
        hi = tl.minimum(hi, tl.max(tl.load(tok_hi_row + own_off + rows, mask=in_range, other=0), 0))
    lo = tl.maximum(lo - other_off, 0)  # positions -> other-axis indices
    hi = tl.maximum(hi - other_off, 0)
    start = (lo // OTHER_BLOCK) * OTHER_BLOCK
    end = tl.cdiv(hi, OTHER_BLOCK) * OTHER_BLOCK
    if HAS_DOCS:  # document edges can fall anywhere: mask every tile
        full_start = tl.maximum(end, start)
        full_end = full_start
    else:
        full_start = start
        if HAS_BELOW:  # other tiles whose first row >= the last own row's lower bound
            full_start = tl.cdiv(tl.maximum(last + below - other_off, 0), OTHER_BLOCK) * OTHER_BLOCK
        full_end = (n_other // OTHER_BLOCK) * OTHER_BLOCK  # the ragged last other tile needs the mask
        if HAS_ABOVE:  # other tiles whose last row <= the first own row's upper bound
            full_end = tl.minimum(
                full_end, (tl.maximum(first + above + 1 - other_off, 0) // OTHER_BLOCK) * OTHER_BLOCK
            )
        full_start = tl.minimum(tl.maximum(full_start, start), end)
        full_end = tl.minimum(tl.maximum(full_end, full_start), end)
    return start, full_start, full_end, end


# ================================================================================================= host
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
_DOC_POINTERS = ("DOC", "TOK_LO", "TOK_HI")
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


def tiled_aot_configs(kernel: str, fn) -> list[dict]:
    """Every configuration of a tiled kernel the launcher can pick on a GPU: head dim x dtype x arch
    family's tiles for the kernel's role x feature variant."""
    role = _ROLES[getattr(fn, "fn", fn).__name__]
    entries = []
    for dtype in _AOT_DTYPES:
        for head_dim in SUPPORTED_HEAD_DIMS:
            for arch, capability in _ARCH_CAPABILITY.items():
                cfg = tile_configs(head_dim, arch)[role]
                for variant, flags in _AOT_VARIANTS.items():
                    constexprs = dict(
                        HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim), BLOCK_M=cfg.block_m,
                        BLOCK_N=cfg.block_n, UPCAST=False, PRECISION="tf32", **flags,
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
