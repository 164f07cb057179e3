"""The dispatch seam refuses a Triton kernel it cannot run, in one line, before Triton is reached.

Tensors are made on the CPU explicitly: these are CPU rules, also when the suite runs in GPU mode.
"""

import os

import pytest
import torch

from fastgpt import ops


@pytest.mark.parametrize("value", ["0", ""])
def test_forced_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    x = torch.randn(3, 8, device="cpu")
    with ops.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.rms_norm(x, torch.ones(8, device="cpu"))
    q = torch.randn(1, 2, 4, 32, device="cpu")
    with (
        ops.use_backend("torch", attention="triton"),
        pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"),
    ):
        ops.attention(q, q, q)


def test_auto_and_torch_backends_never_need_the_interpreter_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(3, 8, device="cpu")
    for backend in ("auto", "torch"):
        with ops.use_backend(backend):
            assert not ops.use_triton(x)
            torch.testing.assert_close(
                ops.rms_norm(x, None), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
            )


@pytest.mark.skipif(os.environ.get("FASTGPT_TEST_DEVICE", "cpu") != "cpu", reason="GPU mode: no interpreter")
def test_forced_triton_on_cpu_with_the_interpreter_runs_the_kernel():
    # conftest sets TRITON_INTERPRET=1 before triton is imported
    x = torch.randn(5, 24, device="cpu")
    with ops.use_backend("triton"):
        assert ops.use_triton(x)
        out = ops.rms_norm(x, torch.ones(24, device="cpu"))
    torch.testing.assert_close(out, ops.rms_norm(x, torch.ones(24, device="cpu")), atol=1e-5, rtol=1e-5)
