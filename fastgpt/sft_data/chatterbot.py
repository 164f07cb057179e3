"""General chat from ``chatterbot-corpus`` (BSD-3): 2,026 short English conversations in 21 topics.

The corpus ships only inside its PyPI wheel, so the wheel is fetched once with
``pip download --no-deps chatterbot-corpus==1.3.3`` (pinned version and sha256, never installed: its
package metadata pulls old dependencies) into the fastgpt cache dir and read with PyYAML. Turns in a
conversation alternate user / assistant; a trailing user turn with no reply is dropped, and the few
conversations that name the bot (``"chatterbot"``, ``"my name"``) are left out so they do not contradict
the identity set.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from fastgpt.conversation import Message

__all__ = ["WHEEL_SHA256", "chatterbot_conversations", "fetch_wheel"]

PACKAGE = "chatterbot-corpus==1.3.3"
WHEEL_NAME = "chatterbot_corpus-1.3.3-py2.py3-none-any.whl"
WHEEL_SHA256 = "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"
_IDENTITY_CLASH = re.compile(r"chatterbot|my name", re.IGNORECASE)


def cache_dir() -> Path:
    """``$FASTGPT_CACHE`` or ``~/.cache/fastgpt``."""
    return Path(os.environ.get("FASTGPT_CACHE") or Path.home() / ".cache" / "fastgpt")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_wheel() -> Path:
    """The cached corpus wheel, downloaded (and checked against its pinned sha256) on first use."""
    target = cache_dir() / "sft" / WHEEL_NAME
    if target.is_file() and _sha256(target) == WHEEL_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-q",
            "-d",
            tmp,
            PACKAGE,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / WHEEL_NAME
        if result.returncode != 0 or not downloaded.is_file():
            raise RuntimeError(
                f"could not download {PACKAGE} from the package index (needed for the built-in chat set):\n"
                f"{result.stderr.strip()[-800:]}"
            )
        digest = _sha256(downloaded)
        if digest != WHEEL_SHA256:
            raise RuntimeError(f"{PACKAGE}: sha256 {digest} does not match the pinned {WHEEL_SHA256}")
        os.replace(downloaded, target)
    return target


def _as_text(turn: object) -> str | None:
    if isinstance(turn, str):
        return turn.strip() or None
    if isinstance(turn, int | float) and not isinstance(turn, bool):
        return str(turn)
    return None


def chatterbot_conversations(wheel: Path | None = None, language: str = "english") -> list[list[Message]]:
    """All usable conversations of one language of the corpus, in file order."""
    import yaml

    wheel = wheel or fetch_wheel()
    prefix = f"chatterbot_corpus/data/{language}/"
    out: list[list[Message]] = []
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".yml"))
        if not names:
            raise ValueError(f"{wheel}: no {language!r} conversations in the corpus")
        for name in names:
            data = yaml.safe_load(z.read(name)) or {}
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
