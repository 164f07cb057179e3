"""SFT data: built-in conversation sets, user files, and the mixture that combines them.

Built-in sets (see each module's docstring for why it exists):

=================  ===========================================================================
``chatterbot``     general small talk, 2,026 conversations from chatterbot-corpus (fetched, cached)
``identity``       "who are you / who made you", answered with the configured name and maker
``unknown``        questions about made-up entities, answered "I don't know" instead of inventing
``arithmetic``     arithmetic and word problems worked step by step with calculator tool calls
``task_practice``  training problems of an RL task (default ``chain_sum_easy``), answered through the
                   calculator or directly: the cold start GRPO needs (held-out problems never included)
``jagged_python``  counting, spelling, indexing, decimal comparison and multiplication (the jagged
                   tasks' training problems) answered through a one-line Python tool call
=================  ===========================================================================

A mixture is written on the command line as comma-separated items, each a built-in name or a
``.jsonl``/``.json`` conversation file, optionally followed by ``*EPOCHS`` (a float: ``*2`` repeats
the set twice, ``*0.5`` samples half of it)::

    --data=chatterbot,identity*2,arithmetic,my_chats.jsonl*0.5

or as a YAML/JSON mixture file (``--data=mix.yaml``)::

    datasets:
      - {name: chatterbot}
      - {name: identity, epochs: 2, options: {n: 500}}
      - {path: my_chats.jsonl, epochs: 0.5}

Held-out validation conversations are taken from each set *before* repetition, so a repeated
conversation never appears on both sides.
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fastgpt.conversation import Message, ReadStats, iter_conversations, read_conversations
from fastgpt.errors import UserError
from fastgpt.sft_data.arithmetic import arithmetic_conversations
from fastgpt.sft_data.chatterbot import chatterbot_conversations
from fastgpt.sft_data.identity import identity_conversations
from fastgpt.sft_data.jagged_python import jagged_python_conversations
from fastgpt.sft_data.task_practice import task_practice_conversations
from fastgpt.sft_data.unknown import unknown_entity_conversations

__all__ = ["BUILTIN", "DEFAULT_MIXTURE", "MixtureItem", "dump_jsonl", "load_mixture", "parse_mixture"]

BUILTIN: dict[str, Callable[..., list[list[Message]]]] = {
    "chatterbot": chatterbot_conversations,
    "identity": identity_conversations,
    "unknown": unknown_entity_conversations,
    "arithmetic": arithmetic_conversations,
    "task_practice": task_practice_conversations,
    "jagged_python": jagged_python_conversations,
}
DEFAULT_MIXTURE = "chatterbot,identity,unknown,arithmetic,jagged_python*0.5"


@dataclass
class MixtureItem:
    """One source of a mixture: a built-in set name or a file path, how many epochs of it, and
    keyword options for a built-in generator (``n``, ``seed``, ``name``, ``maker``, ...)."""

    source: str
    epochs: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise UserError(f"mixture item {self.source!r}: epochs must be > 0, got {self.epochs}")


def _is_mixture_file(path: Path) -> bool:
    if path.suffix in (".yaml", ".yml"):
        return True
    if path.suffix == ".json" and path.is_file():
        head = path.read_text(encoding="utf-8")[:4096].lstrip()
        return head.startswith("{") and '"datasets"' in head
    return False


def parse_mixture(spec: str) -> list[MixtureItem]:
    """A mixture from its command-line form or from a mixture file (see the module docstring)."""
    spec = spec.strip()
    if not spec:
        raise UserError("empty --data: give built-in set names and/or conversation files")
    path = Path(spec)
    if "," not in spec and _is_mixture_file(path):
        if not path.is_file():
            raise FileNotFoundError(f"mixture file not found: {path}")
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        entries = config.get("datasets") if isinstance(config, dict) else None
        if not isinstance(entries, list) or not entries:
            raise UserError(f"{path}: a mixture file needs a non-empty 'datasets' list")
        items = []
        for k, e in enumerate(entries):
            if not isinstance(e, dict) or ("name" in e) == ("path" in e):
                raise UserError(f"{path}: datasets[{k}] needs exactly one of 'name' or 'path'")
            source = e.get("name") or str(
                (path.parent / e["path"]) if not Path(e["path"]).is_absolute() else e["path"]
            )
            items.append(MixtureItem(source, float(e.get("epochs", 1.0)), dict(e.get("options") or {})))
        return items
    items = []
    for part in spec.split(","):
        source, _, epochs = part.strip().partition("*")
        try:
            n_epochs = float(epochs) if epochs else 1.0
        except ValueError:
            raise UserError(f"--data item {part!r}: expected NAME_OR_PATH or NAME_OR_PATH*EPOCHS") from None
        items.append(MixtureItem(source.strip(), n_epochs))
    return items


def _load_item(item: MixtureItem, *, defaults: dict[str, Any], strict: bool, log: Callable[[str], None]):
    if item.source in BUILTIN:
        fn = BUILTIN[item.source]
        params = inspect.signature(fn).parameters
        unknown = set(item.options) - set(params)
        if unknown:
            raise UserError(f"built-in set {item.source!r} has no option(s) {sorted(unknown)}")
        kwargs = {k: v for k, v in defaults.items() if k in params} | item.options
        stats = ReadStats()
        pairs = ((item.source, c) for c in fn(**kwargs))
        conversations = list(iter_conversations(pairs, strict=True, stats=stats))
    else:
        path = Path(item.source)
        if not path.exists():
            raise UserError(
                f"--data item {item.source!r} is neither a built-in set ({', '.join(BUILTIN)}) nor an existing file"
            )
        stats = ReadStats()
        conversations = read_conversations(path, strict=strict, stats=stats)
    log(stats.summary(item.source))
    if not conversations:
        raise UserError(f"{item.source}: no usable conversations")
    return conversations


def load_mixture(
    spec: str | list[MixtureItem],
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    name: str = "fastgpt",
    maker: str = "the fastgpt developers",
    strict: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[list[list[Message]], list[list[Message]]]:
    """``(train, val)`` conversations of a mixture, shuffled with ``seed``.

    Each set is split first (``val_fraction`` of it, at least one conversation when the set has two or
    more), then its training part is repeated/sampled by its epochs.
    """
    items = parse_mixture(spec) if isinstance(spec, str) else spec
    rng = random.Random(seed)
    defaults = {"seed": seed, "name": name, "maker": maker}
    train: list[list[Message]] = []
    val: list[list[Message]] = []
    for item in items:
        conversations = _load_item(item, defaults=defaults, strict=strict, log=log)
        order = list(range(len(conversations)))
        rng.shuffle(order)
        n_val = 0 if len(order) < 2 or val_fraction <= 0 else max(1, round(len(order) * val_fraction))
        val += [conversations[i] for i in order[:n_val]]
        kept = [conversations[i] for i in order[n_val:]]
        whole, frac = divmod(item.epochs, 1.0)
        train += kept * int(whole) + rng.sample(kept, round(len(kept) * frac))
    rng.shuffle(train)
    return train, val


def dump_jsonl(conversations: list[list[Message]], path: str | Path) -> None:
    """Write conversations as ``{"messages": [...]}`` lines (the format :func:`read_conversations` reads)."""
    with open(path, "w", encoding="utf-8") as f:
        for messages in conversations:
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
