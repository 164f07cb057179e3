"""Shared pieces of the RL stages (GRPO, PPO, DPO, reward model): advantages, losses, rollouts.

The math lives in :mod:`fastgpt.rl.advantages` and :mod:`fastgpt.rl.losses` (pure tensor functions,
tested against hand-computed values); rollouts and per-token log-probabilities in
:mod:`fastgpt.rl.rollout`. The package re-exports the advantages below and every public name of the
losses (their ``__all__``).
"""

from fastgpt.rl import losses
from fastgpt.rl.advantages import gae, group_advantages, masked_mean, masked_whiten
from fastgpt.rl.losses import *  # noqa: F403 -- the losses' public names, as listed in their __all__

__all__ = ["gae", "group_advantages", "masked_mean", "masked_whiten", *losses.__all__]
