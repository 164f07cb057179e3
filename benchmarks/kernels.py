"""Kernel benchmarks: fastgpt's Triton kernels against torch eager, torch.compile, SDPA (flash / cuDNN),
flash-attn and Liger-Kernel, forward and forward+backward.

On a GPU (bf16) every op runs at one training-sized shape (``--quick``: smaller) and each provider
reports the median time (``triton.testing.do_bench``), TFLOP/s for the GEMM-bound ops (attention, fused
linear cross-entropy) or GB/s of compulsory traffic for the bandwidth-bound ones, that as a percentage
of the H100's peak (989 TFLOP/s dense bf16, 3.35 TB/s), and the peak memory allocated during one step
above what the inputs already hold. The backward is reported as (fwd+bwd) - fwd: several kernels compute
their gradients in the forward, so a backward alone is not comparable across providers. Results go to
``<out>/kernels.csv``, ``kernels.md`` and ``kernels.png``.

Without a GPU only what a CPU can show honestly is measured: the peak memory of the fused linear
cross-entropy's torch path (chunked, ``linear_cross_entropy_chunked``) against the naive linear +
cross-entropy at vocabularies of 32k-128k, each run in a fresh subprocess whose resident-set growth is
read from the kernel (``ru_maxrss``) with every large allocation forced through ``mmap`` so freed memory
leaves the resident set; plus the median time of 5 more runs (a side note on a CPU). GPU numbers are
then reported as unmeasured.

    python benchmarks/kernels.py [--out benchmarks/results] [--quick]
    python benchmarks/kernels.py --decode [--quick]          # decode attention: GB/s and % of HBM
    TRITON_INTERPRET=1 python benchmarks/kernels.py --smoke   # every provider once, tiny, on CPU
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

PEAK_TFLOPS = 989.0  # H100 SXM dense bf16
PEAK_TBPS = 3.35  # H100 SXM HBM3


@dataclass
class Row:
    op: str
    provider: str
    mode: str  # "fwd", "fwd+bwd" or "bwd" (= fwd+bwd - fwd)
    shape: str
    dtype: str
    device: str
    ms: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    pct_peak: float | None = None
    peak_mem_mb: float | None = None
    note: str = ""


# A provider takes the op's base tensors and returns (leaves whose .grad to reset, forward callable).
Provider = Callable[[dict], tuple[list[torch.Tensor], Callable[[], object]]]


@dataclass
class Op:
    name: str
    shape: str
    make: Callable[[torch.device, torch.dtype], dict]  # base tensors
    providers: dict[str, Provider]
    work: Callable[[str], tuple[str, float]]  # mode -> ("flops" | "bytes", amount)


# ------------------------------------------------------------------------------------------ helpers
def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def _simple(fn: Callable, *names: str, const: tuple[str, ...] = ()) -> Provider:
    """A provider calling ``fn(*leaves, *constants)`` on fresh leaves made from ``base[names]``."""

    def provider(base: dict):
        leaves = [_leaf(base[n]) for n in names]
        consts = [base[n] for n in const]
        return leaves, lambda: fn(*leaves, *consts)

    return provider


def _compiled(fn: Callable) -> Callable:
    compiled = {}

    def call(*args):
        if "fn" not in compiled:
            compiled["fn"] = torch.compile(fn, dynamic=False)
        return compiled["fn"](*args)

    return call


def _liger(name: str) -> Callable | None:
    try:
        import liger_kernel.transformers.functional as lf
    except ImportError:
        return None
    return getattr(lf, name, None)


def _backward(out) -> None:
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor)]
    if outs[0].numel() == 1:
        outs[0].backward()
    else:  # a fixed upstream gradient of ones keeps the comparison fair and cheap to build
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])


# -------------------------------------------------------------------------------------------- ops
SIZES = {  # full: training-sized on an 80 GB GPU; quick: a fast GPU run; smoke: plumbing check on CPU
    "full": dict(norm=(16384, 4096), rope=(4, 4096, 32, 8, 128), act=(16384, 14336), ce=(8192, 128256, 4096), attn=(4, 32, 4096, 128)),
    "quick": dict(norm=(4096, 4096), rope=(2, 2048, 32, 8, 128), act=(4096, 14336), ce=(2048, 128256, 4096), attn=(2, 16, 4096, 128)),
    "smoke": dict(norm=(6, 64), rope=(1, 5, 2, 1, 32), act=(6, 40), ce=(6, 300, 16), attn=(1, 2, 40, 32)),
}  # fmt: skip


def build_ops(size: str) -> list[Op]:
    from fastgpt.kernels import activations, cross_entropy, norms, rope

    ops: list[Op] = []
    M, H = SIZES[size]["norm"]

    def norm_bytes(n_reads_fwd, n_reads_bwd):
        return lambda mode, s=2: (
            "bytes",
            s * M * H * {"fwd": n_reads_fwd, "fwd+bwd": n_reads_fwd + n_reads_bwd}[mode],
        )

    def rms(device, dtype):
        return {
            "x": torch.randn(M, H, device=device, dtype=dtype),
            "w": torch.rand(H, device=device, dtype=dtype),
        }

    ops.append(Op("rms_norm", f"{M}x{H}", rms, {
        "fastgpt-triton": _simple(lambda x, w: norms.rms_norm_triton(x, w, 1e-6), "x", "w"),
        "torch": _simple(lambda x, w: norms.rms_norm_reference(x, w, 1e-6), "x", "w"),
        "torch.compile": _simple(_compiled(lambda x, w: norms.rms_norm_reference(x, w, 1e-6)), "x", "w"),
        **({"liger": _simple(lambda x, w: _liger("liger_rms_norm")(x, w, 1e-6), "x", "w")} if _liger("liger_rms_norm") else {}),
    }, norm_bytes(2, 3)))  # fmt: skip

    def ln(device, dtype):
        return {**rms(device, dtype), "b": torch.randn(H, device=device, dtype=dtype)}

    ops.append(Op("layer_norm", f"{M}x{H}", ln, {
        "fastgpt-triton": _simple(lambda x, w, b: norms.layer_norm_triton(x, w, b, 1e-5), "x", "w", "b"),
        "torch": _simple(lambda x, w, b: F.layer_norm(x, (H,), w, b, 1e-5), "x", "w", "b"),
        "torch.compile": _simple(_compiled(lambda x, w, b: norms.layer_norm_reference(x, w, b, 1e-5)), "x", "w", "b"),
        **({"liger": _simple(lambda x, w, b: _liger("liger_layer_norm")(x, w, b, 1e-5), "x", "w", "b")} if _liger("liger_layer_norm") else {}),
    }, norm_bytes(2, 3)))  # fmt: skip

    def add_rms(device, dtype):
        return {**rms(device, dtype), "r": torch.randn(M, H, device=device, dtype=dtype)}

    ops.append(Op("add_rms_norm", f"{M}x{H}", add_rms, {
        "fastgpt-triton": _simple(lambda x, r, w: norms.add_rms_norm_triton(x, r, w, 1e-6), "x", "r", "w"),
        "torch": _simple(lambda x, r, w: norms.add_rms_norm_reference(x, r, w, 1e-6), "x", "r", "w"),
        "torch.compile": _simple(_compiled(lambda x, r, w: norms.add_rms_norm_reference(x, r, w, 1e-6)), "x", "r", "w"),
    }, norm_bytes(4, 4)))  # fmt: skip

    B, T, Hq, Hkv, D = SIZES[size]["rope"]

    def rope_inputs(device, dtype):
        theta = torch.arange(T, device=device, dtype=torch.float32)[:, None] * torch.rand(
            D // 2, device=device
        )
        return {
            "q": torch.randn(B, Hq, T, D, device=device, dtype=dtype),
            "k": torch.randn(B, Hkv, T, D, device=device, dtype=dtype),
            "cos": theta.cos()[None], "sin": theta.sin()[None],
        }  # fmt: skip

    def liger_rope(q, k, cos, sin):
        return _liger("liger_rope")(q, k, torch.cat([cos, cos], -1), torch.cat([sin, sin], -1))

    rope_elems = B * (Hq + Hkv) * T * D
    ops.append(Op("rope", f"B{B} T{T} Hq{Hq} Hkv{Hkv} D{D}", rope_inputs, {
        "fastgpt-triton": _simple(rope.rope_triton, "q", "k", const=("cos", "sin")),
        "torch": _simple(rope.rope_reference, "q", "k", const=("cos", "sin")),
        "torch.compile": _simple(_compiled(rope.rope_reference), "q", "k", const=("cos", "sin")),
        **({"liger": _simple(liger_rope, "q", "k", const=("cos", "sin"))} if _liger("liger_rope") else {}),
    }, lambda mode: ("bytes", 2 * rope_elems * {"fwd": 2, "fwd+bwd": 4}[mode])))  # fmt: skip

    N, I = SIZES[size]["act"]

    def glu(device, dtype):
        return {
            "g": torch.randn(N, I, device=device, dtype=dtype),
            "u": torch.randn(N, I, device=device, dtype=dtype),
        }

    ops.append(Op("swiglu", f"{N}x{I}", glu, {
        "fastgpt-triton": _simple(activations.swiglu_triton, "g", "u"),
        "torch": _simple(activations.swiglu_reference, "g", "u"),
        "torch.compile": _simple(_compiled(activations.swiglu_reference), "g", "u"),
        **({"liger": _simple(_liger("liger_swiglu"), "g", "u")} if _liger("liger_swiglu") else {}),
    }, lambda mode: ("bytes", 2 * N * I * {"fwd": 3, "fwd+bwd": 8}[mode])))  # fmt: skip

    ops.append(Op("gelu_tanh", f"{N}x{I}", glu, {
        "fastgpt-triton": _simple(activations.gelu_tanh_triton, "g"),
        "torch": _simple(activations.gelu_tanh_reference, "g"),
        "torch.compile": _simple(_compiled(activations.gelu_tanh_reference), "g"),
    }, lambda mode: ("bytes", 2 * N * I * {"fwd": 2, "fwd+bwd": 5}[mode])))  # fmt: skip

    R, V, C = SIZES[size]["ce"]

    def ce_inputs(device, dtype):
        return {
            "logits": torch.randn(R, V, device=device, dtype=dtype),
            "t": torch.randint(0, V, (R,), device=device),
        }

    ops.append(Op("cross_entropy", f"{R}x{V}", ce_inputs, {
        "fastgpt-triton": _simple(lambda x, t: cross_entropy.cross_entropy_triton(x, t), "logits", const=("t",)),
        "fastgpt-triton-inplace": lambda base: (
            lambda leaf: ([leaf], lambda: cross_entropy.cross_entropy_triton(leaf * 1, base["t"], inplace_grad=True))
        )(_leaf(base["logits"])),
        "torch": _simple(lambda x, t: F.cross_entropy(x, t), "logits", const=("t",)),
        "torch.compile": _simple(_compiled(lambda x, t: cross_entropy.cross_entropy_reference(x, t)), "logits", const=("t",)),
        **({"liger": _simple(lambda x, t: _liger("liger_cross_entropy")(x, t), "logits", const=("t",))} if _liger("liger_cross_entropy") else {}),
    }, lambda mode: ("bytes", 2 * R * V * {"fwd": 1, "fwd+bwd": 3}[mode])))  # fmt: skip

    def lce_inputs(device, dtype):
        return {
            "h": torch.randn(R, C, device=device, dtype=dtype),
            "w": torch.randn(V, C, device=device, dtype=dtype) * C**-0.5,
            "t": torch.randint(0, V, (R,), device=device),
        }

    def naive_lce(h, w, t):
        return F.cross_entropy((h @ w.t()).float(), t)

    ops.append(Op("linear_cross_entropy", f"N{R} C{C} V{V}", lce_inputs, {
        "fastgpt-triton": _simple(lambda h, w, t: cross_entropy.linear_cross_entropy_triton(h, w, t), "h", "w", const=("t",)),
        "torch naive": _simple(naive_lce, "h", "w", const=("t",)),
        "torch chunked": _simple(lambda h, w, t: cross_entropy.linear_cross_entropy_chunked(h, w, t), "h", "w", const=("t",)),
        "torch.compile naive": _simple(_compiled(naive_lce), "h", "w", const=("t",)),
        **({"liger": _simple(lambda h, w, t: _liger("liger_fused_linear_cross_entropy")(h, w, t), "h", "w", const=("t",))} if _liger("liger_fused_linear_cross_entropy") else {}),
    }, lambda mode: ("flops", 2 * R * C * V * {"fwd": 1, "fwd+bwd": 3}[mode])))  # fmt: skip

    ops.append(attention_op(size))
    ops += [packed_attention_op(size, corpus) for corpus in ("shakespeare", "c4-demo")]
    return ops


def attention_op(size: str) -> Op:
    from fastgpt.kernels import attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, Hh, T, D = SIZES[size]["attn"]

    def make(device, dtype):
        return {n: torch.randn(B, Hh, T, D, device=device, dtype=dtype) for n in "qkv"}

    def sdpa(backend):
        def fn(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        return _simple(fn, "q", "k", "v")

    providers: dict[str, Provider] = {}
    if hasattr(attention, "attention_triton"):
        providers["fastgpt-triton"] = _simple(
            lambda q, k, v: attention.attention_triton(q, k, v, causal=True), "q", "k", "v"
        )
        if torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0):  # TMA vs pointers
            providers["fastgpt-triton no-TMA"] = _simple(
                _without_tma(lambda q, k, v: attention.attention_triton(q, k, v, causal=True)), "q", "k", "v"
            )
    providers["sdpa-flash"] = sdpa(SDPBackend.FLASH_ATTENTION)
    providers["sdpa-cudnn"] = sdpa(SDPBackend.CUDNN_ATTENTION)
    try:
        from flash_attn import flash_attn_func

        def flash(base):  # flash-attn wants (B, T, H, D)
            leaves = [_leaf(base[n].transpose(1, 2).contiguous()) for n in "qkv"]
            return leaves, lambda: flash_attn_func(*leaves, causal=True)

        providers["flash-attn"] = flash
    except ImportError:
        pass
    flops_fwd = 4 * B * Hh * T * T * D / 2  # causal: half the score matrix
    return Op("attention", f"B{B} H{Hh} T{T} D{D} causal", make, providers,
              lambda mode: ("flops", flops_fwd * {"fwd": 1, "fwd+bwd": 3.5}[mode]))  # fmt: skip


# ---------------------------------------------------------------------- packed-document attention
# issue 13's targets (H100 SXM, d128, T 4096, causal): written next to the attention rows
ATTENTION_TARGET_TFLOPS = {"fwd": 470.0, "fwd+bwd": 340.0}


def _packed_documents():
    """``benchmarks/packed_documents.py`` (document lengths of the corpora, row packing), loaded by path:
    this script also runs as an imported file (tests), where ``benchmarks/`` is not on ``sys.path``."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "packed_documents.py")
    spec = importlib.util.spec_from_file_location("fastgpt_bench_packed_documents", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without_tma(fn: Callable) -> Callable:
    """``fn`` with the Hopper TMA build of the Triton forward switched off (the pointer build, A/B)."""

    def call(*args):
        old = os.environ.get("FASTGPT_ATTENTION_TMA")
        os.environ["FASTGPT_ATTENTION_TMA"] = "0"
        try:
            return fn(*args)
        finally:
            os.environ.pop("FASTGPT_ATTENTION_TMA") if old is None else os.environ.update(
                FASTGPT_ATTENTION_TMA=old
            )

    return call


def packed_attention_op(size: str, corpus: str) -> Op:
    """Causal attention over packed documents (``doc_ids`` of rows cut from ``corpus``) at the dense op's
    shape: fastgpt's kernel (document extents computed once, as the model shares them across layers; on
    an sm_90 GPU also its pointer build, ``no-TMA``), flash-attn's varlen entry (one sequence per document
    piece), SDPA with the explicit ``(B, 1, T, T)`` mask, and SDPA per document piece (``is_causal``).
    TFLOP/s count the visible pairs only, the same work for every provider."""
    from fastgpt.kernels import attention

    packing = _packed_documents()
    B, Hh, T, D = SIZES[size]["attn"]
    scale = T / 4096 if size == "smoke" else 1.0  # tiny rows: documents shrunk by as much as the row
    doc_ids = packing.packed_doc_ids(packing.DOC_LENGTHS[corpus], B, T, scale)
    runs = packing.runs(doc_ids)
    pairs = sum((e - s) * (e - s + 1) // 2 for _, s, e in runs)

    def make(device, dtype):
        ids = doc_ids.to(device)
        mask = attention.attention_mask(T, T, causal=True, doc_ids=ids, window=None, device=device)
        base = {n: torch.randn(B, Hh, T, D, device=device, dtype=dtype) for n in "qkv"}
        return {**base, "doc_ids": ids, "extents": attention.document_extents(ids), "mask": mask}

    def triton_docs(q, k, v, ids, extents):
        return attention.attention_triton(q, k, v, doc_ids=ids, doc_extents=extents)

    def per_document(q, k, v):
        rows = [[] for _ in range(B)]
        for b, s, e in runs:
            rows[b].append(
                F.scaled_dot_product_attention(q[b, :, s:e], k[b, :, s:e], v[b, :, s:e], is_causal=True)
            )
        return torch.stack([torch.cat(pieces, dim=1) for pieces in rows])

    consts = ("doc_ids", "extents")
    providers: dict[str, Provider] = {"fastgpt-triton": _simple(triton_docs, "q", "k", "v", const=consts)}
    if torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0):
        providers["fastgpt-triton no-TMA"] = _simple(_without_tma(triton_docs), "q", "k", "v", const=consts)
    providers["sdpa mask"] = _simple(
        lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
        "q",
        "k",
        "v",
        const=("mask",),
    )
    providers["sdpa per-document"] = _simple(per_document, "q", "k", "v")
    try:
        from fastgpt.kernels.attention_flash_attn import doc_ids_to_cu_seqlens
        from flash_attn import flash_attn_varlen_func

        def flash(base):  # flash-attn's (B * T, H, D) token layout and the document boundaries
            cu, longest = doc_ids_to_cu_seqlens(base["doc_ids"])
            leaves = [_leaf(base[n].transpose(1, 2).reshape(B * T, Hh, D)) for n in "qkv"]
            return leaves, lambda: flash_attn_varlen_func(*leaves, cu, cu, longest, longest, causal=True)

        providers["flash-attn varlen"] = flash
    except ImportError:
        pass
    flops_fwd = 4 * B * Hh * pairs * D
    shape = f"B{B} H{Hh} T{T} D{D} causal, {len(runs) / B:.2f} documents/row"
    return Op(f"attention_packed_{corpus}", shape, make, providers,
              lambda mode: ("flops", flops_fwd * {"fwd": 1, "fwd+bwd": 3.5}[mode]))  # fmt: skip


# --------------------------------------------------------------------------------- decode attention
# One new token per row against a KV cache (serving, chat, RL rollouts): memory-bound, so the figure of
# merit is the cache read, K and V once (plus q and o), as GB/s and % of the card's HBM bandwidth.
DECODE_SIZES = {  # batches, cached tokens, (query heads, K/V heads, head dim): llama-3-8B-like attention
    "full": dict(batches=(1, 8, 64), cached=(1024, 4096, 16384, 32768), heads=(32, 8, 128)),
    "quick": dict(batches=(1, 8, 64), cached=(1024, 32768), heads=(32, 8, 128)),
    "smoke": dict(batches=(1, 2), cached=(40,), heads=(4, 2, 32)),
}
DECODE_TARGET_PCT = 70.0  # issue 13: decode at >= 70 % of HBM bandwidth
HBM_TBPS = (("H100 PCIe", 2.0), ("H100", 3.35), ("H200", 4.8), ("A100", 2.04))  # device-name substring


def hbm_tbps(device_name: str) -> float:
    """Peak HBM bandwidth (TB/s) of the named card; an H100 SXM's for cards not in ``HBM_TBPS``."""
    return next((tbps for key, tbps in HBM_TBPS if key in device_name), PEAK_TBPS)


@dataclass(frozen=True)
class DecodeCase:
    batch: int
    cached: int
    hq: int
    hkv: int
    d: int

    @property
    def shape(self) -> str:
        return f"B{self.batch} Tk{self.cached} Hq{self.hq} Hkv{self.hkv} D{self.d}"

    def bytes(self, elem: int) -> int:
        """Compulsory traffic of one decode step's attention: K and V once, q read and o written."""
        return elem * (2 * self.batch * self.hkv * self.cached * self.d + 2 * self.batch * self.hq * self.d)


def decode_cases(size: str) -> list[DecodeCase]:
    cfg = DECODE_SIZES[size]
    return [DecodeCase(b, t, *cfg["heads"]) for b in cfg["batches"] for t in cfg["cached"]]


def decode_providers(case: DecodeCase, device, dtype) -> dict[str, Callable[[], torch.Tensor]]:
    """Each provider's call for one decode step of ``case``. The cache is laid out as its owner keeps it:
    fastgpt's ``KVCache`` buffers ``(B, Hkv, max_len, D)`` sliced to the cached length (and a left-padded
    ``doc_ids`` row, as the engine batches prompts), flash-attn's ``(B, max_len, Hkv, D)`` with
    ``cache_seqlens``; SDPA reads fastgpt's slices (what ``FASTGPT_ATTENTION=sdpa`` runs)."""
    from fastgpt.kernels.attention import attention_reference, attention_triton
    from fastgpt.kernels.attention_decode import attention_decode

    B, T, max_len = case.batch, case.cached, case.cached + 64
    q = torch.randn(B, case.hq, 1, case.d, device=device, dtype=dtype)
    k_buf, v_buf = (torch.randn(B, case.hkv, max_len, case.d, device=device, dtype=dtype) for _ in "kv")
    k, v = k_buf[:, :, :T], v_buf[:, :, :T]
    doc = torch.ones(B, max_len, dtype=torch.int32, device=device)
    doc[B // 2 :, : T // 8] = 0  # half the rows padded on the left by an eighth of the cache
    providers = {
        "fastgpt-triton": lambda: attention_decode(q, k, v),
        "fastgpt-triton doc_ids": lambda: attention_decode(q, k, v, doc_ids=doc[:, :T]),
        "fastgpt-triton training fwd": lambda: attention_triton(q, k, v),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=case.hq != case.hkv),
        "sdpa doc_ids": lambda: attention_reference(q, k, v, doc_ids=doc[:, :T]),
    }
    try:
        from flash_attn import flash_attn_with_kvcache

        fa_k, fa_v = (x.transpose(1, 2).contiguous() for x in (k_buf, v_buf))
        seqlens = torch.full((B,), T, dtype=torch.int32, device=device)
        fa_q = q.transpose(1, 2).contiguous()
        providers["flash-attn kvcache"] = lambda: flash_attn_with_kvcache(
            fa_q, fa_k, fa_v, cache_seqlens=seqlens, causal=True
        ).transpose(1, 2)
    except ImportError:
        pass
    return providers


def run_decode(size: str) -> list[Row]:
    """Every provider on every case: the median time (``do_bench``) on CUDA, and its largest difference
    from SDPA's output (with the same left-padding mask for the ``doc_ids`` providers); on CPU (``--smoke``, interpreter for the Triton providers) one call each."""
    cuda = torch.cuda.is_available() and size != "smoke"
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    tbps = hbm_tbps(name)
    rows = []
    for case in decode_cases(size):
        providers = decode_providers(case, device, dtype)
        with torch.no_grad():
            want = {ref: providers[ref]().float() for ref in ("sdpa", "sdpa doc_ids")}
            for provider, fn in providers.items():
                row = Row(
                    "decode_attention", provider, "fwd", case.shape, str(dtype).replace("torch.", ""), name
                )
                try:
                    ref = "sdpa doc_ids" if "doc_ids" in provider else "sdpa"
                    err = (fn().float() - want[ref]).abs().max().item()
                    if cuda:
                        import triton.testing

                        row.ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
                        row.gbps = case.bytes(dtype.itemsize) / row.ms / 1e6
                        row.pct_peak = 100 * row.gbps / (tbps * 1000)
                        met = "met" if row.pct_peak >= DECODE_TARGET_PCT else "NOT met"
                        row.note = f"target >= {DECODE_TARGET_PCT:.0f} % of {tbps} TB/s: {met}; "
                    row.note += f"max|diff vs {ref}| {err:.2g}"
                except Exception as e:  # noqa: BLE001 - one failing provider must not hide the others
                    row.note = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                rows.append(row)
                print(f"{case.shape:32s} {provider:28s} {_fmt(row.ms)} ms {_fmt(row.gbps)} GB/s "
                      f"{_fmt(row.pct_peak)} %  {row.note}", flush=True)  # fmt: skip
        del providers
        if cuda:
            torch.cuda.empty_cache()
    return rows


def write_decode_report(rows: list[Row], out_dir: str) -> None:
    """``decode.csv`` and ``decode.md``: one row per (case, provider)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "decode.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    lines = ["| shape | provider | ms | GB/s | % HBM | note |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r.shape} | {r.provider} | {_fmt(r.ms)} | {_fmt(r.gbps)} | {_fmt(r.pct_peak)} | {r.note} |"
        for r in rows
    ]
    with open(os.path.join(out_dir, "decode.md"), "w") as f:
        f.write(f"decode attention on {rows[0].device}, {rows[0].dtype}\n\n" + "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ GPU run
def measure(op: Op, name: str, provider: Provider, device, dtype) -> list[Row]:
    import triton.testing

    rows = []
    base = op.make(device, dtype)
    dtype_name = str(dtype).replace("torch.", "")
    gpu = torch.cuda.get_device_name(device)
    times = {}
    for mode in ("fwd", "fwd+bwd"):
        row = Row(op.name, name, mode, op.shape, dtype_name, gpu)
        try:
            leaves, forward = provider(base)
            step = forward if mode == "fwd" else (lambda f=forward: _backward(f()))
            if mode == "fwd":
                torch.set_grad_enabled(False)
            step()  # warm up / compile
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            step()
            torch.cuda.synchronize()
            row.peak_mem_mb = (torch.cuda.max_memory_allocated(device) - before) / 2**20
            row.ms = triton.testing.do_bench(
                step, warmup=25, rep=100, grad_to_none=leaves, return_mode="median"
            )
            times[mode] = row.ms
        except Exception as e:  # noqa: BLE001 - one failing provider must not hide the others
            row.note = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        finally:
            torch.set_grad_enabled(True)
        _rate(row, op.work(mode))
        target = ATTENTION_TARGET_TFLOPS.get(mode) if op.name.startswith("attention") else None
        if target and row.tflops:
            met = "met" if row.tflops >= target else "NOT met"
            row.note += (
                f"{'; ' if row.note else ''}target >= {target:.0f} TFLOP/s (issue 13, H100 d128 T4096): {met}"
            )
        rows.append(row)
    if "fwd" in times and "fwd+bwd" in times:
        row = Row(op.name, name, "bwd", op.shape, dtype_name, gpu, ms=times["fwd+bwd"] - times["fwd"])
        kind, full = op.work("fwd+bwd")
        rows.append(_rate(row, (kind, full - op.work("fwd")[1]), note="(fwd+bwd) - fwd"))
    return rows


def _rate(row: Row, work: tuple[str, float], note: str = "") -> Row:
    kind, amount = work
    if row.ms:
        if kind == "flops":
            row.tflops = amount / row.ms / 1e9
            row.pct_peak = 100 * row.tflops / PEAK_TFLOPS
        else:
            row.gbps = amount / row.ms / 1e6
            row.pct_peak = 100 * row.gbps / (PEAK_TBPS * 1000)
    row.note = row.note or note
    return row


def run_gpu(args) -> list[Row]:
    device, dtype = torch.device("cuda"), torch.bfloat16
    rows = []
    for op in build_ops("quick" if args.quick else "full"):
        if args.ops and op.name not in args.ops:
            continue
        for name, provider in op.providers.items():
            rows += measure(op, name, provider, device, dtype)
            print(
                f"{op.name:22s} {name:24s} " + "  ".join(f"{r.mode}={_fmt(r.ms)}ms" for r in rows[-3:]),
                flush=True,
            )
            torch.cuda.empty_cache()
    return rows


def run_smoke(only: list[str] | None = None) -> int:
    """Every provider's forward+backward once at tiny fp32 shapes on CPU: the plumbing of the GPU run
    (Triton providers need TRITON_INTERPRET=1; compiled, SDPA-backend and GPU-only providers are skipped
    with a note). Times nothing."""
    failures = 0
    for op in build_ops("smoke"):
        if only and op.name not in only:
            continue
        base = op.make(torch.device("cpu"), torch.float32)
        for name, provider in op.providers.items():
            if "compile" in name or name.startswith(("sdpa-", "flash-attn", "liger")):
                print(f"{op.name:22s} {name:24s} skipped (GPU only)")
                continue
            try:
                leaves, forward = provider(base)
                _backward(forward())
                assert all(t.grad is not None for t in leaves), "no gradient reached an input"
                print(f"{op.name:22s} {name:24s} ok")
            except Exception as e:  # noqa: BLE001 - report every provider
                failures += 1
                print(f"{op.name:22s} {name:24s} FAILED {type(e).__name__}: {e}")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------ CPU run
CPU_VOCABS = (32768, 65536, 131072)
CPU_TOKENS, CPU_HIDDEN = 2048, 512
CPU_TIMED_RUNS = 5


def _rss_worker(method: str, vocab: int) -> None:
    """In a fresh process: peak resident-set growth of one forward+backward, then the median time of
    ``CPU_TIMED_RUNS`` more."""
    import resource

    from fastgpt.kernels.cross_entropy import linear_cross_entropy_chunked, linear_cross_entropy_reference

    torch.set_num_threads(2)
    torch.manual_seed(0)
    fn = linear_cross_entropy_reference if method == "naive" else linear_cross_entropy_chunked
    hidden = torch.randn(CPU_TOKENS, CPU_HIDDEN, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(vocab, CPU_HIDDEN, dtype=torch.bfloat16).mul_(CPU_HIDDEN**-0.5).requires_grad_()
    targets = torch.randint(0, vocab, (CPU_TOKENS,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, high-water mark so far
    fn(hidden, weight, targets).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []  # CPU time is a side note here: the median of CPU_TIMED_RUNS runs after the measured one
    for _ in range(CPU_TIMED_RUNS):
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        fn(hidden, weight, targets).backward()
        times.append(1000 * (time.perf_counter() - start))
    print(json.dumps({"peak_mem_mb": (peak - before) / 1024, "ms": statistics.median(times)}))


def run_cpu() -> list[Row]:
    rows = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # large blocks via mmap: freed = returned
    for vocab in CPU_VOCABS:
        for method in ("naive", "chunked"):
            out = subprocess.run(
                [sys.executable, __file__, "--_rss-worker", method, str(vocab)],
                capture_output=True, text=True, env=env, check=True,
            ).stdout  # fmt: skip
            result = json.loads(out.strip().splitlines()[-1])
            shape = f"N{CPU_TOKENS} C{CPU_HIDDEN} V{vocab}"
            provider = "torch naive" if method == "naive" else "torch chunked"
            rows.append(Row("linear_cross_entropy", provider, "fwd+bwd", shape, "bfloat16", "cpu", ms=result["ms"],
                            peak_mem_mb=result["peak_mem_mb"], note="CPU, 2 threads"))  # fmt: skip
            print(
                f"V={vocab:6d} {provider:14s} peak +{result['peak_mem_mb']:8.1f} MB  {result['ms']:8.1f} ms",
                flush=True,
            )
    return rows


# ----------------------------------------------------------------------------------------- reports
def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def write_reports(rows: list[Row], out_dir: str, stem: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    header = "| op | shape | provider | mode | ms | TFLOP/s | GB/s | % peak | peak mem (MB) | note |"
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        cells = [r.op, r.shape, r.provider, r.mode, _fmt(r.ms), _fmt(r.tflops), _fmt(r.gbps), _fmt(r.pct_peak),
                 _fmt(r.peak_mem_mb), r.note]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(rows, os.path.join(out_dir, f"{stem}.png"))


BASELINES = ("torch", "torch naive", "sdpa-flash")  # what "1.0x" means in the plot, per op


def _plot(rows: list[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpu = rows[0].device == "cpu"
    metric = "peak_mem_mb" if cpu else "ms"
    mode = "fwd+bwd"
    ops = list(dict.fromkeys(r.op + ("\n" + r.shape if cpu else "") for r in rows if r.mode == mode))
    providers = list(dict.fromkeys(r.provider for r in rows if r.mode == mode))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(ops) * max(1, len(providers)) / 3), 4.5))
    width = 0.8 / max(1, len(providers))
    for i, provider in enumerate(providers):
        values = []
        for label in ops:
            match = [r for r in rows if r.mode == mode and r.provider == provider
                     and r.op + ("\n" + r.shape if cpu else "") == label]  # fmt: skip
            baseline = sorted(
                (r for r in rows if r.mode == mode and r.provider in BASELINES and getattr(r, metric)
                 and r.op + ("\n" + r.shape if cpu else "") == label),
                key=lambda r: BASELINES.index(r.provider),
            )  # fmt: skip
            value = getattr(match[0], metric) if match and getattr(match[0], metric) else None
            ref = getattr(baseline[0], metric) if baseline else None
            values.append(value if cpu else (ref / value if value and ref else math.nan))
        ax.bar([j + i * width for j in range(len(ops))], values, width, label=provider)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ops))], ops, fontsize=8)
    ax.set_ylabel(
        "peak memory above inputs (MB)" if cpu else "speed-up vs torch eager / SDPA-flash (fwd+bwd)"
    )
    ax.set_title("fused linear cross-entropy, CPU" if cpu else f"fastgpt kernels, {rows[0].device}, bf16")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="directory for CSV, markdown and PNG")
    parser.add_argument("--quick", action="store_true", help="smaller GPU shapes")
    parser.add_argument("--smoke", action="store_true", help="run every provider once at tiny CPU shapes")
    parser.add_argument("--ops", nargs="*", help="only these ops (GPU and smoke runs)")
    parser.add_argument(
        "--decode",
        action="store_true",
        help="the decode-attention benchmark instead (batch 1/8/64, 1k-32k cached tokens; decode.csv/.md)",
    )
    parser.add_argument("--_rss-worker", nargs=2, metavar=("METHOD", "VOCAB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._rss_worker:
        _rss_worker(args._rss_worker[0], int(args._rss_worker[1]))
        return 0
    if args.decode:
        if not torch.cuda.is_available() and not args.smoke:
            print("decode benchmark: GPU numbers unmeasured (no CUDA device here); cases:")
            for case in decode_cases("quick" if args.quick else "full"):
                print(f"  {case.shape}: {case.bytes(2) / 1e6:.1f} MB of compulsory traffic in bf16")
            return 0
        rows = run_decode("smoke" if args.smoke else "quick" if args.quick else "full")
        write_decode_report(rows, args.out)
        print(f"wrote {args.out}/decode.{{csv,md}}")
        return 1 if any("Error" in r.note for r in rows) else 0
    if args.smoke:
        return run_smoke(args.ops)
    if torch.cuda.is_available():
        rows = run_gpu(args)
        write_reports(rows, args.out, "kernels")
    else:
        rows = run_cpu()
        write_reports(rows, args.out, "kernels_cpu")
        for vocab in CPU_VOCABS:
            naive, chunked = (next(r for r in rows if r.provider == p and r.shape.endswith(f"V{vocab}"))
                              for p in ("torch naive", "torch chunked"))  # fmt: skip
            print(f"V={vocab}: chunked/naive peak memory {chunked.peak_mem_mb / naive.peak_mem_mb:.3f}, "
                  f"time {chunked.ms / naive.ms:.2f}x (CPU)")  # fmt: skip
        print("GPU numbers: unmeasured (no CUDA device here)")
    print(f"wrote {args.out}/kernels{'' if torch.cuda.is_available() else '_cpu'}.{{csv,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
