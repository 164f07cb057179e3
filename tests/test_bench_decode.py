"""benchmarks/kernels.py --decode on a machine without a GPU: the cases and traffic it would time, its
argument parsing, and every provider's call path once at tiny shapes (Triton under the interpreter)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from kernel_modes import TEST_DEVICE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_cases_traffic_and_bandwidth_table(bench):
    quick = bench.decode_cases("quick")
    assert {(c.batch, c.cached) for c in quick} == {(b, t) for b in (1, 8, 64) for t in (1024, 32768)}
    full = bench.decode_cases("full")
    assert {c.cached for c in full} == {1024, 4096, 16384, 32768} and len(full) == 12
    case = bench.DecodeCase(1, 1024, 32, 8, 128)
    assert case.bytes(2) == 2 * (2 * 8 * 1024 * 128 + 2 * 32 * 128)  # K and V once, q and o
    assert bench.hbm_tbps("NVIDIA H100 80GB HBM3") == 3.35
    assert bench.hbm_tbps("NVIDIA H100 PCIe") == 2.0
    assert bench.hbm_tbps("NVIDIA H200") == 4.8
    assert bench.DECODE_TARGET_PCT == 70.0


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="a GPU machine runs the real benchmark")
def test_without_a_gpu_it_lists_the_cases_and_says_unmeasured(bench, capsys, tmp_path):
    assert bench.main(["--decode", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "unmeasured" in out and "B64 Tk32768 Hq32 Hkv8 D128" in out
    assert not (tmp_path / "decode.csv").exists()


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the smoke run needs the Triton interpreter")
def test_smoke_run_calls_every_provider_and_agrees_with_sdpa(bench, tmp_path, capsys):
    assert bench.main(["--decode", "--smoke", "--out", str(tmp_path)]) == 0
    rows = (tmp_path / "decode.csv").read_text().splitlines()
    providers = {line.split(",")[1] for line in rows[1:]}
    assert {"fastgpt-triton", "fastgpt-triton doc_ids", "fastgpt-triton training fwd", "sdpa"} <= providers
    for line in rows[1:]:
        err = float(line.rsplit("| ", 1)[-1].strip().strip('"'))
        assert err < 1e-4, line
    assert (tmp_path / "decode.md").read_text().startswith("decode attention on cpu")
