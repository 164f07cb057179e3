"""``fastgpt prepare``: tokenize text sources into binary token shards plus a manifest.

How it works:

1. Documents are read from the sources in order (``sources.py``) and grouped into *chunks* of about
   ``chunk_mb`` MB of UTF-8 text. A chunk is the unit of parallel work and of resumption.
2. Worker processes encode each chunk's documents (BOS before every document), and write the chunk's
   tokens as ``train_NNNNN.bin`` and ``val_NNNNN.bin``: the last ``val_fraction`` of the chunk's tokens
   form the validation part. Splitting every chunk this way spreads validation text over the whole
   corpus, needs no count of documents in advance (streams work) and works even for a single
   document; a validation slice may begin mid-document.
3. After its shards, each chunk writes ``chunks/NNNNN.json`` with a key = hash(chunk text, tokenizer,
   settings). A re-run skips every chunk whose record and shards are intact and whose key matches, so
   an interrupted ``prepare`` resumes and an unchanged one costs only reading the text.
4. ``manifest.json`` is written last (atomically): a dir with a manifest is complete.

Shard contents do not depend on the number of workers (tested).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from fastgpt import cli
from fastgpt.cli import HelpFormatter
from fastgpt.data.errors import DataError
from fastgpt.data.manifest import FORMAT, MANIFEST, VERSION, read_manifest, write_json_atomic
from fastgpt.data.shards import ShardError, dtype_for_vocab, read_header, write_shard
from fastgpt.data.sources import ReadOptions, ReadStats, Source, expand_sources, iter_documents
from fastgpt.errors import report_user_error

__all__ = ["PrepareResult", "main", "prepare"]

TOKENIZER_DIR = "tokenizer"
CHUNK_DIR = "chunks"


@dataclass
class PrepareResult:
    manifest: dict[str, Any]
    chunks: int
    reused_chunks: int
    seconds: float

    @property
    def data_dir(self) -> Path:
        return Path(self.manifest["_dir"])


@dataclass(frozen=True)
class _Job:
    index: int
    key: str
    documents: list[str]
    n_bytes: int


# ------------------------------------------------------------------------------------------- workers
_worker_tokenizer = None


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tokenizer
    if _worker_tokenizer is None:  # spawned (not forked): load it
        from fastgpt.tokenizer import Tokenizer  # heavy: loads tokenizers, numpy; deferred until used

        _worker_tokenizer = Tokenizer.load(tokenizer_dir)


def _shard_names(index: int) -> tuple[str, str, str]:
    return f"train_{index:05d}.bin", f"val_{index:05d}.bin", f"{CHUNK_DIR}/{index:05d}.json"


def _tokenize_chunk(
    job: _Job, out_dir: str, val_fraction: float, dtype: str, tokenizer=None
) -> dict[str, Any]:
    """Encode one chunk, write its shards and its record; returns the record."""
    tok = tokenizer or _worker_tokenizer
    ids = tok.encode_batch(job.documents, add_bos=True)
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=sum(map(len, ids)))
    n_val = int(round(len(flat) * val_fraction))
    parts = {"train": flat[: len(flat) - n_val], "val": flat[len(flat) - n_val :]}
    out = Path(out_dir)
    record: dict[str, Any] = {"key": job.key, "bytes": job.n_bytes}
    for split, name in zip(("train", "val"), _shard_names(job.index)):
        tokens = parts[split]
        path = out / name
        if tokens.size:
            write_shard(path, tokens, dtype)
        elif path.exists():
            path.unlink()
        record[split] = {"tokens": int(tokens.size), "documents": int((tokens == tok.bos_id).sum())}
    write_json_atomic(out / _shard_names(job.index)[2], record)
    return record


def _reusable(out: Path, job: _Job) -> dict[str, Any] | None:
    """The chunk's record if its shards from an earlier run are complete and made from the same input."""
    train, val, record_name = _shard_names(job.index)
    try:
        record = json.loads((out / record_name).read_text())
        if record.get("key") != job.key:
            return None
        for split, name in (("train", train), ("val", val)):
            expected = record[split]["tokens"]
            if expected and read_header(out / name)[1] != expected:
                return None
        return record
    except (OSError, ValueError, KeyError, ShardError):
        return None


# ------------------------------------------------------------------------------------------- driver
def _chunks(documents: Iterator[str], chunk_bytes: int, run_key: str) -> Iterator[_Job]:
    docs: list[str] = []
    h, size, index = hashlib.blake2b(run_key.encode(), digest_size=16), 0, 0
    for doc in documents:
        data = doc.encode("utf-8", errors="surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
        docs.append(doc)
        size += len(data)
        if size >= chunk_bytes:
            yield _Job(index, h.hexdigest(), docs, size)
            docs, h, size, index = [], hashlib.blake2b(run_key.encode(), digest_size=16), 0, index + 1
    if docs:
        yield _Job(index, h.hexdigest(), docs, size)


def _total_bytes(sources: list[Source]) -> int | None:
    if all(s.kind == "txt" and not s.spec.endswith(".gz") for s in sources):
        return sum(os.path.getsize(s.spec) for s in sources)
    return None


@contextlib.contextmanager
def _tokenizer_threads_off() -> Iterator[None]:
    """Worker processes encode single-threaded (the pool is the parallelism); forked children also
    must not touch the parent's tokenizers thread pool, which does not survive ``fork``."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def _run_pool(jobs, tok, out: Path, val_fraction: float, dtype: str, workers: int, records, bar) -> int:
    """Tokenize ``jobs`` in ``workers`` processes, at most two chunks in flight per worker; returns
    the number of chunks reused from an earlier run."""
    global _worker_tokenizer
    # fork (Linux) shares the loaded tokenizer and never re-imports the caller's __main__; spawn
    # elsewhere, where each worker loads the tokenizer from the output dir.
    method = "fork" if sys.platform == "linux" else "spawn"
    _worker_tokenizer = tok if method == "fork" else None
    reused = 0
    pending: deque[tuple[_Job, Future]] = deque()

    def collect() -> None:
        job, future = pending.popleft()
        records[job.index] = future.result()
        bar.update(job.n_bytes)

    with (
        _tokenizer_threads_off(),
        ProcessPoolExecutor(
            workers,
            mp_context=get_context(method),
            initializer=_init_worker,
            initargs=(str(out / TOKENIZER_DIR),),
        ) as pool,
    ):
        try:
            for job in jobs:
                rec = _reusable(out, job)
                if rec is not None:
                    reused += 1
                    records[job.index] = rec
                    bar.update(job.n_bytes)
                    continue
                pending.append((job, pool.submit(_tokenize_chunk, job, str(out), val_fraction, dtype)))
                if len(pending) >= 2 * workers:  # bounded memory: ~2 chunks of text per worker
                    collect()
            while pending:
                collect()
        finally:
            _worker_tokenizer = None
    return reused


def check_settings(out_dir: str | os.PathLike, val_fraction: float, chunk_mb: float) -> None:
    """Refuse unusable settings with a :class:`DataError` before any text is read (the CLI calls it
    before training a tokenizer, which can take long)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if chunk_mb <= 0:
        raise DataError(f"chunk_mb must be positive, got {chunk_mb}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory (the output is a dir of shards)")


def prepare(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.01,
    workers: int | None = None,
    chunk_mb: float = 16.0,
    text_field: str = "text",
    txt_mode: str = "file",
    dtype: str | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Tokenize ``sources`` with ``tokenizer`` (a :class:`fastgpt.Tokenizer` or anything
    ``Tokenizer.load`` accepts) into shards in ``out_dir``; see the module docstring."""
    from fastgpt.tokenizer import Tokenizer  # heavy: loads tokenizers, numpy; deferred until used

    t0 = time.perf_counter()
    check_settings(out_dir, val_fraction, chunk_mb)
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.load(tokenizer)
    shard_dtype = np.dtype(dtype) if dtype else dtype_for_vocab(tok.vocab_size)
    if shard_dtype not in (np.dtype("uint16"), np.dtype("uint32")):
        raise DataError(f"dtype must be uint16 or uint32, got {dtype}")
    if shard_dtype.itemsize == 2 and tok.vocab_size > 1 << 16:
        raise DataError(
            f"vocab of {tok.vocab_size:,} tokens is too large for uint16 shards (max 65,536); use uint32"
        )
    options = ReadOptions(text_field=text_field, txt_mode=txt_mode)
    expanded = expand_sources(sources)
    workers = max(1, workers if workers is not None else min(os.cpu_count() or 1, 8))

    out = Path(out_dir)
    (out / CHUNK_DIR).mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the dir is incomplete until the new manifest lands
    tok.save(out / TOKENIZER_DIR)
    run_key = f"{FORMAT}/{VERSION}|{tok.hash}|{shard_dtype.name}|{val_fraction!r}"

    stats = ReadStats()
    jobs = _chunks(iter_documents(expanded, options, stats), int(chunk_mb * 1e6), run_key)
    first_two = list(itertools.islice(jobs, 2))
    jobs = itertools.chain(first_two, jobs)
    records: dict[int, dict[str, Any]] = {}
    reused = 0
    bar = _progress_bar(progress, _total_bytes(expanded))
    try:
        if workers == 1 or len(first_two) < 2:  # one chunk: a pool would only add start-up time
            for job in jobs:
                rec = _reusable(out, job)
                reused += rec is not None
                records[job.index] = rec or _tokenize_chunk(
                    job, str(out), val_fraction, shard_dtype.name, tok
                )
                bar.update(job.n_bytes)
        else:
            reused = _run_pool(jobs, tok, out, val_fraction, shard_dtype.name, workers, records, bar)
    finally:
        bar.close()
    if not records:
        raise DataError(f"{', '.join(s.spec for s in expanded)}: no documents found")
    _remove_stale(out, len(records))
    manifest = _manifest(out, tok, expanded, records, stats, options, val_fraction, chunk_mb, shard_dtype)
    write_json_atomic(out / MANIFEST, manifest)
    return PrepareResult(read_manifest(out), len(records), reused, time.perf_counter() - t0)


def _progress_bar(enabled: bool, total: int | None):
    from tqdm.auto import tqdm  # deferred: tqdm, only with a progress bar

    return tqdm(
        total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not enabled, file=sys.stderr
    )


def _remove_stale(out: Path, n_chunks: int) -> None:
    """Shards and records of chunks beyond this run's last one (left by an earlier, larger input)."""
    for pattern in ("train_*.bin", "val_*.bin", f"{CHUNK_DIR}/*.json"):
        for path in out.glob(pattern):
            stem = path.stem.rsplit("_", 1)[-1]
            if stem.isdigit() and int(stem) >= n_chunks:
                path.unlink()


def _manifest(out, tok, sources, records, stats, options, val_fraction, chunk_mb, dtype) -> dict[str, Any]:
    splits = {}
    for split in ("train", "val"):
        shards = [
            {"file": _shard_names(i)[0 if split == "train" else 1], "tokens": records[i][split]["tokens"]}
            for i in sorted(records)
            if records[i][split]["tokens"]
        ]
        splits[split] = {
            "tokens": sum(s["tokens"] for s in shards),
            "documents": sum(records[i][split]["documents"] for i in records),
            "shards": shards,
        }
    return {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.name,
        "tokenizer": {
            "hash": tok.hash,
            "name": tok.name,
            "vocab_size": tok.vocab_size,
            "bos_id": tok.bos_id,
            "dir": TOKENIZER_DIR,
        },
        "sources": [s.describe() for s in sources],
        "settings": {
            "val_fraction": val_fraction,
            "chunk_mb": chunk_mb,
            "text_field": options.text_field,
            "txt_mode": options.txt_mode,
        },
        "splits": splits,
        "stats": {
            "bytes": sum(r["bytes"] for r in records.values()),
            "chunks": len(records),
            **{k: v for k, v in asdict(stats).items() if k not in ("files_with_invalid_utf8", "empty_files")},
            "files_with_invalid_utf8": stats.files_with_invalid_utf8[:20],
            "empty_files": len(stats.empty_files),
        },
    }


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="fastgpt prepare",
        description="Tokenize text sources into binary token shards (train/val) with a manifest.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--source", action="append", required=True, metavar="SRC",
                        help="file, dir, glob, built-in corpus name or hf:NAME[:CONFIG][@SPLIT]; repeatable")  # fmt: skip
    parser.add_argument("--tokenizer", help="tokenizer dir/file or named vocab (gpt2, cl100k, ...); "
                        "default: train one on the sources")  # fmt: skip
    parser.add_argument("--vocab_size", type=int, default=4096, help="when training a tokenizer")
    parser.add_argument("--out", required=True, help="output dir")
    parser.add_argument("--val_fraction", type=float, default=0.01, help="held-out share of tokens")
    parser.add_argument(
        "--workers", type=int, default=None, help="tokenizer processes (default: cores, max 8)"
    )
    parser.add_argument("--chunk_mb", type=float, default=16.0, help="MB of text per shard/work unit")
    parser.add_argument("--text_field", default="text", help="JSONL field / parquet column with the text")
    parser.add_argument("--txt_mode", choices=("file", "blocks"), default="file",
                        help=".txt documents: one per file, or one per blank-line-separated block")  # fmt: skip
    parser.add_argument("--dtype", choices=("uint16", "uint32"), default=None, help="default: by vocab size")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    # heavy: loads tokenizers, numpy; deferred until used
    from fastgpt.tokenizer import Tokenizer, TokenizerError

    try:
        options = ReadOptions(args.text_field, args.txt_mode)
        check_settings(args.out, args.val_fraction, args.chunk_mb)
        if args.tokenizer:
            tokenizer = Tokenizer.load(args.tokenizer)
        else:
            sources = expand_sources(args.source)  # a missing or unsupported source fails before training
            print(f"training a {args.vocab_size}-token BPE tokenizer on the sources ...", file=sys.stderr)
            tokenizer = Tokenizer.train(iter_documents(sources, options), args.vocab_size)
        result = prepare(
            args.source,
            tokenizer,
            args.out,
            val_fraction=args.val_fraction,
            workers=args.workers,
            chunk_mb=args.chunk_mb,
            text_field=args.text_field,
            txt_mode=args.txt_mode,
            dtype=args.dtype,
            progress=not args.no_progress,
        )
    except (DataError, TokenizerError) as e:
        return report_user_error("prepare", e, status=1)
    m = result.manifest
    train, val = m["splits"]["train"], m["splits"]["val"]
    print(
        f"{args.out}: {train['tokens']:,} train tokens ({len(train['shards'])} shards), {val['tokens']:,} val "
        f"tokens, {m['stats']['documents']:,} documents, {m['dtype']}, tokenizer {m['tokenizer']['name']} "
        f"(vocab {m['tokenizer']['vocab_size']:,}); {result.reused_chunks}/{result.chunks} chunks reused; "
        f"{result.seconds:.1f}s"
    )
    if m["stats"]["invalid_utf8"]:
        print(f"warning: {m['stats']['invalid_utf8']} invalid UTF-8 sequences were replaced", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
