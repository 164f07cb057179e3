"""A user's own verifiable problems from a ``.jsonl`` file.

One JSON object per line::

    {"prompt": "What is 17 * 3?", "answer": 51}
    {"prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "answer": "Paris", "solution": "The capital of France is Paris.\\n#### Paris", "id": "q2"}

``prompt`` is a question string or a messages list ending with a user turn; ``answer`` is a string or a
number (required: a line without it is an error naming the line). Checking (``match``):

- ``numeric``: both sides parse as numbers (:func:`~fastgpt.tasks.extract.parse_number`) and are equal;
- ``exact``: equal after trimming, case folding and collapsing whitespace (and a final period);
- ``auto`` (default): numeric when the reference answer is a number, exact otherwise.

An ``instruction`` (default: end with ``#### <answer>``) is appended to string prompts so the model
knows how to mark its answer; messages prompts are used as written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from fastgpt.errors import json_object
from fastgpt.tasks.base import Problem, Task, TaskError, user_prompt
from fastgpt.tasks.extract import numbers_equal, parse_number

__all__ = ["JsonlTask", "normalize_text"]

DEFAULT_INSTRUCTION = "Reason step by step, then write the final answer on the last line as '#### <answer>'."
MATCH_MODES = ("auto", "numeric", "exact")


def normalize_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().casefold()).rstrip(".").strip()


class JsonlTask(Task):
    """Problems read from a jsonl file (see the module docstring); all lines are read and checked up front."""

    finite = True

    def __init__(
        self,
        path: str | Path,
        *,
        match: str = "auto",
        heldout_fraction: float = 0.1,
        instruction: str = DEFAULT_INSTRUCTION,
        system: str | None = None,
    ):
        if match not in MATCH_MODES:
            raise TaskError(f"match={match!r}: expected one of {MATCH_MODES}")
        self.path = Path(path)
        self.name = self.path.stem
        self.match, self.heldout_fraction = match, heldout_fraction
        self.instruction, self.system = instruction, system
        self._problems = self._read()

    def _read(self) -> list[Problem]:
        if not self.path.is_file():
            raise TaskError(f"task file not found: {self.path}")
        problems = []
        with open(self.path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    problems.append(self._parse(line, f"{self.path}:{line_no}"))
        if not problems:
            raise TaskError(f"{self.path}: no problems (expected one JSON object per line)")
        return problems

    def _parse(self, line: str, where: str) -> Problem:
        record = json_object(line, where, TaskError, "a JSON object with 'prompt' and 'answer'")
        if "answer" not in record or record["answer"] is None:
            raise TaskError(
                f"{where}: missing field 'answer' (the reference answer the reward checks against)"
            )
        answer = record["answer"]
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise TaskError(
                f"{where}: field 'answer' must be a string or a number, got {type(answer).__name__}"
            )
        prompt = record.get("prompt")
        if isinstance(prompt, str) and prompt.strip():
            messages = user_prompt(prompt, self.instruction, self.system)
        elif isinstance(prompt, list) and prompt:
            if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt):
                raise TaskError(f"{where}: field 'prompt' as a list must hold {{'role', 'content'}} messages")
            if prompt[-1].get("role") != "user":
                raise TaskError(f"{where}: field 'prompt' must end with a user message")
            messages = tuple(dict(m) for m in prompt)
        else:
            raise TaskError(f"{where}: missing field 'prompt' (a question string or a messages list)")
        solution = record.get("solution")
        return Problem(
            messages=messages,
            answer=str(answer),
            key=str(record.get("id") or messages[-1]["content"]),
            solution=solution if isinstance(solution, str) else None,
            metadata={"source": where},
        )

    def candidates(self) -> Iterator[Problem]:
        return iter(self._problems)

    def verify(self, answer: str | None, problem: Problem) -> bool:
        if answer is None:
            return False
        reference = parse_number(problem.answer)
        numeric = self.match == "numeric" or (self.match == "auto" and reference is not None)
        if numeric:
            return numbers_equal(parse_number(answer), reference)
        return normalize_text(answer) == normalize_text(problem.answer)
