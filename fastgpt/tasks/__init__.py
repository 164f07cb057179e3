"""Verifiable tasks for RL: problems as conversations, exact verifiers, a held-out split, rewards.

``get_task("chain_sum_easy")``, ``get_task("game24")``, ``get_task("data/my_problems.jsonl")``.
See :mod:`fastgpt.tasks.base` for the interface and docs/rl.md for the list of built-ins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastgpt.tasks.base import SPLITS, Problem, Task, TaskError, in_heldout, user_prompt
from fastgpt.tasks.extract import extract_answer, numbers_equal, parse_number
from fastgpt.tasks.game24 import Game24Task
from fastgpt.tasks.gym import GYM_TASKS, ReasoningGymTask
from fastgpt.tasks.jagged import JaggedTask
from fastgpt.tasks.jsonl import JsonlTask
from fastgpt.tasks.rewards import (
    Reward,
    RewardConfig,
    SafeReward,
    TaskReward,
    format_ok,
    load_reward_fn,
    overlong_penalty,
)

__all__ = [
    "BUILTIN_TASKS",
    "SPLITS",
    "Problem",
    "Reward",
    "RewardConfig",
    "SafeReward",
    "Task",
    "TaskError",
    "TaskReward",
    "extract_answer",
    "format_ok",
    "get_task",
    "in_heldout",
    "load_reward_fn",
    "numbers_equal",
    "overlong_penalty",
    "parse_number",
    "user_prompt",
]

BUILTIN_TASKS = (
    "gsm_symbolic",
    "basic_arithmetic",
    "chain_sum",
    "chain_sum_easy",
    "chain_sum_small",
    "game24",
    *(f"jagged_{k}" for k in ("letter_count", "reverse", "char_at", "word_length", "compare", "multiply")),
)


def get_task(spec: str, **options: Any) -> Task:
    """A built-in task by name, or a ``.jsonl`` file of ``{"prompt", "answer"}`` records.

    ``options`` go to the task's constructor (``seed``, ``heldout_fraction``, ``instruction``,
    ``system``, generator options such as ``max_digits`` for reasoning-gym tasks, ``match`` for jsonl).
    """
    if spec.endswith(".jsonl") or Path(spec).is_file():
        return JsonlTask(spec, **options)
    if spec == "game24":
        options.pop("seed", None)  # a fixed puzzle list: nothing to seed
        return Game24Task(**options)
    if spec.startswith("jagged_"):  # spelling, counting and digit tasks: fastgpt.tasks.jagged
        return JaggedTask(spec, **options)

    if spec in GYM_TASKS:
        return ReasoningGymTask(spec, **options)
    raise TaskError(f"unknown task {spec!r}: expected a .jsonl file or one of {', '.join(BUILTIN_TASKS)}")
