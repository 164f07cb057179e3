"""resolve_pretrain_data (cache, idempotence, tokenizer checks), the cache dir, and registry fetching."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fastgpt.data import ShardLoader, read_manifest, resolve_pretrain_data
from fastgpt.data import fetch as fetch_module
from fastgpt.data.errors import TokenizerMismatchError
from fastgpt.data.fetch import FetchError, PackageFile, cache_dir, fetch
from fastgpt.tokenizer import Tokenizer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def texts(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(3):
        body = "\n\n".join(
            f"Paragraph {j} of file {i}: the quick brown fox {j * i} jumps." for j in range(40)
        )
        (folder / f"f{i}.txt").write_text(body)
    return folder


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTGPT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "fastgpt"
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FASTGPT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "fastgpt"


def test_raw_sources_train_a_tokenizer_once(cache, texts):
    data_dir, tok_dir = resolve_pretrain_data(
        str(texts / "*.txt"), vocab_size=300, txt_mode="blocks", progress=False
    )
    assert data_dir.parent == cache / "data" and tok_dir == data_dir / "tokenizer"
    manifest = read_manifest(data_dir)
    tok = Tokenizer.load(tok_dir)
    assert tok.vocab_size == 300 and manifest["tokenizer"]["hash"] == tok.hash
    assert manifest["stats"]["documents"] == 120 and manifest["settings"]["val_fraction"] == 0.01
    stamp = (data_dir / "manifest.json").stat().st_mtime_ns

    again = resolve_pretrain_data(str(texts / "*.txt"), vocab_size=300, txt_mode="blocks", progress=False)
    assert again == (data_dir, tok_dir) and (data_dir / "manifest.json").stat().st_mtime_ns == stamp
    # other settings or other content: another dir
    assert resolve_pretrain_data(texts, vocab_size=300, progress=False)[0] != data_dir
    (texts / "f0.txt").write_text("changed " * 500)
    assert (
        resolve_pretrain_data(str(texts / "*.txt"), vocab_size=300, txt_mode="blocks", progress=False)[0]
        != data_dir
    )


def test_prepared_dirs_and_given_tokenizers(cache, texts, tmp_path):
    tok = Tokenizer.train([p.read_text() for p in texts.glob("*.txt")], vocab_size=300)
    tok.save(tmp_path / "tok")
    data_dir, tok_dir = resolve_pretrain_data(texts, tokenizer=tmp_path / "tok", progress=False)
    assert Tokenizer.load(tok_dir).hash == tok.hash
    assert resolve_pretrain_data(data_dir) == (data_dir, tok_dir)  # a prepared dir is used as is
    assert resolve_pretrain_data(data_dir, tokenizer=tok) == (data_dir, tok_dir)
    other = Tokenizer.train([p.read_text()[::-1] for p in texts.glob("*.txt")], vocab_size=300)
    with pytest.raises(TokenizerMismatchError, match="the tokens were made by tokenizer"):
        resolve_pretrain_data(data_dir, tokenizer=other)
    loader = ShardLoader(data_dir, batch_size=2, seq_len=16)
    assert loader.next_batch()[0].shape == (2, 16)


def _offline(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")


def test_fetch_unreachable_registry_says_what_to_run(cache, monkeypatch):
    _offline(monkeypatch)
    pkg = PackageFile("fastgpt-test-nothing", "0.0.1", "fastgpt_test_nothing-0.0.1.tar.gz", "0" * 64)
    with pytest.raises(FetchError) as info:
        fetch(pkg, timeout=5)
    message = str(info.value)
    assert "could not download fastgpt-test-nothing==0.0.1" in message
    assert (
        f"pip download --no-deps --no-binary :all: fastgpt-test-nothing==0.0.1 -d {cache / 'downloads'}"
        in message
    )
    assert not any((cache / "downloads").iterdir())


def test_fetch_verifies_the_checksum(cache, monkeypatch):
    content = b"pretend archive"
    good = PackageFile("x", "1", "x-1.tar.gz", __import__("hashlib").sha256(content).hexdigest())
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / "x-1.tar.gz").write_bytes(content)  # e.g. copied there by hand
    assert fetch(good).read_bytes() == content

    monkeypatch.setattr(
        fetch_module, "_download_simple_api", lambda pkg, dest, timeout: dest.write_bytes(b"evil")
    )
    bad = PackageFile("y", "1", "y-1.tar.gz", "1" * 64)
    with pytest.raises(FetchError, match="y-1.tar.gz: sha256 .* does not match the pinned 1111"):
        fetch(bad)
    assert not (cache / "downloads" / "y-1.tar.gz").exists()


@pytest.mark.slow
def test_shakespeare_from_a_fresh_cache_in_under_a_minute(cache):
    """What `launch/pretrain.sh` does first on a new machine: download, train a tokenizer, prepare."""
    start = time.perf_counter()
    data_dir, tok_dir = resolve_pretrain_data("shakespeare", progress=False)
    elapsed = time.perf_counter() - start
    manifest = read_manifest(data_dir)
    assert elapsed < 60, f"took {elapsed:.1f}s"
    assert manifest["stats"]["documents"] == 42 and manifest["stats"]["bytes"] == 5_057_198
    assert manifest["splits"]["train"]["tokens"] > 1_000_000 and manifest["splits"]["val"]["tokens"] > 50_000
    tok = Tokenizer.load(tok_dir)
    inputs, _, _ = ShardLoader(data_dir, batch_size=2, seq_len=64).next_batch()
    assert tok.decode(inputs[0].tolist()) in "".join("<|bos|>" + d for d in _shakespeare())


def _shakespeare():
    from fastgpt.data.corpora import corpus_documents

    return corpus_documents("shakespeare")


@pytest.mark.slow
@pytest.mark.parametrize("name, documents", [("wiki-demo", 30), ("c4-demo", 300)])
def test_modern_english_corpora(cache, name, documents):
    from fastgpt.data.corpora import corpus_documents

    docs = corpus_documents(name)
    assert len(docs) == documents and all(d.strip() for d in docs)
