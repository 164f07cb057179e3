"""Cross-entropy and fused linear cross-entropy Triton paths (interpreter) vs the torch references.

Tolerances, relative to each element and, for elements near zero, to the tensor's largest magnitude:

- Plain cross-entropy: kernel and reference both compute in fp32 from the same logits; losses agree to
  fp32 roundoff (1e-5). The logit gradient is rounded to the logits' dtype once in the kernel and once
  more when scaled by the incoming gradient in the backward (the reference rounds once): 1e-5 in fp32,
  2 ulp in fp16 (2^-9) and bf16 (2^-6 - the interpreter also truncates fp32->bf16).
- Fused linear cross-entropy: the chunk logits come from a GEMM on a slice of rows (blocking can differ
  from the reference's single GEMM by an ulp per logit), the logit gradient is stored in the input
  dtype and goes through two more GEMMs, and the weight gradient is summed over chunks in fp32 instead
  of inside one GEMM: 1e-5 in fp32, 2^-8 in fp16 and 2^-5 in bf16 (measured worst cases: 9e-4, 1.4e-2).
"""

import pytest
import torch
from fastgpt.kernels.cross_entropy import (
    cross_entropy_block_config,
    cross_entropy_reference,
    cross_entropy_triton,
    linear_cross_entropy_chunk_rows,
    linear_cross_entropy_reference,
    linear_cross_entropy_triton,
)
from kernel_checks import assert_scaled_close as assert_close

import fastgpt.ops as ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
REDUCTIONS = ["mean", "sum", "none"]
CE_TOL = {torch.float32: 1e-5, torch.float16: 2**-9, torch.bfloat16: 2**-6}
LINEAR_TOL = {torch.float32: 1e-5, torch.float16: 2**-8, torch.bfloat16: 2**-5}
# (rows, vocab): powers of two; an odd vocab over two 4096-wide tiles (online LSE across tiles); one row
CE_SHAPES = [(8, 256), (7, 5000), (1, 300)]
OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"z_loss": 1e-2, "softcap": 5.0, "ignore_index": -1}, id="zloss-softcap"),
]


def make_targets(n_rows: int, vocab: int, ignore_index: int) -> torch.Tensor:
    targets = torch.randint(0, vocab, (n_rows,))
    if n_rows > 1:
        targets[1] = ignore_index  # one ignored row: excluded from the mean, zero loss and gradient
    targets[0] = vocab - 1  # the last column, in the masked tail tile
    return targets


def loss_and_grads(fn, tensors, upstream):
    """``fn(*leaves)`` with fresh leaves; backprop ``upstream``; return loss and the leaves' grads."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    loss = fn(*leaves)
    loss.backward(upstream)
    return loss.detach(), [None if t is None else t.grad for t in leaves]


def upstream_for(loss_shape, n_rows):
    # a non-unit upstream gradient checks that the backward scales the precomputed gradient
    return torch.linspace(0.5, 1.5, n_rows) if loss_shape == (n_rows,) else torch.tensor(0.7)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_rows,vocab", CE_SHAPES)
def test_cross_entropy_loss_and_grad(n_rows, vocab, dtype, reduction, options):
    logits = (torch.randn(n_rows, vocab) * 3).to(dtype)
    targets = make_targets(n_rows, vocab, options.get("ignore_index", -100))
    up = upstream_for((n_rows,) if reduction == "none" else (), n_rows)
    kw = dict(reduction=reduction, **options)
    loss, (grad,) = loss_and_grads(lambda x: cross_entropy_triton(x, targets, **kw), [logits], up)
    loss_ref, (grad_ref,) = loss_and_grads(lambda x: cross_entropy_reference(x, targets, **kw), [logits], up)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert_close(loss, loss_ref, 1e-5, "loss")
    assert_close(grad, grad_ref, CE_TOL[dtype], "dlogits")


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(3, 50, requires_grad=True)
    targets = torch.full((3,), -100)
    loss = cross_entropy_triton(logits, targets)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_cross_entropy_inplace_gradient_overwrites_logits_and_guards_other_users():
    source = torch.randn(4, 300, requires_grad=True)
    targets = torch.randint(0, 300, (4,))
    logits = source * 2.0  # a non-leaf nobody else reads
    loss = cross_entropy_triton(logits, targets, inplace_grad=True)
    loss.backward()
    loss_ref, (grad_ref,) = loss_and_grads(
        lambda s: cross_entropy_reference(s * 2.0, targets), [source], torch.tensor(1.0)
    )
    assert_close(loss, loss_ref, 1e-5, "loss")
    assert_close(source.grad, grad_ref, 1e-5, "dsource")
    # exp saves its output for its backward: overwriting it must fail loudly, not corrupt gradients
    shared = torch.randn(4, 300, requires_grad=True).exp()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        cross_entropy_triton(shared, targets, inplace_grad=True).backward()


def test_cross_entropy_without_grad_leaves_logits_untouched():
    logits = torch.randn(3, 100, requires_grad=True)
    before = logits.detach().clone()
    with torch.no_grad():
        loss = cross_entropy_triton(logits * 1.0, torch.tensor([1, 2, 3]), inplace_grad=True)
    assert torch.equal(logits.detach(), before)
    assert_close(loss, cross_entropy_reference(before, torch.tensor([1, 2, 3])), 1e-5, "loss")


def test_cross_entropy_out_of_range_target_is_nan():
    loss = cross_entropy_triton(torch.randn(2, 10), torch.tensor([3, 10]), reduction="none")
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1])


# (rows, hidden, vocab, chunk_rows): chunk default; odd everything over 3 chunks and 2 vocab tiles; one row
LINEAR_SHAPES = [(16, 32, 256, None), (13, 24, 4200, 5), (1, 8, 300, None)]


# Every reduction x bias option in fp32; the low-precision dtypes on "mean" with bias+z_loss+softcap and
# "none" without (the interpreter is slow, and the dtype only changes the GEMMs and the final roundings).
LINEAR_CASES = [(torch.float32, r, b) for r in REDUCTIONS for b in (False, True)] + [
    (dt, r, b) for dt in (torch.float16, torch.bfloat16) for r, b in (("mean", True), ("none", False))
]


@pytest.mark.parametrize(
    "dtype,reduction,with_bias",
    LINEAR_CASES,
    ids=[f"{str(d)[6:]}-{r}-{'bias' if b else 'nobias'}" for d, r, b in LINEAR_CASES],
)
@pytest.mark.parametrize("n_rows,hidden_size,vocab,chunk_rows", LINEAR_SHAPES)
def test_linear_cross_entropy_loss_and_grads(
    n_rows, hidden_size, vocab, chunk_rows, dtype, reduction, with_bias
):
    options = {"z_loss": 1e-2, "softcap": 8.0} if with_bias else {}
    hidden = torch.randn(n_rows, hidden_size).to(dtype)
    weight = (torch.randn(vocab, hidden_size) * hidden_size**-0.5 * 3).to(dtype)
    bias = torch.randn(vocab).to(dtype) if with_bias else None
    targets = make_targets(n_rows, vocab, -100)
    up = upstream_for((n_rows,) if reduction == "none" else (), n_rows)
    kw = dict(reduction=reduction, **options)

    def fused(h, w, b):
        return linear_cross_entropy_triton(h, w, targets, bias=b, chunk_rows=chunk_rows, **kw)

    def reference(h, w, b):
        return linear_cross_entropy_reference(h, w, targets, bias=b, **kw)

    loss, grads = loss_and_grads(fused, [hidden, weight, bias], up)
    loss_ref, grads_ref = loss_and_grads(reference, [hidden, weight, bias], up)
    tol = LINEAR_TOL[dtype]
    assert_close(loss, loss_ref, tol, "loss")
    for name, g, g_ref in zip(("dhidden", "dweight", "dbias"), grads, grads_ref):
        if g_ref is not None:
            assert g.dtype == dtype
            assert_close(g, g_ref, tol, name)


def test_linear_cross_entropy_under_autocast_matches_reference():
    """fp32 parameters, bf16 autocast (the usual mixed-precision setup): the GEMMs run in bf16 as F.linear
    would, gradients come back fp32."""
    hidden = torch.randn(20, 16, requires_grad=True)
    weight = (torch.randn(700, 16) * 0.5).requires_grad_()
    targets = torch.randint(0, 700, (20,))
    device = hidden.device.type  # cuda in GPU mode
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = linear_cross_entropy_triton(hidden, weight, targets, chunk_rows=8)
    loss.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast(device, dtype=torch.bfloat16):
        loss_ref = linear_cross_entropy_reference(hidden, weight, targets)
    loss_ref.backward()
    assert weight.grad.dtype == grads[1].dtype == torch.float32
    assert_close(loss, loss_ref, LINEAR_TOL[torch.bfloat16], "loss")
    assert_close(grads[0], hidden.grad, LINEAR_TOL[torch.bfloat16], "dhidden")
    assert_close(grads[1], weight.grad, LINEAR_TOL[torch.bfloat16], "dweight")


def test_ops_dispatch_reaches_the_triton_paths():
    hidden, weight = torch.randn(5, 8), torch.randn(40, 8)
    targets = torch.randint(0, 40, (5,))
    with ops.use_backend("triton"):
        fused = ops.linear_cross_entropy(hidden, weight, targets, z_loss=1e-3)
        plain = ops.cross_entropy(hidden @ weight.t(), targets, softcap=4.0)
    assert_close(fused, linear_cross_entropy_reference(hidden, weight, targets, z_loss=1e-3), 1e-5, "fused")
    assert_close(plain, cross_entropy_reference(hidden @ weight.t(), targets, softcap=4.0), 1e-5, "plain")


def test_block_and_chunk_choices():
    assert cross_entropy_block_config(5000) == (4096, 8)
    assert cross_entropy_block_config(100) == (256, 2)
    assert cross_entropy_block_config(1024) == (1024, 4)
    # chunk logits about the size of the hidden states: 8192 tokens x 4096 hidden, 128k vocab -> 256 rows
    assert linear_cross_entropy_chunk_rows(8192, 4096, 131072) == 256
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy_triton(torch.randn(2, 3), torch.tensor([0, 1]), reduction="avg")
