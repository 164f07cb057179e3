"""``resolve_pretrain_data``: whatever the user named -> a prepared data dir and its tokenizer dir.

``launch/pretrain.sh`` with no arguments ends up here with ``data="shakespeare"``: the corpus is
downloaded (once), a BPE tokenizer is trained on it, and the tokens are written to shards, all in the
fastgpt cache. Later calls with the same inputs find the finished dir and return at once.

Cache layout (``$FASTGPT_CACHE``, else ``$XDG_CACHE_HOME/fastgpt``, else ``~/.cache/fastgpt``)::

    downloads/                       pinned registry archives (corpora, vocabularies)
    data/<label>-<tok>-<key>/        prepared dirs; <key> hashes the source content, the tokenizer
                                     (or "train a BPE of vocab_size") and the split/reading settings
    locks/                           one lock file per key: concurrent ranks wait, then reuse

The returned tokenizer dir is always ``<data_dir>/tokenizer``: a prepared dir carries the exact
tokenizer that produced its ids, so a training run can copy it into its model dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fastgpt.data.corpora import BUILTIN_CORPORA
from fastgpt.data.errors import DataError
from fastgpt.data.fetch import cache_dir as default_cache_dir
from fastgpt.data.manifest import MANIFEST, check_tokenizer, read_manifest
from fastgpt.data.prepare import TOKENIZER_DIR, prepare
from fastgpt.data.sources import ReadOptions, Source, expand_sources, iter_documents

__all__ = ["resolve_pretrain_data", "source_fingerprint"]

DEFAULT_VAL_FRACTION = 0.01
TOKENIZER_TRAIN_CHARS = 2_000_000_000  # train the BPE on at most this much text (first documents)


def _file_digest(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def source_fingerprint(sources: list[Source], options: ReadOptions) -> str:
    """A hash of the text the sources hold: file contents, built-in archive checksums, HF specs
    (a streamed dataset is identified by its name only), plus the reading options."""
    h = hashlib.sha256(f"{options.text_field}|{options.txt_mode}".encode())
    for s in sources:
        if s.kind == "builtin":
            part = BUILTIN_CORPORA[s.spec].fingerprint
        elif s.kind == "hf":
            part = s.spec
        else:
            part = _file_digest(s.spec)
        h.update(f"|{s.kind}:{part}".encode())
    return h.hexdigest()


def _label(sources: list[Source]) -> str:
    first = sources[0]
    name = first.spec if first.kind in ("builtin", "hf") else Path(first.spec).name.split(".")[0]
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]
    return safe + (f"+{len(sources) - 1}" if len(sources) > 1 else "")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (all ranks of a job resolve at once; one does the work)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no flock here (Windows, some network filesystems)
            pass
        yield


def _limited(texts: Iterator[str], max_chars: int) -> Iterator[str]:
    seen = 0
    for text in texts:
        yield text
        seen += len(text)
        if seen >= max_chars:
            return


def resolve_pretrain_data(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: Any = None,
    vocab_size: int = 4096,
    *,
    val_fraction: float | None = None,
    workers: int | None = None,
    text_field: str = "text",
    txt_mode: str = "file",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[Path, Path]:
    """``(data_dir, tokenizer_dir)`` ready for :class:`fastgpt.data.ShardLoader`.

    ``data``: a built-in corpus name (``shakespeare``, ``wiki-demo``, ``c4-demo``), a prepared dir (one
    with ``manifest.json``), or raw sources (files, dirs, globs, ``hf:NAME``; see ``sources.py``).
    ``tokenizer``: ``None`` trains a byte-level BPE of ``vocab_size`` tokens on the data; otherwise a
    :class:`fastgpt.Tokenizer` or anything ``Tokenizer.load`` accepts. For a prepared dir it is only
    checked against the manifest (a mismatch raises :class:`TokenizerMismatchError`).
    ``val_fraction`` defaults to the built-in corpus's setting, else 0.01.
    Results are cached by content; calling again with the same inputs returns the same dirs at once.
    """
    from fastgpt.tokenizer import Tokenizer  # heavy: loads tokenizers, numpy; deferred until used

    single = data if isinstance(data, (str, os.PathLike)) else None
    if single is not None and (Path(single) / MANIFEST).exists():
        manifest = read_manifest(single)
        if tokenizer is not None:
            tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
            check_tokenizer(manifest, tok)
        return Path(single), Path(single) / manifest["tokenizer"].get("dir", TOKENIZER_DIR)

    options = ReadOptions(text_field=text_field, txt_mode=txt_mode)
    sources = expand_sources(data)
    if val_fraction is None:
        builtin = [BUILTIN_CORPORA[s.spec].val_fraction for s in sources if s.kind == "builtin"]
        val_fraction = builtin[0] if len(builtin) == len(sources) else DEFAULT_VAL_FRACTION
    tok = None
    if tokenizer is None:
        tok_label, tok_key = f"bpe{vocab_size}", f"train-bpe:{vocab_size}"
    else:
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
        tok_label, tok_key = tok.name or "tok", tok.hash
    key = hashlib.sha256(
        f"{source_fingerprint(sources, options)}|{tok_key}|{val_fraction!r}".encode()
    ).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_dir = root / "data" / f"{_label(sources)}-{tok_label}-{key}"

    with _locked(root / "locks" / f"{key}.lock"):
        if (data_dir / MANIFEST).exists():
            manifest = read_manifest(data_dir)
            if tok is not None:
                check_tokenizer(manifest, tok)
            return data_dir, data_dir / TOKENIZER_DIR
        if tok is None:
            saved = data_dir / TOKENIZER_DIR
            if (saved / "tokenizer.json").exists():  # trained by an interrupted earlier call
                tok = Tokenizer.load(saved)
            else:
                texts = _limited(iter_documents(sources, options), TOKENIZER_TRAIN_CHARS)
                tok = Tokenizer.train(texts, vocab_size=vocab_size)
                tok.save(saved)
        result = prepare(
            sources,
            tok,
            data_dir,
            val_fraction=val_fraction,
            workers=workers,
            text_field=text_field,
            txt_mode=txt_mode,
            progress=progress,
        )
        if not result.manifest["splits"]["train"]["tokens"]:
            raise DataError(f"{data_dir}: preparing {data!r} produced no training tokens")
    return data_dir, data_dir / TOKENIZER_DIR
