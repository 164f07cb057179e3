"""Accuracy on verifiable tasks (:mod:`fastgpt.tasks`): greedy accuracy and pass@k on the held-out split.

The problems, answer extraction and verifier are the RL stage's own (``Task.split("heldout")``,
``Task.is_correct``), so "accuracy" here is the number GRPO moves. Prompts go through the model's chat
format for chat models, and greedy accuracy is computed by GRPO's own held-out evaluation
(:func:`fastgpt.rl.rollout.greedy_accuracy`); a base model gets the question as plain text. ``tools``
(run the tool calls the model makes) is off by default, as in GRPO.

With and without tools: ``compare_tools`` (e.g. ``("python",)``) adds a second greedy pass that
differs only in the tools the engine runs, so one report says what the tool is worth on the task
(:data:`fastgpt.tasks.jagged.JAGGED_TASKS` are the tasks it was made for: counting letters is hard on
tokens and trivial in code). ``result["tools_comparison"]`` holds both accuracies and the share of
with-tools replies that called a tool.

pass@k uses the unbiased estimator of Chen et al. (2021): with ``n >= k`` samples of which ``c`` are
correct, ``pass@k = 1 - C(n - c, k) / C(n, k)``, the chance that k samples drawn without replacement
from the n contain a correct one, averaged over problems.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastgpt.errors import UserError

__all__ = ["evaluate_task", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` correct out of ``n`` samples (``k <= n``)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _prompts(engine: Any, problems: list[Any], chat: bool) -> list[list[int]]:
    if chat:
        return [engine.chat_format.render_prompt(list(p.messages)) for p in problems]
    return [engine.tokenizer.encode(p.question.rstrip() + "\n", add_bos=True) for p in problems]


def _heldout(task: Any, n: int) -> list[Any]:
    """The first ``n`` held-out problems, or all of them when an endless generator has fewer distinct
    ones (the word tasks of :mod:`fastgpt.tasks.jagged` hold out about 20): eval scores what exists
    rather than refusing, and the result's ``problems`` says how many."""
    return task.split("heldout", n, up_to=True)


def _generate(engine: Any, prompts: list[list[int]], batch_size: int, **kw: Any) -> list[list[Any]]:
    out: list[list[Any]] = []
    for i in range(0, len(prompts), batch_size):
        out += engine.generate(prompts[i : i + batch_size], **kw)
    return out


def evaluate_task(
    engine: Any,
    task: Any,
    *,
    chat: bool,
    problems: int = 100,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    k: int = 0,
    samples: int | None = None,
    temperature: float = 0.8,
    seed: int = 0,
    tools: bool | Sequence[str] = False,
    examples: int = 3,
    compare_tools: Sequence[str] = (),
) -> dict[str, Any]:
    """Greedy accuracy on the first ``problems`` held-out problems of ``task``, and pass@``k`` from
    ``samples`` (default ``k``) sampled completions per problem when ``k > 0``.

    Returns ``{"problems", "greedy_accuracy", "pass@k"?, "samples"?, "examples", "tools_comparison"?}``;
    ``examples`` holds the first few (question, completion, correct) triples for the report.
    ``compare_tools`` (chat models): also ``tools_comparison = {"tools", "without_tools",
    "with_tools", "tool_call_share", "examples"}``, the greedy accuracy with no tools and with those
    tools run (one of the two is the main pass, as ``tools`` says), and the share of with-tools replies
    that made a tool call; ``{"skipped": why}`` for a chat format without tool tokens.
    """
    heldout = _heldout(task, problems)
    if not heldout:
        raise UserError(
            f"task {task.name!r} has no held-out problems: a share of heldout_fraction="
            f"{task.heldout_fraction} of its problems (chosen by hash) is held out; to score every problem "
            """of a .jsonl file, pass --task_options '{"heldout_fraction": 1}'"""
        )
    stop_ids = set(engine.chat_format.stop_ids) if chat else {engine.tokenizer.bos_id}
    prompts = _prompts(engine, heldout, chat)
    common = dict(max_tokens=max_new_tokens, stop_ids=stop_ids, tools=tools)

    if chat:  # exactly GRPO's held-out evaluation, so the two numbers are the same measurement
        from fastgpt.rl.rollout import greedy_accuracy  # heavy: loads torch; deferred until used

        _, texts = greedy_accuracy(
            engine, task, heldout, max_new_tokens=max_new_tokens, batch_size=batch_size, tools=tools
        )
    else:
        texts = [c[0].text for c in _generate(engine, prompts, batch_size, temperature=0.0, **common)]
    correct = [task.is_correct(t, p) for t, p in zip(texts, heldout)]
    result: dict[str, Any] = {
        "task": task.name,
        "problems": len(heldout),
        "greedy_accuracy": sum(correct) / len(heldout),
        "tools": tools if isinstance(tools, bool) else list(tools),
        "examples": [
            {"question": p.question, "completion": t, "answer": p.answer, "correct": ok}
            for p, t, ok in list(zip(heldout, texts, correct))[:examples]
        ],
    }
    if chat and compare_tools:
        result["tools_comparison"] = _compare_tools(
            engine,
            task,
            heldout,
            result["greedy_accuracy"],
            tools,
            list(compare_tools),
            max_new_tokens,
            batch_size,
        )
    if k > 0:
        n = samples or k
        if n < k:
            raise UserError(f"pass@{k} needs at least {k} samples per problem, got {n}")
        rows = max(1, batch_size // n)  # prompts per generate call, each with n samples
        sampled = _generate(engine, prompts, rows, temperature=temperature, n=n, seed=seed, **common)
        scores = [
            pass_at_k(n, sum(task.is_correct(c.text, p) for c in group), k)
            for group, p in zip(sampled, heldout)
        ]
        result[f"pass@{k}"] = sum(scores) / len(scores)
        result["samples"] = n
        result["temperature"] = temperature
    return result


def _greedy_with_calls(
    engine: Any, task: Any, problems: list[Any], tools: Any, max_new_tokens: int, batch_size: int
) -> tuple[float, list[str], float]:
    """Greedy accuracy, the assistant's texts and the share of replies that made a tool call (the
    engine ran it, or handed it back): GRPO's held-out measurement plus the call count."""
    from fastgpt.rl.rollout import assistant_text, called_tool, greedy_completions  # heavy: loads torch

    fmt = engine.chat_format
    completions = greedy_completions(
        engine, problems, max_new_tokens=max_new_tokens, batch_size=batch_size, tools=tools
    )
    texts = [assistant_text(fmt, c) for c in completions]
    calls = sum(called_tool(fmt, c) for c in completions)
    return task.accuracy(texts, problems), texts, calls / max(len(problems), 1)


def _compare_tools(
    engine: Any,
    task: Any,
    heldout: list[Any],
    main_accuracy: float,
    main_tools: Any,
    compare: list[str],
    max_new_tokens: int,
    batch_size: int,
) -> dict[str, Any]:
    if not engine.chat_format.supports_tools:
        return {"tools": compare, "skipped": "the chat format has no tool-call tokens"}
    if main_tools:  # the main pass ran tools: the other pass runs none
        without, _, _ = _greedy_with_calls(engine, task, heldout, False, max_new_tokens, batch_size)
        with_tools, texts, share = _greedy_with_calls(
            engine, task, heldout, main_tools, max_new_tokens, batch_size
        )
    else:
        without = main_accuracy
        with_tools, texts, share = _greedy_with_calls(
            engine, task, heldout, compare, max_new_tokens, batch_size
        )
    return {
        "tools": compare
        if not main_tools
        else (list(engine.tool_registry) if main_tools is True else list(main_tools)),
        "without_tools": without,
        "with_tools": with_tools,
        "tool_call_share": share,
        "examples": [{"question": p.question, "completion": t} for p, t in list(zip(heldout, texts))[:2]],
    }
