"""Cross-entropy and fused linear cross-entropy: Triton kernels, torch references and the chunked torch path.

``reduction="mean"`` averages over non-ignored targets (0 if all are ignored), ``"sum"`` sums them (what
gradient accumulation over uneven micro-batches needs), ``"none"`` returns one loss per row (0 where
ignored). ``z_loss`` adds ``z_loss * logsumexp(logits)**2`` per counted row (PaLM). ``softcap`` applies
``softcap * tanh(logits / softcap)`` before the softmax (Gemma-2).

Kernel design (``_cross_entropy_kernel``, one program per row):

- Pass 1 walks the vocabulary in ``BLOCK_V`` tiles keeping a running max and a running sum of
  exponentials rescaled to that max (online log-sum-exp), so a row of any vocabulary size is read once
  with O(BLOCK_V) registers. The target logit is one scalar load.
- Pass 2 (only when a gradient is wanted) re-reads the row and writes
  ``d loss / d logit = scale * (softmax * (1 + 2 z_loss lse) - onehot) * dsoftcap`` - into a separate
  buffer, or *into the logits buffer itself* when that is safe, so no second ``(N, V)`` tensor exists.
  The gradient is produced in the forward; the backward only multiplies it by the incoming scalar (or
  per-row) gradient. ``scale`` is ``1 / n_valid`` for the mean (read from a device tensor: no host sync).

Fused linear cross-entropy (``linear_cross_entropy_triton``) runs over chunks of token rows: chunk
logits ``h_c @ W^T`` (cuBLAS) -> the kernel above writes the chunk's loss and its logit gradient in place
-> ``grad_h_c = grad_logits @ W`` and ``grad_W += grad_logits^T @ h_c`` (accumulated in fp32). Only one
chunk of logits exists at a time (about the size of the hidden states), never the full ``(N, V)``; the
backward just scales the precomputed gradients. With ``reduction="none"`` the per-row scales are only
known in the backward, so there the backward recomputes the chunks instead.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from fastgpt.kernels._aot import aot_config
from torch.utils.checkpoint import checkpoint

__all__ = [
    "AOT_CONFIGS",
    "cross_entropy_block_config",
    "cross_entropy_reference",
    "cross_entropy_triton",
    "linear_cross_entropy_chunk_rows",
    "linear_cross_entropy_chunked",
    "linear_cross_entropy_reference",
    "linear_cross_entropy_triton",
]

REDUCTIONS = ("mean", "sum", "none")


# ------------------------------------------------------------------------------------- torch references
def _reduce(per_row: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    per_row = per_row * valid
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if reduction == "mean":
        return per_row.sum() / valid.sum().clamp(min=1)
    raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def cross_entropy_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """logits ``(N, V)``, targets ``(N,)`` -> loss (fp32)."""
    z = logits.float()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    lse = torch.logsumexp(z, dim=-1)  # (N,)
    per_row = lse - z.gather(-1, safe_targets[:, None]).squeeze(-1)
    if z_loss:
        per_row = per_row + z_loss * lse.pow(2)
    return _reduce(per_row, valid.float(), reduction)


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """hidden ``(N, C)`` @ weight ``(V, C)``ᵀ -> logits ``(N, V)`` -> loss. Materialises the logits."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    return cross_entropy_reference(
        logits, targets, ignore_index=ignore_index, z_loss=z_loss, softcap=softcap, reduction=reduction
    )


def _chunk_loss_and_grad(
    logits: torch.Tensor,  # (n, V)
    targets: torch.Tensor,  # (n,)
    scale: torch.Tensor,  # fp32, one element: the gradient scale of every counted row
    ignore_index: int,
    z_loss: float,
    softcap: float | None,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Torch twin of ``_cross_entropy_kernel`` for one chunk: fp32 loss per row ``(n,)`` (0 where ignored)
    and, if asked, ``d loss / d logits`` ``(n, V)`` already multiplied by ``scale``, in ``logits.dtype``.
    Written as plain elementwise torch so that ``torch.compile`` fuses it into a few passes per chunk."""
    if softcap is not None:
        capped = torch.tanh(logits.float() / softcap)
        z = softcap * capped
        logp = torch.log_softmax(z, dim=-1)
    else:
        z = logits
        logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # (n, V) fp32, one pass
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    loss = -logp.gather(-1, safe_targets[:, None]).squeeze(-1)  # (n,)
    if z_loss:
        lse = z.gather(-1, safe_targets[:, None]).squeeze(-1).float() + loss  # z_t - log p_t
        loss = loss + z_loss * lse * lse
    loss = torch.where(valid, loss, 0.0)
    if not compute_grad:
        return loss, None
    row_scale = torch.where(valid, scale, 0.0)  # (n,)
    dlse = row_scale * (1.0 + 2.0 * z_loss * lse) if z_loss else row_scale
    # softmax * dlse - onehot * scale, built in the log-probabilities' buffer (few passes when eager)
    grad = logp.exp_().mul_(dlse[:, None])  # (n, V)
    rows = torch.arange(grad.shape[0], device=grad.device)
    grad.index_put_((rows, safe_targets), -row_scale, accumulate=True)
    if softcap is not None:
        grad.mul_(1.0 - capped * capped)
    return loss, grad.to(logits.dtype)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """The torch path of the fused op for ``mean``/``sum``: like ``_LinearCrossEntropy`` (Triton), each
    chunk's logit gradient is produced in the forward and turned into the hidden/weight/bias gradients
    at once, so the backward only scales them and no chunk GEMM is recomputed (activation checkpointing
    recomputed the ``(n, V)`` logits of every chunk: a quarter of the output layer's GEMM FLOPs)."""

    @staticmethod
    def forward(
        ctx, hidden, weight, targets, bias, ignore_index, z_loss, softcap, reduction, chunk_rows, need
    ):
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        compute_grad = any(need)
        scale = _scale_for(targets, ignore_index, reduction)
        losses, grad_hidden = [], []
        grad_weight = grad_bias = None
        with _gathered(weight):
            w = weight.to(hidden.dtype)
            b = None if bias is None else bias.to(hidden.dtype)
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start : start + chunk_rows]  # (n, C)
                logits = h @ w.t() if b is None else torch.addmm(b, h, w.t())  # (n, V)
                loss, grad = _chunk_loss_and_grad(
                    logits, targets[start : start + chunk_rows], scale, ignore_index, z_loss, softcap,
                    compute_grad,
                )  # fmt: skip
                losses.append(loss)
                if grad is None:
                    continue
                if need[0]:
                    grad_hidden.append(grad @ w)  # (n, C)
                if need[1]:  # (V, C), summed over chunks in fp32, in place (one V x C buffer)
                    if grad_weight is None:
                        grad_weight = torch.zeros(w.shape, dtype=torch.float32, device=hidden.device)
                    _mm_accumulate_fp32(grad_weight, grad.t(), h)
                if need[2]:
                    if grad_bias is None:
                        grad_bias = torch.zeros(w.shape[0], dtype=torch.float32, device=hidden.device)
                    grad_bias += grad.sum(0, dtype=torch.float32)
        ctx.save_for_backward(torch.cat(grad_hidden) if grad_hidden else None, grad_weight, grad_bias)
        loss_rows = torch.cat(losses) if losses else hidden.new_zeros(0, dtype=torch.float32)
        return _reduce_rows(loss_rows, targets, ignore_index, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = (grad_bias * grad_output).to(bias_dtype)
        return grad_hidden, grad_weight, None, grad_bias, None, None, None, None, None, None


def _autocast_hidden(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, str, tuple[bool, bool, bool]]:
    """What both fused paths start from: ``hidden`` in the autocast dtype when autocast is on (their
    GEMMs then run in it, as ``F.linear``'s would), its device type, and whether hidden, weight and
    bias need gradients (the backward computes only those)."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        hidden = hidden.to(torch.get_autocast_dtype(device_type))
    grad_on = torch.is_grad_enabled()
    need = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    return hidden, device_type, need


def linear_cross_entropy_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Same result as the reference, computed over chunks of rows so the full ``(N, V)`` logits tensor
    never exists at once (forward or backward). The CPU/torch path of the fused op; the Triton path
    replaces it on GPU. ``chunk_size`` (rows) defaults to chunk logits about the size of the hidden
    states, and at least 256 rows so each chunk is one efficient CPU GEMM.

    ``mean``/``sum``: the gradients are computed chunk by chunk in the forward (``_ChunkedLinearCrossEntropy``)
    and the backward only scales them. ``none``: the per-row gradient scales are known only in the
    backward, so each chunk is activation-checkpointed (its logits are recomputed in the backward).
    Under autocast the GEMMs run in the autocast dtype, as ``F.linear`` would; gradients come back in
    each input's own dtype, the weight/bias gradients summed over chunks in fp32."""
    _check_args(hidden, targets, reduction, softcap, "linear_cross_entropy")
    if chunk_size is None:
        vocab = weight.shape[0]
        chunk_size = max(256, linear_cross_entropy_chunk_rows(hidden.shape[0], hidden.shape[1], vocab))
    if reduction != "none":
        hidden, device_type, need = _autocast_hidden(hidden, weight, bias)
        with torch.autocast(device_type, enabled=False):
            return _ChunkedLinearCrossEntropy.apply(
                hidden, weight, targets, bias, ignore_index, z_loss, softcap, reduction, chunk_size, need
            )
    valid = targets != ignore_index
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        parts.append(
            checkpoint(
                linear_cross_entropy_reference,
                hidden[sl],
                weight,
                targets[sl],
                bias=bias,
                ignore_index=ignore_index,
                z_loss=z_loss,
                softcap=softcap,
                reduction="none",
                use_reentrant=False,
            )
        )
    per_row = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    return _reduce(per_row, valid.float(), reduction)


# ------------------------------------------------------------------------------------------ block sizes
BLOCK_V_CHOICES = (256, 1024, 4096)


def cross_entropy_block_config(n_cols: int) -> tuple[int, int]:
    """``(BLOCK_V, num_warps)``: the kernel loops over vocabulary tiles of up to 4096 logits (16 fp32
    values per thread with 8 warps). Toy vocabularies get a 256- or 1024-wide tile so they do not run
    mostly masked lanes. Any vocabulary size works with these three configurations (fewer configs, a
    faster AOT build check)."""
    block = next(b for b in BLOCK_V_CHOICES if n_cols <= b or b == BLOCK_V_CHOICES[-1])
    return block, {256: 2, 1024: 4, 4096: 8}[block]


def linear_cross_entropy_chunk_rows(n_rows: int, hidden_size: int, vocab_size: int) -> int:
    """Token rows per chunk of the fused linear cross-entropy: chunk logits ``(rows, V)`` about as large
    as the hidden states ``(N, C)``, a power of two (at least 16 rows so the matmuls stay efficient)."""
    rows = triton.next_power_of_2(max(1, triton.cdiv(n_rows, triton.cdiv(vocab_size, hidden_size))))
    return max(16, min(rows, triton.next_power_of_2(max(n_rows, 1))))


# ----------------------------------------------------------------------------------------------- kernel
@triton.jit
def _cross_entropy_kernel(
    LOGITS, TARGETS, LOSS, LSE, GRAD, GRAD_SCALE,
    stride_logits, stride_grad, stride_scale,
    n_cols, ignore_index, z_loss, softcap,
    BLOCK_V: tl.constexpr, HAS_SOFTCAP: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):  # fmt: skip
    # softcap * tanh(z / softcap) is written out with tl.exp (tanh(u) = 1 - 2 / (exp(2u) + 1)): libdevice
    # tanh does not run under the interpreter, and nested @jit helpers are slow there.
    row = tl.program_id(0).to(tl.int64)
    logits_ptr = LOGITS + row * stride_logits
    target = tl.load(TARGETS + row)
    valid = target != ignore_index

    # Pass 1: online log-sum-exp over vocabulary tiles.
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.zeros([], tl.float32)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < n_cols
        z = tl.load(logits_ptr + cols, mask=mask, other=float("-inf")).to(tl.float32)
        if HAS_SOFTCAP:
            z = tl.where(mask, softcap * (1.0 - 2.0 / (tl.exp(2.0 * z / softcap) + 1.0)), float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)

    # The target's logit; an out-of-range target reads NaN (a loud loss) instead of stray memory.
    safe_target = tl.where(valid, target, 0)
    in_range = (safe_target >= 0) & (safe_target < n_cols)
    z_target = tl.load(logits_ptr + safe_target, mask=in_range, other=float("nan")).to(tl.float32)
    if HAS_SOFTCAP:
        z_target = softcap * (1.0 - 2.0 / (tl.exp(2.0 * z_target / softcap) + 1.0))
    loss = lse - z_target + z_loss * lse * lse
    tl.store(LOSS + row, tl.where(valid, loss, 0.0))
    tl.store(LSE + row, lse)

    if COMPUTE_GRAD:
        # Pass 2: d loss / d logit, already multiplied by this row's scale (1/n_valid for the mean).
        scale = tl.where(valid, tl.load(GRAD_SCALE + row * stride_scale).to(tl.float32), 0.0)
        dlse = scale * (1.0 + 2.0 * z_loss * lse)
        grad_ptr = GRAD + row * stride_grad
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            mask = cols < n_cols
            z = tl.load(logits_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_SOFTCAP:
                z = softcap * (1.0 - 2.0 / (tl.exp(2.0 * z / softcap) + 1.0))
            g = tl.exp(z - lse) * dlse - tl.where(cols == target, scale, 0.0)
            if HAS_SOFTCAP:
                t = z / softcap
                g = g * (1.0 - t * t)
            tl.store(grad_ptr + cols, g.to(GRAD.dtype.element_ty), mask=mask)


def _launch_cross_entropy(
    logits: torch.Tensor,  # (n, V), unit stride on V
    targets: torch.Tensor,  # (n,)
    loss: torch.Tensor,  # (n,) fp32, written
    grad: torch.Tensor | None,  # (n, V) written (may be `logits` itself); None: no gradient
    grad_scale: torch.Tensor,  # fp32, one value (stride 0) or one per row
    ignore_index: int,
    z_loss: float,
    softcap: float | None,
) -> None:
    n_rows, n_cols = logits.shape
    if n_rows == 0:
        return
    block, warps = cross_entropy_block_config(n_cols)
    lse = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    _cross_entropy_kernel[(n_rows,)](
        logits, targets, loss, lse, grad if grad is not None else logits, grad_scale,
        logits.stride(0), grad.stride(0) if grad is not None else 0, grad_scale.stride(0) if grad_scale.numel() > 1 else 0,
        n_cols, ignore_index, float(z_loss), float(softcap or 0.0),
        BLOCK_V=block, HAS_SOFTCAP=softcap is not None, COMPUTE_GRAD=grad is not None, num_warps=warps,
    )  # fmt: skip


def _check_args(logits_or_hidden: torch.Tensor, targets: torch.Tensor, reduction: str, softcap, what: str):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{what}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if logits_or_hidden.dim() != 2 or targets.dim() != 1 or targets.shape[0] != logits_or_hidden.shape[0]:
        raise ValueError(
            f"{what}: expected (N, *) inputs and (N,) targets, got {tuple(logits_or_hidden.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if softcap is not None and softcap <= 0:
        raise ValueError(f"{what}: softcap must be positive or None, got {softcap}")


def _scale_for(targets: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    """The per-row gradient scale of a reduction, as a one-element fp32 device tensor (no host sync)."""
    if reduction == "mean":
        n_valid = (targets != ignore_index).sum().clamp(min=1)
        return (1.0 / n_valid.float()).reshape(1)
    return torch.ones(1, dtype=torch.float32, device=targets.device)


def _reduce_rows(loss_rows: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str):
    if reduction == "none":
        return loss_rows
    if reduction == "sum":
        return loss_rows.sum()
    return loss_rows.sum() / (targets != ignore_index).sum().clamp(min=1)


# ------------------------------------------------------------------------------------ plain cross-entropy
# ``torch.ops.fastgpt.cross_entropy``: a custom op (traceable by ``torch.compile`` without a graph break)
# returning the reduced loss and d loss / d logits already scaled for the reduction; its registered
# backward only multiplies that gradient by the incoming one (out of place, so it may run twice).
@torch.library.custom_op("fastgpt::cross_entropy", mutates_args=())
def _cross_entropy_op(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ``(loss, grad)``: loss fp32 (``()``, or ``(N,)`` for ``none``), grad like ``logits`` (empty
    when ``compute_grad`` is false)."""
    loss_rows = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    grad = torch.empty_like(logits) if compute_grad else logits.new_empty(0)
    scale = _scale_for(targets, ignore_index, reduction)
    _launch_cross_entropy(
        logits, targets, loss_rows, grad if compute_grad else None, scale, ignore_index, z_loss, softcap
    )
    return _reduce_rows(loss_rows, targets, ignore_index, reduction), grad


@_cross_entropy_op.register_fake
def _(logits, targets, ignore_index, z_loss, softcap, reduction, compute_grad):
    shape = (logits.shape[0],) if reduction == "none" else ()
    loss = logits.new_empty(shape, dtype=torch.float32)
    return loss, torch.empty_like(logits) if compute_grad else logits.new_empty(0)


def _cross_entropy_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.reduction = inputs[5]


def _cross_entropy_grad(ctx, grad_output, _dgrad):
    (grad,) = ctx.saved_tensors
    scale = grad_output[:, None] if ctx.reduction == "none" else grad_output
    return grad * scale.to(grad.dtype), None, None, None, None, None, None


_cross_entropy_op.register_autograd(_cross_entropy_grad, setup_context=_cross_entropy_setup)


@torch.library.custom_op("fastgpt::cross_entropy_inplace_", mutates_args=("logits",))
def _cross_entropy_inplace_op(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    z_loss: float,
    softcap: float | None,
    reduction: str,
) -> torch.Tensor:
    """The loss, with d loss / d logits (scaled for the reduction) written over ``logits``."""
    loss_rows = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    scale = _scale_for(targets, ignore_index, reduction)
    _launch_cross_entropy(logits, targets, loss_rows, logits, scale, ignore_index, z_loss, softcap)
    return _reduce_rows(loss_rows, targets, ignore_index, reduction)


@_cross_entropy_inplace_op.register_fake
def _(logits, targets, ignore_index, z_loss, softcap, reduction):
    return logits.new_empty((logits.shape[0],) if reduction == "none" else (), dtype=torch.float32)


class _CrossEntropyInPlace(torch.autograd.Function):
    """``inplace_grad=True``: a mutating op cannot carry registered autograd, so this path stays an
    autograd.Function around the mutating op (an eager memory saving: one ``(N, V)`` buffer less)."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index, z_loss, softcap, reduction):
        loss = torch.ops.fastgpt.cross_entropy_inplace_(
            logits, targets, ignore_index, z_loss, softcap, reduction
        )
        # Anyone else who saved these logits for a backward now fails loudly instead of silently reading
        # gradients.
        torch.autograd.graph.increment_version(logits)
        ctx.save_for_backward(logits)
        ctx.reduction = reduction
        ctx.used = False
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.used:
            raise RuntimeError("cross_entropy_triton: backward ran twice; the gradient is scaled in place")
        ctx.used = True
        (grad,) = ctx.saved_tensors
        scale = grad_output[:, None] if ctx.reduction == "none" else grad_output
        grad.mul_(scale.to(grad.dtype))
        return grad, None, None, None, None, None


def cross_entropy_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    inplace_grad: bool = False,
) -> torch.Tensor:
    """Cross-entropy of logits ``(N, V)`` against targets ``(N,)`` (see the module docstring).

    ``inplace_grad=True`` writes the gradient over ``logits`` (saving one ``(N, V)`` buffer): only for
    logits that nothing reads afterwards. Autograd users of the same logits are then stopped with an
    error (the version counter is bumped); plain reads of the tensor are not, hence opt-in. Without it
    this runs ``torch.ops.fastgpt.cross_entropy`` (differentiable, traceable by ``torch.compile``).
    """
    _check_args(logits, targets, reduction, softcap, "cross_entropy")
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    if inplace_grad and compute_grad and logits.is_leaf:
        raise ValueError("cross_entropy: inplace_grad=True would overwrite a leaf tensor that requires grad")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    targets = targets.contiguous()
    z_loss, softcap = float(z_loss), None if softcap is None else float(softcap)
    if inplace_grad and compute_grad:
        return _CrossEntropyInPlace.apply(logits, targets, ignore_index, z_loss, softcap, reduction)
    return torch.ops.fastgpt.cross_entropy(
        logits, targets, ignore_index, z_loss, softcap, reduction, compute_grad
    )[0]


# ------------------------------------------------------------------------------- fused linear + CE
def _mm_accumulate_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with ``acc`` fp32 and ``a``/``b`` possibly bf16/fp16. On CUDA the GEMM writes fp32
    directly (``out_dtype``, torch >= 2.8); elsewhere the low-precision product is added to fp32 (the
    cross-chunk sum is still fp32)."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
        return
    if a.is_cuda and _supports_out_dtype():
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        return
    acc.add_(a @ b)


@functools.cache
def _supports_out_dtype() -> bool:
    """Whether this torch build's CUDA ``addmm`` can write an fp32 result from bf16 inputs."""
    try:
        a = torch.zeros(16, 16, dtype=torch.bfloat16, device="cuda")
        acc = torch.zeros(16, 16, dtype=torch.float32, device="cuda")
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
        return True
    except (RuntimeError, TypeError):
        return False


@contextlib.contextmanager
def _gathered(weight: torch.Tensor) -> Iterator[None]:
    """Make a DeepSpeed ZeRO-3 partitioned ``weight`` whole for the duration of the block.

    Inside a module's forward DeepSpeed has already gathered the module's own parameters (``ds_status``
    AVAILABLE) and this does nothing. A parameter used outside its module's forward (an LM head weight
    read by the model's top-level forward, a tied embedding) or in this op's recomputing backward may be
    NOT_AVAILABLE: then it is gathered here, on every rank, and re-partitioned afterwards."""
    status = getattr(weight, "ds_status", None)
    if status is None or getattr(status, "name", "") != "NOT_AVAILABLE":
        yield
        return
    import deepspeed  # heavy, optional: deepspeed (multi-process and ZeRO runs only)

    with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
        yield


def _linear_cross_entropy_chunks(
    hidden: torch.Tensor,  # (N, C)
    weight: torch.Tensor,  # (V, C), gathered
    targets: torch.Tensor,  # (N,)
    bias: torch.Tensor | None,  # (V,)
    row_scale: torch.Tensor,  # fp32: one value, or (N,) per-row gradient scales
    ignore_index: int,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int,
    need: tuple[bool, bool, bool],  # gradients wanted for (hidden, weight, bias)
):
    """Loss per row and, when any of ``need`` is set, the gradients scaled by ``row_scale``."""
    N, C = hidden.shape
    V = weight.shape[0]
    compute_grad = any(need)
    loss_rows = torch.empty(N, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need[0] else None
    grad_weight = torch.zeros(V, C, dtype=torch.float32, device=hidden.device) if need[1] else None
    grad_bias = torch.zeros(V, dtype=torch.float32, device=hidden.device) if need[2] else None
    for start in range(0, N, chunk_rows):
        end = min(start + chunk_rows, N)
        h = hidden[start:end]
        logits = h @ weight.t() if bias is None else torch.addmm(bias, h, weight.t())  # (n, V)
        scale = row_scale[start:end] if row_scale.numel() > 1 else row_scale
        _launch_cross_entropy(
            logits, targets[start:end], loss_rows[start:end], logits if compute_grad else None, scale,
            ignore_index, z_loss, softcap,
        )  # fmt: skip
        if not compute_grad:
            continue
        # `logits` now holds d loss / d logits for this chunk.
        if grad_hidden is not None:
            torch.mm(logits, weight, out=grad_hidden[start:end])
        if grad_weight is not None:
            _mm_accumulate_fp32(grad_weight, logits.t(), h)
        if grad_bias is not None:
            grad_bias += logits.sum(0, dtype=torch.float32)
    return loss_rows, grad_hidden, grad_weight, grad_bias


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


# ``torch.ops.fastgpt.linear_cross_entropy``: the loss and, for mean/sum, the gradients of the inputs
# named in ``need_*`` (scaled for the reduction) as extra outputs, computed in the forward; the
# registered backward only scales them. For ``none`` the backward is another op that recomputes the
# chunks with the incoming per-row scales. Absent gradients are empty tensors (custom ops return no None).
@torch.library.custom_op("fastgpt::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    chunk_rows: int,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> ``(loss, grad_hidden like hidden, grad_weight fp32 (V, C), grad_bias fp32 (V,))``."""
    need = (need_hidden, need_weight, need_bias) if reduction != "none" else (False, False, False)
    with _gathered(weight):
        w = weight.to(hidden.dtype)
        b = None if bias is None else bias.to(hidden.dtype)
        scale = _scale_for(targets, ignore_index, "sum" if reduction == "none" else reduction)
        loss_rows, *grads = _linear_cross_entropy_chunks(
            hidden, w, targets, b, scale, ignore_index, z_loss, softcap, chunk_rows, need
        )
    loss = _reduce_rows(loss_rows, targets, ignore_index, reduction)
    return (loss, *(_empty(hidden) if g is None else g for g in grads))


@_linear_cross_entropy_op.register_fake
def _(hidden, weight, targets, bias, ignore_index, z_loss, softcap, reduction, chunk_rows, nh, nw, nb):
    grads = reduction != "none"
    vocab, width = weight.shape
    loss = hidden.new_empty((hidden.shape[0],) if reduction == "none" else (), dtype=torch.float32)
    return (
        loss,
        torch.empty_like(hidden) if grads and nh else _empty(hidden),
        hidden.new_empty((vocab, width), dtype=torch.float32) if grads and nw else _empty(hidden),
        hidden.new_empty((vocab,), dtype=torch.float32) if grads and nb else _empty(hidden),
    )


@torch.library.custom_op("fastgpt::linear_cross_entropy_backward", mutates_args=())
def _linear_cross_entropy_backward_op(
    grad_rows: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``reduction="none"``: recompute the chunks with per-row scales ``grad_rows`` (N,) -> the same three
    gradients as the forward op's extra outputs."""
    with _gathered(weight):
        w = weight.to(hidden.dtype)
        b = None if bias is None else bias.to(hidden.dtype)
        _, *grads = _linear_cross_entropy_chunks(
            hidden, w, targets, b, grad_rows.float().contiguous(), ignore_index, z_loss, softcap, chunk_rows,
            (need_hidden, need_weight, need_bias),
        )  # fmt: skip
    return tuple(_empty(hidden) if g is None else g for g in grads)


@_linear_cross_entropy_backward_op.register_fake
def _(grad_rows, hidden, weight, targets, bias, ignore_index, z_loss, softcap, chunk_rows, nh, nw, nb):
    vocab, width = weight.shape
    return (
        torch.empty_like(hidden) if nh else _empty(hidden),
        hidden.new_empty((vocab, width), dtype=torch.float32) if nw else _empty(hidden),
        hidden.new_empty((vocab,), dtype=torch.float32) if nb else _empty(hidden),
    )


def _linear_cross_entropy_setup(ctx, inputs, output):
    hidden, weight, targets, bias, ignore_index, z_loss, softcap, reduction, chunk_rows, *need = inputs
    ctx.options = (ignore_index, z_loss, softcap, chunk_rows, tuple(need))
    ctx.reduction = reduction
    ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
    if reduction == "none":
        ctx.save_for_backward(hidden, weight, targets, bias)
    else:
        ctx.save_for_backward(*output[1:])


def _linear_cross_entropy_grad(ctx, grad_output, *_unused):
    ignore_index, z_loss, softcap, chunk_rows, need = ctx.options
    weight_dtype, bias_dtype = ctx.dtypes
    if ctx.reduction == "none":
        hidden, weight, targets, bias = ctx.saved_tensors
        grad_hidden, grad_weight, grad_bias = torch.ops.fastgpt.linear_cross_entropy_backward(
            grad_output, hidden, weight, targets, bias, ignore_index, z_loss, softcap, chunk_rows, *need
        )
    else:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        grad_weight = grad_weight * grad_output
        grad_bias = grad_bias * grad_output
    return (
        grad_hidden if need[0] else None,
        grad_weight.to(weight_dtype) if need[1] else None,
        None,
        grad_bias.to(bias_dtype) if need[2] else None,
        *(None,) * 8,
    )


_linear_cross_entropy_op.register_autograd(
    _linear_cross_entropy_grad, setup_context=_linear_cross_entropy_setup
)


def linear_cross_entropy_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden (N, C) @ weight (V, C)^T [+ bias]`` against ``targets (N,)`` without ever
    holding the ``(N, V)`` logits (see the module docstring). ``weight`` may be a DeepSpeed ZeRO-3
    partitioned parameter. ``chunk_rows`` overrides :func:`linear_cross_entropy_chunk_rows`.

    Under autocast the matmuls run in the autocast dtype, as ``F.linear`` would; otherwise ``hidden`` and
    ``weight`` are used in ``hidden``'s dtype. Gradients come back in each input's own dtype; the weight
    and bias gradients are accumulated in fp32 across chunks.
    """
    _check_args(hidden, targets, reduction, softcap, "linear_cross_entropy")
    weight_shape = tuple(getattr(weight, "ds_shape", weight.shape))  # ZeRO-3: the full, not the local, shape
    if len(weight_shape) != 2 or weight_shape[1] != hidden.shape[1]:
        raise ValueError(f"linear_cross_entropy: weight must be (V, {hidden.shape[1]}), got {weight_shape}")
    hidden, device_type, need = _autocast_hidden(hidden, weight, bias)
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    rows = chunk_rows or linear_cross_entropy_chunk_rows(hidden.shape[0], hidden.shape[1], weight_shape[0])
    with torch.autocast(device_type, enabled=False):
        return torch.ops.fastgpt.linear_cross_entropy(
            hidden, weight, targets.contiguous(), bias, ignore_index, float(z_loss),
            None if softcap is None else float(softcap), reduction, rows, *need,
        )[0]  # fmt: skip


# ------------------------------------------------------------------------------ ahead-of-time configs
def _aot_configs() -> list[dict]:
    configs = []
    for dt in ("bf16", "fp16"):
        for block in BLOCK_V_CHOICES:
            warps = cross_entropy_block_config(block)[1]
            for softcap in (False, True):
                for grad in (False, True):
                    constexprs = {"BLOCK_V": block, "HAS_SOFTCAP": softcap, "COMPUTE_GRAD": grad}
                    configs.append(
                        aot_config(
                            "cross_entropy", _cross_entropy_kernel, dt, constexprs,
                            fp32_pointers=("LOSS", "LSE", "GRAD_SCALE"), i64_pointers=("TARGETS",),
                            fp32_scalars=("z_loss", "softcap"), unaligned=("ignore_index", "stride_scale"),
                            num_warps=warps,
                        )
                    )  # fmt: skip
    return configs


AOT_CONFIGS = _aot_configs()
