"""Rollouts: sample a group of completions per problem with the inference engine and score them.

All problems of a rollout are generated in one batch: each prompt is prefilled once and its G samples
share that prefill, finished rows leave the batch (:mod:`fastgpt.engine`). Each problem samples from its
own seed, derived from ``(run seed, step, global problem index)``, so its samples do not depend on which
other problems are in the batch or on how many ranks split it. A run is therefore reproducible, and a
2-rank run sees exactly the rollouts of a 1-rank run with the same global batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fastgpt.engine import Engine
from fastgpt.rl.sequences import ResponseBatch, collate_responses
from fastgpt.tasks.base import Problem

__all__ = [
    "Rollout",
    "assistant_text",
    "called_tool",
    "greedy_accuracy",
    "greedy_completions",
    "make_rollout_engine",
    "rollout_seed",
    "sample_rollout",
]


def make_rollout_engine(
    policy: torch.nn.Module,
    tokenizer: Any,
    *,
    chat_format: Any = None,
    compile: bool | str = False,
    dtype: torch.dtype | None = None,
) -> Any:
    """The engine the RL stages (GRPO, PPO) sample rollouts and held-out answers from. One place to
    choose how rollouts are generated, so the stages do not construct engines themselves.

    ``compile``: ``"live"`` (or ``True``) decodes through a compiled step that reads the current
    weights, so optimizer steps never recompile it (:mod:`fastgpt.decode_step`); off by default, since on
    CPU at rollout batch sizes the matmuls dominate and the compile costs more than it saves (docs/rl.md,
    Speed). ``dtype``: decode with a copy of the weights in this dtype; by default the engine follows the
    autocast dtype it is called under (the training loop's ``--dtype``)."""
    mode = "live" if compile is True else compile
    return Engine(policy, tokenizer, chat_format=chat_format, compile=mode, dtype=dtype)


def assistant_text(chat_format: Any, completion: Any) -> str:
    """What the assistant itself said in a completion: with tool calls, the assistant messages' text
    without the tool outputs the engine inserted (so a calculator's result is not mistaken for the
    model's answer); otherwise the completion text."""
    if 0 not in completion.sampled:
        return completion.text
    tokens = completion.tokens[:-1] if completion.finish_reason == "stop" else completion.tokens
    messages = chat_format.parse_reply(tokens)
    return "\n".join(m["content"] for m in messages if m["role"] == "assistant" and m["content"])


def called_tool(chat_format: Any, completion: Any) -> bool:
    """Whether the completion opened a tool call (whether or not the engine ran it): the share of
    such completions is GRPO's ``tool_use`` and the eval's "replies calling a tool"."""
    start = chat_format.tool_call_start_id
    return start is not None and start in completion.tokens


def rollout_seed(seed: int, step: int, index: int) -> int:
    """A per-problem sampling seed, distinct for every (run seed, step, global problem index)."""
    return (seed * 1_000_003 + step * 65_537 + index) % (2**62)


@dataclass
class Rollout:
    """G scored completions for each of N problems, rows laid out problem by problem."""

    problems: list[Problem]  # (N,)
    batch: ResponseBatch  # N * G rows
    rewards: torch.Tensor  # (N * G,) total reward
    correct: torch.Tensor  # (N * G,) correctness part (0/1 for verifiable tasks)
    completion_lens: torch.Tensor  # (N * G,) tokens generated (including the stop token)
    tool_calls: torch.Tensor  # (N * G,) 1.0 where the completion opened a tool call
    texts: list[str]
    finish_reasons: list[str]
    group_size: int
    timings: dict[str, float] = field(default_factory=dict)  # {"rollout_s", "reward_s"}: wall seconds
    # (N * G, T-1) the sampler's log-probabilities of the response tokens, aligned like
    # ``response_logprobs(policy, batch)`` (0 elsewhere); only with ``sample_rollout(logprobs=True)``
    logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts)


def _response_aligned(batch: ResponseBatch, logprobs: list[list[float] | None]) -> torch.Tensor:
    """Per-row completion log-probabilities placed where ``response_logprobs`` puts a response token's
    log-probability: position ``t`` predicts ``ids[t + 1]``, so response token ``i`` of a row whose
    prompt has ``p`` tokens sits at ``p - 1 + i``."""
    out = torch.zeros(batch.ids.size(0), batch.ids.size(1) - 1)
    for r, (lp, p) in enumerate(zip(logprobs, batch.prompt_lens.tolist())):
        if lp:
            out[r, p - 1 : p - 1 + len(lp)] = torch.tensor(lp)
    return out


def sample_rollout(
    engine: Any,
    problems: Sequence[Problem],
    reward_fn: Callable[[str, Problem, int], Any],
    *,
    group_size: int,
    max_new_tokens: int,
    step: int,
    seed: int,
    first_index: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    tools: bool = False,
    pad_id: int = 0,
    logprobs: bool = False,
) -> Rollout:
    """Sample ``group_size`` completions of every problem and score them with ``reward_fn(text,
    problem, num_tokens) -> Reward``. ``first_index`` is the global index of ``problems[0]`` in this
    step's batch (it seeds the sampling).

    All problems are generated in one batch (each prompt prefilled once, its G samples sharing the
    prefill; finished rows leave the batch). Each problem's samples come from its own seed
    (:func:`rollout_seed`), so they do not depend on which other problems share the batch or on how
    many ranks split the step. ``logprobs=True`` also returns the sampler's own log-probabilities in
    ``Rollout.logprobs``: equal to the training forward's when the engine decodes in the training
    forward's dtype and kernels (docs/rl.md, Speed), so they can serve as the ``old_logprobs`` of
    ``updates_per_batch > 1`` without a second forward."""
    fmt = engine.chat_format
    rendered = [fmt.render_prompt(list(problem.messages)) for problem in problems]
    t0 = time.perf_counter()
    groups = engine.generate(
        rendered,
        max_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        n=group_size,
        seeds=[rollout_seed(seed, step, first_index + i) for i in range(len(problems))],
        stop_ids=fmt.stop_ids,
        tools=tools,
        logprobs=logprobs,
    )
    t1 = time.perf_counter()
    prompts, responses, trained, sample_logprobs = [], [], [], []
    texts, reasons, rewards, correct, lens, calls = [], [], [], [], [], []
    for problem, prompt, group in zip(problems, rendered, groups):
        for completion in group:
            text = assistant_text(fmt, completion)
            reward = reward_fn(text, problem, len(completion.tokens))
            prompts.append(prompt)
            responses.append(completion.tokens)
            trained.append(completion.sampled or [1] * len(completion.tokens))
            sample_logprobs.append(completion.logprobs)
            texts.append(text)
            reasons.append(completion.finish_reason)
            rewards.append(float(reward.total))
            correct.append(float(reward.correct))
            lens.append(len(completion.tokens))
            calls.append(float(called_tool(fmt, completion)))
    batch = collate_responses(prompts, responses, trained=trained, pad_id=pad_id)
    old = _response_aligned(batch, sample_logprobs) if logprobs else None
    timings = {"rollout_s": t1 - t0, "reward_s": time.perf_counter() - t1}
    return Rollout(
        problems=list(problems),
        batch=batch,
        rewards=torch.tensor(rewards),
        correct=torch.tensor(correct),
        completion_lens=torch.tensor(lens, dtype=torch.float32),
        tool_calls=torch.tensor(calls),
        texts=texts,
        finish_reasons=reasons,
        group_size=group_size,
        timings=timings,
        logprobs=old,
    )


@torch.no_grad()
def greedy_completions(
    engine: Any,
    problems: Sequence[Problem],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    tools: bool | Sequence[str] = False,
) -> list[Any]:
    """The greedy (temperature 0) completion of each problem's chat prompt, ``batch_size`` problems
    per left-padded batch, with the tools ``tools`` names run mid-generation."""
    fmt = engine.chat_format
    completions = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [fmt.render_prompt(list(p.messages)) for p in chunk]
        out = engine.generate(
            prompts, max_tokens=max_new_tokens, temperature=0, stop_ids=fmt.stop_ids, tools=tools
        )
        completions.extend(group[0] for group in out)
    return completions


def greedy_accuracy(
    engine: Any,
    task: Any,
    problems: Sequence[Problem],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    tools: bool | Sequence[str] = False,
) -> tuple[float, list[str]]:
    """Accuracy of greedy answers to ``problems`` under ``task``'s verifier, and the answers (what
    the assistant said, without inserted tool outputs)."""
    completions = greedy_completions(
        engine, problems, max_new_tokens=max_new_tokens, batch_size=batch_size, tools=tools
    )
    texts = [assistant_text(engine.chat_format, c) for c in completions]
    return (task.accuracy(texts, problems) if problems else 0.0), texts
