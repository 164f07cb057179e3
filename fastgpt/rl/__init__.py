"""Shared pieces of the RL stages (GRPO, PPO, DPO, reward model): advantages, losses, rollouts.

The math lives in :mod:`fastgpt.rl.advantages` and :mod:`fastgpt.rl.losses` (pure tensor functions,
tested against hand-computed values); rollouts and per-token log-probabilities in
:mod:`fastgpt.rl.rollout`.
"""

from fastgpt.rl.advantages import gae, group_advantages, masked_mean, masked_whiten
from fastgpt.rl.losses import (
    AGGREGATIONS,
    DPO_LOSS_TYPES,
    aggregate,
    bradley_terry_loss,
    clipped_policy_loss,
    dpo_loss,
    kl_k3,
    value_loss,
)

__all__ = [
    "AGGREGATIONS",
    "DPO_LOSS_TYPES",
    "aggregate",
    "bradley_terry_loss",
    "clipped_policy_loss",
    "dpo_loss",
    "gae",
    "group_advantages",
    "kl_k3",
    "masked_mean",
    "masked_whiten",
    "value_loss",
]
