"""Tokenizer and data-preparation speed on the built-in Shakespeare corpus (5.06 MB, 42 documents).

    python benchmarks/tokenizer.py                    # everything, CSV rows on stdout
    python benchmarks/tokenizer.py --csv tok.csv --repeats 5

Measured in one process on the same corpus. Within each group the implementations run round-robin,
one call each per repeat, so a load spike on a shared machine hits all of them alike; each row is the
median over ``--repeats``, and ``load`` is the 1-minute load average when the group ended.

- ``train``: byte-level BPE training time of ``fastgpt.Tokenizer.train`` and, as the baseline, of a
  bare HF ``tokenizers`` BPE (its stock ``ByteLevel`` pre-tokenizer), at each ``--vocab_sizes``.
- ``encode``: MB/s of UTF-8 text encoded (the whole corpus) with one vocabulary through fastgpt,
  through HF ``tokenizers`` directly on fastgpt's saved ``tokenizer.json`` (``encode_batch_fast``: no
  offsets), and through tiktoken (GPT-2 and cl100k; tiktoken cannot read a vocabulary trained here).
  ``batch`` = all documents in one call, one thread per core; ``serial`` = one document per call.
  The ids of all three are checked to be equal first.
- ``prepare``: tokens/s of ``fastgpt prepare`` on the corpus repeated ``--prepare_copies`` times (as
  JSONL, ``--chunk_mb`` chunks) with 1 and 2 worker processes (one thread each), and 1 process
  encoding with a thread per core. Includes reading the text, hashing chunks, writing shards and the
  manifest; the tokenizer is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable


def _round_robin(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per case, running the cases in turn within every repeat."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _threads(enabled: bool) -> None:
    """TOKENIZERS_PARALLELISM decides whether HF tokenizers (and fastgpt's encode_batch) use threads."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"


def _tiktoken_gpt2():
    import tiktoken
    import tiktoken_ext.openai_public as openai_public
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from fastgpt.tokenizer import vocabulary_files

    files = vocabulary_files("gpt2")
    ranks = data_gym_to_mergeable_bpe_ranks(str(files / "vocab.bpe"), str(files / "encoder.json"))
    return tiktoken.Encoding(
        "gpt2", pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks, special_tokens={}
    )


def _tiktoken_cl100k(tmp: str):
    import gzip

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from fastgpt.tokenizer import GPT4_PATTERN, vocabulary_files

    path = os.path.join(tmp, "cl100k_base.tiktoken")
    with open(path, "wb") as f:
        f.write(gzip.decompress((vocabulary_files("cl100k") / "cl100k_base.tiktoken.gz").read_bytes()))
    return tiktoken.Encoding(
        "cl100k_base", pat_str=GPT4_PATTERN, mergeable_ranks=load_tiktoken_bpe(path), special_tokens={}
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab_sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk_mb", type=float, default=1.0)
    p.add_argument("--prepare_copies", type=int, default=4, help="prepare the corpus this many times over")
    p.add_argument("--csv", default=None)
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "encode", "prepare"])
    args = p.parse_args(argv)

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    from fastgpt.data.corpora import corpus_documents
    from fastgpt.data.prepare import prepare
    from fastgpt.tokenizer import Tokenizer

    docs = list(corpus_documents("shakespeare"))
    mb = sum(len(d.encode()) for d in docs) / 1e6
    rows: list[dict] = []

    def report(kind: str, setting: str, medians: dict[str, float], amount: float, unit: str) -> None:
        load = round(os.getloadavg()[0], 1)
        for impl, seconds in medians.items():
            rows.append(
                {"kind": kind, "impl": impl, "setting": setting, "seconds": round(seconds, 4),
                 "throughput": round(amount / seconds, 2), "unit": unit, "cores": os.cpu_count(), "load": load}
            )  # fmt: skip
            print(f"{kind:8} {impl:16} {setting:24} {seconds:8.3f}s {amount / seconds:14,.2f} {unit}  load {load}",
                  file=sys.stderr)  # fmt: skip

    # ---------------------------------------------------------------- training
    _threads(True)
    trained: dict[int, Tokenizer] = {}
    if "train" not in args.skip:
        for v in args.vocab_sizes:

            def fastgpt_train(v=v):
                trained[v] = Tokenizer.train(docs, vocab_size=v)

            def hf_train(v=v):
                hf = HFTokenizer(models.BPE())
                hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                alphabet = pre_tokenizers.ByteLevel.alphabet()
                hf.train_from_iterator(
                    docs, trainers.BpeTrainer(vocab_size=v, initial_alphabet=alphabet, show_progress=False)
                )

            medians = _round_robin({"fastgpt": fastgpt_train, "hf-tokenizers": hf_train}, args.repeats)
            report("train", f"vocab={v}", medians, mb, "MB/s")

    # ---------------------------------------------------------------- encoding
    if "encode" not in args.skip:
        tmp = tempfile.mkdtemp()
        try:
            vocabs = {
                "gpt2": (Tokenizer.load("gpt2"), _tiktoken_gpt2()),
                "cl100k": (Tokenizer.load("cl100k"), _tiktoken_cl100k(tmp)),
            }
            if trained:
                vocabs[f"trained{min(trained)}"] = (trained[min(trained)], None)
            for name, (tok, ref) in vocabs.items():
                hf = HFTokenizer.from_file(str(tok.save(os.path.join(tmp, name)) / "tokenizer.json"))
                hf.encode_special_tokens = True
                expected = tok.encode_batch(docs)
                assert [e.ids for e in hf.encode_batch_fast(docs, add_special_tokens=False)] == expected
                assert ref is None or ref.encode_ordinary_batch(docs) == expected, f"{name}: ids differ"
                _threads(True)
                batch = {
                    "fastgpt": lambda tok=tok: tok.encode_batch(docs),
                    "hf-tokenizers": lambda hf=hf: hf.encode_batch_fast(docs, add_special_tokens=False),
                }
                serial = {
                    "fastgpt": lambda tok=tok: [tok.encode(d) for d in docs],
                    "hf-tokenizers": lambda hf=hf: [hf.encode(d, add_special_tokens=False) for d in docs],
                }
                if ref is not None:
                    batch["tiktoken"] = lambda ref=ref: ref.encode_ordinary_batch(
                        docs, num_threads=os.cpu_count()
                    )
                    serial["tiktoken"] = lambda ref=ref: [ref.encode_ordinary(d) for d in docs]
                report("encode", f"{name} batch", _round_robin(batch, args.repeats), mb, "MB/s")
                _threads(False)
                report("encode", f"{name} serial", _round_robin(serial, args.repeats), mb, "MB/s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- prepare
    if "prepare" not in args.skip:
        tok = trained[min(trained)] if trained else Tokenizer.train(docs, vocab_size=4096)
        tmp = tempfile.mkdtemp()
        source = os.path.join(tmp, "corpus.jsonl")  # the corpus, --prepare_copies times
        with open(source, "w") as f:
            f.writelines(json.dumps({"text": d}) + "\n" for _ in range(args.prepare_copies) for d in docs)
        n_tokens = args.prepare_copies * sum(len(ids) + 1 for ids in tok.encode_batch(docs))

        def run(workers: int, threads: bool) -> None:
            _threads(threads)
            out = os.path.join(tmp, "out")
            try:
                prepare(source, tok, out, workers=workers, chunk_mb=args.chunk_mb, progress=False)
            finally:
                shutil.rmtree(out, ignore_errors=True)

        cases = {
            "1 worker": lambda: run(1, False),
            "2 workers": lambda: run(2, False),
            "1 worker, threads": lambda: run(1, True),
        }
        try:
            for setting, seconds in _round_robin(cases, args.repeats).items():
                report(
                    "prepare",
                    f"{setting}, {args.prepare_copies * mb:.0f} MB",
                    {"fastgpt": seconds},
                    n_tokens,
                    "tokens/s",
                )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    out = open(args.csv, "w", newline="") if args.csv else sys.stdout
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    if args.csv:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
