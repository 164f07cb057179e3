"""Final-answer extraction from free-form completions, and numeric comparison.

A model that reasons before answering writes numbers everywhere; the reward must find the one it
commits to. The rules, tried in order (the first that matches wins):

1. a tagged answer ``<answer>...</answer>`` (the last one), as in R1-style prompts;
2. a GSM8K-style marker ``#### 42`` (the last one; the rest of that line is the answer);
3. ``\\boxed{...}`` (the last one, braces balanced), as in MATH-style solutions;
4. an explicit phrase ``answer is 42`` / ``answer: 42`` (the last one);
5. the last number in the text.

Rules 1--4 return the marked text verbatim (stripped), so exact-match tasks and expression tasks
(Game of 24) can use them; rule 5 only ever returns a number. :func:`parse_number` then reads
``1,234``, ``$5``, ``-3.50``, ``3/4``, ``50%`` and a unicode minus, so ``288.0`` matches ``288``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["extract_answer", "numbers_equal", "parse_number"]

_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_PHRASE = re.compile(r"answer(?:\s+is|\s*[:=])\s*([^\n]+)", re.IGNORECASE)
# a number: optional sign, digits with optional thousands commas, optional decimals, or a bare decimal
_NUMBER = re.compile(r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+\u2212]?\.\d+")


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced: treat as no boxed answer


def extract_answer(text: str) -> str | None:
    """The answer a completion commits to (see the module docstring), or None if it gives none."""
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str, got {type(text).__name__}")
    for found in (
        [m.group(1) for m in _TAGGED.finditer(text)],
        [m.group(1) for m in _HASHES.finditer(text)],
    ):
        if found:
            return found[-1].strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    phrases = [m.group(1) for m in _PHRASE.finditer(text)]
    if phrases:
        # "The answer is 42." -> "42": a phrase answer ends at sentence punctuation
        return re.sub(r"[.!;]+\s*$", "", phrases[-1].strip()).strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def parse_number(text: str | None) -> Fraction | float | None:
    """A number written in ``text`` (the whole text, up to decoration), or None.

    Exact values come back as :class:`~fractions.Fraction` (integers, decimals, ``a/b``); the
    decoration stripped is currency signs, thousands commas, a trailing period, ``%`` and units-free
    whitespace. Text holding anything else (``"5 apples"`` included) is not a number: the answer
    marker rules decide what the model committed to, this function does not guess further.
    """
    if text is None:
        return None
    s = text.strip().replace("\u2212", "-").replace("$", "").replace("\u20ac", "").replace("\u00a3", "")
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s).strip()
    s = s.rstrip(".").strip()
    percent = s.endswith("%")
    if percent:
        s = s[:-1].strip()
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = s.replace(" ", "")
    try:
        if re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", s) or re.fullmatch(r"[-+]?\d+/[-+]?\d+", s):
            value = Fraction(s)
        elif re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+", s):
            value = float(s)
        else:
            return None
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def numbers_equal(a: Fraction | float | None, b: Fraction | float | None, *, rel_tol: float = 1e-6) -> bool:
    """Exact equality for exact numbers, a relative tolerance once a float is involved."""
    if a is None or b is None:
        return False
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    a, b = float(a), float(b)
    return math.isfinite(a) and math.isfinite(b) and math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
