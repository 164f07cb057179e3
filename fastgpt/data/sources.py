"""Text sources -> a stream of documents (``str``), in a deterministic order.

A source is one of:

- a built-in corpus name (``shakespeare``, ``wiki-demo``, ``c4-demo``; see ``corpora.py``);
- a file: ``.txt`` (one document per file, or per blank-line-separated block with
  ``txt_mode="blocks"``), ``.jsonl`` (one record per line, text in ``text_field``), ``.parquet``
  (text in column ``text_field``); ``.txt.gz`` and ``.jsonl.gz`` are read transparently;
- a directory (every supported file below it, sorted) or a glob such as ``data/**/*.jsonl``;
- ``hf:NAME[:CONFIG][@SPLIT]``: a Hugging Face dataset, streamed (needs ``pip install datasets`` and
  network access to the Hub).

Bad input fails with a :class:`DataError` naming the file (and line) and what was expected: missing
files, globs matching nothing, sources with no text at all, JSON lines that are not objects or lack the
text field. Bytes that are not valid UTF-8 are decoded with U+FFFD replacements, counted in
:class:`ReadStats` and reported with a warning, never dropped silently. Empty records inside an
otherwise good file are skipped and counted. A file found through a directory or a glob that holds no
text (an empty ``.txt``) is skipped, listed in ``ReadStats.empty_files`` and reported with a warning;
only a file named on its own, or a directory / glob none of whose files holds text, is an error.
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastgpt.data.corpora import BUILTIN_CORPORA, corpus_documents
from fastgpt.data.errors import DataError
from fastgpt.errors import UserError, json_object

__all__ = ["ReadOptions", "ReadStats", "Source", "expand_sources", "iter_documents"]

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# how to pick the field, in every command's spelling (fastgpt prepare / train-tokenizer use hyphens)
_SET_FIELD = "pick one with --text_field"


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"  # JSON key / parquet column / HF dataset column holding the text
    txt_mode: str = "file"  # .txt files: "file" = one document per file, "blocks" = per blank-line block

    def __post_init__(self) -> None:
        if self.txt_mode not in ("file", "blocks"):
            raise UserError(f"txt_mode must be 'file' or 'blocks', got {self.txt_mode!r}")


@dataclass
class ReadStats:
    files: int = 0
    documents: int = 0
    empty_documents: int = 0  # whitespace-only records skipped
    empty_files: list[str] = field(default_factory=list)  # files of a dir/glob without text, skipped
    invalid_utf8: int = 0  # invalid UTF-8 sequences replaced by U+FFFD
    files_with_invalid_utf8: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Source:
    kind: str  # "builtin" | "txt" | "jsonl" | "parquet" | "hf"
    spec: str  # corpus name, file path or HF dataset spec
    origin: str = ""  # the directory or glob this file was found through ("" = named on its own)

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind, "spec": self.spec}


def _kind_of(path: Path) -> str | None:
    name = path.name.lower()
    for kind, suffixes in (("txt", TEXT_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def expand_sources(
    sources: str | os.PathLike | Source | Sequence[str | os.PathLike | Source],
) -> list[Source]:
    """Resolve names, paths, dirs and globs into an ordered list of concrete sources."""
    if isinstance(sources, (str, os.PathLike, Source)):
        sources = [sources]
    out: list[Source] = []
    for raw in sources:
        if isinstance(raw, Source):
            out.append(raw)
            continue
        spec = str(raw)
        path = Path(spec).expanduser()
        if spec.startswith("hf:"):
            out.append(Source("hf", spec[3:]))
        elif path.is_file():
            kind = _kind_of(path)
            if kind is None:
                raise DataError(f"{path}: unsupported file type (expected {', '.join(SUPPORTED)})")
            out.append(Source(kind, str(path)))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _kind_of(p))
            if not files:
                raise DataError(f"{path}: no {', '.join(SUPPORTED)} files in this directory")
            out += [Source(_kind_of(p), str(p), spec) for p in files]
        elif glob.has_magic(spec):
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
            files = [p for p in files if p.is_file() and _kind_of(p)]
            if not files:
                raise DataError(f"{spec}: the pattern matches no {', '.join(SUPPORTED)} files")
            out += [Source(_kind_of(p), str(p), spec) for p in files]
        elif spec in BUILTIN_CORPORA:
            out.append(Source("builtin", spec))
        else:
            raise DataError(
                f"{spec}: no such file or directory, and not a built-in corpus "
                f"({', '.join(BUILTIN_CORPORA)}) or an hf:NAME dataset"
            )
    if not out:
        raise DataError("no sources given")
    return out


# --------------------------------------------------------------------------------------------- reading
def _open_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.name.lower().endswith(".gz") else data
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def _decode(data: bytes, where: str, stats: ReadStats) -> str:
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.count("\ufffd".encode())
    if bad:
        stats.invalid_utf8 += bad
        if where not in stats.files_with_invalid_utf8:
            stats.files_with_invalid_utf8.append(where)
            warnings.warn(
                f"{where}: {bad} invalid UTF-8 sequence(s) replaced by U+FFFD (if the file is in another "
                "encoding, convert it first, e.g. iconv -f latin1 -t utf-8)",
                UnicodeWarning,
                stacklevel=4,
            )
    return text


def _read_txt(path: Path, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    text = _decode(_open_bytes(path), str(path), stats)
    pieces = [text] if options.txt_mode == "file" else _BLANK_LINES.split(text)
    for piece in pieces:
        if piece.strip():
            yield piece.strip("\n") if options.txt_mode == "blocks" else piece


def _non_empty(texts: Iterable[str | None], stats: ReadStats) -> Iterator[str]:
    """The texts that hold more than white space; each other one is counted as an empty document."""
    for text in texts:
        if text and text.strip():
            yield text
        else:
            stats.empty_documents += 1


def _read_jsonl(path: Path, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    return _non_empty(_jsonl_texts(path, options, stats), stats)


def _jsonl_texts(path: Path, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    key = options.text_field
    for lineno, line in enumerate(_open_bytes(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        record = json_object(
            _decode(line, str(path), stats), where, DataError, f"a JSON object with a {key!r} field"
        )
        if key not in record:
            raise DataError(
                f"{where}: no {key!r} field (fields: {', '.join(list(record)[:8])}); {_SET_FIELD}"
            )
        text = record[key]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {key!r} is {type(text).__name__}, expected a string")
        yield text


def _read_parquet(path: Path, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq  # optional: pyarrow (pip install 'fastgpt[data]'), parquet sources only
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pfile = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    key = options.text_field
    names = pfile.schema_arrow.names
    if key not in names:
        raise DataError(f"{path}: no column {key!r} (columns: {', '.join(names[:8])}); {_SET_FIELD}")
    column_type = str(pfile.schema_arrow.field(key).type)
    if column_type not in ("string", "large_string", "string_view"):
        raise DataError(f"{path}: column {key!r} has type {column_type}, expected strings")
    batches = pfile.iter_batches(columns=[key], batch_size=4096)
    yield from _non_empty((text for batch in batches for text in batch.column(0).to_pylist()), stats)


def _read_hf(spec: str, options: ReadOptions, stats: ReadStats) -> Iterator[str]:
    try:
        import datasets  # optional: datasets (pip install 'fastgpt[data]'), HF dataset sources only
    except ImportError:
        raise DataError(
            f"hf:{spec}: Hugging Face sources need the datasets package (pip install datasets)"
        ) from None
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        rows = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
        yield from _non_empty((_hf_text(row, spec, options.text_field) for row in rows), stats)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"hf:{spec}: cannot stream this dataset ({type(e).__name__}: {e})") from None


def _hf_text(row: dict[str, Any], spec: str, field: str) -> str:
    text = row.get(field)
    if not isinstance(text, str):
        raise DataError(f"hf:{spec}: rows have no string column {field!r}; {_SET_FIELD}")
    return text


def iter_documents(
    sources: Sequence[Source], options: ReadOptions | None = None, stats: ReadStats | None = None
) -> Iterator[str]:
    """Every document of every source, in order. A source that yields no text is an error, except a
    file found through a directory or glob: it is skipped with a warning (``stats.empty_files``) unless
    none of that directory's / glob's files holds text."""
    options = options or ReadOptions()
    stats = stats if stats is not None else ReadStats()
    readers = {"txt": _read_txt, "jsonl": _read_jsonl, "parquet": _read_parquet}
    origin_docs: dict[str, int] = {}  # documents per directory / glob
    origin_files: dict[str, int] = {}
    for source in sources:
        if source.origin:
            origin_docs.setdefault(source.origin, 0)
            origin_files[source.origin] = origin_files.get(source.origin, 0) + 1
        before = stats.documents
        if source.kind == "builtin":
            docs = iter(corpus_documents(source.spec))
        elif source.kind == "hf":
            docs = _read_hf(source.spec, options, stats)
        else:
            docs = readers[source.kind](Path(source.spec), options, stats)
            stats.files += 1
        for doc in docs:
            stats.documents += 1
            yield doc
        if source.origin:
            origin_docs[source.origin] += stats.documents - before
        if stats.documents > before:
            continue
        if not source.origin:
            raise DataError(f"{source.spec}: contains no text (empty or whitespace only)")
        stats.empty_files.append(source.spec)
        warnings.warn(f"{source.spec}: contains no text (empty or whitespace only); skipped", stacklevel=2)
    for origin, n in origin_docs.items():
        if n == 0:
            raise DataError(
                f"{origin}: none of its {origin_files[origin]} file(s) contains text (empty or whitespace only)"
            )
