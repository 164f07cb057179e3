"""The task interface: verifiable problems for RL, with a held-out split and an accuracy metric.

A task is a (possibly endless) deterministic stream of :class:`Problem` s plus a verifier. The RL
trainers only ever see this interface, so a new task is one subclass with two methods:

- :meth:`Task.candidates` yields problems in a fixed order (a generator seeded once, or a file);
- :meth:`Task.verify` says whether an extracted answer is right for a problem.

**Held-out split by hash.** Each problem has a ``key`` (its question text); it belongs to the held-out
split when ``sha256(key)`` falls below ``heldout_fraction``. Train and held-out are therefore disjoint by
construction (an identical question never lands on both sides, even for generators that repeat
themselves), the split never depends on how many problems were drawn, and it needs no bookkeeping
file. Held-out evaluation takes the first ``n`` held-out problems of the stream, so ``n`` fixes the
sample and a larger ``n`` extends it.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastgpt.errors import UserError
from fastgpt.tasks.extract import extract_answer

__all__ = ["SPLITS", "Problem", "Task", "TaskError", "in_heldout", "user_prompt"]

SPLITS = ("train", "heldout")
STALE_LIMIT = 20_000  # repeated problems in a row after which an endless generator counts as exhausted

Message = dict[str, Any]


class TaskError(UserError):
    """Bad task input (file, field, name); the message names where and what was expected."""


@dataclass(frozen=True)
class Problem:
    """One verifiable problem.

    ``messages`` is the prompt conversation (ending with the user turn); ``answer`` the reference the
    verifier compares against; ``solution`` a worked solution ending in the answer when the source has
    one (used for SFT warm starts and for derived preference pairs); ``key`` identifies the problem
    (defaults to the last user message) and decides its split.
    """

    messages: tuple[Message, ...]
    answer: str
    key: str = ""
    solution: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", str(self.messages[-1]["content"]))

    @property
    def question(self) -> str:
        return str(self.messages[-1]["content"])


def in_heldout(key: str, fraction: float) -> bool:
    """Whether a problem with this key belongs to the held-out split (stable across runs and machines)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def user_prompt(question: str, instruction: str = "", system: str | None = None) -> tuple[Message, ...]:
    """The prompt conversation of a question: an optional system message, then the user turn."""
    content = f"{question.rstrip()}\n\n{instruction}" if instruction else question
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return tuple(messages)


class Task(ABC):
    """A source of verifiable problems (see the module docstring)."""

    name: str = "task"
    heldout_fraction: float = 0.1
    finite: bool = False  # True when candidates() ends (a file); False for generators

    @abstractmethod
    def candidates(self) -> Iterator[Problem]:
        """Every problem of the task, train and held-out mixed, in a fixed order."""

    @abstractmethod
    def verify(self, answer: str | None, problem: Problem) -> bool:
        """Whether ``answer`` (as extracted from a completion; None when there was none) is right."""

    # ---------------------------------------------------------------- shared behaviour
    def extract(self, completion: str) -> str | None:
        """The answer a completion commits to; tasks with unusual answers override this."""
        return extract_answer(completion)

    def is_correct(self, completion: str, problem: Problem) -> bool:
        return bool(self.verify(self.extract(completion), problem))

    def split(
        self, name: str, n: int | None = None, *, up_to: bool = False, stale_limit: int = STALE_LIMIT
    ) -> list[Problem]:
        """The first ``n`` distinct problems of a split (all of them for a finite task when ``n`` is
        None). An endless generator that stops producing new problems before ``n`` (``stale_limit``
        repeats in a row) is an error, or with ``up_to=True`` gives the ones it produced (an evaluation
        scores what exists)."""
        if name not in SPLITS:
            raise TaskError(f"unknown split {name!r}; expected one of {SPLITS}")
        if n is None and not self.finite:
            raise TaskError(f"task {self.name!r} is endless: pass how many {name} problems to take")
        want_heldout = name == "heldout"
        out: list[Problem] = []
        seen: set[str] = set()
        stale = 0  # candidates in a row that brought nothing new: an exhausted generator
        for p in self.candidates():
            if p.key in seen:  # generators repeat small problems; a split lists each once
                stale += 1
                if stale > stale_limit:
                    if up_to:
                        break
                    raise TaskError(
                        f"task {self.name!r} has only {len(out)} distinct {name} problems "
                        f"({len(seen)} in all), fewer than the {n} asked for: ask for fewer, raise "
                        "heldout_fraction, or widen the generator's options"
                    )
                continue
            seen.add(p.key)
            stale = 0
            if in_heldout(p.key, self.heldout_fraction) == want_heldout:
                out.append(p)
                if n is not None and len(out) == n:
                    break
        return out

    def train_stream(self, seed: int = 0) -> Iterator[Problem]:
        """Training problems forever: an endless task in its own order, a finite one reshuffled every
        pass with ``seed``."""
        if not self.finite:
            for p in self.candidates():
                if not in_heldout(p.key, self.heldout_fraction):
                    yield p
            raise TaskError(f"task {self.name!r} ran out of training problems")
        pool = self.split("train")
        if not pool:
            raise TaskError(
                f"task {self.name!r} has no training problems (heldout_fraction={self.heldout_fraction})"
            )
        rng = random.Random(seed)
        while True:
            order = list(range(len(pool)))
            rng.shuffle(order)
            for i in order:
                yield pool[i]

    def accuracy(self, completions: Sequence[str], problems: Sequence[Problem]) -> float:
        """Fraction of completions the verifier accepts (completion ``i`` answers ``problems[i]``)."""
        if len(completions) != len(problems):
            raise ValueError(f"{len(completions)} completions for {len(problems)} problems")
        if not problems:
            return 0.0
        return sum(self.is_correct(c, p) for c, p in zip(completions, problems)) / len(problems)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, heldout_fraction={self.heldout_fraction})"
