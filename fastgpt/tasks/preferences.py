"""Preference pairs for the reward model and DPO: a prompt, a chosen reply and a rejected reply.

Sources (``load_pairs(spec)``, several joined with commas):

- a ``.jsonl`` / ``.json`` file whose records are any of
  - ``{"prompt": str | messages, "chosen": str | message | [message], "rejected": ...}`` (the last:
    TRL's conversational form with an explicit prompt, a list of one assistant message);
  - LLaMA-Factory / ShareGPT: ``{"conversations": [{"from", "value"}...], "chosen": {"from": "gpt",
    "value": ...}, "rejected": {...}, "system"?: ...}``;
  - TRL conversational: ``{"chosen": messages, "rejected": messages}`` whose messages agree up to the
    final assistant reply (that shared part is the prompt);
- ``dpo_en_demo``: the 300 English pairs of ``llamafactory==0.9.5`` (``data/dpo_en_demo.json``,
  fetched from PyPI, pinned sha256). Upstream does not say where they come from or how they were
  labelled: treat them as a demo, not a benchmark;
- ``<task>_pairs`` for a verifiable task with worked solutions (``gsm_symbolic_pairs``,
  ``chain_sum_pairs``, ...): the chosen reply is the correct worked solution, the rejected reply the
  same solution with a wrong final answer. Unlimited and exactly labelled.

Pairs whose chosen and rejected replies are identical carry no preference: they are skipped and
counted. A malformed record is skipped and counted too (``strict=True`` makes it an error). The
held-out split is by prompt hash, as for tasks (:func:`fastgpt.tasks.base.in_heldout`), so one prompt
never lands on both sides.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from fastgpt.conversation import ConversationError, sharegpt_to_messages
from fastgpt.data.corpora import LLAMAFACTORY
from fastgpt.data.fetch import fetch, read_members
from fastgpt.errors import UserError
from fastgpt.tasks import get_task
from fastgpt.tasks.base import Problem, TaskError, in_heldout

__all__ = [
    "BUILTIN_PAIRS",
    "PairStats",
    "PreferencePair",
    "corrupt_solution",
    "derived_pairs",
    "load_pairs",
    "pairs_from_records",
    "split_pairs",
]

Message = dict[str, Any]
BUILTIN_PAIRS = ("dpo_en_demo", "gsm_symbolic_pairs", "basic_arithmetic_pairs", "chain_sum_pairs")


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Message, ...]  # ends with a user turn
    chosen: str
    rejected: str

    @property
    def key(self) -> str:
        return json.dumps(self.prompt, sort_keys=True, ensure_ascii=False)


@dataclass
class PairStats:
    """What a reader kept, and how many records it skipped for which reason."""

    read: int = 0
    kept: int = 0
    identical: int = 0
    malformed: int = 0
    reasons: list[str] = field(default_factory=list)  # the first few of each kind

    def skip(self, kind: str, reason: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if getattr(self, kind) <= 3:  # per kind, so a few identical pairs do not hide why others broke
            self.reasons.append(reason)

    def summary(self, name: str) -> str:
        text = f"{name}: kept {self.kept} of {self.read} pairs"
        if self.identical or self.malformed:
            text += f"; skipped {self.identical} with identical chosen/rejected, {self.malformed} malformed"
            text += f" (first reasons: {'; '.join(self.reasons)})"
        return text


# ---------------------------------------------------------------------------------------------- records
def _reply_text(value: Any, field_name: str) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        # TRL's conversational form with an explicit prompt: "chosen": [{"role": "assistant", ...}]
        if value[0].get("role", "assistant") not in ("assistant", "gpt"):
            raise UserError(f"field {field_name!r}: the reply must be an assistant message")
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("content"), str):
            return value["content"]
        if isinstance(value.get("value"), str):
            return value["value"]
    raise UserError(
        f"field {field_name!r} must be a string, a message or a list of one assistant message, "
        f"got {type(value).__name__}" + (f" of {len(value)}" if isinstance(value, list) else "")
    )


def _prompt_messages(value: Any) -> tuple[Message, ...]:
    if isinstance(value, str) and value.strip():
        return ({"role": "user", "content": value},)
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = tuple({"role": m.get("role"), "content": m.get("content")} for m in value)
        if any(not isinstance(m["content"], str) for m in messages):
            raise UserError("prompt messages need string 'content'")
        if messages[-1]["role"] != "user":
            raise UserError("the prompt must end with a user message")
        return messages
    raise UserError("field 'prompt' must be a question string or a messages list")


def _record_to_pair(record: Any) -> PreferencePair:
    if isinstance(record, ValueError):  # the reader could not parse the line
        raise record
    if not isinstance(record, dict):
        raise UserError("expected a JSON object")
    for name in ("chosen", "rejected"):
        if name not in record:
            raise UserError(f"missing field {name!r}")
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record:
        prompt = _prompt_messages(record["prompt"])
    elif "conversations" in record:
        try:
            prompt = _prompt_messages(sharegpt_to_messages(record))
        except ConversationError as e:
            raise UserError(str(e)) from None
        if isinstance(chosen, list) or isinstance(rejected, list):
            raise UserError("ShareGPT pairs need a single chosen/rejected turn")
    elif isinstance(chosen, list) and isinstance(rejected, list):
        if not chosen or not rejected or chosen[:-1] != rejected[:-1]:
            raise UserError("chosen and rejected conversations must agree up to the final reply")
        prompt = _prompt_messages(chosen[:-1])
        chosen, rejected = chosen[-1], rejected[-1]
    else:
        raise UserError("missing field 'prompt' (or 'conversations', or full chosen/rejected conversations)")
    return PreferencePair(prompt, _reply_text(chosen, "chosen"), _reply_text(rejected, "rejected"))


def pairs_from_records(
    records: Iterator[tuple[str, Any]], *, stats: PairStats | None = None, strict: bool = False
) -> list[PreferencePair]:
    """Pairs from ``(location, record)`` items; identical and malformed ones are skipped and counted."""
    stats = stats if stats is not None else PairStats()
    out = []
    for where, record in records:
        stats.read += 1
        try:
            pair = _record_to_pair(record)
        except ValueError as e:
            if strict:
                raise TaskError(f"{where}: {e}") from None
            stats.skip("malformed", f"{where}: {e}")
            continue
        if pair.chosen.strip() == pair.rejected.strip():
            stats.skip("identical", f"{where}: chosen and rejected are identical")
            continue
        stats.kept += 1
        out.append(pair)
    return out


def _file_records(path: Path) -> Iterator[tuple[str, Any]]:
    if not path.is_file():
        raise TaskError(f"preference file not found: {path}")
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield f"{path}:{line_no}", json.loads(line)
                    except json.JSONDecodeError as e:
                        yield f"{path}:{line_no}", ValueError(f"invalid JSON ({e.msg})")
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise TaskError(f"{path}: expected a JSON list of pair records")
        for i, record in enumerate(data):
            yield f"{path}[{i}]", record


# ---------------------------------------------------------------------------------------------- built-ins
def _llamafactory_records() -> Iterator[tuple[str, Any]]:
    member = "llamafactory-0.9.5/data/dpo_en_demo.json"
    files = read_members(fetch(LLAMAFACTORY), lambda name: name == member)
    if member not in files:
        raise TaskError(f"{member} not found in the llamafactory sdist")
    for i, record in enumerate(json.loads(files[member])):
        yield f"dpo_en_demo[{i}]", record


def corrupt_solution(solution: str, answer: str, rng: random.Random) -> str:
    """The worked ``solution`` with its final answer replaced by a wrong one, in the ``#### N`` line and
    in the sentence before it (so the reply stays self-consistent and only the result is wrong)."""
    try:
        value = Decimal(answer.strip())  # integers, and decimals such as GSM8K-style 9281.25
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise ValueError(f"can only corrupt integer or decimal answers, got {answer!r}")
    wrong = str(value + rng.choice([d for d in range(-10, 11) if d != 0]))  # keeps the decimal places
    lines = solution.rstrip().split("\n")
    if not lines[-1].lstrip().startswith("####"):
        raise ValueError("solution does not end with a '#### N' line")
    lines[-1] = f"#### {wrong}"
    whole = re.compile(rf"(?<!\d)(?<!\d\.){re.escape(answer)}(?!\.?\d)")  # 42 but not 142, 42.5
    for i in range(len(lines) - 2, -1, -1):
        if lines[i].strip():
            lines[i] = whole.sub(wrong, lines[i])
            break
    return "\n".join(lines)


def derived_pairs(problems: list[Problem], *, seed: int = 0) -> list[PreferencePair]:
    """Right-vs-wrong pairs from problems with worked solutions (see :func:`corrupt_solution`)."""
    rng = random.Random(seed)
    out = []
    for p in problems:
        if p.solution is None:
            continue
        out.append(PreferencePair(p.messages, p.solution, corrupt_solution(p.solution, p.answer, rng)))
    return out


def _task_pairs(task_name: str, n: int, seed: int) -> list[PreferencePair]:
    task = get_task(task_name, seed=seed, heldout_fraction=0.0)  # pairs are split later, by prompt
    return derived_pairs(task.split("train", n), seed=seed)


def load_pairs(
    spec: str,
    *,
    num_derived: int = 2000,
    seed: int = 0,
    strict: bool = False,
    log: Callable[[str], Any] = print,
) -> list[PreferencePair]:
    """Pairs from a comma-separated list of files and built-in names (see the module docstring)."""
    pairs: list[PreferencePair] = []
    for part in (s.strip() for s in spec.split(",") if s.strip()):
        stats = PairStats()
        if part == "dpo_en_demo":
            got = pairs_from_records(_llamafactory_records(), stats=stats, strict=strict)
        elif part.endswith("_pairs") and not Path(part).suffix:
            got = _task_pairs(part[: -len("_pairs")], num_derived, seed)
            stats.read = stats.kept = len(got)
        elif Path(part).suffix in (".jsonl", ".json"):
            got = pairs_from_records(_file_records(Path(part)), stats=stats, strict=strict)
        else:
            raise TaskError(
                f"unknown preference data {part!r}: expected a .jsonl/.json file or one of {BUILTIN_PAIRS}"
            )
        log(stats.summary(part))
        pairs.extend(got)
    if not pairs:
        raise TaskError(f"no usable preference pairs in {spec!r}")
    return pairs


def split_pairs(
    pairs: list[PreferencePair], heldout_fraction: float
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(train, heldout)`` by prompt hash."""
    heldout = [p for p in pairs if in_heldout(p.key, heldout_fraction)]
    train = [p for p in pairs if not in_heldout(p.key, heldout_fraction)]
    return train, heldout
