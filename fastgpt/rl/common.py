"""Start-up and wrap-up shared by the post-SFT stages (GRPO, reward model, PPO, DPO).

Each of them starts from an existing model directory (fastgpt or Hugging Face layout) with its
tokenizer and chat format, trains on the one loop (:class:`fastgpt.train.trainer.Trainer`), and ends
with ``out_dir/model`` in the one model format, chat template included, so ``fastgpt chat`` and
transformers read it directly.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch

from fastgpt.chat.template import export_chat_template
from fastgpt.checkpoint import latest_checkpoint
from fastgpt.conversation import ChatFormat
from fastgpt.model import from_pretrained
from fastgpt.tokenizer import Tokenizer

__all__ = [
    "PAIR_STAGE_UNUSED",
    "RL_UNUSED",
    "check_rl_zero",
    "export_final",
    "frozen_copy",
    "load_start",
    "log_baseline",
    "normalize_argv",
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
        raise ValueError(
            f"--zero=3: {stage} samples rollouts from whole weights on every rank, which ZeRO-3 "
            "partitions; use --zero=0, 1 or 2 (--offload=true still moves optimizer state to CPU)"
        )


def normalize_argv(argv: list[str] | None) -> list[str]:
    """``--model=DIR`` (the stages' documented flag) is the loop config's ``--init_from=DIR``;
    ``--model.<field>=...`` architecture overrides are left alone. ``None`` reads ``sys.argv``."""
    out = []
    for arg in sys.argv[1:] if argv is None else argv:
        if arg.startswith("--model=") or arg == "--model":
            arg = "--init_from=" + arg.partition("=")[2]
        out.append(arg)
    return out


def load_start(model_dir: str, *, stage: str) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, chat_format)`` of the starting model directory (train mode, fp32)."""
    if not model_dir:
        raise ValueError("--model=DIR is required (a fastgpt or Hugging Face model directory)")
    if not Path(model_dir).exists():
        raise ValueError(
            f"--model={model_dir}: no such directory; {stage} starts from a chat model: `bash launch/sft.sh` "
            "writes one to out/sft/model (or `fastgpt convert-gguf --smollm2 --out models/smollm2` for a "
            "real one)"
        )
    if not Path(model_dir, "config.json").is_file():
        hint = "; its model is in model/" if Path(model_dir, "model", "config.json").is_file() else ""
        raise ValueError(f"--model={model_dir}: not a model directory (no config.json){hint}")
    model = from_pretrained(model_dir).train()
    tokenizer = Tokenizer.load(model_dir)
    chat_format = ChatFormat.for_model(model_dir)
    chat_format.check_fits(model.config.vocab_size, model_dir)  # a base model without the chat tokens
    return model, tokenizer, chat_format


def frozen_copy(model: torch.nn.Module, *, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A frozen copy of ``model`` for reference / reward scoring: eval mode, no gradients, optionally
    cast (bf16 halves its memory)."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    return frozen.to(dtype) if dtype is not None else frozen


def export_final(
    trainer: Any, chat_format: Any, last: dict[str, float] | None = None, *, use: str = ""
) -> Path:
    """Make sure ``out_dir/model`` carries the chat template the model was trained with, then tell the
    user where the run's outputs are: the final step and held-out metrics, the model dir (and ``use``,
    how to use it; default: chat with it) and ``metrics.jsonl``."""
    path = Path(trainer.out_dir) / "model"
    if trainer.dist.is_main and path.is_dir() and not (path / "chat_template.jinja").is_file():
        export_chat_template(path, chat_format)
    held_out = " ".join(f"{k}={v:.4f}" for k, v in (last or {}).items() if k.startswith("heldout_"))
    trainer.print(
        f"done: step {trainer.step}, {trainer.tokens:,} tokens in {trainer.elapsed:.0f}s"
        + (f"; {held_out}" if held_out else "")
    )
    trainer.print(f"model written to {path} ({use or f'chat: fastgpt chat --model {path}'})")
    trainer.print(f"metrics: {Path(trainer.out_dir) / 'metrics.jsonl'}")
    return path


def log_baseline(trainer: Any, stage: Any) -> dict[str, float]:
    """Evaluate the starting model and log it as step 0 (only for a fresh run, not a resumed one), so
    ``metrics.jsonl`` shows where training started from."""
    if trainer.cfg.resume != "never" and latest_checkpoint(trainer.out_dir) is not None:
        return {}
    result = trainer.evaluate(stage)
    if result:
        trainer.metrics.log({"step": 0, "tokens": 0, "elapsed_s": 0.0, **result})
        trainer.print(" ".join(f"{k}={v:.4f}" for k, v in result.items()), prefix="step 0: ")
    return result
