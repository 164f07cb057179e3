"""Pretraining: next-token prediction on token shards, on the one training loop.

    python -m fastgpt.pretrain [--key=value ...]      # one process
    bash launch/pretrain.sh [--key=value ...]          # torchrun: all local GPUs, or multi-node

With no arguments: fetch the built-in Shakespeare corpus, train a 4,096-token BPE tokenizer on it,
tokenize it into shards, train the ``tiny`` model for a fixed time budget, write ``out/pretrain/model``
and print a few samples. ``--help`` lists every key.

What this module adds to the loop: the batches (:class:`fastgpt.data.ShardLoader`, a disjoint slice
per rank, the same global batches for any world size), the loss (summed cross-entropy over every
target token; documents inside a window attend only to themselves), validation loss and bits per byte
(nats per token divided by ln 2 and by the UTF-8 bytes each target token stands for, so it compares
across tokenizers), and text samples.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgpt import dist
from fastgpt.data import ShardLoader, check_tokenizer, resolve_pretrain_data
from fastgpt.errors import UserError
from fastgpt.model import GPT, from_pretrained
from fastgpt.stage_cli import stage_main, train_stage
from fastgpt.tokenizer import Tokenizer
from fastgpt.train.config import TrainConfig, parse_args
from fastgpt.train.trainer import Trainer

SAMPLE_PROMPTS = ["ROMEO:", "To be, or not to be", "The king"]


@dataclass
class PretrainConfig(TrainConfig):
    """Defaults tuned for the CPU main job: the tiny model on Shakespeare within ~10 minutes on 2 cores
    (docs/pretraining.md has the runs behind them). Muon: at equal steps it reached val bpb 2.22 where
    AdamW was at 2.54 (100 steps of 16 x 256 tokens)."""

    time_budget_s: float = 450.0
    batch_size: int = 16
    seq_len: int = 256
    optimizer: str = "auto"  # Muon at every ZeRO stage; AdamW with --offload=true
    lr: float = 3e-3  # AdamW part: embeddings, head, norms
    min_lr: float = 1e-4
    warmup_steps: int = 30
    eval_every: int = 50
    eval_tokens: int = 65536
    attention_docs: bool = True  # mask attention at document (BOS) boundaries inside a window
    text_field: str = "text"  # raw --data: the JSONL field / parquet column holding the text
    txt_mode: str = "file"  # raw --data .txt files: one document per file, or per blank-line-separated block
    sample_prompts: str = (
        ""  # printed samples' prompts, '|'-separated; "": Shakespeare's on shakespeare, else unprompted
    )


def sample_prompts(cfg: PretrainConfig) -> list[str]:
    """The prompts of the printed samples: ``--sample_prompts`` split at ``|``; by default Shakespeare's
    openings on the built-in Shakespeare corpus, and on any other data three unprompted samples (from
    the document start alone), since Shakespeare's prompts say little about a model of your text."""
    if cfg.sample_prompts:
        return cfg.sample_prompts.split("|")
    return list(SAMPLE_PROMPTS) if cfg.data == "shakespeare" else ["", "", ""]


class PretrainStage:
    """Batches, loss, evaluation and samples for pretraining (see the module docstring)."""

    def __init__(self, cfg: PretrainConfig, data_dir, tokenizer, *, rank: int, world_size: int):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.loader = ShardLoader(
            data_dir,
            "train",
            batch_size=cfg.batch_size,
            seq_len=cfg.seq_len,
            rank=rank,
            world_size=world_size,
            seed=cfg.seed,
        )
        check_tokenizer(self.loader.manifest, tokenizer)
        # a dir prepared with --val_fraction 0 (or too small a one) trains without validation, and says so
        val_tokens = int(self.loader.manifest["splits"]["val"]["tokens"])
        self.has_val = (val_tokens - 1) // cfg.seq_len >= world_size
        self.no_val_reason = (
            f"no validation: the val split of {data_dir} has {val_tokens:,} tokens, less than one window "
            f"of seq_len={cfg.seq_len} per rank (more text, or fastgpt prepare with a larger --val_fraction)"
        )
        self.token_bytes = torch.from_numpy(tokenizer.token_byte_lengths()).long()  # (V,)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.loader.next_batch()

    def count_targets(self, batch) -> int:
        return batch[1].numel()

    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor:
        inputs, targets, doc_ids = batch
        return model(
            inputs, targets, doc_ids=doc_ids if self.cfg.attention_docs else None, loss_reduction="sum"
        )

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Validation loss (nats/token) and bits per byte over a fixed slice of the val split (nothing
        when the data has no usable val split)."""
        if not self.has_val:
            return {}
        device = next(p for p in model.parameters()).device
        token_bytes = self.token_bytes.to(device)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats over all, nats over bytes>0, bytes
        n_tokens = torch.zeros((), dtype=torch.float64, device=device)
        for inputs, targets, doc_ids in self.loader.eval_batches(self.cfg.eval_tokens):
            inputs, targets, doc_ids = inputs.to(device), targets.to(device), doc_ids.to(device)
            nll = model(
                inputs, targets, doc_ids=doc_ids if self.cfg.attention_docs else None, loss_reduction="none"
            ).double()  # (B, T)
            nbytes = token_bytes[targets]
            sums += torch.stack([nll.sum(), (nll * (nbytes > 0)).sum(), nbytes.sum().double()])
            n_tokens += targets.numel()
        sums = dist.all_reduce_sum(sums)
        n_tokens = dist.all_reduce_sum(n_tokens)
        return {
            "val_loss": float(sums[0] / n_tokens),
            "val_bpb": float(sums[1] / (math.log(2) * sums[2])),
        }

    def samples(self, model: torch.nn.Module) -> list[str]:
        device = next(model.parameters()).device
        gen = torch.Generator(device=device).manual_seed(self.cfg.seed)
        out = []
        for prompt in sample_prompts(self.cfg):
            ids = torch.tensor([self.tokenizer.encode(prompt, add_bos=True)], device=device)
            n = min(self.cfg.sample_tokens, model.config.max_seq_len - ids.shape[1])
            y = model.generate(ids, n, temperature=0.8, top_k=50, generator=gen)
            out.append(self.tokenizer.decode(y[0, 1:].tolist()))
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


def _check_not_bare_shards(data: str) -> None:
    """A dir of token shards that lost its manifest would otherwise be read as raw text sources."""
    path = Path(data)
    if path.is_dir() and not (path / "manifest.json").exists() and any(path.glob("*.bin")):
        raise UserError(
            f"--data={data}: holds token shards (*.bin) but no manifest.json, so neither the tokenizer nor "
            "the splits are known; re-create it with `fastgpt prepare` (or point --data at the raw text)"
        )


def document_vocab_size(tokenizer: Any) -> int:
    """1 + the highest id a pretraining document can hold: a text token or BOS. The chat tokens that
    loading a Hugging Face model's vocabulary appends above its highest id never occur in documents,
    so ``--init_from`` such a model (whose embedding lacks them) is fine."""
    text_ids = np.flatnonzero(tokenizer.token_byte_lengths())
    return int(max(text_ids.max(initial=0), tokenizer.bos_id if tokenizer.bos_id is not None else 0)) + 1


def build(cfg: PretrainConfig):
    """Data, tokenizer, model, trainer and stage for ``cfg`` (rank 0 prepares data first)."""
    _check_not_bare_shards(cfg.data)
    if cfg.txt_mode not in ("file", "blocks"):
        raise UserError(f"--txt_mode: expected file or blocks, got {cfg.txt_mode!r}")
    reading = {"text_field": cfg.text_field, "txt_mode": cfg.txt_mode}
    info = dist.init_distributed(cfg.device)
    tokenizer_arg = cfg.tokenizer or (cfg.init_from or None)
    # download / tokenizer training / sharding once on rank 0, the other ranks then hit the cache
    dist.main_first(
        resolve_pretrain_data, cfg.data, tokenizer_arg, cfg.vocab_size, progress=cfg.progress, **reading
    )
    data_dir, tokenizer_dir = resolve_pretrain_data(
        cfg.data, tokenizer_arg, cfg.vocab_size, progress=False, **reading
    )
    tokenizer = Tokenizer.load(tokenizer_dir)
    if cfg.init_from:
        model = from_pretrained(cfg.init_from).train()
    else:
        torch.manual_seed(cfg.seed)
        model = GPT(cfg.model_config(vocab_size=tokenizer.vocab_size))
    needed = document_vocab_size(tokenizer)
    if model.config.vocab_size < needed:
        raise UserError(
            f"the model's vocab_size ({model.config.vocab_size}) is smaller than the {needed} ids the "
            f"tokenizer can put in a document ({tokenizer_dir})"
        )
    trainer = Trainer(
        cfg,
        model,
        tokenizer=tokenizer,
        stage_name="pretrain",
        run_info={"data_dir": str(data_dir), "tokenizer_dir": str(tokenizer_dir)},
    )
    stage = PretrainStage(cfg, data_dir, tokenizer, rank=info.rank, world_size=info.world_size)
    return trainer, stage


def run(cfg: PretrainConfig) -> dict[str, float]:
    """Train with ``cfg``, print a few samples; returns the last metrics (with the final eval)."""
    trainer, stage = build(cfg)
    n = trainer.model.num_params()
    trainer.print(
        f"model: {cfg.preset if not cfg.init_from else cfg.init_from} ({n / 1e6:.2f}M params), "
        f"{trainer.dist.world_size} rank(s) on {trainer.device}, {trainer.autocast_dtype}, "
        f"global batch {cfg.batch_size * trainer.grad_accum * trainer.dist.world_size} x {cfg.seq_len} tokens"
    )
    if not stage.has_val:
        trainer.print(stage.no_val_reason)

    def sample_lines(samples: list[str]) -> list[str]:
        return [
            f"\n--- sample ({repr(prompt) if prompt else 'no prompt'}) ---\n{text}"
            for prompt, text in zip(sample_prompts(cfg), samples)
        ]

    return train_stage(
        trainer, stage, baseline=False, use=None, metrics_line=False, sample_lines=sample_lines
    )


def _main(argv: list[str] | None = None) -> None:
    cfg = parse_args(PretrainConfig, sys.argv[1:] if argv is None else argv)
    cfg.validate()
    run(cfg)


main = stage_main("pretrain", _main)


if __name__ == "__main__":
    raise SystemExit(main())
