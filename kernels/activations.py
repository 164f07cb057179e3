"""Fused MLP activations: SwiGLU (llama family) and GELU-tanh (gpt2 family); Triton kernels and torch
references.

Both are elementwise and bandwidth-bound, so the kernels only save memory traffic and memory:

- The forward reads its input(s) once and writes one output (eager torch writes the ``silu(gate)``
  intermediate and reads it back; the tanh-GELU formula is half a dozen eager ops).
- Nothing but the inputs is saved for the backward: it *recomputes* ``sigmoid(gate)`` / ``tanh(...)``
  from them instead of keeping activation-sized intermediates alive between forward and backward.
- Inputs may be row-strided views (``gate, up = gate_up.chunk(2, -1)`` needs no copy): the kernels take a
  row stride per tensor and work on ``(BLOCK_M, BLOCK_N)`` tiles of 1024 elements (several short rows
  per tile, or a 1024-wide piece of one long row).

All math is in fp32; one rounding to the output dtype at the end. ``tanh`` is written with ``tl.exp``
(``tanh(u) = 1 - 2 / (exp(2u) + 1)``, exact at both infinities) because libdevice is unavailable under
the Triton interpreter the tests use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from fastgpt.kernels._aot import aot_config

__all__ = [
    "AOT_CONFIGS",
    "activation_block_config",
    "gelu_tanh_reference",
    "gelu_tanh_triton",
    "swiglu_reference",
    "swiglu_triton",
]


# ------------------------------------------------------------------------------------- torch references
def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def gelu_tanh_reference(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# ------------------------------------------------------------------------------------------ block sizes
BLOCK_N_CHOICES = (32, 64, 128, 256, 512, 1024)


def activation_block_config(n_cols: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps)``: tiles of 1024 elements, 4 warps = 8 elements (16 bytes of bf16,
    one vector access) per thread per tensor. Elementwise kernels are bandwidth-bound; the tile is only
    shaped so short rows are not mostly masked lanes. Tails are masked in both dimensions."""
    block_n = min(max(triton.next_power_of_2(n_cols), BLOCK_N_CHOICES[0]), BLOCK_N_CHOICES[-1])
    return 1024 // block_n, block_n, 4


# ---------------------------------------------------------------------------------------------- kernels
# The activation math is written inline in each kernel, not in shared @jit helpers: the interpreter
# re-patches the language on every nested call, which made the tests several times slower.
@triton.jit
def _swiglu_fwd_kernel(
    GATE,
    UP,
    Y,
    stride_gate,
    stride_up,
    stride_y,
    n_rows,
    n_cols,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    mask = (rows < n_rows) & (cols < n_cols)
    g = tl.load(GATE + rows * stride_gate + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(UP + rows * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
    s = 1.0 / (1.0 + tl.exp(-g))
    tl.store(Y + rows * stride_y + cols, (g * s * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(
    DY, GATE, UP, DGATE, DUP, stride_dy, stride_gate, stride_up, stride_dgate, stride_dup, n_rows, n_cols,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """d/dgate silu(g) u = u s (1 + g (1 - s)) with s = sigmoid(g) recomputed; d/dup = silu(g)."""
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    mask = (rows < n_rows) & (cols < n_cols)
    dy = tl.load(DY + rows * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(GATE + rows * stride_gate + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(UP + rows * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
    s = 1.0 / (1.0 + tl.exp(-g))
    dgate = dy * u * s * (1.0 + g * (1.0 - s))
    tl.store(DGATE + rows * stride_dgate + cols, dgate.to(DGATE.dtype.element_ty), mask=mask)
    tl.store(DUP + rows * stride_dup + cols, (dy * g * s).to(DUP.dtype.element_ty), mask=mask)


# In the GELU kernels: 0.7978845608028654 = sqrt(2 / pi), 0.044715 is the cubic coefficient of the tanh
# approximation, and tanh(u) = 1 - 2 / (exp(2u) + 1) (libdevice tanh does not run in the interpreter).
@triton.jit
def _gelu_tanh_fwd_kernel(
    X, Y, stride_x, stride_y, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    mask = (rows < n_rows) & (cols < n_cols)
    x = tl.load(X + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    t = 1.0 - 2.0 / (tl.exp(2.0 * 0.7978845608028654 * (x + 0.044715 * x * x * x)) + 1.0)
    tl.store(Y + rows * stride_y + cols, (0.5 * x * (1.0 + t)).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_tanh_bwd_kernel(
    DY, X, DX, stride_dy, stride_x, stride_dx, n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    """d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 c x^2), t recomputed."""
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None]
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    mask = (rows < n_rows) & (cols < n_cols)
    dy = tl.load(DY + rows * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    x2 = x * x
    t = 1.0 - 2.0 / (tl.exp(2.0 * 0.7978845608028654 * x * (1.0 + 0.044715 * x2)) + 1.0)
    dt = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x2)
    dx = dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt)
    tl.store(DX + rows * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------- launch helpers
def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """``(..., N)`` -> ``(M, N)`` with a unit stride on N (a view when possible, else a copy)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _launch(kernel, t2: torch.Tensor, *args) -> None:
    """Run an elementwise ``kernel`` over the ``(M, N)`` rows of ``t2``; ``args`` are its tensors and
    row strides (the sizes and tile constexprs are appended here)."""
    n_rows, n_cols = t2.shape
    block_m, block_n, warps = activation_block_config(n_cols)
    grid = (triton.cdiv(n_rows, block_m), triton.cdiv(n_cols, block_n))
    kernel[grid](*args, n_rows, n_cols, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)


def _dense(shape, dtype, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=like.device)


# Torch custom ops (traceable by ``torch.compile`` without a graph break) with fake implementations and
# registered autograd; the backwards are custom ops too. Only the inputs are saved for the backward.
@torch.library.custom_op("fastgpt::swiglu", mutates_args=())
def _swiglu_op(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g2, u2 = _as_rows(gate), _as_rows(up)
    y = _dense(gate.shape, torch.result_type(gate, up), gate)
    _launch(_swiglu_fwd_kernel, g2, g2, u2, y, g2.stride(0), u2.stride(0), g2.shape[1])
    return y


@_swiglu_op.register_fake
def _(gate, up):
    return _dense(gate.shape, torch.result_type(gate, up), gate)


@torch.library.custom_op("fastgpt::swiglu_backward", mutates_args=())
def _swiglu_backward_op(
    dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ``(dgate, dup)`` in the dtypes of ``gate`` and ``up``."""
    g2, u2, dy2 = _as_rows(gate), _as_rows(up), _as_rows(dy)
    dgate, dup = _dense(gate.shape, gate.dtype, gate), _dense(gate.shape, up.dtype, gate)
    n_cols = g2.shape[1]
    _launch(
        _swiglu_bwd_kernel, g2, dy2, g2, u2, dgate, dup,
        dy2.stride(0), g2.stride(0), u2.stride(0), n_cols, n_cols,
    )  # fmt: skip
    return dgate, dup


@_swiglu_backward_op.register_fake
def _(dy, gate, up):
    return _dense(gate.shape, gate.dtype, gate), _dense(gate.shape, up.dtype, gate)


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _swiglu_grad(ctx, dy):
    gate, up = ctx.saved_tensors
    return torch.ops.fastgpt.swiglu_backward(dy, gate, up)


_swiglu_op.register_autograd(_swiglu_grad, setup_context=_save_inputs)


@torch.library.custom_op("fastgpt::gelu_tanh", mutates_args=())
def _gelu_tanh_op(x: torch.Tensor) -> torch.Tensor:
    x2 = _as_rows(x)
    y = _dense(x.shape, x.dtype, x)
    _launch(_gelu_tanh_fwd_kernel, x2, x2, y, x2.stride(0), x2.shape[1])
    return y


@_gelu_tanh_op.register_fake
def _(x):
    return _dense(x.shape, x.dtype, x)


@torch.library.custom_op("fastgpt::gelu_tanh_backward", mutates_args=())
def _gelu_tanh_backward_op(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    x2, dy2 = _as_rows(x), _as_rows(dy)
    dx = _dense(x.shape, x.dtype, x)
    _launch(_gelu_tanh_bwd_kernel, x2, dy2, x2, dx, dy2.stride(0), x2.stride(0), x2.shape[1])
    return dx


@_gelu_tanh_backward_op.register_fake
def _(dy, x):
    return _dense(x.shape, x.dtype, x)


def _gelu_tanh_grad(ctx, dy):
    (x,) = ctx.saved_tensors
    return torch.ops.fastgpt.gelu_tanh_backward(dy, x)


_gelu_tanh_op.register_autograd(_gelu_tanh_grad, setup_context=_save_inputs)


# ------------------------------------------------------------------------------------- public entries
def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate``, ``up`` ``(..., I)`` of one shape (dtype promoted as in torch).
    Runs ``torch.ops.fastgpt.swiglu`` (differentiable, traceable by ``torch.compile``)."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
    if gate.numel() == 0:
        return swiglu_reference(gate, up)
    return torch.ops.fastgpt.swiglu(gate, up)


def gelu_tanh_triton(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation, as ``F.gelu(x, approximate="tanh")``."""
    if x.numel() == 0:
        return gelu_tanh_reference(x)
    return torch.ops.fastgpt.gelu_tanh(x)


# ------------------------------------------------------------------------------ ahead-of-time configs
def _aot_configs() -> list[dict]:
    configs = []
    for dt in ("bf16", "fp16"):
        for block_n in BLOCK_N_CHOICES:
            block_m, _, warps = activation_block_config(block_n)
            tile = {"BLOCK_M": block_m, "BLOCK_N": block_n}
            for name, fn in (
                ("swiglu_fwd", _swiglu_fwd_kernel),
                ("swiglu_bwd", _swiglu_bwd_kernel),
                ("gelu_tanh_fwd", _gelu_tanh_fwd_kernel),
                ("gelu_tanh_bwd", _gelu_tanh_bwd_kernel),
            ):
                configs.append(aot_config(name, fn, dt, tile, unaligned=("n_rows",), num_warps=warps))
    return configs


AOT_CONFIGS = _aot_configs()
