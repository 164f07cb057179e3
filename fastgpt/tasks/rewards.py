"""Rewards for RL on verifiable tasks: correctness, an optional format bonus, an optional length penalty.

``reward = correct_weight * [answer is right]
         + format_weight  * [completion has the expected shape]
         + length_weight  * overlong_penalty(num_tokens)``

- **Correctness** is the task's verifier on the extracted answer (:meth:`Task.is_correct`), or a user
  function ``fn(completion: str, problem: Problem) -> float`` (``--reward=module:function``).
- **Format** (``format_style``): ``"hash"`` wants some reasoning, then the answer alone on the last
  line as ``#### ...``; ``"tags"`` wants ``<think>...</think><answer>...</answer>`` (R1-style).
  A format bonus helps a model that does not yet mark answers find the marker; it is 0 by default
  because it can be farmed without being right.
- **Length** is DAPO's soft overlong penalty: 0 up to ``max_tokens - overlong_buffer`` tokens, then
  falling linearly to -1 at ``max_tokens`` (a completion cut off by the token limit gets -1). It
  discourages rambling without punishing an answer for using the room it needs.

A reward function that raises does not stop training: that completion gets reward 0, the error is
counted by kind (exception type) and logged the first time each kind occurs (:class:`SafeReward`).
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastgpt.errors import UserError
from fastgpt.tasks.base import Problem, Task, TaskError

__all__ = [
    "FORMAT_STYLES",
    "Reward",
    "RewardConfig",
    "SafeReward",
    "TaskReward",
    "format_ok",
    "load_reward_fn",
    "overlong_penalty",
]

FORMAT_STYLES = ("hash", "tags")
_FORMATS = {
    # something (the reasoning), then a final line "#### answer", then nothing but whitespace
    "hash": re.compile(r"\S[\s\S]*?\n[ \t]*####[ \t]*\S[^\n]*\s*\Z"),
    "tags": re.compile(r"\A\s*<think>[\s\S]*?\S[\s\S]*?</think>\s*<answer>[\s\S]*?\S[\s\S]*?</answer>\s*\Z"),
}


def format_ok(completion: str, style: str = "hash") -> bool:
    """Whether the completion has the expected reasoning-then-answer shape."""
    if style not in _FORMATS:
        raise UserError(f"format_style={style!r}: expected one of {FORMAT_STYLES}")
    return _FORMATS[style].match(completion) is not None


def overlong_penalty(num_tokens: int, max_tokens: int, buffer: int) -> float:
    """DAPO's soft overlong penalty in [-1, 0] (see the module docstring)."""
    if max_tokens <= 0 or buffer < 0:
        raise UserError(f"need max_tokens > 0 and buffer >= 0 (got {max_tokens}, {buffer})")
    free = max_tokens - buffer
    if num_tokens <= free:
        return 0.0
    if num_tokens >= max_tokens or buffer == 0:
        return -1.0
    return (free - num_tokens) / buffer


@dataclass
class RewardConfig:
    correct_weight: float = 1.0
    format_weight: float = 0.0
    format_style: str = "hash"
    length_weight: float = 0.0
    max_tokens: int = 256  # the rollout's max_new_tokens: where the overlong penalty reaches -1
    overlong_buffer: int = 64

    def __post_init__(self) -> None:
        if self.format_style not in FORMAT_STYLES:
            raise UserError(f"format_style={self.format_style!r}: expected one of {FORMAT_STYLES}")


@dataclass
class Reward:
    """One completion's reward and its parts (the parts are logged as metrics)."""

    total: float
    correct: float
    format: float = 0.0
    length: float = 0.0


class SafeReward:
    """Wraps a reward function so that an exception gives reward 0 instead of stopping training; errors
    are counted per exception type in :attr:`errors` and each type is logged once."""

    def __init__(self, fn: Callable[..., float], log: Callable[[str], Any] = print, name: str = ""):
        self.fn, self.log = fn, log
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.errors: Counter[str] = Counter()

    def __call__(self, *args: Any, **kwargs: Any) -> float:
        try:
            value = float(self.fn(*args, **kwargs))
        except Exception as e:  # a user's reward bug must not kill a run: count it, log it once
            kind = type(e).__name__
            if self.errors[kind] == 0:
                self.log(
                    f"reward {self.name!r} raised {kind}: {e} (scored 0; further {kind}s counted, not logged)"
                )
            self.errors[kind] += 1
            return 0.0
        if value != value:  # NaN would poison the advantages
            kind = "NaN"
            if self.errors[kind] == 0:
                self.log(f"reward {self.name!r} returned NaN (scored 0; further NaNs counted, not logged)")
            self.errors[kind] += 1
            return 0.0
        return value


def load_reward_fn(spec: str) -> Callable[[str, Problem], float]:
    """``"package.module:function"`` -> the function (a user reward for ``--reward``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(f"--reward={spec!r}: expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise TaskError(f"--reward={spec!r}: cannot load it ({e})") from e
    if not callable(fn):
        raise TaskError(f"--reward={spec!r}: {attr} is not callable")
    return fn


class TaskReward:
    """The reward of a task's completions under a :class:`RewardConfig` (see the module docstring)."""

    def __init__(
        self,
        task: Task,
        config: RewardConfig | None = None,
        *,
        correctness_fn: Callable[[str, Problem], float] | None = None,
        log: Callable[[str], Any] = print,
    ):
        self.task, self.config = task, config or RewardConfig()
        fn = correctness_fn or (lambda completion, problem: float(task.is_correct(completion, problem)))
        self.correctness = SafeReward(
            fn, log, name=getattr(correctness_fn, "__name__", f"{task.name} verifier")
        )

    @property
    def errors(self) -> Counter[str]:
        return self.correctness.errors

    def __call__(self, completion: str, problem: Problem, num_tokens: int) -> Reward:
        c = self.config
        correct = self.correctness(completion, problem)
        fmt = float(format_ok(completion, c.format_style)) if c.format_weight else 0.0
        length = overlong_penalty(num_tokens, c.max_tokens, c.overlong_buffer) if c.length_weight else 0.0
        total = c.correct_weight * correct + c.format_weight * fmt + c.length_weight * length
        return Reward(total=total, correct=correct, format=fmt, length=length)
