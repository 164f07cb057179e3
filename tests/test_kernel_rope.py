"""RoPE Triton kernel (interpreter) vs the torch reference: Q and K together, GQA head counts, per-batch
position ids (packed documents restarting at 0), broadcast cos/sin, a (B, T, H, D) layout read in place.

Kernel and reference do the same fp32 arithmetic on the same inputs and round once, so they agree to
fp32 roundoff (1e-6) in fp32 and to one rounding step each side in fp16/bf16 (2 ulp: 2^-9 / 2^-6; the
interpreter truncates fp32->bf16). The gradients are the rotation by -theta of the incoming gradients,
compared with autograd through the reference.
"""

import pytest
import torch
from fastgpt.kernels.rope import rope_block_config, rope_reference, rope_triton
from kernel_checks import assert_scaled_close

TOL = {torch.float32: 1e-6, torch.float16: 2**-9, torch.bfloat16: 2**-6}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, Hq, Hkv, T, D): powers of two; odd T/D/heads (D/2 = 12 in a 16-wide tile); two token tiles with a
# masked tail (D = 256 -> 8 tokens per tile, T = 9); one token.
SHAPES = [(2, 4, 2, 8, 32), (3, 5, 1, 7, 24), (1, 3, 1, 9, 256), (1, 2, 2, 1, 64)]


def assert_close(actual, expected, dtype, what):
    assert_scaled_close(actual, expected, TOL[dtype], what)


def angles(position_ids: torch.Tensor, head_dim: int, base: float = 10000.0):
    """cos/sin ``(B, T, D/2)`` fp32 at the given positions (standard RoPE frequencies)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    theta = position_ids.double()[..., None] * inv_freq
    return theta.cos().float(), theta.sin().float()


def run_both(q, k, cos, sin, dq, dk):
    results = []
    for fn in (rope_triton, rope_reference):
        ql, kl = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
        qo, ko = fn(ql, kl, cos, sin)
        torch.autograd.backward([qo, ko], [dq, dk])
        results.append((qo.detach(), ko.detach(), ql.grad, kl.grad))
    return results


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Hq,Hkv,T,D", SHAPES)
def test_rope_forward_and_grads(B, Hq, Hkv, T, D, dtype):
    q = torch.randn(B, Hq, T, D).to(dtype)
    k = torch.randn(B, Hkv, T, D).to(dtype)
    dq, dk = torch.randn_like(q), torch.randn_like(k)
    # Per-batch positions: the second half of each row is a new document restarting at 0.
    pos = torch.arange(T).repeat(B, 1)
    pos[:, T // 2 :] -= T // 2
    cos, sin = angles(pos + 5 * torch.arange(B)[:, None], D)
    (qo, ko, gq, gk), (qr, kr, gqr, gkr) = run_both(q, k, cos, sin, dq, dk)
    assert qo.dtype == ko.dtype == gq.dtype == dtype
    for name, a, b in (("q", qo, qr), ("k", ko, kr), ("dq", gq, gqr), ("dk", gk, gkr)):
        assert_close(a, b, dtype, name)


def test_rope_broadcast_angles_and_bthd_layout():
    """cos/sin shared by the batch (B=1) and Q/K that are transposed views of (B, T, H, D) storage."""
    B, T, Hq, Hkv, D = 2, 6, 3, 1, 48
    q = torch.randn(B, T, Hq, D).transpose(1, 2)
    k = torch.randn(B, T, Hkv, D).transpose(1, 2)
    cos, sin = angles(torch.arange(T)[None], D)
    dq, dk = torch.randn(B, Hq, T, D), torch.randn(B, Hkv, T, D)
    (qo, ko, gq, gk), (qr, kr, gqr, gkr) = run_both(q, k, cos, sin, dq, dk)
    assert qo.stride() == q.stride()  # written in the input's (B, T, H, D) layout
    for name, a, b in (("q", qo, qr), ("k", ko, kr), ("dq", gq, gqr), ("dk", gk, gkr)):
        assert_close(a, b, torch.float32, name)


def test_rope_bad_angles_shape_is_a_clear_error():
    q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    cos = torch.ones(1, 4, 8)
    with pytest.raises(ValueError, match=r"cos must be \(1 or 1, 4, 4\)"):
        rope_triton(q, k, cos, cos)
    with pytest.raises(ValueError, match="even"):
        rope_block_config(7)
