"""Game of 24: combine four numbers with ``+ - * /`` and parentheses to make exactly 24.

The 1,362 puzzles are the Tree-of-Thoughts set (``tree-of-thoughts-llm==0.1.0``, MIT): the file
``tot/data/24/24.csv`` inside its wheel, fetched once from the package index into the fastgpt cache
(pinned sha256, never installed). Rows are ranked by how long humans took, easiest first.

The verifier is exact: the answer must be an arithmetic expression over exactly the puzzle's numbers
(each used once, as a multiset), made of integer literals, ``+ - * /`` and parentheses only, and it
must evaluate to 24 in rational arithmetic (``8 / (3 - 8/3)`` is 24, no float rounding). Anything
else -- other numbers, a missing number, exponentiation, a division by zero, text -- is wrong.
A trailing ``= 24`` is tolerated.
"""

from __future__ import annotations

import ast
import csv
import io
import itertools
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

from fastgpt.data.fetch import PackageFile, fetch, read_members
from fastgpt.tasks.base import Problem, Task, TaskError, user_prompt
from fastgpt.tasks.extract import extract_answer

__all__ = ["GAME24_WHEEL", "Game24Task", "evaluate_24", "load_puzzles", "solve_24"]

GAME24_WHEEL = PackageFile(
    name="tree-of-thoughts-llm",
    version="0.1.0",
    filename="tree_of_thoughts_llm-0.1.0-py3-none-any.whl",
    sha256="54405a3c4d07e9a86af064ed96ea3f4ee38197d286a4b5ec14f2a14ea7ba0049",
)
_CSV = "tot/data/24/24.csv"
TARGET = Fraction(24)

INSTRUCTION = (
    "Use each of these four numbers exactly once, with + - * / and parentheses, to make 24. "
    "Reason briefly, then write the expression on the last line as '#### <expression>'."
)


def load_puzzles(wheel: Path | None = None) -> list[tuple[int, ...]]:
    """The puzzles in file order (easiest first), each four integers."""
    wheel = wheel or fetch(GAME24_WHEEL)
    files = read_members(wheel, lambda name: name == _CSV)
    if _CSV not in files:
        raise TaskError(f"{wheel}: {_CSV} not found in the archive")
    rows = csv.DictReader(io.StringIO(files[_CSV].decode("utf-8")))
    puzzles = []
    for line, row in enumerate(rows, start=2):
        try:
            numbers = tuple(int(x) for x in row["Puzzles"].split())
        except (KeyError, ValueError) as e:
            raise TaskError(
                f"{wheel}:{_CSV} line {line}: expected a 'Puzzles' column of integers ({e})"
            ) from e
        if len(numbers) != 4:
            raise TaskError(f"{wheel}:{_CSV} line {line}: expected 4 numbers, got {row['Puzzles']!r}")
        puzzles.append(numbers)
    return puzzles


def _eval_node(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
        left, right = _eval_node(node.left, used), _eval_node(node.right, used)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise ZeroDivisionError("division by zero")
        return left / right
    raise ValueError(f"not allowed in a Game-of-24 expression: {ast.dump(node)[:60]}")


def evaluate_24(expression: str, numbers: tuple[int, ...]) -> bool:
    """Whether ``expression`` uses exactly ``numbers`` (as a multiset) and equals 24 exactly."""
    text = expression.strip().replace("\u00d7", "*").replace("\u00f7", "/").replace("\u2212", "-")
    text = text.rstrip(".").strip()
    if "=" in text:  # "(4 + 8) * 2 = 24"
        text, _, rhs = text.partition("=")
        if rhs.strip() not in ("24", "24."):
            return False
    if len(text) > 200:
        return False
    try:
        tree = ast.parse(text.strip(), mode="eval")
        used: list[int] = []
        value = _eval_node(tree, used)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return False
    return Counter(used) == Counter(numbers) and value == TARGET


def solve_24(numbers: tuple[int, ...]) -> str | None:
    """One expression making 24 from ``numbers``, by exhaustive search (None when unsolvable)."""
    items = [(Fraction(n), str(n)) for n in numbers]

    def search(items: list[tuple[Fraction, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == TARGET else None
        for i, j in itertools.permutations(range(len(items)), 2):
            (a, sa), (b, sb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            options = [(a + b, f"({sa} + {sb})"), (a - b, f"({sa} - {sb})"), (a * b, f"({sa} * {sb})")]
            if b != 0:
                options.append((a / b, f"({sa} / {sb})"))
            for value in options:
                found = search([*rest, value])
                if found:
                    return found
        return None

    found = search(items)
    return found[1:-1] if found and found.startswith("(") and found.endswith(")") else found


class Game24Task(Task):
    """The Game-of-24 puzzles as a finite :class:`Task` with an exact verifier."""

    name = "game24"
    finite = True

    def __init__(
        self,
        *,
        heldout_fraction: float = 0.1,
        instruction: str = INSTRUCTION,
        system: str | None = None,
        wheel: Path | None = None,
        puzzles: list[tuple[int, ...]] | None = None,
    ):
        self.heldout_fraction, self.instruction, self.system = heldout_fraction, instruction, system
        self._puzzles = puzzles if puzzles is not None else load_puzzles(wheel)

    def candidates(self) -> Iterator[Problem]:
        for rank, numbers in enumerate(self._puzzles):
            listed = " ".join(str(n) for n in numbers)
            yield Problem(
                messages=user_prompt(f"Numbers: {listed}", self.instruction, self.system),
                answer="24",
                key=f"game24:{listed}",
                metadata={"numbers": numbers, "rank": rank},
            )

    def extract(self, completion: str) -> str | None:
        found = extract_answer(completion)
        if found is not None and any(op in found for op in "+-*/"):
            return found
        # no marked expression: the last line that looks like arithmetic
        for line in reversed(completion.strip().splitlines()):
            if any(op in line for op in "+-*/") and any(c.isdigit() for c in line):
                return line.strip()
        return found

    def verify(self, answer: str | None, problem: Problem) -> bool:
        return answer is not None and evaluate_24(answer, problem.metadata["numbers"])
