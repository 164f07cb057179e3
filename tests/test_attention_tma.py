"""The Hopper (TMA) build of the attention forward (kernels/attention.py, ``TMA=True``).

The descriptor build is the pointer build with Q/K/V/O read and written through ``(B, H, T, D)`` tensor
descriptors; everything else is one code path. The Triton interpreter runs host tensor descriptors
(triton 3.9), so these tests launch the descriptor build itself on CPU and require it to be *bitwise*
equal to the pointer build (same tiles, same online-softmax order) and close to the fp32 materialised
reference (fp16, 5e-3 scale-aware, as tests/test_kernel_attention.py; bf16 ``tl.dot`` is wrong in the
interpreter). Shapes are odd so that the hardware bounds check (rows past ``T`` read as 0, stores
dropped) replaces real masks. The SASS evidence (UTMALDG) is in test_kernel_attention.py's AOT test.
"""

from __future__ import annotations

import pytest
import torch
from fastgpt.kernels import attention
from fastgpt.kernels._attention_tiles import _kernel_flags, document_extents
from fastgpt.kernels._launches import missing_from_aot, recording
from fastgpt.kernels._target import ARCH_ENV
from kernel_modes import TEST_DEVICE


def _hopper() -> bool:
    return TEST_DEVICE == "cuda" and torch.cuda.get_device_capability() == (9, 0)


pytestmark = pytest.mark.skipif(
    TEST_DEVICE != "cpu" and not _hopper(), reason="the TMA build runs under the interpreter or on sm_90"
)
cpu_only = pytest.mark.skipif(TEST_DEVICE != "cpu", reason="CPU tensors / interpreter launches")


def _same_as_pointer_build(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Bitwise under the interpreter (one code path but the loads); on an sm_90 GPU the two builds are
    separately compiled programs, so there within fp16 output rounding."""
    if got.device.type == "cpu":
        return torch.equal(got, want)
    return (got.float() - want.float()).abs().max().item() <= 2e-3 * (1 + want.float().abs().max().item())


def _forward(q, k, v, *, tma, causal=True, doc_ids=None, window=None, arch=None):
    docs = None if doc_ids is None else document_extents(doc_ids)
    flags = _kernel_flags(q, causal, docs is not None, window)
    tiles = attention.tile_configs(q.shape[-1], "sm90" if q.is_cuda else arch)
    scale = q.shape[-1] ** -0.5
    return attention._attention_forward(q, k, v, docs, causal, window, scale, tiles, flags, tma=tma)


CASES = {
    "causal": dict(B=1, Hq=2, Hkv=2, Tq=45, Tk=45, D=32),
    "noncausal": dict(B=1, Hq=2, Hkv=2, Tq=37, Tk=37, D=64, causal=False),
    "gqa4": dict(B=2, Hq=4, Hkv=1, Tq=29, Tk=29, D=32),
    "kv-cache": dict(B=1, Hq=2, Hkv=1, Tq=7, Tk=51, D=32),
    "documents": dict(B=2, Hq=2, Hkv=1, Tq=61, Tk=61, D=32, docs=True),
    "window": dict(B=1, Hq=2, Hkv=2, Tq=50, Tk=50, D=32, window=9),
}


@pytest.mark.parametrize("case", list(CASES))
def test_descriptor_build_equals_pointer_build_and_reference(case):
    c = dict(CASES[case])
    causal, window = c.pop("causal", True), c.pop("window", None)
    with_docs = c.pop("docs", False)
    torch.manual_seed(0)
    q = torch.randn(c["B"], c["Hq"], c["Tq"], c["D"], dtype=torch.float16)
    k = torch.randn(c["B"], c["Hkv"], c["Tk"], c["D"], dtype=torch.float16)
    v = torch.randn_like(k)
    doc_ids = None
    if with_docs:  # three documents, edges inside tiles, the second row differently cut
        doc_ids = torch.zeros(c["B"], c["Tk"], dtype=torch.int32)
        doc_ids[0, 19:] = 1
        doc_ids[0, 40:] = 2
        doc_ids[1, 33:] = 1
    kw = dict(causal=causal, doc_ids=doc_ids, window=window)
    o_tma, lse_tma = _forward(q, k, v, tma=True, **kw)
    o_ptr, lse_ptr = _forward(q, k, v, tma=False, **kw)
    assert _same_as_pointer_build(o_tma, o_ptr) and _same_as_pointer_build(lse_tma, lse_ptr)
    kw["doc_ids"] = None if doc_ids is None else doc_ids.to(q.device)
    want = attention.attention_naive(q.float(), k.float(), v.float(), **kw)
    err = (o_tma.float() - want).abs().max().item()
    assert err <= 5e-3 * (1 + want.abs().max().item()), err


def test_descriptor_build_on_hopper_tiles():
    """The tiles the sm_90 launcher really uses (128 x 64 at d64) with a ragged query and key end."""
    torch.manual_seed(1)
    q = torch.randn(1, 2, 150, 64, dtype=torch.float16)
    k, v = torch.randn(1, 1, 150, 64, dtype=torch.float16), torch.randn(1, 1, 150, 64, dtype=torch.float16)
    doc_ids = torch.zeros(1, 150, dtype=torch.int32)
    doc_ids[:, 70:] = 1
    o_tma, _ = _forward(q, k, v, tma=True, doc_ids=doc_ids, arch="sm90")
    o_ptr, _ = _forward(q, k, v, tma=False, doc_ids=doc_ids, arch="sm90")
    assert _same_as_pointer_build(o_tma, o_ptr)
    want = attention.attention_naive(q.float(), k.float(), v.float(), doc_ids=doc_ids)
    assert (o_tma.float() - want).abs().max().item() <= 5e-3 * (1 + want.abs().max().item())


@cpu_only
def test_launcher_picks_tma_only_for_aligned_tile_width_heads_on_sm90(monkeypatch):
    monkeypatch.delenv(ARCH_ENV, raising=False)
    q = torch.randn(1, 2, 8, 64, dtype=torch.float16)
    assert attention.tma_eligible(q)
    assert not attention.use_tma(q)  # interpreter tiles: the pointer build
    monkeypatch.setenv(ARCH_ENV, "sm90")  # the sm_90 GPU-tiles mode runs what an H100 runs
    assert attention.use_tma(q)
    monkeypatch.setenv("FASTGPT_ATTENTION_TMA", "0")
    assert not attention.use_tma(q)
    monkeypatch.setenv("FASTGPT_ATTENTION_TMA", "1")
    monkeypatch.setenv(ARCH_ENV, "sm80")
    assert not attention.use_tma(q)
    assert not attention.tma_eligible(torch.randn(1, 2, 8, 96, dtype=torch.float16))  # padded columns
    shifted = torch.randn(1 + 2 * 8 * 64, dtype=torch.float16)[1:].view(1, 2, 8, 64)
    assert not attention.tma_eligible(shifted)  # base 2 bytes past an aligned address
    odd_rows = torch.randn(1, 2, 8, 65, dtype=torch.float16)[..., :64]  # row stride of 130 bytes
    assert not attention.tma_eligible(odd_rows)
    assert not attention.tma_eligible(torch.randn(1, 1, 8, 64, dtype=torch.float16).expand(1, 2, 8, 64))
    # a size-1 dim's stride is never stepped along: any value is fine (the descriptor gets an aligned one)
    one_head = torch.randn(2, 1, 8, 64, dtype=torch.float16).as_strided((2, 1, 8, 64), (512, 3, 64, 1))
    assert attention.tma_eligible(one_head)
    o_tma, _ = _forward(one_head, one_head, one_head, tma=True)
    o_ptr, _ = _forward(one_head, one_head, one_head, tma=False)
    assert torch.equal(o_tma, o_ptr)


@cpu_only
def test_hopper_launch_is_the_descriptor_build_and_is_compiled():
    """The recorder's sm_90 translation of an interpreter launch is the TMA build (descriptor signature,
    ``TMA=True``) for head dims 32/64/128 and the pointer build for 96 and on sm_80; the build check
    compiles each of them."""
    for D, tma_on_90 in ((64, True), (96, False)):
        q = torch.randn(1, 2, 20, D, dtype=torch.bfloat16)
        k, v = torch.randn(1, 2, 20, D, dtype=torch.bfloat16), torch.randn(1, 2, 20, D, dtype=torch.bfloat16)
        with recording() as launches:
            attention.attention_triton(q, k, v)
        (launch,) = launches
        gpu = dict(launch.per_arch)
        consts90, sig90 = dict(gpu[90].constexprs), dict(gpu[90].signature)
        assert consts90["TMA"] is tma_on_90 and dict(gpu[80].constexprs)["TMA"] is False
        tile = attention.tile_configs(D, "sm90")["fwd"]
        want_q = f"tensordesc<bf16[1, 1, {tile.block_m}, {D}]>" if tma_on_90 else "*bf16"
        assert sig90["Q"] == sig90["O"] == want_q
        assert dict(gpu[80].signature)["K"] == "*bf16"
        assert missing_from_aot(launches) == []
    # a launch recorded from the TMA build itself (as on an sm_90 GPU): descriptors spelled as Triton
    # does, the pointer build again for sm_80
    q = torch.randn(1, 2, 20, 64, dtype=torch.bfloat16)
    with recording() as launches:
        _forward(q, q.clone(), q.clone(), tma=True)
    (launch,) = launches
    assert dict(launch.signature)["K"].startswith("tensordesc<bf16[1, 1, ")
    gpu = dict(launch.per_arch)
    assert dict(gpu[80].signature)["Q"] == "*bf16" and dict(gpu[80].constexprs)["TMA"] is False
    assert dict(gpu[90].constexprs)["TMA"] is True
    assert missing_from_aot(launches) == []


def test_every_sm90_tile_width_forward_config_has_a_tma_twin():
    pointer = {
        e["name"]: e
        for e in attention.AOT_CONFIGS
        if e["archs"] == [90] and not e["constexprs"]["TMA"] and e["constexprs"]["HEAD_DIM"] in (32, 64, 128)
    }
    tma = {e["name"].replace(" tma", ""): e for e in attention.AOT_CONFIGS if e["constexprs"]["TMA"]}
    assert set(tma) == set(pointer) and len(tma) == 30
    for name, entry in tma.items():
        assert entry["archs"] == [90] and entry["signature"]["K"].startswith("tensordesc<")
        assert {k: v for k, v in entry["constexprs"].items() if k != "TMA"} == {
            k: v for k, v in pointer[name]["constexprs"].items() if k != "TMA"
        }
