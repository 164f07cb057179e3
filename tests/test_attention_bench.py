"""benchmarks/kernels.py's attention cases on a machine without a GPU: the packed-document rows (document
lengths of the corpora as the loader streams them), every CPU-capable provider of the packed cases agreeing
with the materialised reference at tiny shapes (Triton under the interpreter), the ``--smoke`` run of the
attention ops, and the issue-13 targets written next to the attention rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from fastgpt.kernels.attention import attention_naive
from kernel_modes import TEST_DEVICE

ROOT = Path(__file__).resolve().parents[1]
PACKED_OPS = ("attention_packed_shakespeare", "attention_packed_c4-demo")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_kernels_attention", ROOT / "benchmarks" / "kernels.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_packed_rows_follow_the_corpus_document_lengths(bench):
    packing = bench._packed_documents()
    lengths = packing.DOC_LENGTHS["c4-demo"]
    assert len(lengths) == 287 and sum(lengths) == 197810
    assert len(packing.DOC_LENGTHS["shakespeare"]) == 40
    doc_ids = packing.packed_doc_ids(lengths, 4, 4096)
    runs = packing.runs(doc_ids)
    assert doc_ids.shape == (4, 4096) and doc_ids.dtype == torch.int32
    for b, s, e in runs:  # runs tile each row, one id each, neighbours differ
        assert (doc_ids[b, s:e] == doc_ids[b, s]).all()
        assert e == 4096 or doc_ids[b, e] != doc_ids[b, s]
    assert sum(e - s for _, s, e in runs) == 4 * 4096
    inner = [e - s for _, s, e in runs if 0 < s and e < 4096]  # whole documents inside a row
    assert inner and set(inner) <= set(lengths)
    assert len(runs) / 4 > 3  # web pages: several documents per 4096-token row
    shrunk = packing.runs(packing.packed_doc_ids(lengths, 4, 40, scale=40 / 4096))
    assert len(shrunk) / 4 > 3  # the smoke rows keep about as many documents per row


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="tiny shapes under the interpreter")
@pytest.mark.parametrize("name", PACKED_OPS)
def test_every_cpu_provider_of_the_packed_case_matches_the_reference(bench, name):
    (op,) = [op for op in bench.build_ops("smoke") if op.name == name]
    torch.manual_seed(0)
    base = op.make(torch.device("cpu"), torch.float32)
    want = attention_naive(base["q"], base["k"], base["v"], doc_ids=base["doc_ids"])
    checked = []
    for provider_name, provider in op.providers.items():
        if provider_name.startswith("flash-attn"):
            continue
        _, forward = provider(base)
        got = forward()
        assert (got - want).abs().max().item() < 1e-4, provider_name
        checked.append(provider_name)
    assert checked == ["fastgpt-triton", "sdpa mask", "sdpa per-document"]
    kind, flops = op.work("fwd")  # visible pairs only: the dense causal count when one document fills a row
    B, H, T, D = bench.SIZES["smoke"]["attn"]
    dense = 4 * B * H * T * (T + 1) / 2 * D
    assert kind == "flops" and (flops < dense if "c4" in name else flops == dense)


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the smoke run needs the Triton interpreter")
def test_smoke_run_of_the_attention_ops(bench, capsys):
    assert bench.main(["--smoke", "--ops", "attention", *PACKED_OPS]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == 7 and "FAILED" not in out  # 1 dense + 2 x 3 packed providers on CPU


def test_targets_and_the_gpu_suite_shape(bench):
    assert bench.ATTENTION_TARGET_TFLOPS == {"fwd": 470.0, "fwd+bwd": 340.0}
    assert bench.SIZES["quick"]["attn"][2:] == bench.SIZES["full"]["attn"][2:] == (4096, 128)
    suite = (ROOT / "benchmarks" / "gpu_suite.sh").read_text()
    assert "benchmarks/kernels.py --quick" in suite and "benchmarks/kernels.py --decode --quick" in suite
