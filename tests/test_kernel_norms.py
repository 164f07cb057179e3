"""RMSNorm, fused add+RMSNorm and LayerNorm Triton kernels (interpreter) vs their torch references.

Tolerance: kernel and reference both compute in fp32 and round once to the output dtype, so outputs
and gradients may differ by the fp32 reduction order (~1e-6 of the tensor's scale) plus one rounding
step each side (the interpreter also truncates fp32->bf16 instead of rounding: 1 more ulp). ``TOL`` is
therefore ~1e-5 for fp32 and 2 ulp for fp16 (2^-9) and bf16 (2^-6), relative to each element and, for
elements near zero, to the largest magnitude in the tensor. A wrong formula, mask or reduction is off by
orders of magnitude more.
"""

import pytest
import torch
from fastgpt.kernels.norms import (
    MAX_HIDDEN,
    add_rms_norm_reference,
    add_rms_norm_triton,
    layer_norm_reference,
    layer_norm_triton,
    norm_block_config,
    rms_norm_reference,
    rms_norm_triton,
)
from kernel_checks import assert_results_close, assert_scaled_close

TOL = {torch.float32: 1e-5, torch.float16: 2**-9, torch.bfloat16: 2**-6}
# (leading shape, hidden): a power of two; an odd hidden size, rows over two forward tiles and several
# backward programs (128 columns -> 16 rows per tile; 45 rows); one row.
SHAPES = [((2, 4), 64), ((3, 15), 100), ((1,), 48)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def assert_close(actual, expected, dtype, what):
    assert_scaled_close(actual, expected, TOL[dtype], what)


def leaf(shape, dtype, scale=1.0, shift=0.0):
    return (torch.randn(shape) * scale + shift).to(dtype).requires_grad_()


def grads(fn, inputs, out_grads):
    """Run ``fn(*inputs)``, backprop ``out_grads`` through its output(s); return outputs and grads."""
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(
        [o for o, g in zip(outs, out_grads) if g is not None], [g for g in out_grads if g is not None]
    )
    result = [o.detach() for o in outs], [None if t.grad is None else t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    return result


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,hidden", SHAPES)
def test_rms_norm_forward_and_grads(lead, hidden, dtype):
    x = leaf((*lead, hidden), dtype, shift=0.5)
    w = leaf((hidden,), dtype, scale=0.2, shift=1.0)
    dy = torch.randn(*lead, hidden).to(dtype)
    (y,), (dx, dw) = grads(lambda a, b: rms_norm_triton(a, b, 1e-6), [x, w], [dy])
    (y_ref,), (dx_ref, dw_ref) = grads(lambda a, b: rms_norm_reference(a, b, 1e-6), [x, w], [dy])
    assert_results_close(TOL, dtype, y=(y, y_ref), dx=(dx, dx_ref), dweight=(dw, dw_ref))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,hidden", SHAPES)
def test_add_rms_norm_forward_and_grads(lead, hidden, dtype):
    x = leaf((*lead, hidden), dtype)
    res = leaf((*lead, hidden), dtype, scale=2.0)
    w = leaf((hidden,), dtype, scale=0.2, shift=1.0)
    dy, dres = torch.randn(*lead, hidden).to(dtype), torch.randn(*lead, hidden).to(dtype)
    outs, (dx, dr, dw) = grads(lambda a, b, c: add_rms_norm_triton(a, b, c, 1e-6), [x, res, w], [dy, dres])
    refs, (dx_ref, dr_ref, dw_ref) = grads(
        lambda a, b, c: add_rms_norm_reference(a, b, c, 1e-6), [x, res, w], [dy, dres]
    )
    assert_results_close(
        TOL,
        dtype,
        normed=(outs[0], refs[0]),
        new_residual=(outs[1], refs[1]),
        dx=(dx, dx_ref),
        dresidual=(dr, dr_ref),
        dweight=(dw, dw_ref),
    )
    # x and residual get equal gradients, but never one shared buffer (a later += would hit both).
    assert dx.data_ptr() != dr.data_ptr()


def test_add_rms_norm_unused_residual_output_and_mixed_dtypes():
    """Only the normed output feeds the loss (the kernel's no-dresidual variant); the residual stream is
    fp32 while x is fp16, so the new residual and the normed output are fp32 as in torch."""
    x = leaf((3, 40), torch.float16)
    res = leaf((3, 40), torch.float32)
    w = leaf((40,), torch.float32, shift=1.0)
    dy = torch.randn(3, 40)
    outs, (dx, dr, dw) = grads(lambda a, b, c: add_rms_norm_triton(a, b, c), [x, res, w], [dy, None])
    refs, (dx_ref, dr_ref, dw_ref) = grads(
        lambda a, b, c: add_rms_norm_reference(a, b, c), [x, res, w], [dy, None]
    )
    assert outs[0].dtype == outs[1].dtype == torch.float32
    assert dx.dtype == torch.float16 and dr.dtype == torch.float32
    assert_close(outs[0], refs[0], torch.float32, "normed")
    assert_close(dx, dx_ref, torch.float16, "dx")
    assert_close(dr, dr_ref, torch.float32, "dresidual")
    assert_close(dw, dw_ref, torch.float32, "dweight")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,hidden", SHAPES)
def test_layer_norm_forward_and_grads(lead, hidden, dtype):
    x = leaf((*lead, hidden), dtype, scale=3.0, shift=2.0)  # a large mean exercises the centring
    w = leaf((hidden,), dtype, scale=0.2, shift=1.0)
    b = leaf((hidden,), dtype, scale=0.5)
    dy = torch.randn(*lead, hidden).to(dtype)
    (y,), (dx, dw, db) = grads(lambda *a: layer_norm_triton(*a, 1e-5), [x, w, b], [dy])
    (y_ref,), (dx_ref, dw_ref, db_ref) = grads(lambda *a: layer_norm_reference(*a, 1e-5), [x, w, b], [dy])
    assert_results_close(TOL, dtype, y=(y, y_ref), dx=(dx, dx_ref), dweight=(dw, dw_ref), dbias=(db, db_ref))


def test_norms_without_weight_or_bias():
    x = leaf((5, 72), torch.float32, shift=1.0)
    dy = torch.randn(5, 72)
    (y,), (dx,) = grads(lambda a: rms_norm_triton(a, None), [x], [dy])
    (y_ref,), (dx_ref,) = grads(lambda a: rms_norm_reference(a, None), [x], [dy])
    assert_close(y, y_ref, torch.float32, "rms y")
    assert_close(dx, dx_ref, torch.float32, "rms dx")
    (y,), (dx,) = grads(lambda a: layer_norm_triton(a, None, None), [x], [dy])
    (y_ref,), (dx_ref,) = grads(lambda a: layer_norm_reference(a, None, None), [x], [dy])
    assert_close(y, y_ref, torch.float32, "ln y")
    assert_close(dx, dx_ref, torch.float32, "ln dx")


def test_strided_rows_are_read_in_place():
    """A row-strided view (e.g. a slice of a wider activation) gives the same result as its copy."""
    wide = torch.randn(6, 80)
    x = wide[:, 8:72]
    w = torch.rand(64) + 0.5
    assert_close(rms_norm_triton(x, w), rms_norm_reference(x.contiguous(), w), torch.float32, "strided")


def test_block_config_bounds():
    assert norm_block_config(100) == (128, 16, 8, 1)  # forward: 16 rows of 128 per tile
    assert norm_block_config(4096) == (4096, 1, 16, 16)
    with pytest.raises(ValueError, match="hidden size"):
        norm_block_config(MAX_HIDDEN + 1)
