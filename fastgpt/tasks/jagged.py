"""Jagged-intelligence tasks: questions that are trivial on characters but hard on tokens.

A language model reads tokens, not letters: ``strawberry`` may be two or three tokens, so "how many
r's are in strawberry?" asks about something the model never sees directly, while a one-line program
(``"strawberry".count("r")``) gets it right every time. These generators make such questions in
quantity, with exact verifiers, so a model can be measured with and without the Python tool
(:func:`fastgpt.tools.run_python`) and trained to reach for it:

======================== ======================================================= ================
task                     question                                                answer
======================== ======================================================= ================
``jagged_letter_count``  How many times does the letter "r" appear in ...?      an integer
``jagged_reverse``       Spell the word "..." backwards.                          the reversed word
``jagged_char_at``       What is the 4th letter of the word "..."?               one letter
``jagged_word_length``   How many letters are in the word "..."?                 an integer
``jagged_compare``       Which number is larger: 9.11 or 9.9?                     the larger number
``jagged_multiply``      What is 4821 * 937?                                     the exact product
======================== ======================================================= ================

Problems come from ``random.Random(seed)``, so a seed fixes the stream; the held-out split is the
shared hash rule of :mod:`fastgpt.tasks.base` (a question is held out when its text hashes below
``heldout_fraction``), so train and held-out never share a question. Words come from :data:`WORDS`
(a fixed list of common English words, long and short, with doubled letters) or a list you pass.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

from fastgpt.tasks.base import Problem, Task, TaskError, user_prompt
from fastgpt.tasks.extract import extract_answer, numbers_equal, parse_number

__all__ = ["JAGGED_TASKS", "WORDS", "JaggedTask", "parse_count", "parse_letter", "parse_word"]

JAGGED_TASKS = (
    "jagged_letter_count",
    "jagged_reverse",
    "jagged_char_at",
    "jagged_word_length",
    "jagged_compare",
    "jagged_multiply",
)

INSTRUCTION = "Give the final answer on the last line as '#### <answer>'."

# Common English words of 3 to 14 letters, many with repeated letters (where token-level counting
# goes wrong). Fixed here so the tasks need no download and never change under a seed.
WORDS: tuple[str, ...] = tuple(
    """
    strawberry banana apple cherry orange lemon grape mango papaya raspberry blueberry pineapple
    coconut avocado tomato potato carrot pepper cabbage broccoli cucumber zucchini spinach lettuce
    mississippi tennessee massachusetts connecticut committee occurrence necessary embarrass
    accommodate millennium parallel possession recommend tomorrow address balloon bookkeeper
    coffee cookie letter little middle puzzle bubble button kitten mitten rabbit carrot summer
    hello world python program computer keyboard language sentence paragraph question answer
    elephant giraffe kangaroo crocodile alligator butterfly dragonfly squirrel hedgehog penguin
    dolphin octopus jellyfish seahorse flamingo pelican sparrow swallow woodpecker peacock
    mountain river ocean forest desert island volcano valley canyon glacier meadow prairie
    beautiful wonderful terrible horrible incredible remarkable excellent brilliant fantastic
    believe receive achieve deceive ceiling weird neighbor foreign height weight eight
    necessary separate definitely government environment restaurant vacuum rhythm queue
    bookshelf notebook pencil eraser scissors stapler calendar envelope magazine newspaper
    chocolate vanilla caramel cinnamon nutmeg ginger garlic onion parsley rosemary
    assessment successful possess address aggressive occasion referral preferred
    the cat dog sun moon star tree book door road bee see free three green sleep
    """.split()
)

_ORDINAL_SUFFIX = {1: "st", 2: "nd", 3: "rd"}
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_MARKED = re.compile(r"<answer>|####|\\boxed\{|answer(?:\s+is|\s*[:=])", re.IGNORECASE)


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else _ORDINAL_SUFFIX.get(k % 10, "th")
    return f"{k}{suffix}"


def _clean(text: str) -> str:
    """Strip decoration a model puts around a short answer: quotes, bold, a trailing period."""
    text = text.strip().strip("*_`").strip()
    text = re.sub(r"[.!]+$", "", text).strip()
    return text.strip("\"'\u201c\u201d\u2018\u2019").strip()


def parse_count(text: str | None) -> int | None:
    """An integer answer: ``3``, ``3.``, ``**3**``, ``3 r's``, ``three``; None when there is none."""
    if text is None:
        return None
    cleaned = _clean(text).lower()
    if cleaned in _NUMBER_WORDS:
        return _NUMBER_WORDS[cleaned]
    value = parse_number(cleaned)
    if value is None:
        m = re.match(r"^(\d+)\b", cleaned) or re.match(rf"^({'|'.join(_NUMBER_WORDS)})\b", cleaned)
        if not m:
            return None
        return _NUMBER_WORDS.get(m.group(1), None) if not m.group(1).isdigit() else int(m.group(1))
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value)
    return None


def parse_letter(text: str | None) -> str | None:
    """A single-letter answer: ``r``, ``'R'``, ``the letter r``, ``"r".``; None otherwise."""
    if text is None:
        return None
    cleaned = _clean(text).lower()
    m = re.fullmatch(
        r"(?:it is |it's )?(?:the )?(?:letter )?[\"'\u201c\u2018]?([a-z])[\"'\u201d\u2019]?", cleaned
    )
    return m.group(1) if m else None


def parse_word(text: str | None) -> str | None:
    """A word answer, case-insensitive, also when spelled out letter by letter (``y-r-r-e-b...``,
    ``y r r e b ...``, ``Y, R, R, ...``); None when empty."""
    if text is None:
        return None
    cleaned = _clean(text).lower()
    if re.fullmatch(r"[a-z](?:[\s,\-]+[a-z])+", cleaned):
        cleaned = re.sub(r"[\s,\-]+", "", cleaned)
    return cleaned or None


class JaggedTask(Task):
    """One jagged-intelligence generator as an endless :class:`Task` (see the module docstring)."""

    finite = False

    def __init__(
        self,
        name: str,
        *,
        seed: int = 0,
        heldout_fraction: float = 0.1,
        instruction: str = INSTRUCTION,
        system: str | None = None,
        words: Sequence[str] | None = None,
        min_digits: int = 2,
        max_digits: int = 4,
    ):
        if name not in JAGGED_TASKS:
            raise TaskError(f"unknown jagged task {name!r}; expected one of {', '.join(JAGGED_TASKS)}")
        word_list = tuple(w.strip().lower() for w in (WORDS if words is None else words) if w.strip())
        if not word_list or not all(w.isalpha() for w in word_list):
            raise TaskError(f"task {name!r}: words must be a non-empty list of alphabetic words")
        if not 1 <= min_digits <= max_digits:
            raise TaskError(
                f"task {name!r}: need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}"
            )
        self.name, self.seed, self.heldout_fraction = name, seed, heldout_fraction
        self.instruction, self.system = instruction, system
        self.words, self.min_digits, self.max_digits = word_list, min_digits, max_digits

    # ------------------------------------------------------------------ generation
    def _make(self, rng: random.Random) -> tuple[str, str, str, dict[str, Any]]:
        """(question, answer, worked solution, metadata) of one problem."""
        kind = self.name.removeprefix("jagged_")
        if kind in ("letter_count", "reverse", "char_at", "word_length"):
            word = rng.choice(self.words)
            if kind == "letter_count":
                # mostly letters that occur (often several times), sometimes one that does not
                letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
                answer = str(word.count(letter))
                question = f'How many times does the letter "{letter}" appear in the word "{word}"?'
                code = f'"{word}".count("{letter}")'
                return question, answer, code, {"word": word, "letter": letter}
            if kind == "reverse":
                return f'Spell the word "{word}" backwards.', word[::-1], f'"{word}"[::-1]', {"word": word}
            if kind == "char_at":
                k = rng.randint(1, len(word))
                question = f'What is the {_ordinal(k)} letter of the word "{word}"?'
                return question, word[k - 1], f'"{word}"[{k - 1}]', {"word": word, "position": k}
            question = f'How many letters are in the word "{word}"?'
            return question, str(len(word)), f'len("{word}")', {"word": word}
        if kind == "compare":
            whole = rng.randint(0, 99)
            while True:  # two decimals with the same whole part and different lengths: 9.11 vs 9.9
                a = f"{whole}.{rng.randint(1, 99):0{rng.choice((1, 2))}d}".rstrip("0")
                b = f"{whole}.{rng.randint(1, 999):0{rng.choice((1, 2, 3))}d}".rstrip("0")
                if not a.endswith(".") and not b.endswith(".") and Fraction(a) != Fraction(b):
                    if len(a) != len(b) or rng.random() < 0.2:
                        break
            larger = a if Fraction(a) > Fraction(b) else b
            question = f"Which number is larger: {a} or {b}?"
            return question, larger, f"max({a!r}, {b!r}, key=float)", {"a": a, "b": b}
        digits_a = rng.randint(self.min_digits, self.max_digits)
        digits_b = rng.randint(self.min_digits, self.max_digits)
        x = rng.randint(10 ** (digits_a - 1), 10**digits_a - 1)
        y = rng.randint(10 ** (digits_b - 1), 10**digits_b - 1)
        return f"What is {x} * {y}?", str(x * y), f"{x} * {y}", {"x": x, "y": y}

    def candidates(self) -> Iterator[Problem]:
        rng = random.Random(f"{self.name}:{self.seed}")
        while True:
            question, answer, code, metadata = self._make(rng)
            metadata = {**metadata, "kind": self.name, "code": code}
            yield Problem(
                messages=user_prompt(question, self.instruction, self.system),
                answer=answer,
                key=f"{self.name}:{question}",
                solution=f"In Python, `{code}` gives {answer}.\n#### {answer}",
                metadata=metadata,
            )

    # ------------------------------------------------------------------ checking
    def extract(self, completion: str) -> str | None:
        """The marked answer (``#### x``, ``answer: x``, ``\\boxed{x}``, ``<answer>x</answer>``); without
        a marker, the number tasks take the last number and the word tasks the last word."""
        if _MARKED.search(completion):
            return extract_answer(completion)
        if self.name in ("jagged_reverse", "jagged_char_at"):
            words = re.findall(r"[A-Za-z]+", completion)
            return words[-1] if words else None
        return extract_answer(completion)

    def verify(self, answer: str | None, problem: Problem) -> bool:
        if answer is None:
            return False
        if self.name in ("jagged_letter_count", "jagged_word_length"):
            return parse_count(answer) == int(problem.answer)
        if self.name == "jagged_reverse":
            return parse_word(answer) == problem.answer
        if self.name == "jagged_char_at":
            return parse_letter(answer) == problem.answer
        value = parse_number(_clean(answer))
        return numbers_equal(value, Fraction(problem.answer))
