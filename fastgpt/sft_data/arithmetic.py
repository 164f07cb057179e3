"""Arithmetic solved with the calculator tool, as multi-step worked answers.

Two lessons in one set. First, a small model is bad at mental arithmetic but can learn *when* to call a
calculator and what to type into it; the engine runs the call (``fastgpt.tools``) and the result comes
back as tool-output tokens. Second, a model thinks in tokens: an answer written first is a guess, so every
reply states the plan, works through the steps, and gives the answer last ("The answer is N.").
The tool results in the data are produced by the same calculator the engine runs, so training and
inference agree on every character.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from fastgpt.conversation import Message, calculator_call
from fastgpt.tools import calculate

__all__ = ["arithmetic_conversations"]

_NAMES = [
    "Ana",
    "Ben",
    "Chen",
    "Dara",
    "Eli",
    "Fatima",
    "Gus",
    "Hana",
    "Ivan",
    "Jo",
    "Kofi",
    "Lena",
    "Mia",
    "Noor",
]
_ITEMS = ["pencils", "apples", "stickers", "marbles", "cookies", "cards", "stamps", "eggs"]


class _Work:
    """Builds one worked conversation: text, calculator calls (run for real), more text, the answer."""

    def __init__(self, question: str):
        self.messages: list[Message] = [{"role": "user", "content": question}]

    def step(self, text: str, expression: str) -> str:
        """Write ``text``, then call the calculator on ``expression``; its result (the tool output that
        the reply continues from) is returned."""
        result = calculate(expression)
        assert not result.startswith("error"), (expression, result)
        self.messages.append(
            {"role": "assistant", "content": text, "tool_calls": [calculator_call(expression)]}
        )
        self.messages.append({"role": "tool", "content": result})
        return result

    def answer(self, text: str, value: str) -> list[Message]:
        self.messages.append({"role": "assistant", "content": f"{text} The answer is {value}."})
        return self.messages


def _expression(rng: random.Random) -> list[Message]:
    a, b, c = rng.randint(12, 999), rng.randint(3, 99), rng.randint(10, 9999)
    op = rng.choice(["+", "-"])
    w = _Work(rng.choice(["What is", "Compute", "Calculate", "Work out"]) + f" {a} * {b} {op} {c}.")
    p = w.step(
        f"Multiplication comes before {'addition' if op == '+' else 'subtraction'}. First, {a} * {b}: ",
        f"{a} * {b}",
    )
    r = w.step(f"Then {p} {op} {c}: ", f"{p} {op} {c}")
    return w.answer(f"So {a} * {b} {op} {c} = {r}.", r)


def _product(rng: random.Random) -> list[Message]:
    a, b = rng.randint(100, 9999), rng.randint(11, 999)
    w = _Work(rng.choice([f"What is {a} times {b}?", f"What is {a} * {b}?", f"Multiply {a} by {b}."]))
    r = w.step("I'll use the calculator for this product: ", f"{a} * {b}")
    return w.answer(f"{a} multiplied by {b} is {r}.", r)


def _packs(rng: random.Random) -> list[Message]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(3, 40), rng.randint(6, 48)
    c = rng.randint(1, a * b - 1)
    w = _Work(
        f"{name} buys {a} packs of {b} {item} and gives {c} {item} to a friend. How many {item} does {name} have left?"
    )
    total = w.step(f"First find how many {item} {name} bought: {a} packs of {b} each is ", f"{a} * {b}")
    left = w.step(f" {item}. Then subtract the {c} given away: ", f"{total} - {c}")
    return w.answer(f"{name} has {left} {item} left.", left)


def _distance(rng: random.Random) -> list[Message]:
    a, b, c = rng.randint(40, 180), rng.randint(2, 9), rng.randint(5, 120)
    vehicle = rng.choice(["train", "bus", "car", "truck"])
    w = _Work(
        f"A {vehicle} travels at {a} km per hour for {b} hours, then {c} km more. How far does it go in total?"
    )
    d = w.step(f"Distance is speed times time, so the first part is {a} * {b} = ", f"{a} * {b}")
    total = w.step(f" km. Adding the last {c} km: ", f"{d} + {c}")
    return w.answer(f"The {vehicle} travels {total} km in total.", total)


def _money(rng: random.Random) -> list[Message]:
    name = rng.choice(_NAMES)
    b, c = rng.randint(5, 90), rng.randint(5, 90)
    a = rng.randint(b + c + 1, 500)
    w = _Work(
        f"{name} has {a} dollars, spends {b} dollars on lunch and {c} dollars on a book. How many dollars are left?"
    )
    r1 = w.step(f"After lunch {name} has {a} - {b} = ", f"{a} - {b}")
    r2 = w.step(f" dollars. After the book: {r1} - {c} = ", f"{r1} - {c}")
    return w.answer(f"{name} has {r2} dollars left.", r2)


def _teams(rng: random.Random) -> list[Message]:
    b = rng.randint(3, 12)
    a = rng.randint(b * 2, 400)
    w = _Work(
        f"{a} students are split into teams of {b}. How many full teams are there, and how many students are left over?"
    )
    q = w.step(f"The number of full teams is {a} divided by {b}, rounded down: ", f"{a} // {b}")
    r = w.step(" teams. The students left over are the remainder: ", f"{a} % {b}")
    return w.answer(f"There are {q} full teams and {r} students left over.", f"{q} teams with {r} left over")


def _discount(rng: random.Random) -> list[Message]:
    a, p = rng.randint(20, 400), rng.choice([5, 10, 15, 20, 25, 30, 40, 50])
    item = rng.choice(["jacket", "lamp", "bicycle", "game", "pair of shoes"])
    w = _Work(f"A {item} costs {a} dollars and is {p}% off. What does it cost now?")
    d = w.step(f"The discount is {p}% of {a}, which is {a} * {p} / 100 = ", f"{a} * {p} / 100")
    price = w.step(f" dollars. The new price is {a} - {d} = ", f"{a} - {d}")
    return w.answer(f"The {item} now costs {price} dollars.", price)


def _average(rng: random.Random) -> list[Message]:
    name = rng.choice(_NAMES)
    scores = [rng.randint(50, 95) for _ in range(rng.randint(3, 5))]
    scores[-1] += -sum(scores) % len(scores)  # a whole-number average keeps the answer exact
    listed = ", ".join(map(str, scores[:-1])) + f" and {scores[-1]}"
    w = _Work(f"{name}'s test scores are {listed}. What is the average score?")
    total = w.step(
        "The average is the sum divided by the number of scores. The sum is ", " + ".join(map(str, scores))
    )
    avg = w.step(f", and there are {len(scores)} scores, so the average is ", f"{total} / {len(scores)}")
    return w.answer(f"{name}'s average score is {avg}.", avg)


_PROBLEMS: list[Callable[[random.Random], list[Message]]] = [
    _expression,
    _product,
    _packs,
    _distance,
    _money,
    _teams,
    _discount,
    _average,
]


def arithmetic_conversations(n: int = 600, *, seed: int = 0) -> list[list[Message]]:
    """``n`` arithmetic questions (expressions and word problems) worked through with calculator calls."""
    rng = random.Random(seed)
    return [rng.choice(_PROBLEMS)(rng) for _ in range(n)]
