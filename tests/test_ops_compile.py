"""The Triton kernels as torch custom ops: ``torch.compile(model, fullgraph=True)`` with
``FASTGPT_KERNELS=triton`` traces a whole GPT/llama training forward with no graph break, and the compiled
model runs the kernels (Triton interpreter, ``tests/conftest.py``) with the same loss and gradients as
eager; ``torch.library.opcheck`` checks each op's schema, fake implementation and registered autograd.

Tolerances: compiled and eager run the same kernels on the same inputs; what changes is the code around
them (inductor fuses the embeddings, residual adds and GEMM epilogues, and may reorder fp32 sums), so the
loss and gradients agree to fp32 roundoff: 1e-5 relative to each tensor's largest magnitude (observed
~1e-7). A wrong saved tensor or a dropped gradient in a registered backward is off by O(1).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from fastgpt.kernels.activations import gelu_tanh_triton, swiglu_triton
from fastgpt.kernels.attention import attention_triton, document_extents
from fastgpt.kernels.cross_entropy import cross_entropy_triton, linear_cross_entropy_triton
from fastgpt.kernels.norms import add_rms_norm_triton, layer_norm_triton, rms_norm_triton
from fastgpt.kernels.rope import rope_triton
from kernel_modes import attention_dtype, target_arch

import fastgpt.ops as ops
from fastgpt.model import GPT, GPTConfig

FAMILIES = ["llama", "gpt2"]


def tiny(family: str) -> GPT:
    """Two layers, head dim 32 (the smallest the Triton attention takes), 96-token vocabulary."""
    config = GPTConfig.from_preset(
        "tiny", family=family, vocab_size=96, n_layer=2, n_embd=64, n_head=2,
        n_kv_head=1 if family == "llama" else 2, max_seq_len=32,
    )  # fmt: skip
    torch.manual_seed(0)
    return GPT(config)


def batch():
    g = torch.Generator(torch.get_default_device()).manual_seed(1)  # GPU mode: tensors land on cuda
    idx = torch.randint(0, 96, (2, 24), generator=g)
    targets = torch.randint(0, 96, (2, 24), generator=g)
    targets[0, :3] = -100  # ignored positions
    doc_ids = torch.tensor([[0] * 10 + [1] * 14, [2] * 24])  # packed documents
    return idx, targets, doc_ids


def _autocast(on: bool):
    """bf16 autocast as training uses it (the residual stream stays fp32, attention gets bf16)."""
    return torch.autocast(torch.get_default_device().type, dtype=torch.bfloat16, enabled=on)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_model_has_no_graph_breaks(family, autocast):
    """dynamo's own report over the model's training forward (with packed documents): one graph, no
    break, every hot op a ``fastgpt::`` custom op in it (so the dispatch in ``fastgpt.ops`` happened at
    trace time without breaking either)."""
    model = tiny(family)
    idx, targets, doc_ids = batch()
    with ops.use_backend("triton", attention="auto"), _autocast(autocast):
        torch._dynamo.reset()
        report = torch._dynamo.explain(model)(idx, targets, doc_ids=doc_ids)
    assert report.graph_break_count == 0, [r.reason for r in report.break_reasons]
    assert report.graph_count == 1
    names = {str(op) for graph_ops in report.ops_per_graph for op in graph_ops}
    norm = "fastgpt.rms_norm" if family == "llama" else "fastgpt.layer_norm"
    mlp = "fastgpt.swiglu" if family == "llama" else "fastgpt.gelu_tanh"
    expected = [norm, mlp, "fastgpt.linear_cross_entropy"]
    if target_arch() is None:  # fp32 attention on a GPU goes to SDPA by design (ops.attention's auto)
        expected.append("fastgpt.flash_attention")
    for op in expected:
        assert any(op in n for n in names), (op, names)
    if family == "llama":
        assert any("fastgpt.rope" in n for n in names)


def _loss_and_grads(model, run, idx, targets, doc_ids):
    loss = run(idx, targets, doc_ids=doc_ids)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _compare(model, backend: str, autocast: bool = False):
    idx, targets, doc_ids = batch()
    twin = copy.deepcopy(model)
    with ops.use_backend("triton", attention="auto"), _autocast(autocast):
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        loss, grads = _loss_and_grads(model, compiled, idx, targets, doc_ids)
        want_loss, want_grads = _loss_and_grads(twin, twin, idx, targets, doc_ids)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == want_grads.keys() and len(grads) == len(list(model.parameters()))
    for name, g in grads.items():
        w = want_grads[name]
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item(), msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_model_matches_eager_through_aot_autograd(family):
    """fullgraph compile through AOTAutograd (fake tensors for the forward and the traced backward, which
    calls the ``*_backward`` ops), running the kernels under the interpreter."""
    _compare(tiny(family), "aot_eager")


def test_compiled_model_matches_eager_under_bf16_autocast():
    """The training setting: bf16 autocast (bf16 attention and GEMMs, fp32 norms and residual stream)."""
    _compare(tiny("llama"), "aot_eager", autocast=True)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_model_matches_eager_with_inductor(family):
    """The same with inductor generating the code around the custom ops (what training uses)."""
    _compare(tiny(family), "inductor")


# ---------------------------------------------------------------------------------------------- opcheck
def _leaf(*shape, dtype=torch.float32, scale=1.0, shift=0.0):
    return (torch.randn(*shape) * scale + shift).to(dtype).requires_grad_()


def _opcheck_cases():
    """(name, op, args) with small odd shapes; attention in fp16 too (half precision is all a GPU takes)."""
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    x = _leaf(3, 5, 40, shift=0.5)
    w = _leaf(40, shift=1.0)
    b = _leaf(40, scale=0.1)
    q, k = _leaf(2, 3, 7, 24), _leaf(2, 1, 7, 24)
    theta = torch.arange(7.0)[None, :, None] * torch.rand(1, 1, 12, generator=g)
    gate, up = _leaf(3, 37), _leaf(3, 37)
    logits, targets = _leaf(5, 300, scale=3.0), torch.tensor([0, 299, -100, 7, 150])
    hidden, weight = _leaf(5, 16), _leaf(300, 16, scale=0.3)
    vocab_bias = _leaf(300, scale=0.1)
    half = attention_dtype()  # fp32 where the kernel takes it (interpreter tiles), else fp16
    attn = [_leaf(1, 4, 19, 32, dtype=half), _leaf(1, 2, 19, 32, dtype=half), _leaf(1, 2, 19, 32, dtype=half)]
    docs = document_extents(torch.tensor([[0] * 6 + [1] * 13]))  # what attention_triton passes
    scale = 32**-0.5
    f = torch.ops.fastgpt
    cases = [
        ("rms_norm", f.rms_norm, (x, w, 1e-6)),
        ("rms_norm/no-weight", f.rms_norm, (x, None, 1e-6)),
        ("add_rms_norm", f.add_rms_norm, (x, _leaf(3, 5, 40, scale=2.0), w, 1e-6)),
        ("layer_norm", f.layer_norm, (x, w, b, 1e-5)),
        ("layer_norm/no-params", f.layer_norm, (x, None, None, 1e-5)),
        ("rope", f.rope, (q, k, theta.cos().contiguous(), theta.sin().contiguous(), False)),
        ("swiglu", f.swiglu, (gate, up)),
        ("gelu_tanh", f.gelu_tanh, (gate,)),
        ("cross_entropy/mean", f.cross_entropy, (logits, targets, -100, 1e-2, 5.0, "mean", True)),
        ("cross_entropy/none", f.cross_entropy, (logits, targets, -100, 0.0, None, "none", True)),
        (
            "linear_cross_entropy/mean",
            f.linear_cross_entropy,
            (hidden, weight, targets, vocab_bias, -100, 0.0, 4.0, "mean", 2, True, True, True),
        ),
        (
            "linear_cross_entropy/none",
            f.linear_cross_entropy,
            (hidden, weight, targets, None, -100, 1e-2, None, "none", 3, True, True, False),
        ),
        ("flash_attention", f.flash_attention, (*attn, None, True, None, scale)),
        ("flash_attention/docs+window", f.flash_attention, (*attn, docs, True, 5, scale)),
        (
            "flash_attention/fp16",
            f.flash_attention,
            (
                *[t.detach().to(torch.float16).requires_grad_() for t in attn],
                None,
                False,
                None,
                scale,
            ),
        ),
    ]
    return cases


CASES = _opcheck_cases()


@pytest.mark.parametrize("name,op,args", CASES, ids=[c[0] for c in CASES])
def test_opcheck(name, op, args):
    """Schema (no hidden mutation or aliasing), fake implementation vs the real op (shapes, dtypes,
    strides), registered autograd vs running it, and the op under ``make_fx`` (a trace)."""
    torch.library.opcheck(op, args)


def test_every_entry_point_is_a_custom_op():
    """Each public Triton entry point runs through a ``fastgpt::`` op (seen by a dispatch-level trace),
    not a ``torch.autograd.Function`` that dynamo would have to trace through or break on."""
    x, w = torch.randn(2, 3, 32), torch.randn(32)
    q, k = torch.randn(1, 2, 5, 32), torch.randn(1, 1, 5, 32)
    qh = q.to(attention_dtype())
    cos, sin = torch.ones(1, 5, 16), torch.zeros(1, 5, 16)
    rows, targets = torch.randn(6, 32), torch.tensor([1, 2, 3, 4, 5, 6])
    calls = {
        "rms_norm": lambda: rms_norm_triton(x, w),
        "add_rms_norm": lambda: add_rms_norm_triton(x, x, w),
        "layer_norm": lambda: layer_norm_triton(x, w, w),
        "rope": lambda: rope_triton(q, k, cos, sin),
        "swiglu": lambda: swiglu_triton(x, x),
        "gelu_tanh": lambda: gelu_tanh_triton(x),
        "cross_entropy": lambda: cross_entropy_triton(rows, targets),
        "linear_cross_entropy": lambda: linear_cross_entropy_triton(rows, x[0], targets % 3),
        "flash_attention": lambda: attention_triton(qh, qh, qh),
    }
    for name, call in calls.items():
        graph = torch.fx.experimental.proxy_tensor.make_fx(call)()  # real tensors: runs the kernel once
        targets_seen = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
        assert any(t.startswith(f"fastgpt.{name}.") for t in targets_seen), (name, targets_seen)


@functools.cache
def _backward_cases() -> dict:
    """The ``*_backward`` ops on the saved values their forward op produces (no gradient needed: they
    carry no autograd of their own)."""
    f = torch.ops.fastgpt
    x, w, b = torch.randn(3, 5, 40), torch.rand(40) + 0.5, torch.randn(40)
    dy = torch.randn(3, 5, 40)
    _, rstd = f.rms_norm(x, w, 1e-6)
    _, h, rstd_h = f.add_rms_norm(x, x * 2, w, 1e-6)
    _, mean, rstd_ln = f.layer_norm(x, w, b, 1e-5)
    gate, up = torch.randn(3, 37), torch.randn(3, 37)
    half = attention_dtype()
    q, k, v = (
        torch.randn(1, 4, 19, 32).to(half),
        torch.randn(1, 2, 19, 32).to(half),
        torch.randn(1, 2, 19, 32).to(half),
    )
    o, lse = f.flash_attention(q, k, v, None, True, 7, 0.2)
    hidden, weight, targets = (
        torch.randn(5, 16),
        torch.randn(300, 16) * 0.3,
        torch.tensor([0, 299, -100, 7, 150]),
    )
    cases = [
        ("rms_norm_backward", f.rms_norm_backward, (dy, x, w, rstd)),
        ("add_rms_norm_backward", f.add_rms_norm_backward, (dy, None, h, w, rstd_h)),
        ("layer_norm_backward/no-bias", f.layer_norm_backward, (dy, x, w, None, mean, rstd_ln)),
        ("swiglu_backward", f.swiglu_backward, (gate, gate, up)),
        ("gelu_tanh_backward", f.gelu_tanh_backward, (gate, up)),
        (
            "flash_attention_backward",
            f.flash_attention_backward,
            (torch.randn_like(o), q, k, v, o, lse, None, True, 7, 0.2),
        ),
        (
            "linear_cross_entropy_backward",
            f.linear_cross_entropy_backward,
            (torch.rand(5), hidden, weight, targets, None, -100, 0.0, 3.0, 2, True, True, False),
        ),
    ]
    return {name: (op, args) for name, op, args in cases}


BACKWARD_OPS = [
    "rms_norm_backward",
    "add_rms_norm_backward",
    "layer_norm_backward/no-bias",
    "swiglu_backward",
    "gelu_tanh_backward",
    "flash_attention_backward",
    "linear_cross_entropy_backward",
]


@pytest.mark.parametrize("name", BACKWARD_OPS)
def test_opcheck_backward_ops(name):
    """The backward ops' schemas and fake implementations (what AOTAutograd traces the backward with),
    on inputs made by running the forward ops (built in the test, not at collection)."""
    op, args = _backward_cases()[name]
    torch.library.opcheck(op, args)
