"""Cross-entropy and fused linear cross-entropy: torch references (Triton kernels beside them).

``reduction="mean"`` averages over non-ignored targets (0 if all are ignored), ``"sum"`` sums them (what
gradient accumulation over uneven micro-batches needs), ``"none"`` returns one loss per row (0 where
ignored). ``z_loss`` adds ``z_loss * logsumexp(logits)**2`` per counted row (PaLM). ``softcap`` applies
``softcap * tanh(logits / softcap)`` before the softmax (Gemma-2).
"""

from __future__ import annotations

import torch


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
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Same result as the reference, computed over chunks of rows with activation checkpointing so the
    full ``(N, V)`` logits tensor never exists at once (forward or backward). The CPU/torch path of the
    fused op; the Triton path replaces it on GPU."""
    from torch.utils.checkpoint import checkpoint

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
