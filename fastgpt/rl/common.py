"""Start-up shared by the post-SFT stages (GRPO, reward model, PPO, DPO).

Each of them starts from an existing model directory (fastgpt or Hugging Face layout) with its
tokenizer and chat format and trains on the one loop (:class:`fastgpt.train.trainer.Trainer`); the
shared tail -- baseline evaluation, loop, ``out_dir/model`` with its chat template, final lines -- is
:func:`fastgpt.stage_cli.train_stage`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from fastgpt.chat.template import format_for
from fastgpt.errors import UserError
from fastgpt.model import from_pretrained
from fastgpt.tokenizer import Tokenizer

__all__ = [
    "PAIR_STAGE_UNUSED",
    "RL_UNUSED",
    "check_rl_zero",
    "frozen_copy",
    "load_start",
]

# Keys of other stages that GRPO and PPO have no use for, and why (``LoopConfig.unused``: the unknown-key
# error says why): the model comes from --model, the data from the task/prompts, a step's shape from the
# rollout.
RL_UNUSED = {
    "preset": "the model comes from --model",
    "vocab_size": "the tokenizer comes with --model",
    "tokenizer": "the tokenizer comes with --model",
    "data": "the prompts come from --task (GRPO) or --prompts (PPO)",
    "seq_len": "rows are prompt + completion, up to the prompt length + --max_new_tokens",
    "grad_accum": "micro-batches per step = rollout rows per rank / --batch_size",
    "total_batch_tokens": "a step's rows follow --prompts_per_step and the rollout",
    "eval_tokens": "held-out evaluation answers problems, not tokens",
    "sample_tokens": "samples are answers of up to --max_new_tokens",
    "max_len": "rows are prompt + completion, up to the prompt length + --max_new_tokens",
}

# ... and those of the pair stages (reward model, DPO): rows are prompt + reply up to --max_len.
PAIR_STAGE_UNUSED = {
    "preset": "the model comes from --model",
    "vocab_size": "the tokenizer comes with --model",
    "tokenizer": "the tokenizer comes with --model",
    "seq_len": "rows are prompt + reply, up to --max_len",
    "total_batch_tokens": "a step is --batch_size pairs x --grad_accum micro-batches per rank",
    "eval_tokens": "held-out evaluation scores held-out pairs (--heldout_fraction)",
    "sample_every": "the stage prints no samples",
    "sample_tokens": "the stage prints no samples",
}


def check_rl_zero(cfg: Any, stage: str) -> None:
    """GRPO and PPO sample rollouts from the weights every rank holds, which ZeRO-3 partitions: refuse it."""
    if cfg.zero == 3:
        raise UserError(
            f"--zero=3: {stage} samples rollouts from whole weights on every rank, which ZeRO-3 "
            "partitions; use --zero=0, 1 or 2 (--offload=true still moves optimizer state to CPU)"
        )


def load_start(model_dir: str, *, stage: str) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, chat_format)`` of the starting model directory (train mode, fp32)."""
    if not model_dir:
        raise UserError("--model=DIR is required (a fastgpt or Hugging Face model directory)")
    if not Path(model_dir).exists():
        raise UserError(
            f"--model={model_dir}: no such directory; {stage} starts from a chat model: `bash launch/sft.sh` "
            "writes one to out/sft/model (or `fastgpt convert-gguf --smollm2 --out models/smollm2` for a "
            "real one)"
        )
    if not Path(model_dir, "config.json").is_file():
        hint = "; its model is in model/" if Path(model_dir, "model", "config.json").is_file() else ""
        raise UserError(f"--model={model_dir}: not a model directory (no config.json){hint}")
    model = from_pretrained(model_dir).train()
    tokenizer = Tokenizer.load(model_dir)
    chat_format = format_for(model_dir)
    chat_format.check_fits(model.config.vocab_size, model_dir)  # a base model without the chat tokens
    return model, tokenizer, chat_format


def frozen_copy(model: torch.nn.Module, *, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A frozen copy of ``model`` for reference / reward scoring: eval mode, no gradients, optionally
    cast (bf16 halves its memory)."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    return frozen.to(dtype) if dtype is not None else frozen
