"""Tokenizer and data-preparation speed on the built-in Shakespeare corpus (5.06 MB, 42 documents).

    python benchmarks/tokenizer.py                    # everything, CSV rows on stdout
    python benchmarks/tokenizer.py --csv tok.csv --repeats 5

Measured in one process, same corpus, medians over ``--repeats``:

- ``train``: byte-level BPE training time of ``fastgpt.Tokenizer.train`` and, as the baseline, of a
  bare HF ``tokenizers`` BPE (its stock ``ByteLevel`` pre-tokenizer), at each ``--vocab_sizes``.
- ``encode``: MB/s of UTF-8 text encoded, whole corpus, for the same vocabulary through fastgpt,
  through HF ``tokenizers`` directly (the saved ``tokenizer.json``) and through tiktoken: GPT-2 and
  cl100k (tiktoken cannot run a vocabulary trained here). ``batch`` = all documents in one call,
  parallel threads; ``serial`` = one document per call, one thread.
- ``prepare``: tokens/s of ``fastgpt prepare`` on the corpus (1 MB chunks) with 1 and 2 worker
  processes, and with 1 process encoding in one thread per core. Includes reading the text and
  writing shards; the tokenizer is given (not trained).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _threads(enabled: bool) -> None:
    """HF tokenizers reads this on every call: it decides whether batches use its thread pool."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab_sizes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--csv", default=None)
    p.add_argument("--skip", nargs="*", default=[], choices=["train", "encode", "prepare"])
    args = p.parse_args(argv)

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    from fastgpt.data.corpora import corpus_documents
    from fastgpt.data.prepare import prepare
    from fastgpt.tokenizer import Tokenizer, vocabulary_files

    docs = list(corpus_documents("shakespeare"))
    mb = sum(len(d.encode()) for d in docs) / 1e6
    rows: list[dict] = []
    cores = os.cpu_count()

    def row(kind, impl, setting, seconds, amount, unit):
        rows.append(
            {
                "kind": kind,
                "impl": impl,
                "setting": setting,
                "seconds": round(seconds, 4),
                "throughput": round(amount / seconds, 2),
                "unit": unit,
                "cores": cores,
            }  # fmt: skip
        )
        print(
            f"{kind:8} {impl:22} {setting:26} {seconds:8.3f}s  {amount / seconds:12,.2f} {unit}",
            file=sys.stderr,
        )

    # ---------------------------------------------------------------- training
    _threads(True)
    trained = {}
    if "train" not in args.skip:
        for v in args.vocab_sizes:
            seconds = _median_seconds(
                lambda v=v: trained.__setitem__(v, Tokenizer.train(docs, vocab_size=v)), args.repeats
            )
            row("train", "fastgpt", f"vocab={v}", seconds, mb, "MB/s")

            def hf_train(v=v):
                hf = HFTokenizer(models.BPE())
                hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                trainer = trainers.BpeTrainer(
                    vocab_size=v, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
                )
                hf.train_from_iterator(docs, trainer)

            row("train", "hf-tokenizers", f"vocab={v}", _median_seconds(hf_train, args.repeats), mb, "MB/s")

    # ---------------------------------------------------------------- encoding
    if "encode" not in args.skip:
        tmp = tempfile.mkdtemp()
        try:
            fastgpt_vocabs = {"gpt2": Tokenizer.load("gpt2"), "cl100k": Tokenizer.load("cl100k")}
            if trained:
                v = min(trained)
                fastgpt_vocabs[f"trained{v}"] = trained[v]
            references = {"gpt2": _tiktoken_gpt2(vocabulary_files("gpt2")), "cl100k": _tiktoken_cl100k(tmp)}
            for name, tok in fastgpt_vocabs.items():
                tok.save(os.path.join(tmp, name))
                hf = HFTokenizer.from_file(os.path.join(tmp, name, "tokenizer.json"))
                expected = tok.encode_batch(docs)
                for threads, setting in ((True, "batch"), (False, "serial")):
                    _threads(threads)
                    if threads:
                        t = _median_seconds(lambda tok=tok: tok.encode_batch(docs), args.repeats)
                        row("encode", "fastgpt", f"{name} {setting}", t, mb, "MB/s")
                        t = _median_seconds(
                            lambda hf=hf: hf.encode_batch(docs, add_special_tokens=False), args.repeats
                        )
                        row("encode", "hf-tokenizers", f"{name} {setting}", t, mb, "MB/s")
                    else:
                        t = _median_seconds(lambda tok=tok: [tok.encode(d) for d in docs], args.repeats)
                        row("encode", "fastgpt", f"{name} {setting}", t, mb, "MB/s")
                        t = _median_seconds(
                            lambda hf=hf: [hf.encode(d, add_special_tokens=False) for d in docs], args.repeats
                        )
                        row("encode", "hf-tokenizers", f"{name} {setting}", t, mb, "MB/s")
                    ref = references.get(name)
                    if ref is None:
                        continue
                    if threads:
                        assert ref.encode_ordinary_batch(docs) == expected, (
                            f"{name}: ids differ from tiktoken"
                        )
                        t = _median_seconds(
                            lambda ref=ref: ref.encode_ordinary_batch(docs, num_threads=cores), args.repeats
                        )
                    else:
                        t = _median_seconds(
                            lambda ref=ref: [ref.encode_ordinary(d) for d in docs], args.repeats
                        )
                    row("encode", "tiktoken", f"{name} {setting}", t, mb, "MB/s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- prepare
    if "prepare" not in args.skip:
        tok = trained.get(min(trained)) if trained else Tokenizer.train(docs, vocab_size=4096)
        n_tokens = sum(len(ids) + 1 for ids in tok.encode_batch(docs))
        for workers, threads, setting in (
            (1, False, "1 worker"),
            (2, False, "2 workers"),
            (1, True, "1 worker, threads"),
        ):
            _threads(threads)

            def run(workers=workers):
                out = tempfile.mkdtemp()
                try:
                    prepare("shakespeare", tok, out, workers=workers, chunk_mb=1.0, progress=False)
                finally:
                    shutil.rmtree(out, ignore_errors=True)

            row("prepare", "fastgpt", setting, _median_seconds(run, args.repeats), n_tokens, "tokens/s")

    out = open(args.csv, "w", newline="") if args.csv else sys.stdout
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    if args.csv:
        out.close()
    return 0


def _tiktoken_gpt2(files):
    import tiktoken
    import tiktoken_ext.openai_public as openai_public
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(str(files / "vocab.bpe"), str(files / "encoder.json"))
    return tiktoken.Encoding("gpt2", pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})  # fmt: skip


def _tiktoken_cl100k(tmp):
    import gzip

    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from fastgpt.tokenizer import GPT4_PATTERN, vocabulary_files

    path = os.path.join(tmp, "cl100k_base.tiktoken")
    with open(path, "wb") as f:
        f.write(gzip.decompress((vocabulary_files("cl100k") / "cl100k_base.tiktoken.gz").read_bytes()))
    return tiktoken.Encoding("cl100k_base", pat_str=GPT4_PATTERN, mergeable_ranks=load_tiktoken_bpe(path),
                             special_tokens={})  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
