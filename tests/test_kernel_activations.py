"""SwiGLU and GELU-tanh Triton kernels (interpreter) vs the torch references.

The kernels compute in fp32 and round once. The reference is therefore evaluated in fp32 on the same
(low-precision) inputs and rounded to the dtype at the end; the two then differ by fp32 roundoff (the
kernel's ``tanh`` is ``1 - 2/(exp(2u)+1)``, ~1e-7 absolute) plus at most one rounding step each side
(the interpreter truncates fp32->bf16): 1e-5 for fp32 and 2 ulp for fp16 (2^-9) / bf16 (2^-6), relative
to each element and to the tensor's largest magnitude for elements near zero.
"""

import pytest
import torch
from fastgpt.kernels.activations import gelu_tanh_reference, gelu_tanh_triton, swiglu_reference, swiglu_triton
from kernel_checks import assert_results_close, assert_scaled_close

TOL = {torch.float32: 1e-5, torch.float16: 2**-9, torch.bfloat16: 2**-6}
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered in exp:RuntimeWarning"
)  # exp(+-200) -> inf is intended

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (rows, columns): powers of two; an odd width over two 1024-wide tiles (masked tail); odd rows and columns
# over three 16x64 tiles (masked in both dimensions); one row.
SHAPES = [((2, 8), 64), ((3,), 1500), ((5, 7), 37), ((1,), 37)]


def assert_close(actual, expected, dtype, what):
    assert_scaled_close(actual, expected, TOL[dtype], what)


def fp32_reference_grads(fn, inputs, dy):
    """Output and input gradients of ``fn`` evaluated in fp32 on ``inputs``, rounded to their dtypes."""
    up = [t.detach().float().requires_grad_() for t in inputs]
    out = fn(*up)
    out.backward(dy.float())
    return out.detach().to(inputs[0].dtype), [u.grad.to(t.dtype) for u, t in zip(up, inputs)]


def kernel_grads(fn, inputs, dy):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(dy)
    return out.detach(), [t.grad for t in leaves]


def with_extremes(t):
    """Put large-magnitude values in: exp overflow in sigmoid/tanh must give the exact limits."""
    flat = t.view(-1)
    flat[: min(4, flat.numel())] = torch.tensor([30.0, -30.0, 100.0, -100.0])[: min(4, flat.numel())]
    return t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,cols", SHAPES)
def test_swiglu_forward_and_grads(lead, cols, dtype):
    gate = with_extremes(torch.randn(*lead, cols) * 2).to(dtype)
    up = torch.randn(*lead, cols).to(dtype)
    dy = torch.randn(*lead, cols).to(dtype)
    y, (dg, du) = kernel_grads(swiglu_triton, [gate, up], dy)
    y_ref, (dg_ref, du_ref) = fp32_reference_grads(swiglu_reference, [gate, up], dy)
    assert_results_close(TOL, dtype, y=(y, y_ref), dgate=(dg, dg_ref), dup=(du, du_ref))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,cols", SHAPES)
def test_gelu_tanh_forward_and_grads(lead, cols, dtype):
    x = with_extremes(torch.randn(*lead, cols) * 3).to(dtype)
    dy = torch.randn(*lead, cols).to(dtype)
    y, (dx,) = kernel_grads(gelu_tanh_triton, [x], dy)
    y_ref, (dx_ref,) = fp32_reference_grads(gelu_tanh_reference, [x], dy)
    assert_results_close(TOL, dtype, y=(y, y_ref), dx=(dx, dx_ref))


def test_swiglu_on_chunks_of_a_fused_projection():
    """gate/up as the two halves of one (rows, 2I) tensor: row-strided views read without a copy."""
    gate_up = torch.randn(2, 5, 2 * 96, requires_grad=True)
    dy = torch.randn(2, 5, 96)
    gate, up = gate_up.chunk(2, dim=-1)
    swiglu_triton(gate, up).backward(dy)
    grad = gate_up.grad.clone()
    gate_up.grad = None
    gate, up = gate_up.chunk(2, dim=-1)
    swiglu_reference(gate, up).backward(dy)
    assert_close(grad, gate_up.grad, torch.float32, "d(gate_up)")


def test_swiglu_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="one shape"):
        swiglu_triton(torch.randn(2, 3), torch.randn(2, 4))
