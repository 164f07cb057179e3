"""Rotary position embedding: a Triton kernel for Q and K in one launch, and the torch reference.

Half-split convention (as Hugging Face Llama): the head dim is split into two halves ``(x1, x2)`` and
rotated as ``(x1 cos - x2 sin, x2 cos + x1 sin)``. ``cos``/``sin`` are ``(B or 1, T, D/2)`` in fp32,
already gathered at each token's position id (so packed documents restart at 0) and already carrying
any frequency scaling (Llama-3.1) chosen by the caller.

Kernel design: one program per (sequence, block of ``BLOCK_T`` tokens). It loads those tokens' ``D/2``
cosines and sines once, then rotates every query head and every key head of the block, one
``(BLOCK_T, D/2)`` tile per half at a time: the angles are read once per token, not once per head, and
Q and K need one launch, not two. Strides are passed for every tensor, so Q/K laid out ``(B, T, H, D)``
and viewed as ``(B, H, T, D)`` (what a fused QKV projection gives) are read and written in place of a
copy. The backward is the same kernel with ``sin`` negated: the rotation by ``-theta`` is the transpose
of the rotation by ``theta``. Nothing is saved for the backward but cos/sin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastgpt.kernels._aot import aot_config

__all__ = ["AOT_CONFIGS", "rope_block_config", "rope_reference", "rope_triton"]


# ------------------------------------------------------------------------------------- torch reference
def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D/2): broadcast over heads
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q ``(B, Hq, T, D)`` and k ``(B, Hkv, T, D)``."""
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


# ------------------------------------------------------------------------------------------ block sizes
MAX_HEAD_DIM = 512
BLOCK_HALF_CHOICES = (16, 32, 64, 128, 256)


def rope_block_config(head_dim: int) -> tuple[int, int, int]:
    """``(BLOCK_HALF, BLOCK_T, num_warps)``: tiles of ``BLOCK_T`` tokens x ``BLOCK_HALF`` columns per half,
    1024 elements each (8 per thread with 4 warps; two halves of Q or K live at once)."""
    if head_dim % 2 or not 2 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"rope: head dim must be even and in 2..{MAX_HEAD_DIM}, got {head_dim}")
    block_half = max(triton.next_power_of_2(head_dim // 2), BLOCK_HALF_CHOICES[0])
    return block_half, 1024 // block_half, 4


# ----------------------------------------------------------------------------------------------- kernel
@triton.jit
def _rope_kernel(
    Q, K, COS, SIN, QO, KO,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_qob, stride_qoh, stride_qot, stride_kob, stride_koh, stride_kot,
    stride_cb, stride_ct,
    seq_len, n_q_heads, n_k_heads, half,
    BLOCK_HALF: tl.constexpr, BLOCK_T: tl.constexpr, BACKWARD: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    t = (tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T))[:, None].to(tl.int64)  # (BLOCK_T, 1)
    cols = tl.arange(0, BLOCK_HALF)[None, :]  # (1, BLOCK_HALF)
    mask = (t < seq_len) & (cols < half)
    angle_offset = b * stride_cb + t * stride_ct + cols
    cos = tl.load(COS + angle_offset, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(SIN + angle_offset, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        sin = -sin
    # The Q and K loops are spelled out (not a shared @jit helper): the interpreter re-patches on
    # every nested call, which made the tests several times slower.
    q_ptr = Q + b * stride_qb + t * stride_qt + cols
    qo_ptr = QO + b * stride_qob + t * stride_qot + cols
    for _ in range(0, n_q_heads):
        x1 = tl.load(q_ptr, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(q_ptr + half, mask=mask, other=0.0).to(tl.float32)
        tl.store(qo_ptr, (x1 * cos - x2 * sin).to(QO.dtype.element_ty), mask=mask)
        tl.store(qo_ptr + half, (x2 * cos + x1 * sin).to(QO.dtype.element_ty), mask=mask)
        q_ptr += stride_qh
        qo_ptr += stride_qoh
    k_ptr = K + b * stride_kb + t * stride_kt + cols
    ko_ptr = KO + b * stride_kob + t * stride_kot + cols
    for _ in range(0, n_k_heads):
        x1 = tl.load(k_ptr, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(k_ptr + half, mask=mask, other=0.0).to(tl.float32)
        tl.store(ko_ptr, (x1 * cos - x2 * sin).to(KO.dtype.element_ty), mask=mask)
        tl.store(ko_ptr + half, (x2 * cos + x1 * sin).to(KO.dtype.element_ty), mask=mask)
        k_ptr += stride_kh
        ko_ptr += stride_koh


# ------------------------------------------------------------------------------------- launch helpers
def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _outputs_like(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh outputs laid out like ``q``/``k`` (after ``_unit_last_stride``); the fake implementation
    calls this too, so traced and real strides agree."""
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    if qo.stride(-1) != 1 or ko.stride(-1) != 1:  # empty_like keeps strides only for dense layouts
        qo, ko = (
            torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device),
        )
    return qo, ko


def _launch(q, k, cos, sin, backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate (or un-rotate) ``q``/``k`` into fresh tensors laid out like them."""
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    q, k = _unit_last_stride(q), _unit_last_stride(k)
    qo, ko = _outputs_like(q, k)
    block_half, block_t, warps = rope_block_config(D)
    stride_cb = 0 if cos.shape[0] == 1 else cos.stride(0)
    _rope_kernel[(B, triton.cdiv(T, block_t))](
        q, k, cos, sin, qo, ko,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        qo.stride(0), qo.stride(1), qo.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
        stride_cb, cos.stride(1),
        T, Hq, Hkv, D // 2,
        BLOCK_HALF=block_half, BLOCK_T=block_t, BACKWARD=backward, num_warps=warps,
    )  # fmt: skip
    return qo, ko


def _check(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"rope: q and k must be (B, H, T, D); got {tuple(q.shape)} and {tuple(k.shape)}")
    B, _, T, D = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (B, T, D):
        raise ValueError(f"rope: k {tuple(k.shape)} must match q {tuple(q.shape)} in B, T and D")
    expected = f"(1 or {B}, {T}, {D // 2})"
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 3 or t.shape[0] not in (1, B) or tuple(t.shape[1:]) != (T, D // 2):
            raise ValueError(f"rope: {name} must be {expected}, got {tuple(t.shape)}")
    if cos.shape != sin.shape:
        raise ValueError(f"rope: cos {tuple(cos.shape)} and sin {tuple(sin.shape)} differ")


# A torch custom op (traceable by ``torch.compile`` without a graph break) whose derivative is the same
# op with ``backward`` flipped: the rotation by -theta is the transpose of the rotation by theta.
@torch.library.custom_op("fastgpt::rope", mutates_args=())
def _rope_op(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q``/``k`` by ``cos``/``sin`` (fp32, contiguous); by -theta when ``backward``."""
    return _launch(q, k, cos, sin, backward)


@_rope_op.register_fake
def _(q, k, cos, sin, backward):
    rope_block_config(q.shape[-1])
    return _outputs_like(_unit_last_stride(q), _unit_last_stride(k))


def _rope_setup(ctx, inputs, output):
    _, _, cos, sin, backward = inputs
    ctx.save_for_backward(cos, sin)
    ctx.backward = backward


def _rope_grad(ctx, dq, dk):
    cos, sin = ctx.saved_tensors
    dq, dk = torch.ops.fastgpt.rope(dq, dk, cos, sin, not ctx.backward)
    return dq, dk, None, None, None


_rope_op.register_autograd(_rope_grad, setup_context=_rope_setup)


def rope_triton(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q ``(B, Hq, T, D)`` and k ``(B, Hkv, T, D)`` by ``cos``/``sin`` ``(B or 1, T, D/2)``.
    Runs ``torch.ops.fastgpt.rope`` (differentiable, traceable by ``torch.compile``)."""
    _check(q, k, cos, sin)
    if q.numel() == 0 or k.numel() == 0:
        return rope_reference(q, k, cos, sin)
    cos = cos.to(torch.float32).contiguous()
    sin = sin.to(torch.float32).contiguous()
    return torch.ops.fastgpt.rope(q, k, cos, sin, False)


# ------------------------------------------------------------------------------ ahead-of-time configs
def _aot_configs() -> list[dict]:
    configs = []
    for dt in ("bf16", "fp16"):
        for block_half in BLOCK_HALF_CHOICES:
            _, block_t, warps = rope_block_config(2 * block_half)
            for backward in (False, True):
                constexprs = {"BLOCK_HALF": block_half, "BLOCK_T": block_t, "BACKWARD": backward}
                configs.append(
                    aot_config(
                        "rope",
                        _rope_kernel,
                        dt,
                        constexprs,
                        fp32_pointers=("COS", "SIN"),
                        unaligned=("seq_len", "n_q_heads", "n_k_heads"),
                        num_warps=warps,
                    )  # fmt: skip
                )
    return configs


AOT_CONFIGS = _aot_configs()
