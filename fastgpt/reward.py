"""Reward model: a scalar head on a language model, trained on preference pairs (Bradley-Terry).

    python -m fastgpt.reward --model=out/sft/model --data=gsm_symbolic_pairs --out_dir=out/reward
    python -m fastgpt.reward --model=DIR --data=dpo_en_demo,my_pairs.jsonl --max_len=1024

The model reads a conversation ending in an assistant reply and returns one number: the linear head
``C -> 1`` applied to the final hidden state of the reply's last token (its end-of-turn token, which
has seen the prompt and the whole reply). Training maximises ``log sigmoid(r_chosen - r_rejected)``
over pairs (Bradley and Terry, 1952; as in InstructGPT), so only score *differences* are learned.

Data (``--data``, comma-separated; see :mod:`fastgpt.tasks.preferences`): jsonl/json files of
``prompt``/``chosen``/``rejected`` or conversation pairs, ``dpo_en_demo`` (300 LLaMA-Factory demo
pairs of unstated provenance) and ``<task>_pairs`` (a correct worked solution vs the same solution
with a wrong final answer, e.g. ``gsm_symbolic_pairs``). Pairs with identical replies are skipped and
counted, as are pairs longer than ``--max_len`` tokens. A held-out share (by prompt) measures pair
accuracy -- how often the chosen reply scores higher -- every ``--eval_every`` steps and at the end.

The result, ``out_dir/model``, is the language model directory plus ``score_head.safetensors``
(:class:`fastgpt.rl.heads.ScalarHeadModel`); PPO loads it with ``--reward_model=DIR``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastgpt import dist
from fastgpt.rl.common import PAIR_STAGE_UNUSED, load_start
from fastgpt.rl.heads import ScalarHeadModel
from fastgpt.rl.losses import bradley_terry_loss
from fastgpt.rl.pairs import PairStage, RenderedPair, RenderStats, as_response_batch, render_pairs
from fastgpt.stage_cli import normalize_argv, stage_main, train_stage
from fastgpt.tasks.preferences import load_pairs, split_pairs
from fastgpt.train.config import FitConfig, parse_args
from fastgpt.train.trainer import Trainer

__all__ = ["RewardModelConfig", "RewardStage", "load_rendered_pairs", "main"]


@dataclass
class RewardModelConfig(FitConfig):
    """A reward model: a scalar head on ``--model=DIR``, trained on preference pairs with the
    Bradley-Terry loss (docs/rl.md)."""

    model_flag = True
    unused = PAIR_STAGE_UNUSED

    out_dir: str = "out/reward"
    data: str = "gsm_symbolic_pairs"  # pair files and built-ins, comma-separated
    num_derived: int = 2000  # pairs drawn from each <task>_pairs source
    strict: bool = False  # a malformed pair record is an error instead of a counted skip
    heldout_fraction: float = 0.1  # share of prompts held out (by hash) for held-out pair accuracy
    max_len: int = 512  # pairs whose prompt + longer reply exceed this are skipped (counted)
    batch_size: int = 8  # pairs per rank per micro-batch
    lr: float = 1e-5
    min_lr: float = 1e-6
    warmup_steps: int = 10
    weight_decay: float = 0.0
    eval_every: int = 50
    max_steps: int = 200


def load_rendered_pairs(
    cfg: Any, chat_format: Any, log: Callable[[str], Any] = print, *, max_len: int | None = None
) -> tuple[list[RenderedPair], list[RenderedPair]]:
    """``(train, heldout)`` token pairs from ``cfg.data``, split by prompt, rendered in the model's chat
    format, at most ``max_len`` tokens (default ``cfg.max_len``); skipped pairs are counted in the log."""
    pairs = load_pairs(cfg.data, num_derived=cfg.num_derived, seed=cfg.seed, strict=cfg.strict, log=log)
    train, heldout = split_pairs(pairs, cfg.heldout_fraction)
    out = []
    for name, split in (("train", train), ("heldout", heldout)):
        stats = RenderStats()
        out.append(render_pairs(split, chat_format, max_len=max_len or cfg.max_len, stats=stats))
        log(stats.summary(f"{name} pairs"))
    if not out[1]:
        log(
            "no held-out pairs, so the heldout_* metrics are not measured "
            f"(--heldout_fraction={cfg.heldout_fraction}; raise it for a held-out check)"
        )
    return out[0], out[1]


class RewardStage(PairStage):
    """What the reward model gives the training loop: pair batches, the summed Bradley-Terry loss
    (the loop divides by the number of pairs in the step) and held-out pair accuracy."""

    @staticmethod
    def scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(chosen scores, rejected scores)``, each ``(b,)``."""
        rows = as_response_batch(batch)
        scores = model.score(rows.ids, rows.last)  # (2b,)
        b = scores.numel() // 2
        return scores[:b], scores[b:]

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = self.scores(model, batch)
        loss, stats = bradley_terry_loss(chosen, rejected)
        n = chosen.numel()
        return loss * n, {  # per-pair means over the step: (sum, count)
            "pair_accuracy": (float(stats["accuracy"]) * n, n),
            "score_margin": (float(stats["margin"]) * n, n),
        }

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Held-out pair accuracy, loss and mean score margin, over all ranks."""

        def measure(batch: dict[str, torch.Tensor], index: list[int]) -> dict[str, float]:
            chosen, rejected = self.scores(model, batch)
            loss, _ = bradley_terry_loss(chosen.float(), rejected.float())
            return {
                "pair_accuracy": float((chosen > rejected).sum()),
                "loss": float(loss) * len(index),
                "margin": float((chosen - rejected).sum()),
            }

        return self.heldout_means(model, ["pair_accuracy", "loss", "margin"], measure)


def _main(argv: list[str] | None = None) -> None:
    cfg = parse_args(RewardModelConfig, normalize_argv(argv))
    info = dist.init_distributed(cfg.device)
    log = print if info.is_main else (lambda *_: None)
    backbone, tokenizer, chat_format = load_start(cfg.init_from, stage="reward")
    model = ScalarHeadModel(backbone, kind="reward")
    max_len = min(cfg.max_len, backbone.config.max_seq_len)
    train, heldout = load_rendered_pairs(cfg, chat_format, log, max_len=max_len)
    stage = RewardStage(
        train, heldout, batch_size=cfg.batch_size, seed=cfg.seed, rank=info.rank, world_size=info.world_size
    )
    trainer = Trainer(
        cfg, model, tokenizer=tokenizer, stage_name="reward", run_info={"data": cfg.data}, seq_len=max_len
    )
    train_stage(
        trainer,
        stage,
        chat_format=chat_format,
        use="a reward model: fastgpt.rl.heads.ScalarHeadModel.from_pretrained, or fastgpt ppo --reward_model="
        + str(trainer.out_dir / "model"),
    )


main = stage_main("reward", _main)


if __name__ == "__main__":
    raise SystemExit(main())
