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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastgpt import dist
from fastgpt.rl.advantages import gae, masked_whiten
from fastgpt.rl.common import export_final, frozen_copy, load_start, log_baseline, normalize_argv
from fastgpt.rl.heads import PolicyWithValue, ScalarHeadModel
from fastgpt.rl.losses import clipped_policy_loss, value_loss
from fastgpt.rl.rollout import make_rollout_engine, rollout_seed
from fastgpt.rl.sequences import IGNORE, ResponseBatch, collate_responses, render_response
from fastgpt.tasks.base import in_heldout
from fastgpt.train.config import TrainConfig

__all__ = ["PPOConfig", "PPOStage", "load_prompts", "main"]

Prompt = tuple[dict[str, Any], ...]


@dataclass
class PPOConfig(TrainConfig):
    """PPO (RLHF): the policy ``--model=DIR`` with a value head, a frozen reference and a reward model
    from ``fastgpt.reward`` (docs/rl.md)."""

    help_hidden = ("preset", "vocab_size", "tokenizer", "data")
    model_flag = True

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
            raise ValueError(f"--critic: expected shared or separate, got {self.critic!r}")
        if self.frozen_dtype not in ("fp32", "bf16"):
            raise ValueError(f"--frozen_dtype: expected fp32 or bf16, got {self.frozen_dtype!r}")
        if self.ppo_epochs < 1 or self.num_minibatches < 1 or self.kl_coef < 0:
            raise ValueError("--ppo_epochs and --num_minibatches must be >= 1, --kl_coef >= 0")


def load_prompts(spec: str, *, seed: int = 0, log: Callable[[str], Any] = print) -> list[Prompt]:
    """Prompts for PPO: a built-in task (its problems' prompts), a preference source (its pairs'
    prompts, deduplicated), or a ``.jsonl`` whose records have a ``prompt`` (string or messages)."""
    from fastgpt.tasks import BUILTIN_TASKS, get_task
    from fastgpt.tasks.base import user_prompt
    from fastgpt.tasks.preferences import load_pairs

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
                    raise ValueError(
                        f"{path}:{line_no}: missing field 'prompt' (a string or a messages list ending with a user turn)"
                    )
            return prompts
    seen, prompts = set(), []
    for pair in load_pairs(spec, seed=seed, log=log):
        if pair.key not in seen:
            seen.add(pair.key)
            prompts.append(pair.prompt)
    return prompts


class PPOStage:
    """What PPO gives the training loop (see the module docstring)."""

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
        log: Callable[[str], Any] = print,
    ):
        if cfg.prompts_per_step % world_size:
            raise ValueError(
                f"--prompts_per_step={cfg.prompts_per_step} must be a multiple of the {world_size} ranks"
            )
        self.cfg, self.model, self.rank, self.world_size, self.log = cfg, model, rank, world_size, log
        self.chat_format, self.reward_format = chat_format, reward_format
        self.engine = make_rollout_engine(model.policy, tokenizer, chat_format=chat_format)
        frozen_dtype = torch.bfloat16 if cfg.frozen_dtype == "bf16" else None
        self.reference = frozen_copy(model.policy, dtype=frozen_dtype) if cfg.kl_coef > 0 else None
        self.reward_model = reward_model.eval().requires_grad_(False)
        if frozen_dtype is not None:
            self.reward_model.to(frozen_dtype)
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
            raise ValueError("ppo: no training prompts left")
        self.local_prompts = cfg.prompts_per_step // world_size
        if self.local_prompts % cfg.num_minibatches:
            raise ValueError("--prompts_per_step / ranks must be a multiple of --num_minibatches")
        self.minibatch_rows = self.local_prompts // cfg.num_minibatches
        self.micro_rows = cfg.batch_size or self.minibatch_rows
        if self.minibatch_rows % self.micro_rows:
            raise ValueError(
                f"--batch_size={cfg.batch_size} must divide the {self.minibatch_rows} rows of a minibatch"
            )
        self.grad_accum = self.minibatch_rows // self.micro_rows
        self.autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        self.device = torch.device("cpu")
        self.rollouts_done = 0
        self._prompt_stream = self._prompts_forever()
        self._schedule: list[dict[str, torch.Tensor]] = []
        self._rollout_metrics: dict[str, float] = {}

    def attach(self, trainer: Any) -> None:
        self.autocast, self.device = trainer.autocast, trainer.device
        for frozen in (self.reference, self.reward_model):
            if frozen is not None:
                frozen.to(trainer.device)

    def _prompts_forever(self):
        for epoch in itertools.count():
            order = list(range(len(self.train_prompts)))
            random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
            yield from (self.train_prompts[i] for i in order)

    # ------------------------------------------------------------------------------------------ rollout
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

    def _generate(self, prompts: list[Prompt], *, greedy: bool, first_index: int = 0):
        fmt = self.chat_format
        out = []
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
        return out

    @torch.no_grad()
    def _rollout(self) -> None:
        cfg = self.cfg
        batch = list(itertools.islice(self._prompt_stream, cfg.prompts_per_step))
        prompts = batch[self.rank * self.local_prompts : (self.rank + 1) * self.local_prompts]
        was_training = self.model.training
        self.model.eval()
        with self.autocast():
            generated = self._generate(prompts, greedy=False, first_index=self.rank * self.local_prompts)
        scores = self.score(prompts, [c.text for _, c in generated])
        rows = collate_responses([ids for ids, _ in generated], [c.tokens for _, c in generated]).to(
            self.device
        )
        mask = rows.target_mask  # (R, T-1)
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
        old_logprobs, old_values = old_logprobs * mask, old_values * mask
        kl = (old_logprobs - ref_logprobs.float()) * mask  # k1 per token: its expectation is KL(pi || ref)
        rewards = -cfg.kl_coef * kl
        last = (rows.last - 1).clamp(min=0)  # the last reply token's target position
        rewards[torch.arange(len(rows.last)), last] += scores.to(rewards)
        advantages, returns = gae(rewards, old_values, mask, gamma=cfg.gamma, lam=cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        self._rollout_metrics = self._gather_metrics(scores, kl, rewards, mask, generated)
        self._schedule = self._minibatches(rows, old_logprobs, old_values, advantages, returns, mask)
        self.rollouts_done += 1

    def _minibatches(self, rows: ResponseBatch, *tensors: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The micro-batches of every optimizer step until the next rollout: ``ppo_epochs`` reshuffled passes."""
        names = ("old_logprobs", "old_values", "advantages", "returns", "mask")
        rng = random.Random(self.cfg.seed * 7_919 + self.rollouts_done)
        n = rows.ids.size(0)
        self._stat_scale = self.grad_accum / max(float(tensors[-1].sum()) / self.cfg.num_minibatches, 1.0)
        schedule = []
        for _epoch in range(self.cfg.ppo_epochs):
            order = list(range(n))
            rng.shuffle(order)
            for start in range(0, n, self.micro_rows):
                index = torch.tensor(order[start : start + self.micro_rows])
                sub = rows.rows(index)
                width = sub.ids.size(1) - 1
                micro = {
                    "inputs": sub.inputs,
                    "ids": sub.ids,
                    "response_mask": sub.response_mask,
                    "last": sub.last,
                    "prompt_lens": sub.prompt_lens,
                }
                micro.update({k: t[index, :width] for k, t in zip(names, tensors)})
                schedule.append(micro)
        return schedule

    def _gather_metrics(self, scores, kl, rewards, mask, generated) -> dict[str, float]:
        s = torch.tensor(
            [
                float(scores.sum()),
                float(kl.sum()),
                float(mask.sum()),
                float(len(generated)),
                float(sum(len(c.tokens) for _, c in generated)),
                float(rewards.sum() - scores.sum()),
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

    # ------------------------------------------------------------------------------------------ loop API
    def next_batch(self) -> dict[str, torch.Tensor]:
        if not self._schedule:
            self._rollout()
        return self._schedule.pop(0)

    @staticmethod
    def count_targets(batch: dict[str, torch.Tensor]) -> float:
        return float(batch["mask"].sum())

    def loss(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's summed per-token PPO loss (policy + ``vf_coef`` * value) and its statistics."""
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
        metrics = dict(self._rollout_metrics)
        metrics["clip_frac"] = float(stats["clip_frac"]) * n * self._stat_scale
        metrics["value_clip_frac"] = float(vstats["value_clip_frac"]) * n * self._stat_scale
        metrics["value_loss"] = float(vf.detach()) * self._stat_scale
        metrics["entropy"] = float(-(logprobs.detach() * mask).sum()) * self._stat_scale
        return pg + cfg.vf_coef * vf, metrics

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> dict[str, float]:
        """Reward-model score of greedy replies to the held-out prompts (each rank a share)."""
        mine = self.heldout_prompts[self.rank :: self.world_size]
        was_training = self.model.training
        self.model.eval()
        with self.autocast():
            generated = self._generate(mine, greedy=True)
        self.model.train(was_training)
        scores = self.score(mine, [c.text for _, c in generated]) if mine else torch.zeros(0)
        s = dist.all_reduce_sum(
            torch.tensor([float(scores.sum()), float(len(mine))], dtype=torch.float64)
        ).tolist()
        return {"heldout_reward": s[0] / max(s[1], 1.0), "heldout_prompts": s[1]}

    def state_dict(self) -> dict[str, Any]:
        return {"rollouts_done": self.rollouts_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollouts_done = int(state["rollouts_done"])
        self._prompt_stream = self._prompts_forever()
        for _ in itertools.islice(self._prompt_stream, self.rollouts_done * self.cfg.prompts_per_step):
            pass
        self._schedule = []


def _main(argv: list[str] | None = None) -> int:
    from fastgpt.conversation import ChatFormat
    from fastgpt.train.config import parse_args
    from fastgpt.train.trainer import Trainer

    cfg = parse_args(PPOConfig, normalize_argv(argv))
    info = dist.init_distributed(cfg.device)
    log = print if info.is_main else (lambda *_: None)
    if not cfg.reward_model:
        raise ValueError("--reward_model=DIR is required (train one with python -m fastgpt.reward)")
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
        ChatFormat.for_model(cfg.reward_model),
        cfg,
        rank=info.rank,
        world_size=info.world_size,
        log=log,
    )
    cfg.batch_size, cfg.grad_accum = stage.micro_rows, stage.grad_accum
    trainer = Trainer(
        cfg, model, tokenizer=tokenizer, stage_name="ppo", run_info={"reward_model": cfg.reward_model}
    )
    stage.attach(trainer)
    log(
        f"ppo: {len(stage.train_prompts)} train / {len(stage.heldout_prompts)} held-out prompts; "
        f"{cfg.prompts_per_step} per rollout, {cfg.ppo_epochs} epochs x {cfg.num_minibatches} minibatches"
    )
    log_baseline(trainer, stage)
    last = trainer.fit(stage)
    export_final(trainer, chat_format, last)
    trainer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fastgpt.ppo [--key=value ...]``: a bad key, value, model dir or data file ends with
    one ``error:`` line and exit status 2 (:func:`fastgpt.stage_cli.run_stage`)."""
    from fastgpt.stage_cli import run_stage

    return run_stage("ppo", lambda: _main(argv))


if __name__ == "__main__":
    raise SystemExit(main())
