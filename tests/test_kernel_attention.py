"""Triton flash attention (kernels/attention.py) against the fp32 materialised-softmax baseline.

Runs under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), where the tiles are
32x16 (forward, dQ) and 16x32 (dK/dV), so lengths like 77 cross several tiles, end on a ragged one and
put the causal diagonal, window edges and document edges inside tiles. The same tests run in GPU mode
(``FASTGPT_TEST_DEVICE=cuda``) and GPU-tiles mode (``FASTGPT_KERNEL_ARCH=sm80|sm90``): there inputs
asked for in fp32 are made fp16 (``kernel_modes.attention_dtype``: the kernel is fp16/bf16-only on a GPU)
and tile-dependent sizes come from the tile table the launcher picks for that target.

Tolerances, as ``max|got - want| <= atol + rtol * max|want|`` (scale-aware, since gradients vary in
size):
- fp32 1e-4: same maths, different summation order and exp2 instead of exp (observed ~1e-6).
- fp16 5e-3: P and dS are rounded to fp16 before their matmuls and results are stored in fp16
  (unit roundoff 4.9e-4; observed ~1e-3 on outputs of size ~3).
- bf16 2e-2: the interpreter cannot do bf16 arithmetic, so the kernels upcast bf16 loads to fp32
  (``UPCAST``) and only the stores round, by truncation in the interpreter (1 ulp = 2^-7 relative).
  The real bf16 ``tl.dot`` path is covered by AOT compilation only (kernels/build_check.py).
Budget: about 40 s on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from fastgpt.kernels.attention import (
    AOT_CONFIGS,
    SUPPORTED_HEAD_DIMS,
    attention_naive,
    attention_reference,
    attention_triton,
    document_extents,
    tile_configs,
)
from fastgpt.kernels.attention_backward import AOT_CONFIGS as BACKWARD_AOT_CONFIGS
from fastgpt.kernels.attention_flash_attn import attention_flash_attn, doc_ids_to_cu_seqlens
from kernel_modes import attention_dtype, attention_dtype_for, target_arch

from fastgpt import ops

TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEFAULT_DTYPE = torch.float32  # what a test gets when it names none (before attention_dtype)


def _inputs(B, Hq, Hkv, Tq, Tk, D, dtype=DEFAULT_DTYPE):
    dtype = attention_dtype(dtype)
    q = torch.randn(B, Hq, Tq, D).to(dtype)
    k = torch.randn(B, Hkv, Tk, D).to(dtype)
    v = torch.randn(B, Hkv, Tk, D).to(dtype)
    return q, k, v


def _assert_close(got, want, tol, what):
    err = (got.float() - want.float()).abs().max().item()
    bound = tol + tol * want.float().abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def _check(q, k, v, **kw):
    """Forward and dQ/dK/dV of the Triton kernel vs attention_naive in fp32 on the same inputs."""
    tol = TOL[q.dtype]
    grad_out = torch.randn(q.shape).to(q.dtype)
    xs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attention_triton(*xs, **kw)
    out.backward(grad_out)
    refs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    want = attention_naive(*refs, **kw)
    want.backward(grad_out.float())
    assert out.dtype == q.dtype and out.shape == q.shape
    assert torch.isfinite(out).all()
    _assert_close(out, want, tol, "output")
    for name, x, r in zip("qkv", xs, refs):
        assert x.grad.dtype == x.dtype and torch.isfinite(x.grad).all()
        _assert_close(x.grad, r.grad, tol, f"d{name}")
    return out, xs


# ----------------------------------------------------------------------------------- shapes and dtypes
def test_power_of_two_shape_fp32():
    _check(*_inputs(2, 2, 2, 64, 64, 64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_odd_length(dtype):
    _check(*_inputs(2, 2, 2, 77, 77, 64, dtype))


@pytest.mark.parametrize("D", [32, 96, 128])
def test_head_dims(D):
    dtype = torch.float16 if D == 128 else torch.float32
    _check(*_inputs(1, 2, 1, 37, 37, D, dtype))


def test_unsupported_head_dim_is_a_clear_error():
    with pytest.raises(ValueError, match="32, 64, 96, 128"):
        attention_triton(*_inputs(1, 1, 1, 8, 8, 48))


@pytest.mark.parametrize("Hkv", [2, 1])
def test_grouped_query_attention(Hkv):
    _check(*_inputs(2, 4, Hkv, 45, 45, 32))


def test_non_contiguous_inputs():
    """(B, T, H, D) projections viewed as (B, H, T, D), and a head dim with stride != 1."""
    B, T, H, D = 2, 33, 2, 32
    qkv = torch.randn(B, T, 3, H, D).to(attention_dtype())
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # strided views, last stride 1
    assert not q.is_contiguous()
    _check(q, k, v)
    q_t = torch.randn(B, H, D, T).to(q.dtype).transpose(-1, -2)  # stride(-1) == T
    _check(q_t, k, v)


# ------------------------------------------------------------------------------------ masking options
def test_non_causal_with_custom_scale():
    _check(*_inputs(1, 2, 2, 50, 50, 64), causal=False, scale=0.3)


@pytest.mark.parametrize("window", [1, 16])
def test_sliding_window(window):
    _check(*_inputs(1, 2, 1, 77, 77, 32), window=window)


def test_sliding_window_non_causal():
    _check(*_inputs(1, 2, 2, 60, 60, 32), causal=False, window=10)


def _packed_doc_ids():
    """Row 0: documents of 10, 1 (a single token), 30 and 36 tokens; row 1: one document."""
    return torch.tensor([[0] * 10 + [1] + [2] * 30 + [3] * 36, [7] * 77])


def test_packed_documents():
    _check(*_inputs(2, 4, 1, 77, 77, 32), doc_ids=_packed_doc_ids())


def test_packed_documents_with_window():
    _check(*_inputs(2, 2, 2, 77, 77, 32), doc_ids=_packed_doc_ids(), window=12)


def test_document_ids_need_not_be_contiguous_runs():
    """An id that reappears (e.g. a padding id on both ends) still joins its earlier tokens."""
    doc = torch.tensor([[5] * 6 + [1] * 20 + [5] * 9 + [2] * 15])
    _check(*_inputs(1, 2, 1, 50, 50, 32), doc_ids=doc)


@pytest.mark.parametrize("Tq", [1, 20])
def test_decode_alignment_with_kv_cache(Tq):
    """Tq < Tk: query i sits at key position Tk - Tq + i (bottom-right causal alignment)."""
    _check(*_inputs(2, 2, 1, Tq, 70, 32))


def test_decode_with_left_padding_doc_ids():
    doc = torch.tensor([[0] * 70, [-1] * 25 + [0] * 45])  # row 1 is left-padded
    _check(*_inputs(2, 2, 2, 5, 70, 32), doc_ids=doc)


def test_rows_without_visible_keys_are_zero():
    """Tq > Tk, causal: the first Tq - Tk queries see no key at all and must give 0, not NaN."""
    out, xs = _check(*_inputs(1, 2, 2, 40, 24, 32))
    assert out[:, :, :16].abs().max() == 0
    assert xs[0].grad[:, :, :16].abs().max() == 0


@pytest.mark.slow
def test_random_configurations():
    """60 random mixes of lengths (incl. Tq > Tk), head dims, GQA groups, window, scale, causal and
    document layouts (sorted runs and scattered ids), fp32."""
    import random

    rng = random.Random(1)
    for _ in range(60):
        Hkv, B = rng.choice([1, 2]), rng.choice([1, 2])
        Hq = Hkv * rng.choice([1, 2, 3])
        Tk = rng.randint(1, 70)
        Tq = rng.randint(1, Tk) if rng.random() < 0.7 else rng.randint(1, 80)
        doc = None
        if Tq <= Tk and rng.random() < 0.5:
            doc = torch.randint(0, rng.choice([1, 2, 4]), (B, Tk))
            doc = doc.sort(dim=1).values if rng.random() < 0.5 else doc
        kw = dict(
            causal=rng.random() < 0.7,
            window=rng.choice([None, None, 1, 3, 17, 40]),
            scale=rng.choice([None, 0.2]),
            doc_ids=doc,
        )
        _check(*_inputs(B, Hq, Hkv, Tq, Tk, rng.choice(SUPPORTED_HEAD_DIMS)), **kw)


# ---------------------------------------------------------------------------------- skipping of tiles
def _key_block(head_dim: int) -> int:
    """The widest key tile any attention kernel uses here: the tile table the launcher picks for this
    run's target (interpreter, or the GPU's / forced architecture)."""
    return max(cfg.block_n for cfg in tile_configs(head_dim, target_arch()).values())


def _hidden_tiles_poisoned(q, k, v, first_visible_key):
    """NaN in every key/value tile that lies wholly before ``first_visible_key``: visiting such a tile
    at all (even masked) would turn the output into NaN, so a finite, correct result proves it was
    skipped. Tile edges come from the launcher's own tile table (key tiles are powers of two, so a
    multiple of the widest is a tile edge of every kernel)."""
    block = _key_block(q.shape[-1])
    hidden = (first_visible_key // block) * block
    assert hidden > 0
    k, v = k.clone(), v.clone()
    k[:, :, :hidden] = float("nan")
    v[:, :, :hidden] = float("nan")
    return k, v, hidden


@pytest.mark.parametrize("mode", ["window", "documents"])
def test_hidden_tiles_are_skipped(mode):
    B, H, Tq, D = 1, 2, 8, 32
    block = _key_block(D)
    Tk = 2 * block + 13  # two whole key tiles, then a ragged one holding the queries' keys
    q, k, v = _inputs(B, H, H, Tq, Tk, D)
    if mode == "window":
        kw, first_visible = dict(window=10), Tk - Tq - 10 + 1
    else:
        doc = torch.tensor([[0] * (Tk - 27) + [1] * 27])  # all queries are in document 1
        kw, first_visible = dict(doc_ids=doc), Tk - 27
    want = attention_naive(q, k, v, **kw)
    k_bad, v_bad, hidden = _hidden_tiles_poisoned(q, k, v, first_visible)
    xs = [t.clone().requires_grad_() for t in (q, k_bad, v_bad)]
    out = attention_triton(*xs, **kw)
    out.float().sum().backward()
    _assert_close(out, want, TOL[q.dtype], "output")
    assert torch.isfinite(xs[0].grad).all()
    for x in xs[1:]:
        assert (x.grad[:, :, :hidden] == 0).all() and torch.isfinite(x.grad).all()


def test_document_extents_match_brute_force():
    doc = torch.randint(0, 4, (3, 41))
    lo, hi, run_lo, run_hi = document_extents(doc).unbind(1)
    for b in range(doc.shape[0]):
        for t in range(doc.shape[1]):
            where = (doc[b] == doc[b, t]).nonzero().flatten()
            assert (lo[b, t].item(), hi[b, t].item()) == (where.min().item(), where.max().item() + 1)
            first, last = t, t
            while first > 0 and doc[b, first - 1] == doc[b, t]:
                first -= 1
            while last + 1 < doc.shape[1] and doc[b, last + 1] == doc[b, t]:
                last += 1
            assert (run_lo[b, t].item(), run_hi[b, t].item()) == (first, last + 1)


# --------------------------------------------------------------------------------------- entry points
def test_ops_dispatch_reaches_the_triton_kernel():
    q, k, v = _inputs(1, 4, 2, 30, 30, 64)
    doc = torch.tensor([[0] * 12 + [1] * 18])
    with ops.use_backend("triton"):
        got = ops.attention(q, k, v, doc_ids=doc)
    _assert_close(got, attention_reference(q, k, v, doc_ids=doc), TOL[q.dtype], "ops.attention")


def test_bad_arguments_are_clear_errors():
    q, k, v = _inputs(1, 2, 2, 8, 8, 32)
    with pytest.raises(ValueError, match="window"):
        attention_triton(q, k, v, window=0)
    with pytest.raises(ValueError, match="doc_ids"):
        attention_triton(q, k, v, doc_ids=torch.zeros(1, 7, dtype=torch.long))
    other = torch.bfloat16 if q.dtype == torch.float16 else torch.float16
    with pytest.raises(ValueError, match="dtype"):
        attention_triton(q, k.to(other), v)
    with pytest.raises(ValueError, match="multiple"):
        attention_triton(torch.randn(1, 3, 8, 32).to(q.dtype), k, v)


def test_fp32_is_refused_for_gpu_tiles_only():
    """The kernel's own dtype rule (a pure function of dtype and launch target): fp32 runs on the
    interpreter's tiles, never with a GPU's; half precision runs everywhere."""
    from fastgpt.kernels.attention import check_dtype

    for arch in (None, "sm80", "sm90", "cuda"):
        for dtype in (torch.float16, torch.bfloat16):
            check_dtype(dtype, arch)
    check_dtype(torch.float32, None)
    for arch in ("sm80", "sm90", "cuda"):
        with pytest.raises(ValueError, match="float16 or bfloat16"):
            check_dtype(torch.float32, arch)


def _dtypes_named_by_tests() -> set[torch.dtype]:
    """Every dtype a test of this module asks for: its parametrisations and the default of _inputs."""
    named = {DEFAULT_DTYPE}
    for fn in list(globals().values()):
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize":
                for value in mark.args[1]:
                    named |= {
                        v
                        for v in (value if isinstance(value, tuple) else (value,))
                        if isinstance(v, torch.dtype)
                    }
    return named


def test_gpu_runs_only_give_the_kernel_dtypes_it_takes():
    """For every dtype a test here asks for, the dtype it hands the kernel in GPU mode and in GPU-tiles
    mode passes the kernel's own input check for that target: the GPU suite cannot fail on a dtype
    rejection. (``test_head_dims`` and the default fp32 are among them; the check is the kernel's.)"""
    from fastgpt.kernels.attention import check_dtype

    named = _dtypes_named_by_tests()
    assert {torch.float32, torch.float16, torch.bfloat16} <= named
    for arch in ("cuda", "sm80", "sm90"):
        for dtype in named:
            check_dtype(attention_dtype_for(dtype, arch), arch)


def test_flash_attn_cu_seqlens_from_doc_ids():
    doc = torch.tensor([[0, 0, 0, 1, 2, 2], [4, 4, 4, 4, 4, 4]])
    cu, max_len = doc_ids_to_cu_seqlens(doc)
    assert cu.tolist() == [0, 3, 4, 6, 12] and max_len == 6
    with pytest.raises(ValueError, match="contiguous run"):
        doc_ids_to_cu_seqlens(torch.tensor([[0, 0, 1, 0]]))


def test_flash_attn_wrapper_says_why_it_cannot_run_here():
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed on this GPU machine: the wrapper can run, nothing to refuse")
    q, k, v = _inputs(1, 2, 2, 8, 8, 32)
    with pytest.raises((ImportError, RuntimeError), match="flash-attn|CUDA"):
        attention_flash_attn(q, k, v)


# ------------------------------------------------------------------------------ ahead-of-time configs
def test_aot_configs_cover_every_launch_choice():
    """Every (head dim, arch, kernel role) tile choice of the launcher appears in AOT_CONFIGS for both
    dtypes, with a signature naming every kernel argument."""
    names = {e["name"] for e in AOT_CONFIGS + BACKWARD_AOT_CONFIGS}
    for entry in AOT_CONFIGS + BACKWARD_AOT_CONFIGS:
        assert list(entry["signature"]) == entry["fn"].arg_names
        assert all(entry["signature"][c] == "constexpr" for c in entry["constexprs"])
    kernels = {"fwd": "attn_fwd", "bwd_dkdv": "attn_bwd_dkdv", "bwd_dq": "attn_bwd_dq"}
    for dtype in ("bf16", "fp16"):
        for head_dim in SUPPORTED_HEAD_DIMS:
            for arch in ("sm80", "sm90"):
                for role, cfg in tile_configs(head_dim, arch).items():
                    name = (
                        f"{kernels[role]} d{head_dim} {dtype} {arch}-tiles M{cfg.block_m} N{cfg.block_n} "
                        f"w{cfg.num_warps} s{cfg.num_stages} causal"
                    )
                    assert name in names


_AOT_SCRIPT = """
import os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastgpt.kernels.attention import AOT_CONFIGS
from fastgpt.kernels.attention_backward import AOT_CONFIGS as BACKWARD
from fastgpt.kernels.build_check import sass_counts
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
for e in AOT_CONFIGS + BACKWARD:
    if " d128 bf16 sm90-tiles" in e["name"] and e["name"].endswith(" causal"):
        src = ASTSource(fn=e["fn"], signature=e["signature"], constexprs=e["constexprs"], attrs=e["attrs"])
        options = dict(num_warps=e["num_warps"], num_stages=e["num_stages"])
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True)
        stack = re.search(r"STACK:(\\d+)", usage.stdout).group(1)
        tma_loads = sass_counts(kernel.asm["cubin"])["UTMALDG"]
        print(e["name"], kernel.metadata.shared, stack, tma_loads)
"""


def test_aot_compile_for_hopper_fits_and_does_not_spill():
    """The real compiler (no GPU needed) on the training configuration: d128, bf16, causal, sm_90;
    the forward's TMA build must really issue TMA loads (UTMALDG in its SASS), the others none. It runs in a fresh process because the interpreter replaces the kernels in this one."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.rsplit(" ", 3) for line in run.stdout.strip().splitlines()]
    assert len(rows) == 4, run.stdout  # forward (pointer and TMA builds), dK/dV, dQ
    for name, shared, stack, tma_loads in rows:
        assert int(shared) <= 228 * 1024, f"{name}: {shared} bytes of shared memory"
        assert int(stack) == 0, f"{name} spills {stack} bytes"
        assert (int(tma_loads) > 0) == (" tma " in name), f"{name}: {tma_loads} UTMALDG"
