"""GRPO: reinforcement learning on verifiable rewards (DeepSeekMath / DeepSeek-R1 style).

    python -m fastgpt.grpo --model=out/sft/model --task=chain_sum_easy --group_size=8 \\
        --prompts_per_step=8 --max_new_tokens=96 --max_steps=100 --beta=0 --out_dir=out/grpo
    bash launch/grpo.sh --model=DIR ...                 # the same under torchrun (DeepSpeed ZeRO)

Each optimizer step of the one training loop (``fastgpt.train``) is fed by this stage:

1. **rollout** (every ``updates_per_batch`` steps): take ``prompts_per_step`` training problems (each
   rank its share), sample ``group_size`` completions of each with the inference engine (temperature
   1, the policy's own distribution), score them with the task's reward;
2. **advantages**: group-relative, ``(r - mean) / (std + eps)`` (``--normalize_std=false``: Dr. GRPO);
   groups whose rewards are all equal are counted (``zero_var_frac``) and, with
   ``--drop_zero_var=true``, masked out of the loss and its normaliser;
3. **update**: the clipped policy-ratio objective (``--clip_low``/``--clip_high``: DAPO's asymmetric
   clip) plus ``beta`` times the k3 KL to a frozen reference (the starting model; with ``beta=0`` no
   reference is kept, saving a model's worth of memory and a forward pass). Per-token terms are
   aggregated over the whole step (``--aggregation=token|sequence|fixed``), so the loss does not depend
   on how the step is split into micro-batches or ranks. ``updates_per_batch > 1`` reuses a rollout for
   several steps; the ratio is then taken against the log-probabilities at rollout time.

Logged every step (``metrics.jsonl``): ``reward_mean``, ``accuracy`` (share of correct samples),
``kl``, ``clip_frac``, ``entropy`` (estimated as the mean negative log-probability of the sampled
tokens: an unbiased estimate of the policy's per-token entropy at temperature 1, with no extra
vocabulary-sized pass), ``completion_len``, ``zero_var_frac``, ``reward_errors``; every
``--eval_every`` steps ``heldout_accuracy`` (greedy answers to ``--eval_problems`` held-out problems).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastgpt import dist
from fastgpt.errors import UserError
from fastgpt.rl.advantages import group_advantages
from fastgpt.rl.common import RL_UNUSED, check_rl_zero, frozen_copy, load_start
from fastgpt.rl.losses import AGGREGATIONS, aggregate, clipped_policy_loss, kl_k3
from fastgpt.rl.rollout import (
    Rollout,
    assistant_text,
    called_tool,
    greedy_accuracy,
    greedy_completions,
    make_rollout_engine,
    sample_rollout,
)
from fastgpt.rl.sequences import ResponseBatch, response_logprobs
from fastgpt.stage_cli import normalize_argv, rank_context, stage_main, train_stage
from fastgpt.tasks import RewardConfig, Task, TaskReward, get_task, load_reward_fn
from fastgpt.train.config import LoopConfig, parse_args
from fastgpt.train.trainer import Trainer, autocast_context

__all__ = ["GRPOConfig", "GRPOStage", "main", "micro_batch_shape", "step", "train"]


@dataclass
class GRPOConfig(LoopConfig):
    """GRPO on a verifiable task (docs/rl.md): G samples per prompt, group-normalised advantages, a
    clipped policy loss with a k3 KL to the frozen starting model. ``--model=DIR`` is the policy to train."""

    model_flag = True
    unused = RL_UNUSED
    min_batch_size = 0

    out_dir: str = "out/grpo"
    # --- task and reward ---------------------------------------------------------------------------
    task: str = "chain_sum_easy"  # built-in task name or a .jsonl of {"prompt", "answer"}
    task_seed: int = 0  # generator seed of reasoning-gym tasks
    task_options: str = ""  # JSON generator options, e.g. '{"max_digits": 1}' (reasoning-gym tasks)
    heldout_fraction: float = 0.1  # share of the task's problems held out (by hash) for heldout_accuracy
    reward: str = ""  # optional user correctness function "module:function" (completion, problem) -> float
    format_weight: float = 0.0  # weight of the format reward (reasoning, then the answer in format_style)
    format_style: str = "hash"  # hash | tags
    length_weight: float = 0.0  # DAPO soft overlong penalty weight
    overlong_buffer: int = 32  # tokens before max_new_tokens where the overlong penalty ramps up
    # --- rollouts ----------------------------------------------------------------------------------
    group_size: int = 8  # samples per prompt (G); advantages are normalised within a group
    prompts_per_step: int = 8  # problems per rollout, all ranks together
    max_new_tokens: int = 128  # completion budget per sample
    temperature: float = 1.0  # rollout sampling temperature
    top_p: float = 1.0  # rollout nucleus sampling
    tools: bool = False  # let the engine run tool calls (calculator, python) in rollouts and evals
    # --- objective ---------------------------------------------------------------------------------
    beta: float = 0.0  # KL coefficient; 0 keeps no reference model
    clip_low: float = 0.2  # policy-ratio clip epsilon (1 - clip_low .. 1 + clip_high)
    clip_high: float = 0.0  # 0 -> clip_low (symmetric); DAPO uses 0.28
    normalize_std: bool = True  # false: Dr. GRPO
    aggregation: str = "token"  # token | sequence | fixed
    updates_per_batch: int = 1  # optimizer steps on each rollout batch (> 1: off-policy, the clip matters)
    drop_zero_var: bool = False  # drop groups whose rewards are all equal (no signal; counted either way)
    # --- evaluation --------------------------------------------------------------------------------
    eval_problems: int = 100  # held-out problems answered greedily at each evaluation
    eval_every: int = 10
    sample_every: int = 0  # 0 disables periodic samples (a final sample is always printed)
    # --- optimisation defaults for finetuning ------------------------------------------------------
    lr: float = 1e-5
    min_lr: float = 1e-5
    warmup_steps: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    batch_size: int = 0  # rows (samples) per micro-batch; 0 -> the whole rollout share of a rank

    def validate(self) -> None:
        super().validate()
        if self.aggregation not in AGGREGATIONS:
            raise UserError(f"--aggregation: expected one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.group_size < 2:
            raise UserError(f"--group_size: GRPO needs at least 2 samples per prompt, got {self.group_size}")
        if self.beta < 0 or self.updates_per_batch < 1 or self.max_new_tokens < 1:
            raise UserError("--beta must be >= 0, --updates_per_batch and --max_new_tokens >= 1")
        check_rl_zero(self, "grpo")


def micro_batch_shape(cfg: GRPOConfig, world_size: int) -> tuple[int, int]:
    """``(rows per micro-batch, micro-batches per optimizer step)`` of one rank: a rank's rollout is
    ``prompts_per_step / world_size * group_size`` rows, cut into ``--batch_size`` rows (0: one piece)."""
    if cfg.prompts_per_step % world_size:
        raise UserError(
            f"--prompts_per_step={cfg.prompts_per_step} must be a multiple of the {world_size} ranks"
        )
    rows = cfg.prompts_per_step // world_size * cfg.group_size
    micro_rows = cfg.batch_size or rows
    if rows % micro_rows:
        raise UserError(f"--batch_size={cfg.batch_size} must divide the {rows} rollout rows of a rank")
    return micro_rows, rows // micro_rows


class GRPOStage:
    """GRPO's pieces, called in order by :func:`train`: :meth:`rollout` (sample and score),
    :meth:`micro_batches` (advantages attached, old and reference log-probabilities computed),
    :meth:`rollout_metrics`, and :meth:`loss` (what the training loop differentiates); plus held-out
    evaluation and the data position for checkpoints.

    ``policy`` is the module being trained (its weights are updated in place by the loop's optimizer, so
    rollouts always use the current policy; under DeepSpeed ZeRO-1/2 every rank holds whole weights).
    ``device`` and ``autocast_dtype`` are the training loop's (:func:`fastgpt.train.trainer.resolve_dtype`):
    rollouts and reference log-probabilities run with the same numerics as the updates.
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        tokenizer: Any,
        task: Task,
        cfg: GRPOConfig,
        *,
        chat_format: Any = None,
        correctness_fn: Callable[[str, Any], float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype = torch.float32,
        log: Callable[[str], Any] = print,
    ):
        """``correctness_fn(completion, problem) -> float`` replaces the task's verifier as the
        correctness reward (``--reward=module:function`` on the command line)."""
        self.micro_rows, self.grad_accum = micro_batch_shape(cfg, world_size)
        self.cfg, self.task, self.rank, self.world_size, self.log = cfg, task, rank, world_size, log
        self.device, self.autocast_dtype = torch.device(device), autocast_dtype
        self.policy = policy
        self.engine = make_rollout_engine(policy, tokenizer, chat_format=chat_format)
        self.reference = frozen_copy(policy).to(self.device) if cfg.beta > 0 else None
        correctness = correctness_fn or (load_reward_fn(cfg.reward) if cfg.reward else None)
        reward_config = RewardConfig(
            format_weight=cfg.format_weight,
            format_style=cfg.format_style,
            length_weight=cfg.length_weight,
            max_tokens=cfg.max_new_tokens,
            overlong_buffer=min(cfg.overlong_buffer, cfg.max_new_tokens),
        )
        self.reward = TaskReward(task, reward_config, correctness_fn=correctness, log=log)
        self.heldout = task.split("heldout", None if task.finite else cfg.eval_problems)[: cfg.eval_problems]
        self.local_prompts = cfg.prompts_per_step // world_size
        self.pad_id = 0
        self.rollouts_done = 0
        self._problems = task.train_stream(seed=cfg.seed)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.autocast_dtype)

    # ------------------------------------------------------------------------------------------ rollout
    def _next_problems(self) -> list:
        """This rank's share of the next rollout's problems (every rank walks the same stream)."""
        batch = list(itertools.islice(self._problems, self.cfg.prompts_per_step))
        return batch[self.rank * self.local_prompts : (self.rank + 1) * self.local_prompts]

    def rollout(self) -> Rollout:
        """Sample ``group_size`` completions of each of this rank's next problems with the current
        policy and score them (``Rollout.timings``: generation and reward wall seconds)."""
        cfg = self.cfg
        was_training = self.policy.training
        self.policy.eval()
        with self.autocast():
            rollout = sample_rollout(
                self.engine,
                self._next_problems(),
                self.reward,
                group_size=cfg.group_size,
                max_new_tokens=cfg.max_new_tokens,
                step=self.rollouts_done,
                seed=cfg.seed,
                first_index=self.rank * self.local_prompts,
                temperature=cfg.temperature,
                top_p=cfg.top_p if cfg.top_p < 1.0 else None,
                tools=cfg.tools,
                pad_id=self.pad_id,
                logprobs=self.reuse_sampler_logprobs,
            )
        self.policy.train(was_training)
        self.rollouts_done += 1
        return rollout

    @property
    def reuse_sampler_logprobs(self) -> bool:
        """Whether the rollout's own sampling log-probabilities serve as ``old_logprobs`` (instead of a
        forward of the policy over the rollout): only when they are needed (``updates_per_batch > 1``;
        with one update the ratio's denominator is the current log-probability, detached) and when the
        engine decodes in the training forward's dtype, fp32 (under bf16 autocast the engine's bf16
        weight copy and autocast round differently). fp32 decode and the fp32 training forward then
        agree up to float rounding (docs/rl.md, Speed)."""
        return (
            self.cfg.updates_per_batch > 1
            and self.autocast_dtype == torch.float32
            and self.engine.dtype in (None, torch.float32)
            and next(self.policy.parameters()).dtype == torch.float32
        )

    @torch.no_grad()
    def micro_batches(
        self, rollout: Rollout, advantages: torch.Tensor, zero_var: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """The rollout cut into this rank's micro-batches, each with its rows' advantages, loss mask
        (zero-variance groups masked out with ``--drop_zero_var``), normaliser (``count``), and the
        log-probabilities the loss compares against: the policy's at rollout time (``old_logprobs``, only
        when the rollout is reused: ``updates_per_batch > 1``; the sampler's own when
        :attr:`reuse_sampler_logprobs`, else a forward) and the reference's (``ref_logprobs``, ``beta > 0``)."""
        cfg = self.cfg
        keep = torch.ones(len(rollout))
        if cfg.drop_zero_var:
            keep = (~zero_var).float().repeat_interleave(cfg.group_size)
        mask_all = rollout.batch.target_mask * keep[:, None]  # (R, T-1)
        was_training = self.policy.training
        self.policy.eval()
        out = []
        for start in range(0, len(rollout), self.micro_rows):
            index = slice(start, start + self.micro_rows)
            rows = rollout.batch.rows(index).to(self.device)
            width = rows.ids.size(1) - 1
            mask = mask_all[index, :width].to(self.device)
            if cfg.aggregation == "token":
                count = mask.sum()
            elif cfg.aggregation == "sequence":
                count = keep[index].sum()
            else:
                count = torch.tensor(float(rows.ids.size(0) * cfg.max_new_tokens))
            micro = {
                "inputs": rows.inputs,  # what the loop counts as the step's tokens
                "ids": rows.ids,
                "response_mask": rows.response_mask,
                "last": rows.last,
                "prompt_lens": rows.prompt_lens,
                "mask": mask,
                "advantages": advantages[index].to(self.device),
                "count": count,
            }
            with self.autocast():
                if cfg.updates_per_batch > 1:  # ratios are then taken against the policy at rollout time
                    if rollout.logprobs is not None:
                        micro["old_logprobs"] = rollout.logprobs[index, :width].to(self.device)
                    else:
                        micro["old_logprobs"] = response_logprobs(
                            self.policy, rows, share_prompts=True
                        ).float()
                if self.reference is not None:
                    micro["ref_logprobs"] = response_logprobs(
                        self.reference, rows, share_prompts=True
                    ).float()
            out.append(micro)
        self.policy.train(was_training)
        return out

    def rollout_metrics(self, rollout: Rollout, zero_var: torch.Tensor) -> dict[str, float]:
        """The rollout's statistics over all ranks: ``reward_mean``, ``accuracy`` (share of correct
        samples), ``completion_len``, ``zero_var_frac``, ``truncated_frac``, ``reward_errors``."""
        sums = torch.tensor(
            [
                rollout.rewards.sum(),
                rollout.correct.sum(),
                rollout.completion_lens.sum(),
                float(len(rollout)),
                zero_var.float().sum(),
                float(zero_var.numel()),
                float(sum(r == "length" for r in rollout.finish_reasons)),
                float(sum(self.reward.errors.values())),
                rollout.tool_calls.sum(),
            ],
            dtype=torch.float64,
        )
        s = dist.all_reduce_sum(sums).tolist()
        stats = {
            "reward_mean": s[0] / s[3],
            "accuracy": s[1] / s[3],
            "completion_len": s[2] / s[3],
            "zero_var_frac": s[4] / s[5],
            "truncated_frac": s[6] / s[3],
            "reward_errors": s[7],
        }
        if self.cfg.tools:
            stats["tool_use"] = s[8] / s[3]
        return stats

    # ------------------------------------------------------------------------------------ loop contract
    @staticmethod
    def count_targets(batch: dict[str, torch.Tensor]) -> float:
        """What the step's summed loss is divided by: tokens (``token``), completions (``sequence``)
        or completions x max_new_tokens (``fixed``), over all micro-batches and ranks."""
        return float(batch["count"])

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, tuple[float, float]]]:
        """The micro-batch's summed GRPO loss (policy term + beta * k3 KL) and, as ``(sum, count)``
        over its trained tokens, ``clip_frac``, ``entropy`` (mean -log p of the sampled tokens) and ``kl``
        (k3 to the reference; 0 without one)."""
        cfg = self.cfg
        rows = ResponseBatch(batch["ids"], batch["response_mask"], batch["last"], batch["prompt_lens"])
        logprobs = response_logprobs(model, rows, share_prompts=True).float()  # (b, T-1)
        mask = batch["mask"]
        old = batch.get("old_logprobs", logprobs.detach())
        agg = dict(denominator=1.0, fixed_len=cfg.max_new_tokens)  # a sum: the loop normalises
        loss, stats = clipped_policy_loss(
            logprobs,
            old,
            batch["advantages"],
            mask,
            clip_low=cfg.clip_low,
            clip_high=cfg.clip_high or None,
            aggregation=cfg.aggregation,
            **agg,
        )
        n = float(mask.sum())
        kl_sum = 0.0
        if self.reference is not None:
            kl = kl_k3(logprobs, batch["ref_logprobs"])
            loss = loss + cfg.beta * aggregate(kl, mask, cfg.aggregation, **agg)
            kl_sum = float((kl.detach() * mask).sum())
        metrics = {
            "clip_frac": (float(stats["clip_frac"]) * n, n),
            "entropy": (float(-(logprobs.detach() * mask).sum()), n),
            "kl": (kl_sum, n),
        }
        return loss, metrics

    # ---------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Greedy accuracy on the held-out problems (each rank a share, combined); with ``--tools`` also
        ``heldout_tool_use``, the share of those greedy answers that made a tool call."""
        policy = self.policy
        was_training = policy.training
        policy.eval()
        mine = self.heldout[self.rank :: self.world_size]
        with self.autocast():
            completions = greedy_completions(
                self.engine, mine, max_new_tokens=self.cfg.max_new_tokens, tools=self.cfg.tools
            )
        policy.train(was_training)
        fmt = self.engine.chat_format
        correct = sum(self.task.is_correct(assistant_text(fmt, c), p) for c, p in zip(completions, mine))
        calls = sum(called_tool(fmt, c) for c in completions)
        counts = dist.all_reduce_sum(
            torch.tensor([float(correct), float(calls), float(len(mine))], dtype=torch.float64)
        ).tolist()
        if counts[2] == 0:  # no held-out problems at all: an accuracy of 0 would be a false number
            return {}
        out = {"heldout_accuracy": counts[0] / counts[2], "heldout_n": counts[2]}
        if self.cfg.tools:
            out["heldout_tool_use"] = counts[1] / counts[2]
        return out

    def samples(self, model: torch.nn.Module | None = None) -> list[dict[str, str]]:
        """A greedy answer to the first held-out problem, for the log."""
        if not self.heldout:
            return []
        with self.autocast():
            _, texts = greedy_accuracy(
                self.engine, self.task, self.heldout[:1], max_new_tokens=self.cfg.max_new_tokens
            )
        return [{"prompt": self.heldout[0].question, "reply": texts[0], "answer": self.heldout[0].answer}]

    def state_dict(self) -> dict[str, Any]:
        return {"rollouts_done": self.rollouts_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the next rollout (a rollout interrupted mid-way is redone from fresh samples)."""
        self.rollouts_done = int(state["rollouts_done"])
        self._problems = self.task.train_stream(seed=self.cfg.seed)
        for _ in itertools.islice(self._problems, self.rollouts_done * self.cfg.prompts_per_step):
            pass


def train(stage: GRPOStage, trainer: Trainer) -> dict[str, float]:
    """The GRPO loop, top to bottom: rollout -> advantages -> log-probabilities -> update(s), until the
    run's ``max_steps`` / ``time_budget_s``. Each update is one step of the one training loop
    (:meth:`Trainer.update`: optimizer, schedule, logging, eval, checkpoints). Returns the last metrics.

    Every step logs where its time went: ``time_rollout_s`` (sampling), ``time_reward_s`` (scoring),
    ``time_logprobs_s`` (old and reference log-probabilities), ``time_update_s`` (forward, backward,
    optimizer step). A rollout reused for ``updates_per_batch`` steps has its times spread evenly over
    them, so each step's keys add up to that step's share of the wall time.
    """
    trainer.begin(stage)  # resumes the weights, the optimizer and stage.rollouts_done
    while not trainer.done():
        step(stage, trainer)
    return trainer.end(stage)


def step(stage: GRPOStage, trainer: Trainer) -> dict[str, float]:
    """One rollout and its ``updates_per_batch`` updates (the body of :func:`train`; also what
    ``benchmarks/rl_step.py`` times). Returns the last update's metrics, time split included."""
    cfg = stage.cfg
    # 1. rollout: group_size samples of each of this rank's next problems, scored by the task's reward
    rollout = stage.rollout()
    # 2. advantages: each sample's reward against its own group's (zero_var: groups with no signal)
    advantages, zero_var = group_advantages(rollout.rewards, cfg.group_size, normalize_std=cfg.normalize_std)
    # 3. the log-probabilities the update compares against (old policy, reference), in micro-batches
    t0 = time.perf_counter()
    batches = stage.micro_batches(rollout, advantages, zero_var)
    logprobs_s = time.perf_counter() - t0
    stats = stage.rollout_metrics(rollout, zero_var)
    share = 1.0 / cfg.updates_per_batch
    timings = {
        "time_rollout_s": rollout.timings.get("rollout_s", 0.0) * share,
        "time_reward_s": rollout.timings.get("reward_s", 0.0) * share,
        "time_logprobs_s": logprobs_s * share,
    }
    # 4. update: updates_per_batch optimizer steps on this rollout (after the first, off-policy)
    last: dict[str, float] = {}
    for _ in range(cfg.updates_per_batch):
        last = trainer.update(stage, batches, metrics=stats, timings=timings)
        if trainer.done():
            break
    return last


def build_task(cfg: GRPOConfig) -> Task:
    options: dict[str, Any] = {"heldout_fraction": cfg.heldout_fraction}
    if not cfg.task.endswith(".jsonl") and cfg.task != "game24":
        options["seed"] = cfg.task_seed
    if cfg.task_options:
        try:
            extra = json.loads(cfg.task_options)
        except json.JSONDecodeError as e:
            raise UserError(f"--task_options={cfg.task_options!r}: not a JSON object ({e.msg})") from None
        if not isinstance(extra, dict):
            raise UserError(f"--task_options={cfg.task_options!r}: expected a JSON object")
        options.update(extra)
    return get_task(cfg.task, **options)


def _main(argv: list[str] | None = None) -> None:
    cfg = parse_args(GRPOConfig, normalize_argv(argv))
    ctx = rank_context(cfg)
    log = ctx["log"]
    model, tokenizer, chat_format = load_start(cfg.init_from, stage="grpo")
    task = build_task(cfg)
    stage = GRPOStage(model, tokenizer, task, cfg, chat_format=chat_format, **ctx)
    trainer = Trainer(
        cfg,
        model,
        tokenizer=tokenizer,
        stage_name="grpo",
        run_info={"task": repr(task)},
        micro_batch_size=stage.micro_rows,
        grad_accum=stage.grad_accum,
    )
    log(
        f"grpo: task {task!r}, {cfg.prompts_per_step} prompts x {cfg.group_size} samples per rollout, "
        f"{stage.grad_accum} micro-batch(es) of {stage.micro_rows} rows per rank, {len(stage.heldout)} held-out problems"
    )
    if not stage.heldout:
        log(
            f"grpo: task {task.name!r} has no held-out problems, so heldout_accuracy is not measured "
            f"(a small .jsonl: raise their share, --heldout_fraction={cfg.heldout_fraction} now, e.g. to 0.3)"
        )
    elif len(stage.heldout) < min(cfg.eval_problems, 20):
        log(
            f"grpo: only {len(stage.heldout)} held-out problem(s) in task {task.name!r}, so heldout_accuracy "
            f"moves in steps of {1 / len(stage.heldout):.2f} (raise --heldout_fraction={cfg.heldout_fraction} "
            "for a steadier measure)"
        )
    train_stage(trainer, stage, loop=train, chat_format=chat_format)


main = stage_main("grpo", _main)


if __name__ == "__main__":
    raise SystemExit(main())
