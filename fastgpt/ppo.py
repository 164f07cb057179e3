"""PPO against a learned reward model: RLHF as in Ziegler et al. (2019) and InstructGPT (2022).

    python -m fastgpt.ppo --model=out/sft/model --reward_model=out/reward/model \\
        --prompts=dpo_en_demo --prompts_per_step=16 --max_new_tokens=64 --out_dir=out/ppo
    bash launch/rlhf.sh                                 # reward model, then PPO, under torchrun

Four models take part; two are trained, two are frozen and only ever run under inference mode (no
gradients, no optimizer state -- the memory-conscious part; ``--frozen_dtype=bf16`` halves them again):

- the **policy** (trained), sampled by the inference engine for rollouts;
- the **value** estimate (trained): a head on the policy's hidden states by default
  (``--critic=shared``), or a separate critic initialised from the reward model (``--critic=separate``);
  :class:`fastgpt.rl.heads.PolicyWithValue` holds both so the one loop updates them together;
- the **reference** (frozen starting policy), for the KL penalty;
- the **reward model** (frozen, :mod:`fastgpt.reward`), which scores each finished reply.

Every ``ppo_epochs * num_minibatches`` optimizer steps a rollout is taken: one completion per prompt,
scored by the reward model. Per-token rewards are ``-kl_coef * (log pi - log ref)`` on every reply token
plus the reward model's score on the last one; GAE (``gamma``, ``lam``) turns them into advantages
(whitened over the rollout) and value targets. Each optimizer step then minimises the clipped policy
loss plus ``vf_coef`` times the clipped value loss on one minibatch; the rollout is reused for
``--ppo_epochs`` passes, reshuffled each time.

Logged: ``reward_mean`` (reward-model score), ``kl`` (mean per-token ``log pi - log ref`` at rollout
time), ``nonscore_reward`` (the KL part of the return), ``clip_frac``, ``value_loss``,
``value_clip_frac``, ``entropy`` (sampled-token estimate), ``completion_len``; at evaluations the
reward-model score of greedy replies to held-out prompts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastgpt import dist
from fastgpt.chat.template import format_for
from fastgpt.errors import UserError
from fastgpt.rl.advantages import gae, masked_whiten
from fastgpt.rl.common import RL_UNUSED, check_rl_zero, frozen_copy, load_start
from fastgpt.rl.heads import PolicyWithValue, ScalarHeadModel
from fastgpt.rl.losses import clipped_policy_loss, value_loss
from fastgpt.rl.rollout import make_rollout_engine, rollout_seed
from fastgpt.rl.sequences import IGNORE, ResponseBatch, collate_responses, render_response
from fastgpt.stage_cli import normalize_argv, rank_context, stage_main, train_stage
from fastgpt.tasks import BUILTIN_TASKS, get_task
from fastgpt.tasks.base import in_heldout, user_prompt
from fastgpt.tasks.preferences import load_pairs
from fastgpt.train.config import LoopConfig, parse_args
from fastgpt.train.trainer import Trainer, autocast_context

__all__ = ["PPOConfig", "PPORollout", "PPOStage", "load_prompts", "main", "micro_batch_shape", "train"]

Prompt = tuple[dict[str, Any], ...]


@dataclass
class PPOConfig(LoopConfig):
    """PPO (RLHF): the policy ``--model=DIR`` with a value head, a frozen reference and a reward model
    from ``fastgpt.reward`` (docs/rl.md)."""

    model_flag = True
    unused = RL_UNUSED
    min_batch_size = 0

    out_dir: str = "out/ppo"
    reward_model: str = ""  # a dir written by fastgpt.reward (model + score_head.safetensors)
    prompts: str = "dpo_en_demo"  # preference data (its prompts), a task name, or a .jsonl of prompts
    heldout_fraction: float = 0.1  # share of the prompts held out for evaluation
    eval_prompts: int = 16  # held-out prompts scored by the reward model at each evaluation
    max_prompt_len: int = 256  # longer prompts are skipped (counted)
    # --- rollouts ----------------------------------------------------------------------------------
    prompts_per_step: int = 16  # prompts per rollout, all ranks together (one completion each)
    max_new_tokens: int = 64  # completion budget per rollout
    temperature: float = 1.0  # rollout sampling temperature
    # --- objective ---------------------------------------------------------------------------------
    kl_coef: float = 0.05  # per-token KL penalty to the reference, in the reward
    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE lambda
    clip: float = 0.2  # policy-ratio clip epsilon
    vf_clip: float = 0.2  # value-prediction clip around the rollout's values
    vf_coef: float = 0.1  # weight of the value loss
    whiten_advantages: bool = True  # normalise advantages over the rollout
    ppo_epochs: int = 4  # passes over each rollout
    num_minibatches: int = 1  # optimizer steps per pass over a rollout
    critic: str = "shared"  # shared (value head on the policy) | separate (critic from the reward model)
    frozen_dtype: str = "fp32"  # fp32 | bf16: reference and reward model
    # --- optimisation defaults for finetuning ------------------------------------------------------
    batch_size: int = 0  # rows per micro-batch; 0 -> a whole minibatch
    lr: float = 1e-5
    min_lr: float = 1e-5
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    eval_every: int = 20

    def validate(self) -> None:
        super().validate()
        if self.critic not in ("shared", "separate"):
            raise UserError(f"--critic: expected shared or separate, got {self.critic!r}")
        if self.frozen_dtype not in ("fp32", "bf16"):
            raise UserError(f"--frozen_dtype: expected fp32 or bf16, got {self.frozen_dtype!r}")
        if self.ppo_epochs < 1 or self.num_minibatches < 1 or self.kl_coef < 0:
            raise UserError("--ppo_epochs and --num_minibatches must be >= 1, --kl_coef >= 0")
        check_rl_zero(self, "ppo")


def load_prompts(spec: str, *, seed: int = 0, log: Callable[[str], Any] = print) -> list[Prompt]:
    """Prompts for PPO: a built-in task (its problems' prompts), a preference source (its pairs'
    prompts, deduplicated), or a ``.jsonl`` whose records have a ``prompt`` (string or messages)."""
    if spec in BUILTIN_TASKS:
        task = get_task(spec, heldout_fraction=0.0)
        return [p.messages for p in (task.split("train") if task.finite else task.split("train", 2000))]
    path = Path(spec)
    if path.suffix == ".jsonl" and path.is_file():
        first = json.loads(
            next(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        )
        if "chosen" not in first:
            prompts = []
            for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                prompt = json.loads(line).get("prompt")
                if isinstance(prompt, str) and prompt.strip():
                    prompts.append(user_prompt(prompt))
                elif isinstance(prompt, list) and prompt and prompt[-1].get("role") == "user":
                    prompts.append(tuple(prompt))
                else:
                    raise UserError(
                        f"{path}:{line_no}: missing field 'prompt' (a string or a messages list ending with a user turn)"
                    )
            return prompts
    seen, prompts = set(), []
    for pair in load_pairs(spec, seed=seed, log=log):
        if pair.key not in seen:
            seen.add(pair.key)
            prompts.append(pair.prompt)
    return prompts


def micro_batch_shape(cfg: PPOConfig, world_size: int) -> tuple[int, int]:
    """``(rows per micro-batch, micro-batches per optimizer step)`` of one rank: a rank's rollout
    (``prompts_per_step / world_size`` replies) is cut into ``--num_minibatches`` minibatches (one
    optimizer step each), each into micro-batches of ``--batch_size`` rows (0: a whole minibatch)."""
    if cfg.prompts_per_step % world_size:
        raise UserError(
            f"--prompts_per_step={cfg.prompts_per_step} must be a multiple of the {world_size} ranks"
        )
    local = cfg.prompts_per_step // world_size
    if local % cfg.num_minibatches:
        raise UserError("--prompts_per_step / ranks must be a multiple of --num_minibatches")
    minibatch_rows = local // cfg.num_minibatches
    micro_rows = cfg.batch_size or minibatch_rows
    if minibatch_rows % micro_rows:
        raise UserError(f"--batch_size={cfg.batch_size} must divide the {minibatch_rows} rows of a minibatch")
    return micro_rows, minibatch_rows // micro_rows


@dataclass
class PPORollout:
    """One PPO rollout of a rank, ready for the update: the rows, the reward model's scores, and per
    token (``(R, T-1)``, 0 outside ``mask``) the old log-probabilities and values, the k1 KL to the
    reference, the shaped rewards, advantages and returns."""

    rows: ResponseBatch
    scores: torch.Tensor  # (R,)
    mask: torch.Tensor
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    kl: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    completion_tokens: int


class PPOStage:
    """PPO's pieces, called in order by :func:`train`: :meth:`next_prompts`, :meth:`generate` (the
    rollout), :meth:`score` (reward model), :meth:`logprobs` (old log-probabilities and values,
    reference), :meth:`advantages` (KL-shaped rewards, GAE), :meth:`minibatches` and :meth:`loss`; plus
    held-out evaluation and the data position for checkpoints. ``device`` and ``autocast_dtype`` are the
    training loop's."""

    def __init__(
        self,
        model: PolicyWithValue,
        tokenizer: Any,
        chat_format: Any,
        prompts: list[Prompt],
        reward_model: ScalarHeadModel,
        reward_format: Any,
        cfg: PPOConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype = torch.float32,
        log: Callable[[str], Any] = print,
    ):
        self.micro_rows, self.grad_accum = micro_batch_shape(cfg, world_size)
        self.cfg, self.model, self.rank, self.world_size, self.log = cfg, model, rank, world_size, log
        self.device, self.autocast_dtype = torch.device(device), autocast_dtype
        self.chat_format, self.reward_format = chat_format, reward_format
        self.engine = make_rollout_engine(model.policy, tokenizer, chat_format=chat_format)
        frozen_dtype = torch.bfloat16 if cfg.frozen_dtype == "bf16" else None
        self.reference = frozen_copy(model.policy, dtype=frozen_dtype) if cfg.kl_coef > 0 else None
        self.reward_model = reward_model.eval().requires_grad_(False)
        if frozen_dtype is not None:
            self.reward_model.to(frozen_dtype)
        for frozen in (self.reference, self.reward_model):
            if frozen is not None:
                frozen.to(self.device)
        max_prompt_len = min(cfg.max_prompt_len, model.config.max_seq_len - cfg.max_new_tokens)
        fits = [p for p in prompts if len(chat_format.render_prompt(list(p))) <= max_prompt_len]
        if len(fits) < len(prompts):
            log(f"ppo: skipped {len(prompts) - len(fits)} prompts longer than {max_prompt_len} tokens")
        key = lambda p: json.dumps(p, sort_keys=True)  # noqa: E731
        self.train_prompts = [p for p in fits if not in_heldout(key(p), cfg.heldout_fraction)]
        self.heldout_prompts = [p for p in fits if in_heldout(key(p), cfg.heldout_fraction)][
            : cfg.eval_prompts
        ]
        if not self.train_prompts:
            raise UserError("ppo: no training prompts left")
        self.local_prompts = cfg.prompts_per_step // world_size
        self.rollouts_done = 0
        self._prompt_stream = self._prompts_forever()

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.autocast_dtype)

    def _prompts_forever(self):
        for epoch in itertools.count():
            order = list(range(len(self.train_prompts)))
            random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
            yield from (self.train_prompts[i] for i in order)

    # ------------------------------------------------------------------------------------------ rollout
    def next_prompts(self) -> list[Prompt]:
        """This rank's share of the next rollout's prompts (every rank walks the same stream)."""
        batch = list(itertools.islice(self._prompt_stream, self.cfg.prompts_per_step))
        return batch[self.rank * self.local_prompts : (self.rank + 1) * self.local_prompts]

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], *, greedy: bool = False) -> list[tuple[list[int], Any]]:
        """``(prompt ids, Completion)`` of one reply to each prompt from the current policy: sampled at
        ``--temperature`` with a per-prompt seed (the rollout), or greedy (evaluation)."""
        fmt = self.chat_format
        first_index = 0 if greedy else self.rank * self.local_prompts
        was_training = self.model.training
        self.model.eval()
        out = []
        with self.autocast():
            for i, prompt in enumerate(prompts):
                ids = fmt.render_prompt(list(prompt))
                (completion,) = self.engine.generate(
                    [ids],
                    max_tokens=self.cfg.max_new_tokens,
                    temperature=0.0 if greedy else self.cfg.temperature,
                    seed=rollout_seed(self.cfg.seed, self.rollouts_done, first_index + i),
                    stop_ids=fmt.stop_ids,
                )[0]
                out.append((ids, completion))
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def score(self, prompts: list[Prompt], replies: list[str]) -> torch.Tensor:
        """Reward-model scores ``(n,)`` of replies, rendered in the reward model's own chat format."""
        context = self.reward_model.config.max_seq_len
        rendered = []
        for prompt, reply in zip(prompts, replies):
            a, b = render_response(self.reward_format, prompt, reply)
            # re-tokenised text can be longer than the sampled tokens: keep the end, where the score is read
            b = b[-(context - 1) :]
            rendered.append((a[-(context - len(b)) :], b))
        rows = collate_responses([a for a, _ in rendered], [b for _, b in rendered]).to(self.device)
        with self.autocast():
            return self.reward_model.score(rows.ids, rows.last).float().cpu()

    @torch.no_grad()
    def logprobs(
        self, generated: list[tuple[list[int], Any]]
    ) -> tuple[ResponseBatch, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, old_logprobs, old_values, ref_logprobs)`` of the rollout: the policy's log-probabilities
        and the value estimate (one forward with the shared value head), and the reference's
        log-probabilities (the policy's own when ``kl_coef == 0``), each ``(R, T-1)``."""
        rows = collate_responses([ids for ids, _ in generated], [c.tokens for _, c in generated]).to(
            self.device
        )
        was_training = self.model.training
        self.model.eval()
        with self.autocast():
            old_logprobs, old_values = self.model.logprobs_and_values(
                rows.inputs, rows.targets, ignore_index=IGNORE
            )
            ref_logprobs = (
                self.reference.token_logprobs(rows.inputs, rows.targets, ignore_index=IGNORE).float()
                if self.reference is not None
                else old_logprobs
            )
        self.model.train(was_training)
        return rows, old_logprobs, old_values, ref_logprobs

    @torch.no_grad()
    def advantages(
        self,
        generated: list[tuple[list[int], Any]],
        scores: torch.Tensor,
        rows: ResponseBatch,
        old_logprobs: torch.Tensor,
        old_values: torch.Tensor,
        ref_logprobs: torch.Tensor,
    ) -> PPORollout:
        """Per-token rewards ``-kl_coef * (log pi - log ref)`` plus the score on the last reply token;
        GAE advantages (whitened over the rollout with ``--whiten_advantages``) and value targets."""
        cfg = self.cfg
        mask = rows.target_mask  # (R, T-1)
        old_logprobs, old_values = old_logprobs * mask, old_values * mask
        kl = (old_logprobs - ref_logprobs.float()) * mask  # k1 per token: its expectation is KL(pi || ref)
        rewards = -cfg.kl_coef * kl
        last = (rows.last - 1).clamp(min=0)  # the last reply token's target position
        rewards[torch.arange(len(rows.last)), last] += scores.to(rewards)
        advantages, returns = gae(rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return PPORollout(
            rows=rows,
            scores=scores,
            mask=mask,
            old_logprobs=old_logprobs,
            old_values=old_values,
            kl=kl,
            rewards=rewards,
            advantages=advantages,
            returns=returns,
            completion_tokens=sum(len(c.tokens) for _, c in generated),
        )

    def rollout_metrics(self, r: PPORollout) -> dict[str, float]:
        """The rollout's statistics over all ranks: ``reward_mean`` (reward-model score), ``kl`` (per
        token), ``kl_per_reply``, ``nonscore_reward`` (the KL part of the return), ``completion_len``."""
        s = torch.tensor(
            [
                float(r.scores.sum()),
                float(r.kl.sum()),
                float(r.mask.sum()),
                float(len(r.scores)),
                float(r.completion_tokens),
                float(r.rewards.sum() - r.scores.sum()),
            ],
            dtype=torch.float64,
        )
        s = dist.all_reduce_sum(s).tolist()
        return {
            "reward_mean": s[0] / s[3],
            "kl": s[1] / max(s[2], 1.0),
            "kl_per_reply": s[1] / s[3],
            "nonscore_reward": s[5] / s[3],
            "completion_len": s[4] / s[3],
        }

    def minibatches(self, r: PPORollout) -> list[list[dict[str, torch.Tensor]]]:
        """The micro-batches of each optimizer step on this rollout: ``ppo_epochs`` passes, each a fresh
        shuffle of the rows cut into ``num_minibatches`` steps of ``grad_accum`` micro-batches."""
        names = ("old_logprobs", "old_values", "advantages", "returns", "mask")
        tensors = (r.old_logprobs, r.old_values, r.advantages, r.returns, r.mask)
        rng = random.Random(self.cfg.seed * 7_919 + self.rollouts_done)
        n = r.rows.ids.size(0)
        micro = []
        for _epoch in range(self.cfg.ppo_epochs):
            order = list(range(n))
            rng.shuffle(order)
            for start in range(0, n, self.micro_rows):
                index = torch.tensor(order[start : start + self.micro_rows])
                sub = r.rows.rows(index)
                width = sub.ids.size(1) - 1
                batch = {
                    "inputs": sub.inputs,
                    "ids": sub.ids,
                    "response_mask": sub.response_mask,
                    "last": sub.last,
                    "prompt_lens": sub.prompt_lens,
                }
                batch.update({k: t[index, :width] for k, t in zip(names, tensors)})
                micro.append(batch)
        return [micro[i : i + self.grad_accum] for i in range(0, len(micro), self.grad_accum)]

    # ------------------------------------------------------------------------------------ loop contract
    @staticmethod
    def count_targets(batch: dict[str, torch.Tensor]) -> float:
        return float(batch["mask"].sum())

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, tuple[float, float]]]:
        """The micro-batch's summed per-token PPO loss (policy + ``vf_coef`` * value) and, as ``(sum,
        count)`` over its reply tokens, ``clip_frac``, ``value_clip_frac``, ``value_loss``, ``entropy``."""
        cfg = self.cfg
        rows = ResponseBatch(batch["ids"], batch["response_mask"], batch["last"], batch["prompt_lens"])
        logprobs, values = model.logprobs_and_values(rows.inputs, rows.targets, ignore_index=IGNORE)
        mask = batch["mask"]
        pg, stats = clipped_policy_loss(
            logprobs,
            batch["old_logprobs"],
            batch["advantages"],
            mask,
            clip_low=cfg.clip,
            aggregation="token",
            denominator=1.0,
        )
        vf, vstats = value_loss(
            values, batch["old_values"], batch["returns"], mask, clip=cfg.vf_clip, denominator=1.0
        )
        n = float(mask.sum())
        metrics = {
            "clip_frac": (float(stats["clip_frac"]) * n, n),
            "value_clip_frac": (float(vstats["value_clip_frac"]) * n, n),
            "value_loss": (float(vf.detach()), n),
            "entropy": (float(-(logprobs.detach() * mask).sum()), n),
        }
        return pg + cfg.vf_coef * vf, metrics

    # ---------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Reward-model score of greedy replies to the held-out prompts (each rank a share)."""
        mine = self.heldout_prompts[self.rank :: self.world_size]
        generated = self.generate(mine, greedy=True)
        scores = self.score(mine, [c.text for _, c in generated]) if mine else torch.zeros(0)
        s = dist.all_reduce_sum(
            torch.tensor([float(scores.sum()), float(len(mine))], dtype=torch.float64)
        ).tolist()
        return {"heldout_reward": s[0] / max(s[1], 1.0), "heldout_prompts": s[1]}

    def state_dict(self) -> dict[str, Any]:
        return {"rollouts_done": self.rollouts_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the next rollout (a rollout interrupted mid-way is redone from fresh samples)."""
        self.rollouts_done = int(state["rollouts_done"])
        self._prompt_stream = self._prompts_forever()
        for _ in itertools.islice(self._prompt_stream, self.rollouts_done * self.cfg.prompts_per_step):
            pass


def train(stage: PPOStage, trainer: Trainer) -> dict[str, float]:
    """The PPO loop, top to bottom: rollout -> reward-model score -> old/reference log-probabilities and
    values -> shaped rewards and GAE -> ``ppo_epochs x num_minibatches`` updates, until the run's
    ``max_steps`` / ``time_budget_s``. Each update is one step of the one training loop
    (:meth:`Trainer.update`). Returns the last metrics.

    Every step logs where its time went: ``time_rollout_s`` (sampling), ``time_score_s`` (reward-model
    forward), ``time_logprobs_s`` (policy + value forward, reference forward), ``time_reward_s``
    (KL-shaped rewards, GAE, whitening), ``time_update_s``; a rollout's times are spread evenly over
    the steps that use it.
    """
    trainer.begin(stage)  # resumes the weights, the optimizer and stage.rollouts_done
    while not trainer.done():
        # 1. rollout: one sampled reply to each of this rank's next prompts, from the current policy
        t0 = time.perf_counter()
        prompts = stage.next_prompts()
        generated = stage.generate(prompts)
        t1 = time.perf_counter()
        # 2. score: the frozen reward model reads each finished reply
        scores = stage.score(prompts, [c.text for _, c in generated])
        t2 = time.perf_counter()
        # 3. log-probabilities and values at rollout time (the policy's, with its value head), reference's
        rows, old_logprobs, old_values, ref_logprobs = stage.logprobs(generated)
        t3 = time.perf_counter()
        # 4. rewards and advantages: -kl_coef * KL per token + the score at the end; GAE; whitening
        rollout = stage.advantages(generated, scores, rows, old_logprobs, old_values, ref_logprobs)
        stats = stage.rollout_metrics(rollout)
        steps = stage.minibatches(rollout)
        stage.rollouts_done += 1
        t4 = time.perf_counter()
        share = 1.0 / len(steps)
        timings = {
            "time_rollout_s": (t1 - t0) * share,
            "time_score_s": (t2 - t1) * share,
            "time_logprobs_s": (t3 - t2) * share,
            "time_reward_s": (t4 - t3) * share,
        }
        # 5. update: ppo_epochs reshuffled passes over the rollout, num_minibatches optimizer steps each
        for batches in steps:
            trainer.update(stage, batches, metrics=stats, timings=timings)
            if trainer.done():
                break
    return trainer.end(stage)


def _main(argv: list[str] | None = None) -> None:
    cfg = parse_args(PPOConfig, normalize_argv(argv))
    ctx = rank_context(cfg)
    log = ctx["log"]
    if not cfg.reward_model:
        raise UserError("--reward_model=DIR is required (train one with python -m fastgpt.reward)")
    policy, tokenizer, chat_format = load_start(cfg.init_from, stage="ppo")
    reward_model = ScalarHeadModel.from_pretrained(cfg.reward_model, require_head=True)
    critic = None
    if cfg.critic == "separate":
        critic = ScalarHeadModel.from_pretrained(cfg.reward_model, kind="value").train()
    model = PolicyWithValue(policy, critic)
    prompts = load_prompts(cfg.prompts, seed=cfg.seed, log=log)
    stage = PPOStage(
        model,
        tokenizer,
        chat_format,
        prompts,
        reward_model,
        format_for(cfg.reward_model),
        cfg,
        **ctx,
    )
    trainer = Trainer(
        cfg,
        model,
        tokenizer=tokenizer,
        stage_name="ppo",
        run_info={"reward_model": cfg.reward_model},
        micro_batch_size=stage.micro_rows,
        grad_accum=stage.grad_accum,
    )
    log(
        f"ppo: {len(stage.train_prompts)} train / {len(stage.heldout_prompts)} held-out prompts; "
        f"{cfg.prompts_per_step} per rollout, {cfg.ppo_epochs} epochs x {cfg.num_minibatches} minibatches"
    )
    train_stage(trainer, stage, loop=train, chat_format=chat_format)


main = stage_main("ppo", _main)


if __name__ == "__main__":
    raise SystemExit(main())
