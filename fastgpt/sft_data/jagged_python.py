"""SFT conversations that teach a model to write code for what tokens hide: counting letters, spelling
backwards, indexing characters, word lengths, comparing decimals and exact multiplication (the jagged
tasks of :mod:`fastgpt.tasks.jagged`), each answered through a one-line Python tool call.

Why this set exists: a model reads tokens, so "how many r's in strawberry?" asks about characters it
never sees, while ``print("strawberry".count("r"))`` is always right. A conversation here is::

    user:       How many times does the letter "r" appear in the word "strawberry"? ...
    assistant:  I'll count it with Python.   + call python: print("strawberry".count("r"))
    tool:       3
    assistant:  #### 3

so the model learns the habit (reach for code on these questions) and to copy the tool's output into
its answer. In fastgpt's chat format the call is ``<|tool_call_start|>python\\nprint(...)<|tool_call_end|>``
and the engine runs it in the sandbox (:func:`fastgpt.tools.python_tool`) as the model writes it.

Clean split: only the *training* problems of each task are used (the hash rule of
:mod:`fastgpt.tasks.base`), so nothing here is a held-out problem that ``fastgpt eval`` or GRPO scores
(tested). The tool output in each conversation is the text the sandboxed tool returns for that code
(the code prints one value: its ``str`` and a newline), computed here in-process from the task's own
code string, not from a model; a test checks it against :func:`fastgpt.tools.run_python`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from fastgpt.conversation import Message, python_call
from fastgpt.errors import UserError
from fastgpt.tasks.jagged import JAGGED_TASKS, JaggedTask

__all__ = ["LEADS", "jagged_python_conversation", "jagged_python_conversations"]

# the sentence before the call, per task: short, so the call comes early
LEADS = {
    "jagged_letter_count": "I'll count it with Python.",
    "jagged_reverse": "I'll reverse it with Python.",
    "jagged_char_at": "I'll index it with Python.",
    "jagged_word_length": "I'll measure it with Python.",
    "jagged_compare": "I'll compare them with Python.",
    "jagged_multiply": "I'll multiply with Python.",
}
STALE_LIMIT = 2000  # candidates in a row without a new problem: the task has no more


def _output(code: str) -> str:
    """What the Python tool shows for ``print(<expression>)``: the value's ``str`` and a newline. The
    expression is one the task generated (string methods, ``max`` with ``key=float``, a product), so
    it is evaluated here without builtins beyond the two it uses."""
    value = eval(code, {"__builtins__": {"max": max, "float": float, "len": len}})  # noqa: S307
    return f"{value}\n"


def jagged_python_conversation(problem: Any, *, use_tool: bool = True) -> list[Message]:
    """A correct conversation for a jagged problem: a Python call of its ``metadata["code"]``, the
    tool's output, then ``#### answer``; or ``#### answer`` directly (``use_tool=False``)."""
    answer = str(problem.answer)
    if not use_tool:
        return [*problem.messages, {"role": "assistant", "content": f"#### {answer}"}]
    expression = problem.metadata["code"]
    output = _output(expression)
    if output.strip() != answer:
        raise ValueError(
            f"problem {problem.key!r}: the code prints {output.strip()!r}, the task says {answer!r}"
        )
    return [
        *problem.messages,
        {
            "role": "assistant",
            "content": LEADS.get(problem.metadata.get("kind"), "I'll use Python."),
            "tool_calls": [python_call(f"print({expression})")],
        },
        {"role": "tool", "content": output},
        {"role": "assistant", "content": f"#### {answer}"},
    ]


def _training_problems(task: Any, k: int) -> list[Any]:
    """Up to ``k`` distinct training problems of ``task`` (the same hash rule as ``task.split``),
    fewer when the generator runs out (the word tasks have about 150)."""
    return task.split("train", k, up_to=True, stale_limit=STALE_LIMIT)


def jagged_python_conversations(
    n: int = 1200,
    *,
    seed: int = 0,
    tasks: Sequence[str] | str | None = None,
    task_seed: int = 0,
    heldout_fraction: float = 0.1,
    direct_fraction: float = 0.0,
    task_options: Mapping[str, Any] | None = None,
) -> list[list[Message]]:
    """``n`` conversations, an equal share from each jagged task in ``tasks`` (default: all six; a
    comma-separated string works too), shuffled with ``seed``. A task with fewer distinct training
    problems than its share (the word tasks have about 150) gives what it has and the others fill in. ``direct_fraction`` of them (drawn with ``seed``)
    answer without the tool, for an RL cold start that needs both behaviours. ``heldout_fraction``
    must be the one the eval/RL side uses (the tasks' default 0.1) for the split to be the same, and so
    must ``task_options`` (the generator's options, e.g. ``{"max_digits": 2}``: GRPO's and eval's
    ``--task_options``)."""
    if not 0.0 <= direct_fraction <= 1.0:
        raise UserError(f"jagged_python: direct_fraction must be in [0, 1], got {direct_fraction}")
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks or JAGGED_TASKS)
    unknown = [t for t in names if t not in JAGGED_TASKS]
    if unknown or not names:
        raise UserError(
            f"jagged_python: tasks must be among {', '.join(JAGGED_TASKS)}, got {unknown or names}"
        )
    options = dict(task_options or {})
    try:
        tasks_made = [
            JaggedTask(name, seed=task_seed, heldout_fraction=heldout_fraction, **options) for name in names
        ]
    except TypeError as exc:  # an option the generator does not take
        raise UserError(f"jagged_python: task_options {options}: {exc}") from None
    pools = [_training_problems(task, n) for task in tasks_made]
    problems = []  # round-robin over the tasks: equal shares, the rest from those that have more
    for i in range(max(map(len, pools))):
        problems += [pool[i] for pool in pools if i < len(pool)]
    problems = problems[:n]
    rng = random.Random(seed)
    rng.shuffle(problems)
    return [jagged_python_conversation(p, use_tool=rng.random() >= direct_fraction) for p in problems]
