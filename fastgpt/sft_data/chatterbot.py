"""General chat from ``chatterbot-corpus`` (BSD-3): 2,026 short English conversations in 21 topics.

The corpus ships only inside its PyPI wheel, so the wheel is fetched once from the package index
(pinned version and sha256, never installed: its metadata pulls old dependencies) into the fastgpt
cache dir by :mod:`fastgpt.data.fetch`, and its YAML files are read with PyYAML. Turns in a
conversation alternate user / assistant; a trailing user turn with no reply is dropped, and the few
conversations that name the bot (``"chatterbot"``, ``"my name"``) are left out so they do not contradict
the identity set.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fastgpt.conversation import Message
from fastgpt.data.fetch import PackageFile, fetch, read_members
from fastgpt.errors import UserError

__all__ = ["CORPUS_WHEEL", "chatterbot_conversations"]

CORPUS_WHEEL = PackageFile(
    name="chatterbot-corpus",
    version="1.3.3",
    filename="chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
    sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
)
_IDENTITY_CLASH = re.compile(r"chatterbot|my name", re.IGNORECASE)


def _as_text(turn: object) -> str | None:
    if isinstance(turn, str):
        return turn.strip() or None
    if isinstance(turn, int | float) and not isinstance(turn, bool):
        return str(turn)
    return None


def chatterbot_conversations(wheel: Path | None = None, language: str = "english") -> list[list[Message]]:
    """All usable conversations of one language of the corpus, in file order."""
    wheel = wheel or fetch(CORPUS_WHEEL)
    prefix = f"chatterbot_corpus/data/{language}/"
    files = read_members(wheel, lambda name: name.startswith(prefix) and name.endswith(".yml"))
    if not files:
        raise UserError(f"{wheel}: no {language!r} conversations in the corpus")
    out: list[list[Message]] = []
    for name in sorted(files):
        data = yaml.safe_load(files[name]) or {}
        for turns in data.get("conversations") or []:
            texts = [_as_text(t) for t in turns] if isinstance(turns, list) else []
            if not texts or any(t is None for t in texts):
                continue
            texts = texts[: len(texts) // 2 * 2]  # drop a trailing question with no reply
            if not texts or any(_IDENTITY_CLASH.search(t) for t in texts):
                continue
            roles = ["user", "assistant"] * (len(texts) // 2)
            out.append([{"role": r, "content": t} for r, t in zip(roles, texts)])
    return out
