"""Cold-start practice for GRPO: training problems of an RL task, solved through the calculator or
answered directly.

Why this set exists: GRPO only improves what the model already does sometimes. A small model cannot
learn multi-digit arithmetic in a few minutes, but it can learn two behaviours from a few hundred
examples -- copy the question's expression into a calculator call and copy the result back, or write a
number straight away. Trained on both (``direct_fraction`` of the conversations answer directly), the
SFT model picks one or the other on a new problem; its direct answers are mostly wrong, its calculator
answers mostly right. A plain correctness reward then tells GRPO which of its own behaviours pays, and
held-out accuracy rises as the model moves to the calculator (docs/rl.md, "RL in the speedrun").

Clean split: the conversations are built only from the task's *training* split
(:meth:`fastgpt.tasks.Task.split`), so no problem of the held-out split GRPO and ``fastgpt eval``
score on ever appears in SFT data (the split is by a hash of the question, whatever the seed).
The tool result in every conversation is the output of the calculator the engine runs, so training
and inference agree on every character.
"""

from __future__ import annotations

import json
import random
from typing import Any

from fastgpt.conversation import Message, calculator_call
from fastgpt.errors import UserError
from fastgpt.tasks import get_task
from fastgpt.tools import calculate

__all__ = ["DEFAULT_TASK", "practice_conversation", "task_practice_conversations"]

DEFAULT_TASK = "chain_sum_easy"


def practice_conversation(problem: Any, *, use_calculator: bool = True) -> list[Message]:
    """A correct conversation for ``problem`` (a :class:`fastgpt.tasks.Problem` whose metadata has the
    ``expression`` to compute): a calculator call on that expression and then ``#### answer``, or
    ``#### answer`` directly."""
    if not use_calculator:
        return [*problem.messages, {"role": "assistant", "content": f"#### {problem.answer}"}]
    expression = problem.metadata.get("expression")
    if not expression:
        raise ValueError(f"problem {problem.key!r} has no expression to hand to the calculator")
    result = calculate(expression)
    if result != str(problem.answer):
        raise ValueError(
            f"problem {problem.key!r}: the calculator gives {result!r}, the task {problem.answer!r}"
        )
    return [
        *problem.messages,
        {"role": "assistant", "content": "", "tool_calls": [calculator_call(expression)]},
        {"role": "tool", "content": result},
        {"role": "assistant", "content": f"#### {result}"},
    ]


def task_practice_conversations(
    n: int = 1500,
    *,
    seed: int = 0,
    task: str = DEFAULT_TASK,
    task_seed: int = 0,
    task_options: dict[str, Any] | str | None = None,
    heldout_fraction: float = 0.1,
    direct_fraction: float = 0.5,
) -> list[list[Message]]:
    """``n`` distinct training problems of ``task`` (the first ``n`` of its training split for
    ``task_seed``), each answered through the calculator or, with probability ``direct_fraction``
    (drawn with ``seed``), directly. ``heldout_fraction`` must be the one the RL stage uses (GRPO's
    default 0.1) for the split to be the same."""
    if not 0.0 <= direct_fraction <= 1.0:
        raise UserError(f"task_practice: direct_fraction must be in [0, 1], got {direct_fraction}")

    options = json.loads(task_options) if isinstance(task_options, str) else dict(task_options or {})
    problems = get_task(task, seed=task_seed, heldout_fraction=heldout_fraction, **options).split("train", n)
    rng = random.Random(seed)
    return [practice_conversation(p, use_calculator=rng.random() >= direct_fraction) for p in problems]
