"""DPO: direct preference optimisation, offline, against a frozen reference (Rafailov et al., 2023).

    python -m fastgpt.dpo --model=out/sft/model --data=gsm_symbolic_pairs --beta=0.1 --out_dir=out/dpo
    python -m fastgpt.dpo --model=DIR --data=pairs.jsonl --loss_type=ipo --beta=0.5

No reward model and no sampling: the policy is pushed to raise the log-probability of each chosen
reply relative to the rejected one, *measured against the reference* (the starting model), which is
what keeps it close to where it started. With ``h = [log pi(y_c) - log ref(y_c)] - [log pi(y_r) -
log ref(y_r)]``:

- ``--loss_type=sigmoid`` (DPO): ``-log sigmoid(beta * h)``; ``--label_smoothing=eps`` assumes a
  share ``eps`` of the labels are flipped (conservative DPO);
- ``--loss_type=ipo``: ``(h - 1 / (2 beta))^2`` (Azar et al., 2023) on per-token *average*
  log-probabilities, which stops pushing once the margin reaches its target.

**Reference log-probabilities are precomputed** (``--precompute_ref=true``, the default): before the
first step the starting model scores every pair once, so no second model is held in memory during
training. ``--precompute_ref=false`` keeps a frozen copy and scores each batch on the fly.

Logged: ``chosen_logp``/``rejected_logp`` (policy, summed over reply tokens), the implicit rewards
``chosen_reward``/``rejected_reward`` (``beta * (pi - ref)``), their ``margin`` and ``reward_accuracy``
(share of pairs whose chosen reply has the larger implicit reward); the same on held-out pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastgpt import dist
from fastgpt.errors import UserError
from fastgpt.reward import load_rendered_pairs
from fastgpt.rl.common import PAIR_STAGE_UNUSED, frozen_copy, load_start
from fastgpt.rl.losses import DPO_LOSS_TYPES, dpo_loss
from fastgpt.rl.pairs import PairStage, RenderedPair, as_response_batch, batch_dict, collate_pairs
from fastgpt.rl.sequences import response_logprobs
from fastgpt.stage_cli import normalize_argv, rank_context, stage_main, train_stage
from fastgpt.train.config import FitConfig, parse_args
from fastgpt.train.trainer import Trainer, autocast_context

__all__ = ["DPOConfig", "DPOStage", "main", "pair_logprobs"]


@dataclass
class DPOConfig(FitConfig):
    """DPO on preference pairs against a frozen reference (the starting ``--model=DIR``; docs/rl.md)."""

    model_flag = True
    unused = PAIR_STAGE_UNUSED

    out_dir: str = "out/dpo"
    data: str = "gsm_symbolic_pairs"  # pair files and built-ins, comma-separated (fastgpt.tasks.preferences)
    num_derived: int = 2000  # pairs drawn from each <task>_pairs source
    strict: bool = False  # a malformed pair record is an error instead of a counted skip
    heldout_fraction: float = 0.1  # share of prompts held out (by hash) for held-out margins
    max_len: int = 512  # tokens per prompt + reply (longer pairs are skipped and counted)
    beta: float = 0.1  # DPO temperature: strength of the implicit KL to the reference
    loss_type: str = "sigmoid"  # sigmoid | ipo
    label_smoothing: float = 0.0  # conservative DPO: assumed share of flipped labels (sigmoid loss)
    precompute_ref: bool = True  # score the reference once before training (no second model kept)
    batch_size: int = 4  # pairs per rank per micro-batch
    lr: float = 5e-7
    min_lr: float = 5e-7
    schedule: str = "constant"
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = 50
    max_steps: int = 200

    def validate(self) -> None:
        super().validate()
        if self.loss_type not in DPO_LOSS_TYPES:
            raise UserError(f"--loss_type: expected one of {DPO_LOSS_TYPES}, got {self.loss_type!r}")
        if self.beta <= 0 or not 0 <= self.label_smoothing < 0.5:
            raise UserError("--beta must be > 0 and --label_smoothing in [0, 0.5)")


def pair_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, average: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen, rejected)`` log-probabilities ``(b,)`` of the replies, summed (or averaged) over tokens."""
    rows = as_response_batch(batch)
    per_token = response_logprobs(model, rows).float()  # (2b, T-1), 0 off the replies
    logp = per_token.sum(-1)
    if average:
        logp = logp / rows.target_mask.sum(-1).clamp(min=1)
    b = logp.numel() // 2
    return logp[:b], logp[b:]


class DPOStage(PairStage):
    """What DPO gives the training loop: pair batches with their reference log-probabilities, the summed
    loss (the loop divides by the number of pairs) and held-out implicit-reward statistics."""

    def __init__(
        self,
        policy: torch.nn.Module,
        train: list[RenderedPair],
        heldout: list[RenderedPair],
        cfg: DPOConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = 0,
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype = torch.float32,
        log: Callable[[str], Any] = print,
    ):
        """``device`` and ``autocast_dtype`` are the training loop's; with ``--precompute_ref`` the
        reference log-probabilities of every pair are computed here, with the starting weights."""
        sharding = dict(rank=rank, world_size=world_size, pad_id=pad_id)
        super().__init__(train, heldout, batch_size=cfg.batch_size, seed=cfg.seed, **sharding)
        self.cfg, self.log = cfg, log
        self.average = cfg.loss_type == "ipo"
        self.policy = policy
        self.reference = None if cfg.precompute_ref else frozen_copy(policy)
        self.ref_train: torch.Tensor | None = None  # (n, 2) chosen/rejected reference log-probs
        self.ref_heldout: torch.Tensor | None = None
        self.device, self.autocast_dtype = torch.device(device), autocast_dtype
        self.policy.to(self.device)
        if self.reference is not None:
            self.reference.to(self.device)
        else:
            self.ref_train = self.reference_logprobs(self.policy, self.train)
            self.ref_heldout = self.reference_logprobs(self.policy, self.heldout)
            self.log(
                f"dpo: reference log-probabilities of {len(self.train)} + {len(self.heldout)} pairs precomputed"
            )

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.autocast_dtype)

    @torch.no_grad()
    def reference_logprobs(self, model: torch.nn.Module, pairs: list[RenderedPair]) -> torch.Tensor:
        """``(n, 2)`` reference log-probabilities of every pair; ranks share the work."""
        was_training = model.training
        model.eval()
        out = torch.zeros(len(pairs), 2, dtype=torch.float64)
        device = next(model.parameters()).device
        mine = list(range(self.rank, len(pairs), self.world_size))
        for start in range(0, len(mine), self.cfg.batch_size):
            index = mine[start : start + self.cfg.batch_size]
            batch = batch_dict(collate_pairs([pairs[i] for i in index], pad_id=self.pad_id).to(device))
            with self.autocast():
                chosen, rejected = pair_logprobs(model, batch, average=self.average)
            out[index] = torch.stack([chosen, rejected], 1).double().cpu()
        model.train(was_training)
        return dist.all_reduce_sum(out).float()

    # ------------------------------------------------------------------------------------------ loop API
    def next_batch(self) -> dict[str, torch.Tensor]:
        index, batch = self.next_pairs()
        if self.ref_train is not None:
            batch["ref"] = self.ref_train[index]
        return batch

    def _reference(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref" in batch:
            return batch["ref"][:, 0], batch["ref"][:, 1]
        with torch.no_grad():
            return pair_logprobs(self.reference, batch, average=self.average)

    def _loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        chosen, rejected = pair_logprobs(model, batch, average=self.average)
        ref_chosen, ref_rejected = self._reference(batch)
        loss, stats = dpo_loss(
            chosen,
            rejected,
            ref_chosen.to(chosen),
            ref_rejected.to(chosen),
            beta=self.cfg.beta,
            loss_type=self.cfg.loss_type,
            label_smoothing=self.cfg.label_smoothing,
        )
        stats["chosen_logp"], stats["rejected_logp"] = chosen.detach(), rejected.detach()
        return loss, stats

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats = self._loss(model, batch)
        n = int(batch["n_pairs"])
        metrics = {k: (float(v.float().sum()), float(n)) for k, v in stats.items()}  # per-pair means
        metrics["reward_accuracy"] = metrics.pop("accuracy")
        return loss * n, metrics

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Held-out loss, margin, log-probabilities and reward accuracy, over all ranks."""

        def measure(batch: dict[str, torch.Tensor], index: list[int]) -> dict[str, float]:
            if self.ref_heldout is not None:
                batch["ref"] = self.ref_heldout[index].to(batch["ids"].device)
            loss, stats = self._loss(model, batch)
            stats["reward_accuracy"] = stats.pop("accuracy")
            return {"loss": float(loss) * len(index), **{k: float(v.float().sum()) for k, v in stats.items()}}

        names = ["loss", "margin", "chosen_logp", "rejected_logp", "reward_accuracy"]
        return self.heldout_means(model, names, measure)


def _main(argv: list[str] | None = None) -> None:
    cfg = parse_args(DPOConfig, normalize_argv(argv))
    ctx = rank_context(cfg)
    model, tokenizer, chat_format = load_start(cfg.init_from, stage="dpo")
    max_len = min(cfg.max_len, model.config.max_seq_len)
    train, heldout = load_rendered_pairs(cfg, chat_format, ctx["log"], max_len=max_len)
    stage = DPOStage(model, train, heldout, cfg, **ctx)
    trainer = Trainer(
        cfg, model, tokenizer=tokenizer, stage_name="dpo", run_info={"data": cfg.data}, seq_len=max_len
    )
    train_stage(trainer, stage, chat_format=chat_format)


main = stage_main("dpo", _main)


if __name__ == "__main__":
    raise SystemExit(main())
