"""Split-KV decode attention (kernels/attention_decode.py) against the fp32 materialised-softmax baseline.

Under the interpreter the key tiles are 16 wide and the keys are cut into up to 4 splits, so a few
hundred keys cross many tiles and every split boundary; in GPU mode (``FASTGPT_TEST_DEVICE=cuda``) and
GPU-tiles mode (``FASTGPT_KERNEL_ARCH``) the arch family's tiles and split counts run instead, with fp32
inputs made fp16 (``kernel_modes.attention_dtype``). Tolerances as in test_kernel_attention.py (fp32
1e-4, fp16 5e-3, bf16 2e-2 of ``1 + max|want|``). Budget: about 30 s on 2 cores (slow cases: Tk 1-4k).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from fastgpt.kernels._launches import missing_from_aot, recording
from fastgpt.kernels.attention import attention_naive
from fastgpt.kernels.attention_decode import (
    AOT_CONFIGS,
    DECODE_MAX_QUERIES,
    MIN_SPLIT_KEYS,
    attention_decode,
    decode_splits,
    decode_tiles,
)
from kernel_modes import TEST_DEVICE, attention_dtype

from fastgpt import ops

TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _inputs(B, Hq, Hkv, Tq, Tk, D, dtype=torch.float32):
    dtype = attention_dtype(dtype)
    return (torch.randn(B, Hq, Tq, D).to(dtype), *(torch.randn(B, Hkv, Tk, D).to(dtype) for _ in "kv"))


def _check(q, k, v, **kw):
    got = attention_decode(q, k, v, **kw)
    kw.pop("num_splits", None)
    want = attention_naive(q.float(), k.float(), v.float(), **kw)
    assert got.dtype == q.dtype and got.shape == q.shape and torch.isfinite(got).all()
    err = (got.float() - want).abs().max().item()
    bound = TOL[q.dtype] * (1 + want.abs().max().item())
    assert err <= bound, f"max error {err:.3g} > {bound:.3g}"
    return got


def _left_padding(B, Tk, pads):
    """The engine's prefill ids: 0 on each row's left padding, 1 on its prompt (and everything after)."""
    doc = torch.ones(B, Tk, dtype=torch.int32)
    for b, pad in enumerate(pads):
        doc[b, :pad] = 0
    return doc


# ------------------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize(
    "Tq, Hq, Hkv, D, dtype",
    [
        (1, 4, 4, 64, torch.float32),  # GQA 1 (gpt2)
        (1, 8, 4, 128, torch.float16),  # GQA 2
        (2, 8, 2, 64, torch.float32),  # GQA 4 (llama-1b)
        (7, 8, 1, 64, torch.float16),  # GQA 8: 56 packed rows
        (1, 9, 3, 64, torch.float32),  # GQA 3 (SmolLM2-135M: 9 query heads on 3 K/V heads)
        (7, 6, 2, 32, torch.float32),
        (2, 4, 1, 96, torch.float16),  # 96 runs on 128-wide tiles, last 32 columns masked
    ],
)
def test_matches_reference(Tq, Hq, Hkv, D, dtype):
    _check(*_inputs(2, Hq, Hkv, Tq, 93, D, dtype))


@pytest.mark.parametrize("Tq", [1, 2, 7])
def test_left_padded_rows(Tq):
    """Rows padded on the left as the engine batches prompts of different lengths: padding is its own
    document, so real queries never see it."""
    B, Tk = 3, 70
    q, k, v = _inputs(B, 4, 2, Tq, Tk, 64, torch.float16)
    _check(q, k, v, doc_ids=_left_padding(B, Tk, [0, 17, 40]))


def test_documents_and_window():
    """Several documents per row (one not a contiguous run) and a sliding window; the window skips the
    keys before the first query's window entirely, the rest is masked."""
    q, k, v = _inputs(2, 4, 2, 7, 90, 64)
    doc = torch.zeros(2, 90, dtype=torch.int32)
    doc[0, 30:60], doc[0, 60:] = 1, 2
    doc[1, 10:40], doc[1, 85:] = 3, 3
    _check(q, k, v, doc_ids=doc)
    _check(q, k, v, doc_ids=doc, window=40)
    _check(q, k, v, window=1)


def test_non_causal_with_custom_scale():
    _check(*_inputs(1, 4, 2, 3, 50, 64), causal=False, scale=0.3)


@pytest.mark.parametrize("num_splits", [1, 3, 100])
def test_any_split_count_gives_the_same_output(num_splits):
    """One split, uneven splits, more splits than tiles (capped); with documents some splits see no key
    of a row at all (their -inf log-sum-exp must get weight 0 in the combine)."""
    q, k, v = _inputs(1, 4, 2, 2, 150, 64)
    doc = torch.zeros(1, 150, dtype=torch.int32)
    doc[0, 100:] = 1
    _check(q, k, v, doc_ids=doc, num_splits=num_splits)


def test_bf16_through_the_upcast():
    _check(*_inputs(2, 4, 2, 2, 60, 64, torch.bfloat16))


def test_reads_the_kv_cache_buffers_in_place():
    """K/V as ``KVCache`` stores them: ``(B, Hkv, max_len, D)`` buffers sliced to the cached length, doc
    ids a ``(B, max_len)`` buffer sliced likewise; the new query viewed out of a ``(B, T, H, D)``
    projection. Same output as the contiguous copies."""
    B, Hq, Hkv, Tq, D, max_len, Tk = 2, 8, 2, 1, 64, 160, 97
    dtype = attention_dtype(torch.float32)
    k_buf, v_buf = (torch.randn(B, Hkv, max_len, D).to(dtype) for _ in "kv")
    doc_buf = torch.full((B, max_len), 7, dtype=torch.int32)
    doc_buf[:, :Tk] = _left_padding(B, Tk, [5, 0])
    q = torch.randn(B, Tq, Hq, D).to(dtype).transpose(1, 2)
    k, v, doc = k_buf[:, :, :Tk], v_buf[:, :, :Tk], doc_buf[:, :Tk]
    assert not k.is_contiguous() and not doc.is_contiguous()
    got = _check(q, k, v, doc_ids=doc)
    torch.testing.assert_close(got, attention_decode(q.contiguous(), k.contiguous(), v.contiguous(),
                                                     doc_ids=doc.contiguous()), atol=1e-6, rtol=0)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("Tq", [1, 7])
@pytest.mark.parametrize("Tk, Hkv", [(1000, 8), (4000, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_long_caches(Tq, Tk, Hkv, dtype):
    q, k, v = _inputs(2, 8, Hkv, Tq, Tk, 128, dtype)
    _check(q, k, v, doc_ids=_left_padding(2, Tk, [0, 333]))


# ----------------------------------------------------------------------------------- launch decisions
def test_split_counts():
    # H100 (132 SMs), batch 1 x 8 K/V heads: about two programs per SM once the cache is long enough
    assert decode_splits(8, 32768, 64, 132) == (32, 1024)
    assert decode_splits(8, 1024, 64, 132) == (4, 256)  # MIN_SPLIT_KEYS keys each
    assert decode_splits(512, 32768, 64, 132) == (1, 32768)  # batch 64 fills the GPU alone
    assert decode_splits(1, 10**6, 64, 132) == (128, 7872)  # MAX_SPLITS
    for programs, n_keys, block_n, sms in [(8, 300, 64, 132), (3, 5000, 128, 108), (1, 1, 16, None)]:
        splits, per_split = decode_splits(programs, n_keys, block_n, sms)
        assert per_split % block_n == 0 and (splits - 1) * per_split < n_keys <= splits * per_split
        assert sms is None or splits == 1 or per_split >= MIN_SPLIT_KEYS


def test_tiles_pack_the_query_group():
    assert decode_tiles(64, 1, None).block_m == 16
    assert decode_tiles(64, 4 * 7, "sm90").block_m == 32
    assert decode_tiles(128, 8 * 16, "sm80").block_m == 64  # 128 rows: two row tiles of 64
    assert DECODE_MAX_QUERIES == 16


def _kernels(launches):
    return {launch.kernel for launch in launches}


def test_ops_attention_routes_small_inference_calls_to_the_decode_kernel(monkeypatch):
    """The Triton backend (``auto`` on CUDA; forced on CPU under the interpreter) sends calls with at
    most DECODE_MAX_QUERIES queries that need no gradient to the decode kernel, with the same output,
    and everything else to the training forward. In GPU-tiles mode the launch carries the arch's tiles
    and every launch is one the build check compiles."""
    backend = "auto" if TEST_DEVICE == "cuda" else "triton"
    q, k, v = _inputs(2, 4, 2, 3, 80, 64)
    doc = _left_padding(2, 80, [0, 9])
    with ops.use_backend(backend), recording() as launches, torch.no_grad():
        got = ops.attention(q, k, v, doc_ids=doc)
    assert _kernels(launches) == {"_decode_split_kernel", "_decode_combine_kernel"}
    assert missing_from_aot(launches) == []
    want = attention_naive(q.float(), k.float(), v.float(), doc_ids=doc)
    assert (got.float() - want).abs().max().item() <= TOL[q.dtype] * (1 + want.abs().max().item())

    long_q = torch.randn(2, 4, DECODE_MAX_QUERIES + 1, 64).to(q.dtype)
    with ops.use_backend(backend), recording() as launches, torch.no_grad():
        ops.attention(long_q, k, v)
    assert _kernels(launches) == {"_attn_fwd_kernel"}
    with ops.use_backend(backend), recording() as launches:  # a gradient is needed: the training kernels
        ops.attention(q.clone().requires_grad_(), k, v).sum().backward()
    assert "_attn_fwd_kernel" in _kernels(launches) and "_decode_split_kernel" not in _kernels(launches)

    if TEST_DEVICE == "cpu":
        monkeypatch.setenv("FASTGPT_KERNEL_ARCH", "sm90")
        q16, k16, v16 = (x.half() for x in (q, k, v))
        with ops.use_backend("triton"), recording() as launches, torch.no_grad():
            ops.attention(q16, k16, v16, doc_ids=doc)
        split = next(x for x in launches if x.kernel == "_decode_split_kernel")
        assert dict(split.constexprs)["BLOCK_N"] == decode_tiles(64, 6, "sm90").block_n == 64
        assert missing_from_aot(launches) == []


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="on CUDA auto runs the Triton kernels")
def test_auto_on_cpu_keeps_the_torch_path():
    q, k, v = _inputs(1, 4, 2, 1, 40, 64)
    with ops.use_backend("auto"), recording() as launches, torch.no_grad():
        ops.attention(q, k, v)
    assert launches == []


def test_the_model_decodes_through_the_kv_cache_as_with_sdpa():
    """A one-layer llama (GQA 2) prefilled with left-padded prompts, then two decode steps through its
    KVCache: the logits with the decode kernel equal those with SDPA."""
    from fastgpt.model import GPT, GPTConfig
    from fastgpt.model.kv_cache import KVCache

    cfg = GPTConfig.from_preset(
        "tiny", vocab_size=97, n_layer=1, n_head=4, n_kv_head=2, n_embd=128, max_seq_len=64
    )
    dtype = attention_dtype(torch.float32)  # GPU modes: fp16 (the kernel takes no fp32 there)
    model = GPT(cfg).to(dtype).eval()
    idx, steps = torch.randint(0, 97, (2, 9)), torch.randint(0, 97, (2, 2, 1))
    doc = _left_padding(2, 9, [0, 4])
    pos = (torch.arange(9)[None] - torch.tensor([[0], [4]])).clamp(min=0)
    results = []
    for attention in ("sdpa", "triton"):
        cache = KVCache(cfg, 2, 32)
        logits = []
        with ops.use_backend("torch", attention=attention), torch.no_grad(), recording() as launches:
            out = model(idx, position_ids=pos, doc_ids=doc, kv_cache=cache, logits_to_keep=1)[:, -1]
            for step in steps.unbind(1):
                logits.append(out)
                out = model(step, kv_cache=cache, logits_to_keep=1)[:, -1]
        results.append(torch.stack(logits))
        assert ("_decode_split_kernel" in _kernels(launches)) == (attention == "triton")
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(results[1].float(), results[0].float(), atol=tol, rtol=tol)


def test_bad_arguments_are_clear_errors():
    q, k, v = _inputs(1, 2, 2, 4, 8, 32)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        attention_decode(q, k[:, :, :3], v[:, :, :3])
    with pytest.raises(ValueError, match="inference only"):
        attention_decode(q.clone().requires_grad_(), k, v)
    with pytest.raises(ValueError, match="head dim 80"):
        attention_decode(*(torch.randn(1, 2, 4, 80).to(q.dtype) for _ in range(3)))
    with pytest.raises(ValueError, match="doc_ids"):
        attention_decode(q, k, v, doc_ids=torch.zeros(1, 7, dtype=torch.int32))
    with pytest.raises(ValueError, match="multiple"):
        attention_decode(torch.randn(1, 3, 4, 32).to(q.dtype), k, v)


def test_custom_op_fake_implementation_matches():
    q, k, v = _inputs(1, 4, 2, 2, 20, 32)
    doc = _left_padding(1, 20, [3])
    torch.library.opcheck(
        torch.ops.fastgpt.decode_attention.default, (q, k, v, doc, True, None, 0.2, 0),
        test_utils=("test_schema", "test_faketensor"),
    )  # fmt: skip


# ------------------------------------------------------------------------------ ahead-of-time configs
def test_aot_configs_cover_every_launch_choice():
    names = {e["name"] for e in AOT_CONFIGS}
    for entry in AOT_CONFIGS:
        assert list(entry["signature"]) == entry["fn"].arg_names
        assert all(entry["signature"][c] == "constexpr" for c in entry["constexprs"])
    for dtype in ("bf16", "fp16"):
        for head_dim in (32, 64, 96, 128):
            assert f"decode_combine d{head_dim} {dtype}" in names
            for arch in ("sm80", "sm90"):
                for rows in (1, 17, 33, 8 * 16):
                    t = decode_tiles(head_dim, rows, arch)
                    name = (
                        f"decode_split d{head_dim} {dtype} {arch}-tiles M{t.block_m} N{t.block_n} "
                        f"w{t.num_warps} s{t.num_stages}"
                    )
                    assert name in names


_AOT_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastgpt.kernels.attention_decode import AOT_CONFIGS
from fastgpt.kernels.build_check import _resource_usage, sass_counts
for e in AOT_CONFIGS:
    if e["name"] in ("decode_split d128 bf16 sm90-tiles M16 N64 w4 s3", "decode_combine d128 bf16"):
        src = ASTSource(fn=e["fn"], signature=e["signature"], constexprs=e["constexprs"], attrs=e["attrs"])
        options = {k: e[k] for k in ("num_warps", "num_stages") if k in e}
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        stack = _resource_usage(kernel.asm["cubin"])[1]
        sass = sass_counts(kernel.asm["cubin"])
        print(e["name"].replace(" ", "_"), kernel.metadata.shared, stack, sass["HGMMA"] + sass["HMMA"])
"""


def test_aot_compile_for_hopper_fits_does_not_spill_and_uses_tensor_cores():
    """The real compiler (no GPU needed) on the decode configuration of a d128 bf16 model on sm_90, in a
    fresh process (the interpreter replaces the kernels in this one)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {
        name: (int(a), int(b), int(c)) for name, a, b, c in (x.split() for x in run.stdout.split("\n") if x)
    }
    assert set(rows) == {"decode_split_d128_bf16_sm90-tiles_M16_N64_w4_s3", "decode_combine_d128_bf16"}
    for name, (shared, stack, _) in rows.items():
        assert shared <= 227 * 1024 and stack == 0, f"{name}: {shared} B shared, {stack} B of spills"
    assert rows["decode_split_d128_bf16_sm90-tiles_M16_N64_w4_s3"][2] > 0  # its tl.dot on tensor cores
