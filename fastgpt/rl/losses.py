"""Policy-gradient and preference losses shared by GRPO, PPO, DPO and the reward model.

All functions take per-token tensors ``(B, T)`` with a ``mask`` that is 1 on the tokens being trained
(the completion's sampled tokens) and return a scalar loss plus detached statistics for logging.

- :func:`clipped_policy_loss`: PPO's clipped surrogate ``-min(rho * A, clip(rho, 1 - eps_low,
  1 + eps_high) * A)`` with ``rho = exp(logp - logp_old)``. ``eps_high > eps_low`` is DAPO's
  "clip-higher": low-probability tokens may grow further, which keeps exploration (entropy) alive.
- :func:`aggregate`: how per-token losses become one number. ``token``: every token in the batch
  weighs the same (DAPO; long answers are not diluted). ``sequence``: average within each completion,
  then over completions (the original GRPO; a token of a short answer weighs more). ``fixed``: sum
  divided by ``B * fixed_len`` (Dr. GRPO; no length bias at all). A ``denominator`` may be passed to
  normalise by a count taken over a larger batch (gradient accumulation, several ranks).
- :func:`kl_k3`: the k3 estimator of KL(pi || pi_ref), ``exp(q) - q - 1`` with ``q = logp_ref - logp``:
  unbiased for samples from pi, always >= 0, and lower variance than ``-q`` (Schulman, 2020).
- :func:`value_loss`: PPO's clipped value loss.
- :func:`dpo_loss`: DPO (sigmoid), with label smoothing (conservative DPO), or IPO.
- :func:`bradley_terry_loss`: the reward model's pairwise loss ``-log sigmoid(r_chosen - r_rejected)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "AGGREGATIONS",
    "DPO_LOSS_TYPES",
    "aggregate",
    "bradley_terry_loss",
    "clipped_policy_loss",
    "dpo_loss",
    "kl_k3",
    "value_loss",
]

AGGREGATIONS = ("token", "sequence", "fixed")
DPO_LOSS_TYPES = ("sigmoid", "ipo")


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token",
    *,
    denominator: float | torch.Tensor | None = None,
    fixed_len: int | None = None,
) -> torch.Tensor:
    """Per-token values ``(B, T)`` -> a scalar (see the module docstring for the modes).

    ``denominator`` overrides the normaliser: for ``token`` the number of masked tokens, for
    ``sequence`` the number of sequences, for ``fixed`` ``B * fixed_len``.
    """
    m = mask.to(per_token.dtype)
    if mode == "token":
        total = (per_token * m).sum()
        return total / (denominator if denominator is not None else m.sum().clamp(min=1))
    if mode == "sequence":
        per_seq = (per_token * m).sum(1) / m.sum(1).clamp(min=1)  # (B,)
        return per_seq.sum() / (denominator if denominator is not None else per_token.size(0))
    if mode == "fixed":
        if denominator is None:
            if fixed_len is None:
                raise ValueError("aggregation 'fixed' needs fixed_len (the max completion length)")
            denominator = per_token.size(0) * fixed_len
        return (per_token * m).sum() / denominator
    raise ValueError(f"aggregation {mode!r}: expected one of {AGGREGATIONS}")


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    aggregation: str = "token",
    denominator: float | torch.Tensor | None = None,
    fixed_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate loss (to minimise) and ``{"clip_frac", "ratio_mean"}``.

    ``advantages`` is ``(B,)`` (one per sequence, GRPO) or ``(B, T)`` (per token, PPO).
    ``clip_high`` defaults to ``clip_low`` (symmetric PPO clipping).
    """
    clip_high = clip_low if clip_high is None else clip_high
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # (B, 1): broadcast over the sequence
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = aggregate(per_token, mask, aggregation, denominator=denominator, fixed_len=fixed_len)
    with torch.no_grad():
        m = mask.to(ratio.dtype)
        n = m.sum().clamp(min=1)
        was_clipped = (clipped < unclipped).to(ratio.dtype)  # the min picked the clipped term
        stats = {"clip_frac": (was_clipped * m).sum() / n, "ratio_mean": (ratio * m).sum() / n}
    return loss, stats


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) for tokens sampled from pi; same shape as the inputs."""
    q = ref_logprobs - logprobs
    return torch.exp(q) - q - 1.0


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
    denominator: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's value loss ``0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2)`` averaged over masked
    tokens (or divided by ``denominator``), and ``{"value_clip_frac"}``. ``clip=None`` gives the plain
    squared error."""
    err = (values - returns) ** 2
    if clip is None:
        per_token, frac = err, torch.zeros(())
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err_clipped = (v_clipped - returns) ** 2
        per_token = torch.maximum(err, err_clipped)
        with torch.no_grad():
            frac = aggregate((err_clipped > err).to(err.dtype), mask, "token")
    return 0.5 * aggregate(per_token, mask, "token", denominator=denominator), {
        "value_clip_frac": frac.detach()
    }


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO-family loss over a batch of pairs (inputs ``(B,)``: log-probabilities of each response,
    summed over its tokens -- or averaged, as IPO is usually run) and per-pair statistics.

    - ``sigmoid`` (DPO): ``-(1 - ls) * log sigmoid(beta * h) - ls * log sigmoid(-beta * h)`` with
      ``h = (pi_c - ref_c) - (pi_r - ref_r)``; ``ls`` > 0 assumes that share of labels are flipped.
    - ``ipo``: ``(h - 1 / (2 * beta))^2``: regresses the margin to a fixed target instead of pushing it
      to infinity.

    Statistics: the implicit rewards ``beta * (pi - ref)`` of chosen and rejected, their margin, and
    whether the chosen one wins (reward accuracy). Returns the mean loss.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r}: expected one of {DPO_LOSS_TYPES}")
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = chosen_logratio - rejected_logratio  # (B,)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    with torch.no_grad():
        chosen_reward, rejected_reward = beta * chosen_logratio, beta * rejected_logratio
        stats = {
            "chosen_reward": chosen_reward.detach(),
            "rejected_reward": rejected_reward.detach(),
            "margin": (chosen_reward - rejected_reward).detach(),
            "accuracy": (chosen_reward > rejected_reward).float(),
        }
    return losses.mean(), stats


def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, *, margin: torch.Tensor | float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``mean(-log sigmoid(s_c - s_r - margin))`` over pairs ``(B,)`` and ``{"accuracy", "margin"}``."""
    diff = chosen_scores - rejected_scores
    loss = -F.logsigmoid(diff - margin).mean()
    with torch.no_grad():
        stats = {"accuracy": (diff > 0).float().mean(), "margin": diff.mean()}
    return loss, stats
