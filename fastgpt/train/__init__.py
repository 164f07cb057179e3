"""The one training loop and its parts: :class:`Trainer` (``trainer.py``), :class:`TrainConfig` and
``--key=value`` parsing (``config.py``), AdamW/Muon and the LR schedules (``optim.py``), metrics.jsonl,
wandb and MFU (``metrics.py``). See docs/pretraining.md."""

from fastgpt.train.config import TrainConfig, parse_args
from fastgpt.train.optim import Muon, build_optimizer, lr_multiplier
from fastgpt.train.trainer import NonFiniteLossError, Trainer

__all__ = [
    "Muon",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "build_optimizer",
    "lr_multiplier",
    "parse_args",
]
