"""``prepare``: shard contents against the tokenizer, worker independence, resumption, manifest, errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from fastgpt.data import ShardLoader, check_tokenizer, open_shard, read_manifest
from fastgpt.data.errors import DataError, TokenizerMismatchError
from fastgpt.data.prepare import main, prepare
from fastgpt.tokenizer import Tokenizer

CHUNK_MB = 0.002  # ~2 KB of text per chunk: several chunks from a tiny corpus


def _documents(n=40, seed=0):
    rng = random.Random(seed)
    syllables = "ka ri to na mi su ve lo pe an is th er ou é 日".split()
    return [
        " ".join(
            "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))
            for _ in range(rng.randint(5, 80))
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(_documents(seed=1), vocab_size=300)


@pytest.fixture
def corpus(tmp_path):
    docs = _documents()
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path, docs


def _chunk_tokens(out, manifest):
    """Per chunk: train tokens followed by val tokens, as written."""
    chunks = []
    for i in range(manifest["stats"]["chunks"]):
        parts = [out / f"{s}_{i:05d}.bin" for s in ("train", "val")]
        chunks.append([open_shard(p) if p.exists() else np.zeros(0, np.uint16) for p in parts])
    return chunks


def test_shards_hold_bos_separated_documents(tmp_path, corpus, tok):
    path, docs = corpus
    result = prepare(
        path, tok, tmp_path / "out", val_fraction=0.1, chunk_mb=CHUNK_MB, workers=1, progress=False
    )
    m = result.manifest
    assert result.chunks == m["stats"]["chunks"] > 3 and result.reused_chunks == 0
    chunks = _chunk_tokens(tmp_path / "out", m)
    stream = np.concatenate([np.concatenate(c) for c in chunks]).astype(np.int64)
    reference = np.array([t for d in docs for t in [tok.bos_id, *tok.encode(d)]])
    assert np.array_equal(stream, reference)
    for train, val in chunks:  # the last tenth of every chunk is validation
        assert len(val) == round(0.1 * (len(train) + len(val)))
    assert m["dtype"] == "uint16" and open_shard(tmp_path / "out" / "train_00000.bin").dtype == np.uint16
    assert m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"] == len(reference)
    assert (
        m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
        == len(docs)
        == m["stats"]["documents"]
    )
    assert m["tokenizer"]["hash"] == tok.hash and m["tokenizer"]["bos_id"] == tok.bos_id
    assert m["sources"] == [{"kind": "jsonl", "spec": str(path)}]
    assert Tokenizer.load(tmp_path / "out" / "tokenizer").hash == tok.hash  # the dir carries its tokenizer


def test_workers_do_not_change_the_output(tmp_path, corpus, tok):
    path, _ = corpus
    kw = dict(val_fraction=0.05, chunk_mb=CHUNK_MB, progress=False)
    one = prepare(path, tok, tmp_path / "one", workers=1, **kw).manifest
    two = prepare(path, tok, tmp_path / "two", workers=2, **kw).manifest
    assert one["splits"] == two["splits"]
    for split in ("train", "val"):
        for shard in one["splits"][split]["shards"]:
            assert (tmp_path / "one" / shard["file"]).read_bytes() == (
                tmp_path / "two" / shard["file"]
            ).read_bytes()


def test_rerun_reuses_finished_chunks(tmp_path, corpus, tok):
    path, docs = corpus
    out = tmp_path / "out"
    kw = dict(val_fraction=0.1, chunk_mb=CHUNK_MB, workers=1, progress=False)
    first = prepare(path, tok, out, **kw)
    files = sorted(out.glob("*.bin"))
    snapshot = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}

    again = prepare(path, tok, out, **kw)
    assert again.reused_chunks == again.chunks == first.chunks
    assert all(p.stat().st_mtime_ns == snapshot[p.name][1] for p in files)  # not rewritten

    # an interrupted run: the last chunk's shard is half written and there is no manifest
    last = out / f"train_{first.chunks - 1:05d}.bin"
    last.write_bytes(last.read_bytes()[:100])
    (out / "manifest.json").unlink()
    resumed = prepare(path, tok, out, **kw)
    assert resumed.reused_chunks == first.chunks - 1
    assert {p.name: p.read_bytes() for p in sorted(out.glob("*.bin"))} == {
        k: v[0] for k, v in snapshot.items()
    }

    # changed input: only chunks whose text changed are tokenized again; stale shards are removed
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:-5]))
    shrunk = prepare(path, tok, out, **kw)
    fresh = prepare(path, tok, tmp_path / "fresh", **kw)
    assert shrunk.manifest["splits"] == fresh.manifest["splits"] and 0 < shrunk.reused_chunks < shrunk.chunks
    assert sorted(p.name for p in out.glob("*.bin")) == sorted(
        p.name for p in (tmp_path / "fresh").glob("*.bin")
    )


def _word_level_tokenizer(n: int) -> Tokenizer:
    hf = HFTokenizer(models.WordLevel({f"w{i}": i for i in range(n)} | {"[UNK]": n}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(hf)


def test_vocab_over_uint16(tmp_path):
    big = _word_level_tokenizer(70_000)
    (tmp_path / "a.txt").write_text("w1 w69999 w65536 nope")
    with pytest.raises(DataError, match="vocab of 70,012 tokens is too large for uint16 shards"):
        prepare(tmp_path / "a.txt", big, tmp_path / "o16", dtype="uint16", progress=False)
    m = prepare(tmp_path / "a.txt", big, tmp_path / "o32", val_fraction=0.0, progress=False).manifest
    assert m["dtype"] == "uint32"
    assert open_shard(tmp_path / "o32" / "train_00000.bin").tolist() == [big.bos_id, 1, 69999, 65536, 70000]


def test_tokenizer_must_match_the_manifest(tmp_path, corpus, tok):
    path, _ = corpus
    prepare(path, tok, tmp_path / "out", progress=False)
    manifest = read_manifest(tmp_path / "out")
    check_tokenizer(manifest, Tokenizer.load(tmp_path / "out" / "tokenizer"))  # its own: fine
    other = Tokenizer.train(_documents(seed=2), vocab_size=300)
    with pytest.raises(
        TokenizerMismatchError, match=r"out: the tokens were made by tokenizer 'bpe300' \(hash"
    ):
        check_tokenizer(tmp_path / "out", other)


def test_prepared_data_feeds_the_loader(tmp_path, corpus, tok):
    path, docs = corpus
    prepare(path, tok, tmp_path / "out", val_fraction=0.2, progress=False)
    loader = ShardLoader(tmp_path / "out", batch_size=2, seq_len=32)
    inputs, targets, doc_ids = loader.next_batch()
    joined = "".join("<|bos|>" + d for d in docs)
    for row in inputs.tolist():
        assert tok.decode(row) in joined
    assert len(list(loader.eval_batches(max_tokens=200))) > 0


def test_bad_inputs(tmp_path, tok):
    (tmp_path / "empty.jsonl").write_text('{"text": " "}\n')
    with pytest.raises(DataError, match="empty.jsonl: contains no text"):
        prepare(tmp_path / "empty.jsonl", tok, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(ValueError, match="val_fraction"):
        prepare(tmp_path / "empty.jsonl", tok, tmp_path / "out", val_fraction=1.0)


def test_cli(tmp_path, corpus, capsys):
    path, _ = corpus
    args = ["--source", str(path), "--out", str(tmp_path / "out"), "--vocab_size", "300", "--no_progress"]
    assert main([*args, "--workers", "1"]) == 0
    assert "train tokens" in capsys.readouterr().out
    assert read_manifest(tmp_path / "out")["tokenizer"]["vocab_size"] == 300
    assert main(["--source", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastgpt prepare: error: ") and "missing.txt: no such file" in err
    assert err.count("\n") == 1, err  # nothing about training a tokenizer on sources that do not exist


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--val_fraction", "1.5"], "val_fraction must be in [0, 1), got 1.5"),
        (["--chunk_mb", "0"], "chunk_mb must be positive"),
        (["--out-is-a-file"], "exists and is not a directory"),
    ],
)
def test_cli_refuses_bad_settings_in_one_line_before_training(tmp_path, corpus, capsys, flags, expected):
    path, _ = corpus
    out = tmp_path / "out"
    if flags == ["--out-is-a-file"]:
        out.write_text("not a dir")
        flags = []
    assert main(["--source", str(path), "--out", str(out), "--no_progress", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastgpt prepare: error: ") and expected in err and err.count("\n") == 1, err
