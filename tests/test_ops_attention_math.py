"""``attention_math`` (materialised attention, GEMMs in the inputs' dtype) against the fp32 baseline
``attention_naive``, and when ``ops.attention``'s ``auto`` picks it: compiled bf16 CPU training steps
with short sequences only.

Tolerances: fp32 roundoff in fp32; in bf16 the scores, probabilities and outputs are bf16 roundings
(2^-6 relative each), so 2^-5 of the largest magnitude, as the Triton attention tests use.
"""

import pytest
import torch
from fastgpt.kernels.attention import attention_math, attention_naive, attention_reference

import fastgpt.ops as ops

TOL = {torch.float32: 1e-5, torch.bfloat16: 2**-5}
CASES = [
    pytest.param({}, 4, id="causal"),
    pytest.param({"window": 5}, 2, id="window-gqa"),
    pytest.param({"doc_ids": True}, 4, id="docs-with-padding"),
]


def make_inputs(hkv: int, dtype: torch.dtype, t: int = 24, device: str | None = None):
    torch.manual_seed(0)
    q = torch.randn(2, 4, t, 16, device=device)
    k, v = torch.randn(2, hkv, t, 16, device=device), torch.randn(2, hkv, t, 16, device=device)
    return [x.to(dtype) for x in (q, k, v)]


def run(fn, inputs, **kw):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves, **kw)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype))
    return [out.detach()] + [x.grad for x in leaves]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("options,hkv", CASES)
def test_math_attention_matches_naive(options, hkv, dtype):
    kw = dict(options)
    if kw.pop("doc_ids", False):
        # row 0: two documents; row 1: left padding (id -1) whose own queries see only padding keys
        kw["doc_ids"] = torch.tensor([[0] * 10 + [1] * 14, [-1] * 6 + [2] * 18])
    inputs = make_inputs(hkv, dtype)
    got = run(attention_math, inputs, **kw)
    want = run(attention_naive, [x.float() for x in inputs], **kw)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.dtype == dtype, name
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(
            g.float(),
            w,
            rtol=TOL[dtype],
            atol=TOL[dtype] * w.abs().max().item(),
            msg=lambda m, n=name: f"{n}: {m}",
        )


def graph_of(fn, *args):
    """The FX graph dynamo traces for ``fn(*args)`` (ops dispatch happens at trace time)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return "\n".join(g.code for g in graphs)


@pytest.mark.parametrize(
    "seq,dtype,grad,expect_math",
    [
        (256, torch.bfloat16, True, True),  # the CPU bench config's training step
        (1024, torch.bfloat16, True, False),  # long: flash skips the masked half
        (256, torch.float32, True, False),  # fp32: flash is faster
        (256, torch.bfloat16, False, False),  # inference (the compiled decode step)
        (512, torch.bfloat16, True, False),  # 2 x 4 x 512 x 512 scores: over the cap set below
    ],
)
def test_auto_picks_math_only_for_short_compiled_bf16_training(seq, dtype, grad, expect_math, monkeypatch):
    monkeypatch.setattr(ops, "MATH_ATTENTION_MAX_SCORES", 2 * 4 * 256 * 256)
    # CPU tensors even in GPU mode (FASTGPT_TEST_DEVICE=cuda): this is the CPU policy of ``auto``
    q, k, v = [x.requires_grad_(grad) for x in make_inputs(4, dtype, t=seq, device="cpu")]
    with ops.use_backend("auto", attention="auto"):
        code = graph_of(lambda q, k, v: ops.attention(q, k, v, causal=True), q, k, v)
        assert ("scaled_dot_product_attention" not in code) == expect_math, code
        # eager never takes the materialised path (its softmax would not be fused)
        assert not ops.use_math_attention(q, k)


def test_compiled_math_attention_matches_sdpa():
    """End to end through ``auto`` under compile vs eager SDPA on the same bf16 inputs."""
    inputs = make_inputs(2, torch.bfloat16, t=64, device="cpu")  # the CPU path, in GPU mode too
    with ops.use_backend("auto", attention="auto"):
        torch._dynamo.reset()
        got = run(torch.compile(lambda q, k, v: ops.attention(q, k, v, causal=True)), inputs)
    want = run(lambda q, k, v: attention_reference(q, k, v, causal=True), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(
            g.float(), w.float(), rtol=TOL[torch.bfloat16], atol=TOL[torch.bfloat16] * w.abs().max().item()
        )
