"""The torch (CPU) path of the fused linear cross-entropy, ``linear_cross_entropy_chunked``, against the
materialising reference; and its cost: with ``mean``/``sum`` the backward recomputes no chunk GEMM.

Tolerances as in test_kernel_cross_entropy.py: fp32 roundoff (1e-5) in fp32; under bf16 autocast the
chunk logits, the logit gradient and the two gradient GEMMs are bf16 (2^-5 of the largest magnitude).
"""

import pytest
import torch
from fastgpt.kernels.cross_entropy import linear_cross_entropy_chunked, linear_cross_entropy_reference
from torch.utils._python_dispatch import TorchDispatchMode

TOL = {False: 1e-5, True: 2**-5}  # keyed by "under bf16 autocast"
CASES = [
    pytest.param("mean", {}, False, id="mean"),
    pytest.param(
        "sum", {"z_loss": 1e-2, "softcap": 5.0, "ignore_index": -1}, True, id="sum-zloss-softcap-bias"
    ),
    pytest.param("none", {}, True, id="none-bias"),
]


def loss_and_grads(fn, hidden, weight, bias, targets, autocast, **kw):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in (hidden, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fn(leaves[0], leaves[1], targets, bias=leaves[2], **kw)
    upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape)  # not 1: the backward scales
    loss.backward(upstream)
    return [loss.detach()] + [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("reduction,options,with_bias", CASES)
def test_chunked_matches_reference(reduction, options, with_bias, autocast):
    torch.manual_seed(0)
    n, c, v = 70, 16, 300  # 70 rows over chunks of 32: a short last chunk
    hidden, weight = torch.randn(n, c), torch.randn(v, c) * 0.5
    bias = torch.randn(v) if with_bias else None
    targets = torch.randint(0, v, (n,))
    targets[3] = options.get("ignore_index", -100)  # an ignored row: no loss, no gradient
    kw = dict(reduction=reduction, **options)
    got = loss_and_grads(
        lambda *a, **k: linear_cross_entropy_chunked(*a, chunk_size=32, **k),
        hidden,
        weight,
        bias,
        targets,
        autocast,
        **kw,
    )
    want = loss_and_grads(linear_cross_entropy_reference, hidden, weight, bias, targets, autocast, **kw)
    for name, g, w in zip(("loss", "dhidden", "dweight", "dbias"), got, want):
        if w is None:
            continue
        assert g.dtype == w.dtype, name
        scale = w.abs().max().item()
        torch.testing.assert_close(
            g, w, rtol=TOL[autocast], atol=TOL[autocast] * scale, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_no_grad_and_empty_input():
    hidden, weight = torch.randn(5, 8), torch.randn(40, 8, requires_grad=True)
    targets = torch.randint(0, 40, (5,))
    with torch.no_grad():
        got = linear_cross_entropy_chunked(hidden, weight, targets, reduction="sum", chunk_size=2)
    assert not got.requires_grad
    torch.testing.assert_close(
        got, linear_cross_entropy_reference(hidden, weight.detach(), targets, reduction="sum")
    )
    empty = linear_cross_entropy_chunked(hidden[:0], weight, targets[:0], reduction="sum")
    assert empty.item() == 0.0


class GemmFlops(TorchDispatchMode):
    """Sums ``2 m k n`` over every matrix product dispatched (``mm``, ``addmm``, in place or not)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "addmm_"):
            a, b = args[-2:]
            self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("reduction,gemms", [("sum", 3), ("mean", 3), ("none", 4)])
def test_backward_recomputes_no_chunk_gemm(reduction, gemms):
    """Forward + backward cost 3 GEMMs of (N, C) x (C, V) for mean/sum (logits, d hidden, d weight), not the
    4 of activation checkpointing, which recomputes every chunk's logits (kept only for ``none``)."""
    n, c, v = 64, 16, 256
    hidden = torch.randn(n, c, requires_grad=True)
    weight = torch.randn(v, c, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    with GemmFlops() as counter:
        loss = linear_cross_entropy_chunked(hidden, weight, targets, reduction=reduction, chunk_size=16)
        loss.sum().backward()
    assert counter.flops == gemms * 2 * n * c * v
