"""Advantages: GRPO's group-relative baseline and PPO's generalised advantage estimation (GAE).

**GRPO** (DeepSeekMath, 2024) samples G completions per prompt and uses the group as its own
baseline: ``A_i = (r_i - mean(r)) / (std(r) + eps)``, the same value for every token of completion i.
No critic is needed. *Dr. GRPO* (Liu et al., 2025) drops the division by the std, which otherwise
up-weights prompts that are almost always (or almost never) solved; ``normalize_std=False`` selects it.
A group whose rewards are all equal has zero advantage everywhere: it carries no learning signal, and
:func:`group_advantages` reports which groups those are so the trainer can count or drop them.

**GAE** (Schulman et al., 2016) for PPO with per-token rewards and a learned value:
``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``, computed backwards
over each sequence's valid tokens (the value after the last token is 0: the episode ends there).
``returns = A + V`` are the value head's regression targets.
"""

from __future__ import annotations

import torch

__all__ = ["gae", "group_advantages", "masked_mean", "masked_whiten"]


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, normalize_std: bool = True, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages of ``rewards`` ``(N * G,)`` laid out group by group (the G samples of prompt 0
    first), and a ``(N,)`` bool mask of the groups whose rewards are all equal.

    The std is the unbiased sample std of the group (as TRL computes it); ``eps`` keeps a
    zero-variance group at advantage 0 instead of 0/0.
    """
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}"
        )
    grouped = rewards.float().view(-1, group_size)  # (N, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    zero_variance = (grouped == grouped[:, :1]).all(dim=1)  # (N,)
    if normalize_std and group_size > 1:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1), zero_variance


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (over ``dim``, or everything)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """``x`` normalised to zero mean and unit variance over the masked positions (PPO's advantage
    whitening); positions outside the mask are returned as 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages, returns)``, each ``(B, T)``, from per-token ``rewards``, ``values`` and a ``mask``
    ``(B, T)`` that is 1 on each row's valid (response) tokens.

    Each row's valid tokens must be contiguous (right or left padding); outside them advantages and
    returns are 0.
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values and mask must share a (B, T) shape, got {rewards.shape}, {values.shape}, {mask.shape}"
        )
    m = mask.to(values.dtype)
    values = values * m
    T = rewards.size(1)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * m[:, t]
        advantages[:, t] = adv
        # past the end of a row (mask 0) the "next" state must look terminal to the token before it
        next_value = values[:, t] * m[:, t]
        next_adv = adv
    return advantages, (advantages + values) * m
