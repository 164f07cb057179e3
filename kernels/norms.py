"""RMSNorm, fused residual-add RMSNorm and LayerNorm: Triton kernels and their torch references.

Statistics are always computed in fp32, whatever the input dtype, and the result is cast back.

Kernel design (tiles of whole rows in the forward; one *group of rows* per program in the backward):

- Forward: a ``(BLOCK_M, BLOCK_H)`` tile of rows is loaded once into registers (``BLOCK_H`` = next power
  of two >= H, masked tail; ``BLOCK_M`` > 1 packs several short rows into one program), reduced per row
  in fp32 to ``rstd`` (and ``mean`` for LayerNorm), normalised and stored. The per-row statistics (4 or 8
  bytes per row) are saved, so the backward does not recompute them.
- The fused ``add_rms_norm`` variant adds the residual stream in the same pass and writes the new
  residual, saving one full read+write of the activations per sub-layer.
- Backward: ``dx`` needs only its own row, but ``dweight``/``dbias`` are sums over *all* rows. Each of
  ``P`` programs (about twice the number of SMs) walks a contiguous group of rows one row at a time
  (a 2D tile here kept more values live and spilled at 8192 columns), accumulates its partial
  ``dweight``/``dbias`` in fp32 registers and writes one ``(P, H)`` partial row; a final torch ``sum(0)``
  over ``P`` rows finishes the reduction. No atomics, so the result is deterministic.
- ``weight=None`` (and ``bias=None``) run the same kernels with ones (zeros); their gradients are then
  simply not returned.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from fastgpt.kernels._aot import aot_config
from fastgpt.kernels._target import sm_count

__all__ = [
    "AOT_CONFIGS",
    "MAX_HIDDEN",
    "add_rms_norm_reference",
    "add_rms_norm_triton",
    "layer_norm_reference",
    "layer_norm_triton",
    "NormConfig",
    "norm_block_config",
    "rms_norm_reference",
    "rms_norm_triton",
]


# ------------------------------------------------------------------------------------- torch references
def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def add_rms_norm_reference(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual + x`` and its RMSNorm: returns ``(normed, new_residual)``."""
    new_residual = residual + x
    return rms_norm_reference(new_residual, weight, eps), new_residual


def layer_norm_reference(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps).to(x.dtype)


# ------------------------------------------------------------------------------------------ block sizes
# Whole rows sit in registers. 16384 covers every hidden size in use (Llama-3-405B: 16384); wider rows get
# a clear error instead of a kernel that spills most of its row (see docs/kernels.md, AOT table).
MAX_HIDDEN = 16384
MIN_BLOCK_H = 64
BLOCK_H_CHOICES = tuple(1 << p for p in range(6, 15))  # 64 .. 16384: all the launchers can pick
TILE_ELEMENTS = 2048  # rows shorter than this are packed BLOCK_M to a tile


class NormConfig(NamedTuple):
    block_h: int  # columns per tile (the whole row, padded to a power of two)
    block_m: int  # rows per forward tile (the backward walks one row at a time)
    forward_warps: int
    backward_warps: int


def norm_block_config(n_cols: int) -> NormConfig:
    """Tile shape and warps for rows of ``n_cols`` elements.

    Tiles hold at least 2048 elements (short rows are packed several to a tile) and warps grow with the
    tile so each thread holds 8-16 fp32 values per live vector: enough to keep the load/store units busy,
    few enough to stay clear of spills. The backward keeps ~5 such vectors live, so up to 8192 it stops
    at 16 warps (128 registers per thread allowed) rather than 32 (64 allowed). A 16384 row needs all 32
    warps and its backward spills a few hundred bytes per thread (the AOT table in docs/kernels.md).
    """
    if n_cols < 1 or n_cols > MAX_HIDDEN:
        raise ValueError(f"norms: hidden size must be in 1..{MAX_HIDDEN}, got {n_cols}")
    block_h = max(triton.next_power_of_2(n_cols), MIN_BLOCK_H)
    block_m = max(1, TILE_ELEMENTS // block_h)
    forward_warps = min(block_m * block_h // 256, 32)
    backward_warps = min(max(block_h // 256, 1), 16) if block_h <= 8192 else 32
    return NormConfig(block_h, block_m, forward_warps, backward_warps)


def _reduction_programs(n_rows: int, device: torch.device) -> tuple[int, int]:
    """``(programs, rows_per_program)`` for the backward's partial weight-gradient sums: about two
    programs per SM of the launch target (a handful under the interpreter, enough to exercise the
    reduction; the target GPU's count in the tests' GPU-tiles mode, see ``kernels/_target.py``)."""
    sms = sm_count(device)
    target = 4 if sms is None else 2 * sms
    rows_per_program = triton.cdiv(n_rows, min(n_rows, target))
    return triton.cdiv(n_rows, rows_per_program), rows_per_program


# ---------------------------------------------------------------------------------------------- kernels
@triton.jit
def _rms_norm_fwd_kernel(
    X, RES, W, Y, RES_OUT, RSTD,
    stride_x, stride_res, stride_y, stride_res_out,
    n_rows, n_cols, eps,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):  # fmt: skip
    row_ids = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = row_ids.to(tl.int64)[:, None]  # (BLOCK_M, 1)
    cols = tl.arange(0, BLOCK_H)[None, :]  # (1, BLOCK_H)
    mask = (rows < n_rows) & (cols < n_cols)
    x = tl.load(X + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(RES + rows * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        # Round the new residual to its storage dtype first: the norm must see what the next layer sees.
        h = (x + r).to(RES_OUT.dtype.element_ty)
        tl.store(RES_OUT + rows * stride_res_out + cols, h, mask=mask)
        x = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)  # (BLOCK_M,)
    tl.store(RSTD + row_ids, rstd, mask=row_ids < n_rows)
    w = tl.load(W + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    tl.store(Y + rows * stride_y + cols, (x * rstd[:, None] * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_row_group(W, n_rows, n_cols, rows_per_program, BLOCK_H: tl.constexpr):
    """What a backward program starts from: its id (the row of its partial dw), its rows
    ``[row_start, row_end)`` (``rows_per_program`` of them, fewer at the end), the columns, their mask
    and the weight in fp32."""
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    return pid, row_start, row_end, cols, mask, w


@triton.jit
def _rms_norm_bwd_kernel(
    DY,
    X,
    W,
    RSTD,
    DRES,
    DX,
    DW_PARTIAL,
    stride_dy,
    stride_x,
    stride_dres,
    stride_dx,
    n_rows,
    n_cols,
    rows_per_program,
    BLOCK_H: tl.constexpr,
    HAS_DRESIDUAL: tl.constexpr,
):
    """dx = rstd * (w*dy - xhat * mean(xhat * w*dy)) [+ dresidual]; partial dw = sum_rows dy * xhat."""
    pid, row_start, row_end, cols, mask, w = _bwd_row_group(W, n_rows, n_cols, rows_per_program, BLOCK_H)
    dw = tl.zeros([BLOCK_H], dtype=tl.float32)
    first = row_start.to(tl.int64)
    dy_ptr, x_ptr, dx_ptr = DY + first * stride_dy, X + first * stride_x, DX + first * stride_dx
    dres_ptr = DRES + first * stride_dres
    for row in range(row_start, row_end):
        dy = tl.load(dy_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        wdy = w * dy
        dx = (wdy - xhat * (tl.sum(xhat * wdy, axis=0) / n_cols)) * rstd
        if HAS_DRESIDUAL:
            dx += tl.load(dres_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            dres_ptr += stride_dres
        tl.store(dx_ptr + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        dy_ptr += stride_dy
        x_ptr += stride_x
        dx_ptr += stride_dx
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=mask)


@triton.jit
def _layer_norm_fwd_kernel(
    X, W, B, Y, MEAN, RSTD, stride_x, stride_y, n_rows, n_cols, eps,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    row_ids = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = row_ids.to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_H)[None, :]
    col_mask = cols < n_cols
    mask = (rows < n_rows) & col_mask
    x = tl.load(X + rows * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / n_cols
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / n_cols + eps)  # biased variance, as torch
    tl.store(MEAN + row_ids, mean, mask=row_ids < n_rows)
    tl.store(RSTD + row_ids, rstd, mask=row_ids < n_rows)
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(Y + rows * stride_y + cols, (xc * rstd[:, None] * w + b).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _layer_norm_bwd_kernel(
    DY,
    X,
    W,
    MEAN,
    RSTD,
    DX,
    DW_PARTIAL,
    DB_PARTIAL,
    stride_dy,
    stride_x,
    stride_dx,
    n_rows,
    n_cols,
    rows_per_program,
    BLOCK_H: tl.constexpr,
):
    """dx = rstd * (w*dy - mean(w*dy) - xhat * mean(xhat * w*dy)); partial dw, db over the group."""
    pid, row_start, row_end, cols, mask, w = _bwd_row_group(W, n_rows, n_cols, rows_per_program, BLOCK_H)
    dw = tl.zeros([BLOCK_H], dtype=tl.float32)
    db = tl.zeros([BLOCK_H], dtype=tl.float32)
    first = row_start.to(tl.int64)
    dy_ptr, x_ptr, dx_ptr = DY + first * stride_dy, X + first * stride_x, DX + first * stride_dx
    for row in range(row_start, row_end):
        dy = tl.load(dy_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        wdy = w * dy
        c_xhat = tl.sum(xhat * wdy, axis=0) / n_cols
        c_mean = tl.sum(wdy, axis=0) / n_cols
        dx = (wdy - c_mean - xhat * c_xhat) * rstd
        tl.store(dx_ptr + cols, dx.to(DX.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
        dy_ptr += stride_dy
        x_ptr += stride_x
        dx_ptr += stride_dx
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=mask)
    tl.store(DB_PARTIAL + pid * n_cols + cols, db, mask=mask)


# ------------------------------------------------------------------------------------- launch helpers
def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """``(..., H)`` -> ``(M, H)`` with a unit stride on H (a view when possible, else a copy)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _param_or(value: torch.Tensor | None, n_cols: int, fill: float, like: torch.Tensor) -> torch.Tensor:
    if value is None:
        return torch.full((n_cols,), fill, dtype=like.dtype, device=like.device)
    if value.shape != (n_cols,):
        raise ValueError(f"norms: weight/bias must have shape ({n_cols},), got {tuple(value.shape)}")
    return value.contiguous()


def _rms_forward(x2, res2, w, eps, y, new_res, rstd) -> None:
    """Launch the RMSNorm forward over the rows of ``x2`` (``res2``/``new_res``: the fused residual add)."""
    n_rows, n_cols = x2.shape
    cfg = norm_block_config(n_cols)
    has_res = res2 is not None
    _rms_norm_fwd_kernel[(triton.cdiv(n_rows, cfg.block_m),)](
        x2, res2 if has_res else x2, w, y, new_res if has_res else y, rstd,
        x2.stride(0), res2.stride(0) if has_res else 0, y.stride(0), y.stride(0),
        n_rows, n_cols, eps,
        BLOCK_M=cfg.block_m, BLOCK_H=cfg.block_h, HAS_RESIDUAL=has_res, num_warps=cfg.forward_warps,
    )  # fmt: skip


def _rms_backward(dy2, x2, w, rstd, dres2, dx) -> torch.Tensor:
    """Launch the RMSNorm backward: writes ``dx`` (M, H) and returns ``dw`` fp32 (H,)."""
    n_rows, n_cols = x2.shape
    cfg = norm_block_config(n_cols)
    programs, rows_per_program = _reduction_programs(n_rows, x2.device)
    dw_partial = torch.empty((programs, n_cols), dtype=torch.float32, device=x2.device)
    has_dres = dres2 is not None
    _rms_norm_bwd_kernel[(programs,)](
        dy2, x2, w, rstd, dres2 if has_dres else dy2, dx, dw_partial,
        dy2.stride(0), x2.stride(0), dres2.stride(0) if has_dres else 0, dx.stride(0),
        n_rows, n_cols, rows_per_program,
        BLOCK_H=cfg.block_h, HAS_DRESIDUAL=has_dres, num_warps=cfg.backward_warps,
    )  # fmt: skip
    return dw_partial.sum(0)


def _rows(t: torch.Tensor) -> int:
    return t.numel() // t.shape[-1]


def _dense(shape, dtype, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=like.device)


def _param_grad(dw: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The fp32 parameter gradient in the parameter's dtype; an empty tensor stands for "no parameter"
    (custom ops cannot return None)."""
    return dw.new_empty(0) if weight is None else dw.to(weight.dtype)


# ----------------------------------------------------------------------------- custom ops and autograd
# Each entry point is a torch custom op (``torch.ops.fastgpt.*``) with a fake implementation, so
# ``torch.compile`` traces through it without a graph break, and with its backward registered as
# autograd; the backward is a custom op too. Statistics needed by the backward are extra outputs.
@torch.library.custom_op("fastgpt::rms_norm", mutates_args=())
def _rms_norm_op(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ``(y like x, rstd fp32 (rows,))``."""
    x2 = _as_rows(x)
    w = _param_or(weight, x2.shape[1], 1.0, x)
    y = _dense(x.shape, x.dtype, x)
    rstd = _dense((x2.shape[0],), torch.float32, x)
    _rms_forward(x2, None, w, eps, y.view(x2.shape), None, rstd)
    return y, rstd


@_rms_norm_op.register_fake
def _(x, weight, eps):
    norm_block_config(x.shape[-1])
    return _dense(x.shape, x.dtype, x), _dense((_rows(x),), torch.float32, x)


@torch.library.custom_op("fastgpt::rms_norm_backward", mutates_args=())
def _rms_norm_backward_op(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ``(dx like x, dweight in weight's dtype, or empty without a weight)``."""
    x2 = _as_rows(x)
    w = _param_or(weight, x2.shape[1], 1.0, x)
    dx = _dense(x.shape, x.dtype, x)
    dw = _rms_backward(_as_rows(dy), x2, w, rstd, None, dx.view(x2.shape))
    return dx, _param_grad(dw, weight)


@_rms_norm_backward_op.register_fake
def _(dy, x, weight, rstd):
    dw = _dense((0,) if weight is None else weight.shape, x.dtype if weight is None else weight.dtype, x)
    return _dense(x.shape, x.dtype, x), dw


def _rms_norm_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight, output[1])


def _rms_norm_grad(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw = torch.ops.fastgpt.rms_norm_backward(dy, x, weight, rstd)
    return dx, (dw if weight is not None and ctx.needs_input_grad[1] else None), None


_rms_norm_op.register_autograd(_rms_norm_grad, setup_context=_rms_norm_setup)


@torch.library.custom_op("fastgpt::add_rms_norm", mutates_args=())
def _add_rms_norm_op(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> ``(normed, new_residual, rstd fp32 (rows,))``; outputs in ``result_type(x, residual)``."""
    out_dtype = torch.result_type(x, residual)
    x2, res2 = _as_rows(x), _as_rows(residual)
    w = _param_or(weight, x2.shape[1], 1.0, x)
    y, new_res = _dense(x.shape, out_dtype, x), _dense(x.shape, out_dtype, x)
    rstd = _dense((x2.shape[0],), torch.float32, x)
    _rms_forward(x2, res2, w, eps, y.view(x2.shape), new_res.view(x2.shape), rstd)
    return y, new_res, rstd


@_add_rms_norm_op.register_fake
def _(x, residual, weight, eps):
    norm_block_config(x.shape[-1])
    out_dtype = torch.result_type(x, residual)
    rstd = _dense((_rows(x),), torch.float32, x)
    return _dense(x.shape, out_dtype, x), _dense(x.shape, out_dtype, x), rstd


@torch.library.custom_op("fastgpt::add_rms_norm_backward", mutates_args=())
def _add_rms_norm_backward_op(
    dy: torch.Tensor | None,
    dnew_res: torch.Tensor | None,
    h: torch.Tensor,
    weight: torch.Tensor | None,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ``(d(x + residual) like h, dweight or empty)``; ``dy``/``dnew_res`` None for an unused output."""
    h2 = _as_rows(h)
    w = _param_or(weight, h2.shape[1], 1.0, h)
    if dy is None:  # only the residual stream is used downstream
        dy = torch.zeros_like(h)
    dres2 = _as_rows(dnew_res) if dnew_res is not None else None
    dh = _dense(h.shape, h.dtype, h)
    dw = _rms_backward(_as_rows(dy), h2, w, rstd, dres2, dh.view(h2.shape))
    return dh, _param_grad(dw, weight)


@_add_rms_norm_backward_op.register_fake
def _(dy, dnew_res, h, weight, rstd):
    dw = _dense((0,) if weight is None else weight.shape, h.dtype if weight is None else weight.dtype, h)
    return _dense(h.shape, h.dtype, h), dw


def _add_rms_norm_setup(ctx, inputs, output):
    x, residual, weight, _ = inputs
    ctx.save_for_backward(output[1], weight, output[2])
    ctx.dtypes = (x.dtype, residual.dtype)
    ctx.set_materialize_grads(False)  # an unused output gets None, not a tensor of zeros to read


def _add_rms_norm_grad(ctx, dy, dnew_res, _drstd):
    h, weight, rstd = ctx.saved_tensors
    if dy is None and dnew_res is None:
        return None, None, None, None
    dh, dw = torch.ops.fastgpt.add_rms_norm_backward(dy, dnew_res, h, weight, rstd)
    dw = dw if weight is not None and ctx.needs_input_grad[2] else None
    # x and residual receive the same gradient (cast to their own dtypes; no copy when they agree).
    return dh.to(ctx.dtypes[0]), dh.to(ctx.dtypes[1]), dw, None


_add_rms_norm_op.register_autograd(_add_rms_norm_grad, setup_context=_add_rms_norm_setup)


@torch.library.custom_op("fastgpt::layer_norm", mutates_args=())
def _layer_norm_op(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> ``(y like x, mean, rstd)``, the statistics fp32 ``(rows,)``."""
    x2 = _as_rows(x)
    n_rows, n_cols = x2.shape
    w = _param_or(weight, n_cols, 1.0, x)
    b = _param_or(bias, n_cols, 0.0, x)
    cfg = norm_block_config(n_cols)
    y = _dense(x.shape, x.dtype, x)
    mean = _dense((n_rows,), torch.float32, x)
    rstd = torch.empty_like(mean)
    _layer_norm_fwd_kernel[(triton.cdiv(n_rows, cfg.block_m),)](
        x2, w, b, y, mean, rstd, x2.stride(0), n_cols, n_rows, n_cols, eps,
        BLOCK_M=cfg.block_m, BLOCK_H=cfg.block_h, num_warps=cfg.forward_warps,
    )  # fmt: skip
    return y, mean, rstd


@_layer_norm_op.register_fake
def _(x, weight, bias, eps):
    norm_block_config(x.shape[-1])
    stats = (_rows(x),)
    return _dense(x.shape, x.dtype, x), _dense(stats, torch.float32, x), _dense(stats, torch.float32, x)


@torch.library.custom_op("fastgpt::layer_norm_backward", mutates_args=())
def _layer_norm_backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> ``(dx like x, dweight, dbias)``, parameter gradients in their dtypes (empty when absent)."""
    x2 = _as_rows(x)
    dy2 = _as_rows(dy)
    n_rows, n_cols = x2.shape
    w = _param_or(weight, n_cols, 1.0, x)
    cfg = norm_block_config(n_cols)
    programs, rows_per_program = _reduction_programs(n_rows, x2.device)
    dx = _dense(x.shape, x.dtype, x)
    dw_partial = torch.empty((programs, n_cols), dtype=torch.float32, device=x2.device)
    db_partial = torch.empty_like(dw_partial)
    _layer_norm_bwd_kernel[(programs,)](
        dy2, x2, w, mean, rstd, dx, dw_partial, db_partial,
        dy2.stride(0), x2.stride(0), n_cols,
        n_rows, n_cols, rows_per_program,
        BLOCK_H=cfg.block_h, num_warps=cfg.backward_warps,
    )  # fmt: skip
    return dx, _param_grad(dw_partial.sum(0), weight), _param_grad(db_partial.sum(0), bias)


@_layer_norm_backward_op.register_fake
def _(dy, x, weight, bias, mean, rstd):
    def param(p):
        return _dense((0,), x.dtype, x) if p is None else _dense(p.shape, p.dtype, x)

    return _dense(x.shape, x.dtype, x), param(weight), param(bias)


def _layer_norm_setup(ctx, inputs, output):
    x, weight, bias, _ = inputs
    ctx.save_for_backward(x, weight, bias, output[1], output[2])


def _layer_norm_grad(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = torch.ops.fastgpt.layer_norm_backward(dy, x, weight, bias, mean, rstd)
    dw = dw if weight is not None and ctx.needs_input_grad[1] else None
    db = db if bias is not None and ctx.needs_input_grad[2] else None
    return dx, dw, db, None


_layer_norm_op.register_autograd(_layer_norm_grad, setup_context=_layer_norm_setup)


# ------------------------------------------------------------------------------------- public entries
def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim of ``x`` ``(..., H)``; same result as :func:`rms_norm_reference`.
    Runs ``torch.ops.fastgpt.rms_norm`` (differentiable, traceable by ``torch.compile``)."""
    if x.numel() == 0:
        return rms_norm_reference(x, weight, eps)
    return torch.ops.fastgpt.rms_norm(x, weight, float(eps))[0]


def add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``residual + x`` and RMSNorm in one pass: returns ``(normed, new_residual)``."""
    if x.shape != residual.shape:
        raise ValueError(f"add_rms_norm: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ")
    if x.numel() == 0:
        return add_rms_norm_reference(x, residual, weight, eps)
    y, new_res, _ = torch.ops.fastgpt.add_rms_norm(x, residual, weight, float(eps))
    return y, new_res


def layer_norm_triton(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dim of ``x`` ``(..., H)``; same result as :func:`layer_norm_reference`."""
    if x.numel() == 0:
        return layer_norm_reference(x, weight, bias, eps)
    return torch.ops.fastgpt.layer_norm(x, weight, bias, float(eps))[0]


# ------------------------------------------------------------------------------ ahead-of-time configs
def _aot_configs() -> list[dict]:
    """Every (kernel, tile, flag) the launchers can pick, in bf16, fp16 and fp32 (weights in the same dtype
    as the activations; statistics and partial sums are fp32 whatever the inputs). fp32 is what training
    under bf16/fp16 autocast launches: the residual stream and the norm weights stay fp32 there."""
    configs = []
    stats = ("RSTD", "MEAN", "DW_PARTIAL", "DB_PARTIAL")
    for dt in ("bf16", "fp16", "fp32"):
        for block_h in BLOCK_H_CHOICES:
            cfg = norm_block_config(block_h)
            tile = {"BLOCK_M": cfg.block_m, "BLOCK_H": cfg.block_h}
            unaligned = ("n_rows", "rows_per_program")
            fwd = dict(
                fp32_pointers=stats, fp32_scalars=("eps",), unaligned=unaligned, num_warps=cfg.forward_warps
            )
            bwd = dict(fp32_pointers=stats, unaligned=unaligned, num_warps=cfg.backward_warps)
            row = {"BLOCK_H": cfg.block_h}
            for flag in (False, True):
                configs += [
                    aot_config("rms_norm_fwd", _rms_norm_fwd_kernel, dt, {**tile, "HAS_RESIDUAL": flag}, **fwd),
                    aot_config("rms_norm_bwd", _rms_norm_bwd_kernel, dt, {**row, "HAS_DRESIDUAL": flag}, **bwd),
                ]  # fmt: skip
            configs += [
                aot_config("layer_norm_fwd", _layer_norm_fwd_kernel, dt, tile, **fwd),
                aot_config("layer_norm_bwd", _layer_norm_bwd_kernel, dt, row, **bwd),
            ]
    return configs


AOT_CONFIGS = _aot_configs()
