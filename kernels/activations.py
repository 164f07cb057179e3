"""Fused MLP activations: SwiGLU (llama family) and GELU-tanh (gpt2 family); Triton kernels and torch
references.

Both are elementwise and bandwidth-bound, so the kernels only save memory traffic and memory:

- The forward reads its input(s) once and writes one output (eager torch writes the ``silu(gate)``
  intermediate and reads it back; the tanh-GELU formula is half a dozen eager ops).
- Nothing but the inputs is saved for the backward: it *recomputes* ``sigmoid(gate)`` / ``tanh(...)``
  from them instead of keeping activation-sized intermediates alive between forward and backward.
- Inputs may be row-strided views (``gate, up = gate_up.chunk(2, -1)`` needs no copy): the kernels take a
  row stride per tensor and a 2D grid ``(rows, column blocks)``.

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
def activation_block_config() -> tuple[int, int]:
    """``(BLOCK, num_warps)``: 1024 elements per program, 4 warps = 8 elements (16 bytes of bf16, one
    vector load) per thread per tensor. Elementwise kernels are bandwidth-bound, so one config serves
    every shape; the column tail is masked."""
    return 1024, 4


# ---------------------------------------------------------------------------------------------- kernels
@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _swiglu_fwd_kernel(GATE, UP, Y, stride_gate, stride_up, stride_y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(GATE + row * stride_gate + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(UP + row * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (g * _sigmoid(g) * u).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(
    DY, GATE, UP, DGATE, DUP, stride_dy, stride_gate, stride_up, stride_dgate, stride_dup, n_cols,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """d/dgate silu(g) u = u s (1 + g (1 - s)) with s = sigmoid(g); d/dup = silu(g)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(GATE + row * stride_gate + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(UP + row * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
    s = _sigmoid(g)
    tl.store(
        DGATE + row * stride_dgate + cols,
        (dy * u * s * (1.0 + g * (1.0 - s))).to(DGATE.dtype.element_ty),
        mask=mask,
    )
    tl.store(DUP + row * stride_dup + cols, (dy * g * s).to(DUP.dtype.element_ty), mask=mask)


# In the GELU kernels: 0.7978845608028654 = sqrt(2 / pi) and 0.044715 is the cubic coefficient of the
# tanh approximation (literals: the interpreter cannot mix module-level constexprs into tensor math).
@triton.jit
def _gelu_tanh_fwd_kernel(X, Y, stride_x, stride_y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    t = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
    tl.store(Y + row * stride_y + cols, (0.5 * x * (1.0 + t)).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_tanh_bwd_kernel(DY, X, DX, stride_dy, stride_x, stride_dx, n_cols, BLOCK: tl.constexpr):
    """d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 c x^2), t recomputed."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    x2 = x * x
    t = _tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x2))
    dt = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x2)
    dx = dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt)
    tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------- launch helpers
def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """``(..., N)`` -> ``(M, N)`` with a unit stride on N (a view when possible, else a copy)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _grid(t2: torch.Tensor, block: int) -> tuple[int, int]:
    return (t2.shape[0], triton.cdiv(t2.shape[1], block))


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        g2, u2 = _as_rows(gate), _as_rows(up)
        y = torch.empty(g2.shape, dtype=torch.result_type(gate, up), device=gate.device)
        block, warps = activation_block_config()
        _swiglu_fwd_kernel[_grid(g2, block)](
            g2, u2, y, g2.stride(0), u2.stride(0), y.stride(0), g2.shape[1], BLOCK=block, num_warps=warps
        )
        ctx.save_for_backward(g2, u2)
        ctx.shapes = (gate.shape, up.dtype)
        return y.view(gate.shape)

    @staticmethod
    def backward(ctx, dy):
        g2, u2 = ctx.saved_tensors
        shape, up_dtype = ctx.shapes
        dy2 = _as_rows(dy)
        dgate = torch.empty(g2.shape, dtype=g2.dtype, device=g2.device)
        dup = torch.empty(g2.shape, dtype=up_dtype, device=g2.device)
        block, warps = activation_block_config()
        _swiglu_bwd_kernel[_grid(g2, block)](
            dy2, g2, u2, dgate, dup, dy2.stride(0), g2.stride(0), u2.stride(0), dgate.stride(0),
            dup.stride(0), g2.shape[1], BLOCK=block, num_warps=warps,
        )  # fmt: skip
        return dgate.view(shape), dup.view(shape)


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x2 = _as_rows(x)
        y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
        block, warps = activation_block_config()
        _gelu_tanh_fwd_kernel[_grid(x2, block)](
            x2, y, x2.stride(0), y.stride(0), x2.shape[1], BLOCK=block, num_warps=warps
        )
        ctx.save_for_backward(x2)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        (x2,) = ctx.saved_tensors
        dy2 = _as_rows(dy)
        dx = torch.empty_like(x2, memory_format=torch.contiguous_format)
        block, warps = activation_block_config()
        _gelu_tanh_bwd_kernel[_grid(x2, block)](
            dy2, x2, dx, dy2.stride(0), x2.stride(0), dx.stride(0), x2.shape[1], BLOCK=block, num_warps=warps
        )
        return dx.view(ctx.shape)


# ------------------------------------------------------------------------------------- public entries
def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate``, ``up`` ``(..., I)`` of one shape (dtype promoted as in torch)."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
    if gate.numel() == 0:
        return swiglu_reference(gate, up)
    return _SwiGLU.apply(gate, up)


def gelu_tanh_triton(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation, as ``F.gelu(x, approximate="tanh")``."""
    if x.numel() == 0:
        return gelu_tanh_reference(x)
    return _GeluTanh.apply(x)


# ------------------------------------------------------------------------------ ahead-of-time configs
def _aot_configs() -> list[dict]:
    block, warps = activation_block_config()
    configs = []
    for dt in ("bf16", "fp16"):
        for name, fn in (
            ("swiglu_fwd", _swiglu_fwd_kernel),
            ("swiglu_bwd", _swiglu_bwd_kernel),
            ("gelu_tanh_fwd", _gelu_tanh_fwd_kernel),
            ("gelu_tanh_bwd", _gelu_tanh_bwd_kernel),
        ):
            configs.append(aot_config(name, fn, dt, {"BLOCK": block}, num_warps=warps))
    return configs


AOT_CONFIGS = _aot_configs()
