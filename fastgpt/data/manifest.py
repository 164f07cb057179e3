"""``manifest.json``: what a prepared data dir holds and how it was made.

A prepared dir looks like::

    manifest.json          this file (written last, atomically: its presence means "complete")
    tokenizer/             the tokenizer that produced the ids (fastgpt / HF tokenizer dir)
    train_00000.bin ...    token shards (see fastgpt/data/shards.py), documents separated by BOS
    val_00000.bin ...
    chunks/00000.json ...  per-chunk records that let an interrupted ``prepare`` resume

Manifest fields: ``format``/``version``; ``dtype`` (``uint16``/``uint32``); ``tokenizer``
(``hash``, ``vocab_size``, ``bos_id``, ``name``, ``dir``); ``sources`` (as given, with their kind);
``settings`` (val fraction, chunk size, text field, ...); ``splits`` (per split: ``tokens``,
``documents``, ``shards`` = ``[{"file", "tokens"}]``); ``stats`` (bytes read, documents, empty
documents skipped, invalid UTF-8 bytes replaced).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastgpt.data.errors import DataError, TokenizerMismatchError

__all__ = ["FORMAT", "MANIFEST", "VERSION", "check_tokenizer", "read_manifest", "write_json_atomic"]

FORMAT = "fastgpt-shards"
VERSION = 1
MANIFEST = "manifest.json"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared data dir, checked for the fields the loader relies on."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        hint = " (run `fastgpt prepare` first)" if Path(data_dir).is_dir() else ""
        raise DataError(f"{path}: no manifest; {data_dir} is not a prepared data dir{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a fastgpt shard manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise DataError(f"{path}: manifest version {manifest.get('version')}, this fastgpt reads {VERSION}")
    for key in ("dtype", "tokenizer", "splits"):
        if key not in manifest:
            raise DataError(f"{path}: manifest lacks {key!r}")
    manifest["_dir"] = str(Path(data_dir))
    return manifest


def check_tokenizer(manifest: dict[str, Any] | str | os.PathLike, tokenizer: Any) -> None:
    """Raise :class:`TokenizerMismatchError` unless ``tokenizer`` is the one that produced the data.

    ``manifest`` is a manifest dict or a prepared data dir; ``tokenizer`` a :class:`fastgpt.Tokenizer`.
    Equal hashes mean identical vocabularies, merges, pre-tokenization and special tokens.
    """
    if not isinstance(manifest, dict):
        manifest = read_manifest(manifest)
    recorded = manifest["tokenizer"]
    where = manifest.get("_dir", "the data")
    if tokenizer.hash != recorded["hash"]:
        raise TokenizerMismatchError(
            f"{where}: the tokens were made by tokenizer {recorded.get('name')!r} (hash "
            f"{recorded['hash'][:12]}, vocab {recorded['vocab_size']}), not by {tokenizer.name!r} (hash "
            f"{tokenizer.hash[:12]}, vocab {tokenizer.vocab_size}); use the data dir's own tokenizer "
            f"({Path(where) / recorded.get('dir', 'tokenizer')}) or re-run prepare with this one"
        )
