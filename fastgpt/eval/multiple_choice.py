"""Multiple choice by log-likelihood: the model "picks" the choice it finds most probable after the prompt.

No generation and no answer parsing, so even a base model that cannot follow instructions gets a fair
score. For each item and choice we sum ``log p(choice tokens | prompt)`` and report two accuracies:

- ``acc``: the choice with the highest summed log-probability;
- ``acc_norm``: the highest log-probability per UTF-8 byte of the choice, which stops longer choices from
  losing just for having more tokens (the ``acc_norm`` of lm-evaluation-harness, normalised by bytes).

Items come from the built-in sets (:mod:`fastgpt.eval.mc_sets`) or a jsonl file, one item per line::

    {"question": "What is 7 + 5?", "choices": ["11", "12", "13"], "answer": 1}
    {"context": "To be, or not to be: that is the", "choices": [" question", " answer"], "answer": " question"}

``answer`` is the index of the right choice or its text. A ``question`` is asked (``Question: ...
Answer:`` for a base model, a user turn rendered with the chat template for a chat model) and the
choice scored as the answer; a ``context`` is plain text that the choice continues (choices carry their
own leading space), for base and chat models alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastgpt.errors import UserError, json_object
from fastgpt.eval.mc_sets import BUILTIN_MC

__all__ = ["MCItem", "choice_logprobs", "evaluate_mc", "load_mc", "score_items"]


@dataclass(frozen=True)
class MCItem:
    prompt: str
    choices: tuple[str, ...]
    answer: int
    style: str  # "question" | "cloze"


class MCError(UserError):
    """A malformed multiple-choice file; the message names the line and the field."""


def load_mc(spec: str) -> tuple[str, list[MCItem]]:
    """``(name, items)`` of a built-in set name or a ``.jsonl`` file."""
    if spec in BUILTIN_MC:
        raw, style = BUILTIN_MC[spec]
        return spec, [MCItem(p, tuple(c), a, style) for p, c, a in raw]
    path = Path(spec)
    if not path.is_file():
        raise MCError(
            f"multiple-choice set {spec!r}: not a built-in set ({', '.join(BUILTIN_MC)}) nor a file"
        )
    items = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                items.append(_parse_item(line, f"{path}:{line_no}"))
    if not items:
        raise MCError(f"{path}: no items (expected one JSON object per line)")
    return path.stem, items


def _parse_item(line: str, where: str) -> MCItem:
    expected = "an object with 'question' or 'context', 'choices' and 'answer'"
    record = json_object(line, where, MCError, expected)
    if isinstance(record.get("question"), str):
        prompt, style = record["question"], "question"
    elif isinstance(record.get("context"), str):
        prompt, style = record["context"], "cloze"
    else:
        raise MCError(f"{where}: needs a string field 'question' (asked) or 'context' (continued)")
    choices = record.get("choices")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c for c in choices)
    ):
        raise MCError(f"{where}: field 'choices' must be a list of at least two non-empty strings")
    answer = record.get("answer")
    if isinstance(answer, str):
        if answer not in choices:
            raise MCError(f"{where}: field 'answer' {answer!r} is not one of the choices")
        answer = choices.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise MCError(f"{where}: field 'answer' must be a choice's text or an index in [0, {len(choices)})")
    return MCItem(prompt, tuple(choices), answer, style)


def _sequences(item: MCItem, tokenizer: Any, chat_format: Any) -> list[tuple[list[int], list[int]]]:
    """``(context ids, choice ids)`` per choice."""
    if item.style == "question" and chat_format is not None:
        context = chat_format.render_prompt([{"role": "user", "content": item.prompt}])
        return [(context, tokenizer.encode(c)) for c in item.choices]
    if item.style == "question":
        context = tokenizer.encode(f"Question: {item.prompt}\nAnswer:", add_bos=True)
        return [(context, tokenizer.encode(" " + c)) for c in item.choices]
    context = tokenizer.encode(item.prompt, add_bos=True)
    return [(context, tokenizer.encode(c)) for c in item.choices]


@torch.inference_mode()
def choice_logprobs(
    model: Any, pairs: list[tuple[list[int], list[int]]], batch_rows: int = 32
) -> list[float]:
    """Summed ``log p(choice | context)`` for each ``(context, choice)`` pair (contexts cut from the left
    to fit the model's context)."""
    device = next(model.parameters()).device
    limit = int(model.config.max_seq_len) + 1  # inputs and the shifted targets
    out: list[float] = []
    for lo in range(0, len(pairs), batch_rows):
        chunk = pairs[lo : lo + batch_rows]
        seqs, starts = [], []
        for context, choice in chunk:
            seq = (context + choice)[-limit:]
            seqs.append(seq)
            starts.append(max(len(seq) - len(choice), 1))  # index in seq of the first choice token
        T = max(map(len, seqs)) - 1
        idx = torch.zeros(len(seqs), T, dtype=torch.long)
        targets = torch.full((len(seqs), T), -100, dtype=torch.long)
        for r, (seq, start) in enumerate(zip(seqs, starts)):
            idx[r, : len(seq) - 1] = torch.tensor(seq[:-1])
            targets[r, start - 1 : len(seq) - 1] = torch.tensor(seq[start:])  # right padding is never seen
        logprobs = model.token_logprobs(idx.to(device), targets.to(device))  # (B, T), 0 where ignored
        out += logprobs.float().sum(dim=1).tolist()
    return out


def score_items(
    model: Any, tokenizer: Any, items: list[MCItem], *, chat_format: Any = None
) -> list[list[float]]:
    """``log p(choice | prompt)`` summed over the choice's tokens, per item and choice."""
    pairs, owners = [], []
    for i, item in enumerate(items):
        for j, pair in enumerate(_sequences(item, tokenizer, chat_format)):
            pairs.append(pair)
            owners.append((i, j))
    scores = choice_logprobs(model, pairs)
    per_item: list[list[float]] = [[0.0] * len(item.choices) for item in items]
    for (i, j), s in zip(owners, scores):
        per_item[i][j] = s
    return per_item


def evaluate_mc(
    model: Any, tokenizer: Any, items: list[MCItem], *, chat_format: Any = None
) -> dict[str, Any]:
    """``{"items", "acc", "acc_norm", "chance"}`` of ``items`` (see the module docstring)."""
    per_item = score_items(model, tokenizer, items, chat_format=chat_format)
    correct = correct_norm = 0
    for item, logps in zip(items, per_item):
        norm = [lp / max(len(c.encode("utf-8")), 1) for lp, c in zip(logps, item.choices)]
        correct += max(range(len(logps)), key=logps.__getitem__) == item.answer
        correct_norm += max(range(len(norm)), key=norm.__getitem__) == item.answer
    n = len(items)
    return {
        "items": n,
        "acc": correct / n,
        "acc_norm": correct_norm / n,
        "chance": sum(1 / len(item.choices) for item in items) / n,
    }
