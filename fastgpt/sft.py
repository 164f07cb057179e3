"""Supervised finetuning: teach a pretrained model to answer in the chat format.

    python -m fastgpt.sft --model=out/pretrain/model --data=chatterbot,identity,unknown,arithmetic
    bash launch/sft.sh --model=DIR --out_dir=out/sft          # the same under torchrun

SFT differs from pretraining only in its batches and its loss, so it runs on the one training loop
(``fastgpt.train``: optimizer, schedule, gradient accumulation, DeepSpeed, checkpoints, metrics.jsonl).
What this module adds:

- **data**: a mixture of built-in sets and conversation files (``fastgpt.sft_data``), split into
  train and held-out validation conversations, rendered with the model's chat format
  (``chat.template.format_for``: fastgpt's special tokens, or the model dir's own jinja template);
- **the masked loss**: next-token cross-entropy on the assistant's tokens only (system, user and tool
  output tokens are context, not targets), averaged over the trained tokens of the batch;
- **packing** (``--pack=true``, the default): conversations laid end to end with per-conversation
  document ids and positions, so attention never crosses conversations and each is computed exactly as
  if alone (tested: same loss as unpacked);
- **samples**: greedy replies to fixed prompts, through the inference engine with the calculator,
  written to the log and ``samples.jsonl`` at every sampling step, so progress reads as behaviour.

``--model`` defaults to the latest pretraining output (the newest ``out/*/model`` written by
``fastgpt.pretrain``). The finetuned model is written to ``out_dir/model`` with its tokenizer and the
chat template, so ``fastgpt chat --model out_dir/model`` and transformers both use it directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastgpt import dist
from fastgpt.chat.template import format_for
from fastgpt.conversation import ChatFormat
from fastgpt.engine import Engine
from fastgpt.errors import UserError
from fastgpt.model import from_pretrained
from fastgpt.sft_data import DEFAULT_MIXTURE, load_mixture
from fastgpt.sft_data.batching import IGNORE, RenderStats, SFTBatches, collate, render_examples
from fastgpt.stage_cli import normalize_argv, stage_main, train_stage
from fastgpt.tokenizer import Tokenizer
from fastgpt.train.config import SampleConfig, TokenRowsConfig, parse_args, run_config_of
from fastgpt.train.trainer import Trainer

__all__ = ["SAMPLE_PROMPTS", "SFTConfig", "SFTStage", "build", "default_model_dir", "main", "sft_loss"]

SAMPLE_PROMPTS = [
    "Hi! Who are you?",
    "Who made you?",
    "What is 37 * 12 + 5?",
    "Who is Zorvath Quellin?",
    "Tell me a joke.",
]


DEFAULT_TIME_BUDGET_S = 180.0  # a few minutes on a CPU


@dataclass
class SFTConfig(SampleConfig, TokenRowsConfig):
    """SFT keys on top of the loop's. ``--model=DIR`` is accepted as ``--init_from=DIR`` (the model to
    finetune; empty: the latest pretraining output). Defaults finish in a few minutes on a CPU."""

    model_flag = True
    unused = {
        "preset": "the model comes from --model",
        "vocab_size": "the tokenizer comes with --model",
        "eval_tokens": "held-out loss is over --val_fraction of the conversations",
    }

    out_dir: str = "out/sft"
    tokenizer: str = ""  # a tokenizer dir to use instead of the model dir's own
    data: str = DEFAULT_MIXTURE  # built-in set names and/or .jsonl/.json files, or a mixture file
    pack: bool = True  # several conversations per row (attention kept apart by document ids)
    val_fraction: float = 0.05  # held-out conversations per set, for val_loss
    strict: bool = False  # a malformed conversation line is an error instead of a counted skip
    assistant_name: str = "fastgpt"  # what the identity set answers to "who are you"
    assistant_maker: str = "the fastgpt developers"  # who the identity set says made the assistant
    time_budget_s: float = 0.0  # with neither this nor --max_steps: DEFAULT_TIME_BUDGET_S
    batch_size: int = 8
    seq_len: int = 256  # capped at the model's max_seq_len
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    eval_every: int = 50
    sample_tokens: int = 96
    log_every: int = 10

    def time_budget(self) -> float:
        """``--time_budget_s``, or DEFAULT_TIME_BUDGET_S when neither it nor ``--max_steps`` is set
        (``--max_steps`` alone is not cut short by a budget)."""
        if self.max_steps <= 0 and self.time_budget_s <= 0:
            return DEFAULT_TIME_BUDGET_S
        return self.time_budget_s

    def model_dir(self) -> str:
        """The model to finetune: ``--model``, else the latest pretraining output."""
        return self.init_from or str(default_model_dir())


def default_model_dir(root: str | Path = "out") -> Path:
    """The newest pretraining output: ``out/<run>/model`` whose run config says it was pretrained."""
    candidates = []
    for model_dir in Path(root).glob("*/model"):
        stage = (run_config_of(model_dir) or {}).get("stage")
        if (model_dir / "config.json").is_file() and stage in (None, "pretrain"):
            candidates.append(model_dir)
    if not candidates:
        raise FileNotFoundError(
            f"no pretrained model under {root}/*/model: run `bash launch/pretrain.sh` first or pass --model=DIR"
        )
    return max(candidates, key=lambda p: (p / "config.json").stat().st_mtime)


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy over the batch's trained (assistant) tokens, summed (the loop divides by the
    step's trained-token count); position and document ids keep packed conversations apart."""
    return model(
        batch["inputs"],
        batch["targets"],
        position_ids=batch["position_ids"],
        doc_ids=batch["doc_ids"],
        ignore_index=IGNORE,
        loss_reduction=reduction,
    )


class SFTStage:
    """What SFT gives the training loop: batches, the loss, validation batches and samples.

    Built once per rank; the mixture, split and order depend only on ``seed``, so every rank agrees
    on the global batch and takes its own rows of it.
    """

    def __init__(
        self,
        tokenizer: Any,
        chat_format: ChatFormat,
        *,
        data: str = DEFAULT_MIXTURE,
        seq_len: int,
        batch_size: int,
        pack: bool = True,
        val_fraction: float = 0.05,
        seed: int = 0,
        name: str = "fastgpt",
        maker: str = "the fastgpt developers",
        strict: bool = False,
        rank: int = 0,
        world_size: int = 1,
        sample_tokens: int = 96,
        log=print,
    ):
        self.tokenizer, self.chat_format, self.seq_len = tokenizer, chat_format, seq_len
        train, val = load_mixture(
            data, val_fraction=val_fraction, seed=seed, name=name, maker=maker, strict=strict, log=log
        )
        self.train_stats, self.val_stats = RenderStats(), RenderStats()
        self.train_examples = render_examples(train, chat_format, seq_len, self.train_stats, strict=strict)
        self.val_examples = render_examples(val, chat_format, seq_len, self.val_stats, strict=strict)
        log(f"train: {self.train_stats.summary()}")
        log(f"val: {self.val_stats.summary()}")
        self.batches = SFTBatches(
            self.train_examples,
            batch_size=batch_size,
            seq_len=seq_len,
            pack=pack,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.sample_tokens = sample_tokens

    # ---------------------------------------------------------------- what the loop calls
    def next_batch(self) -> dict[str, torch.Tensor]:
        return self.batches.next_batch()

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sft_loss(model, batch)

    def eval_batches(self) -> Iterable[dict[str, torch.Tensor]]:
        """This rank's share of the fixed validation conversations, padded, in order."""
        mine = self.val_examples[self.rank :: self.world_size]
        for i in range(0, len(mine), self.batch_size):
            yield collate([[e] for e in mine[i : i + self.batch_size]])

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """``val_loss``: mean cross-entropy per assistant token of the held-out conversations."""
        device = next(model.parameters()).device
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # summed nll, trained tokens
        for batch in self.eval_batches():
            batch = {k: v.to(device) for k, v in batch.items()}
            nll = sft_loss(model, batch).double()
            sums += torch.stack([nll, (batch["targets"] != IGNORE).sum().double()])
        sums = dist.all_reduce_sum(sums)
        return {"val_loss": float(sums[0] / sums[1].clamp(min=1))} if sums[1] > 0 else {}

    def samples(self, model: torch.nn.Module) -> list[str]:
        """Greedy replies to :data:`SAMPLE_PROMPTS` (calculator calls run)."""
        engine = Engine(model, self.tokenizer, chat_format=self.chat_format)
        tools = self.chat_format.supports_tools
        out = []
        for prompt in SAMPLE_PROMPTS:
            reply = engine.chat(
                [{"role": "user", "content": prompt}],
                max_tokens=self.sample_tokens,
                temperature=0,
                tools=tools,
            )
            out.append(f"{prompt!r} -> {reply.text!r} [{reply.finish_reason}]")
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state)


def build(cfg: SFTConfig):
    """Model, tokenizer, chat format, trainer and stage for ``cfg``."""
    info = dist.init_distributed(cfg.device)
    model_dir = cfg.model_dir()
    tokenizer = Tokenizer.load(cfg.tokenizer or model_dir)
    chat_format = format_for(model_dir if not cfg.tokenizer else tokenizer)
    model = from_pretrained(model_dir).train()
    used = max(chat_format.stop_ids | {chat_format.tool_call_end_id or 0})
    if model.config.vocab_size <= used:
        raise UserError(
            f"{model_dir}: the model has {model.config.vocab_size} token embeddings but the chat format "
            f"uses token id {used}; finetune a model trained with this tokenizer or one with a chat template"
        )
    seq_len = min(cfg.seq_len, model.config.max_seq_len)  # rows never exceed the model's context
    trainer = Trainer(
        cfg,
        model,
        tokenizer=tokenizer,
        stage_name="sft",
        run_info={"chat_format": type(chat_format).__name__, "init_from": model_dir},
        seq_len=seq_len,
    )
    stage = SFTStage(
        tokenizer,
        chat_format,
        data=cfg.data,
        seq_len=seq_len,
        batch_size=cfg.batch_size,
        pack=cfg.pack,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        name=cfg.assistant_name,
        maker=cfg.assistant_maker,
        strict=cfg.strict,
        rank=info.rank,
        world_size=info.world_size,
        sample_tokens=cfg.sample_tokens,
        log=trainer.print,
    )
    return trainer, stage


def _main(argv: list[str] | None = None) -> None:
    cfg = parse_args(SFTConfig, normalize_argv(argv))
    trainer, stage = build(cfg)
    trainer.print(
        f"sft: {cfg.model_dir()} ({trainer.model.num_params() / 1e6:.2f}M params), chat format "
        f"{type(stage.chat_format).__name__}, {trainer.dist.world_size} rank(s) on {trainer.device}, "
        f"{trainer.autocast_dtype}, {'packed' if cfg.pack else 'padded'} rows of {trainer.seq_len} tokens"
    )
    train_stage(
        trainer,
        stage,
        baseline=False,
        chat_format=stage.chat_format,
        metrics_line=False,
        sample_lines=lambda samples: [str(s) for s in samples],
    )


main = stage_main("sft", _main)


if __name__ == "__main__":
    raise SystemExit(main())
