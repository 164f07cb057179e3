"""``fastgpt tokenize`` and ``fastgpt train-tokenizer`` through the command router."""

from __future__ import annotations

import ast
import re

import pytest

from fastgpt.cli import main as fastgpt
from fastgpt.tokenizer import Tokenizer, TokenizerError

TEXT = "How many r's in strawberry? 12345 naïve 日本 🙂"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n\n".join(f"line {i}: strawberry fields, naïve 日本 {i * 37}" for i in range(200)))
    assert (
        fastgpt(["train-tokenizer", "--source", str(corpus), "--vocab_size", "320", "--out", str(folder)])
        == 0
    )
    return folder


def test_train_tokenizer_writes_a_loadable_dir(tok_dir):
    tok = Tokenizer.load(tok_dir)
    assert tok.vocab_size == 320 and tok.decode(tok.encode(TEXT)) == TEXT


def test_tokenize_prints_pieces_and_ids(tok_dir, capsys):
    tok = Tokenizer.load(tok_dir)
    assert fastgpt(["tokenize", TEXT, "--vocab", str(tok_dir), "--color", "never"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    ids = ast.literal_eval(out[-1])
    assert ids == tok.encode(TEXT)
    pieces = re.findall(r"\[(.*?)\]", out[0])
    assert len(pieces) == len(ids)
    assert f"{len(ids)} tokens, {len(TEXT)} characters" in out[-2]


def test_tokenize_colours_each_token(tok_dir, capsys):
    assert fastgpt(["tokenize", "strawberry fields", "--vocab", str(tok_dir), "--color", "always"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert re.sub(r"\x1b\[[0-9;]*m", "", first) == "strawberry fields"
    assert first.count("\x1b[48;5;") == len(Tokenizer.load(tok_dir).encode("strawberry fields"))


def test_tokenize_reports_bad_vocab(tmp_path, capsys):
    assert fastgpt(["tokenize", "x", "--vocab", str(tmp_path / "nope")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_train_tokenizer_refuses_a_file_as_out_before_training(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to train on " * 50)
    before = corpus.read_bytes()
    assert (
        fastgpt(["train-tokenizer", "--source", str(corpus), "--vocab_size", "300", "--out", str(corpus)])
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {corpus}: exists and is not a directory" in err, err
    assert corpus.read_bytes() == before
    with pytest.raises(TokenizerError, match="exists and is not a directory"):
        Tokenizer.train(["some text"] * 10, vocab_size=280).save(corpus)


def test_a_run_dir_for_the_vocab_names_its_model_dir(tok_dir, tmp_path, capsys):
    run = tmp_path / "run"
    Tokenizer.load(tok_dir).save(run / "model")
    (run / "config.json").write_text('{"stage": "pretrain"}')
    assert fastgpt(["tokenize", "x", "--vocab", str(run)]) == 1
    assert f"its model is {run / 'model'}" in capsys.readouterr().err
    data = tmp_path / "data"  # a prepared data dir keeps its tokenizer in tokenizer/
    Tokenizer.load(tok_dir).save(data / "tokenizer")
    (data / "manifest.json").write_text("{}")
    assert fastgpt(["tokenize", "x", "--vocab", str(data)]) == 1
    assert f"its tokenizer is {data / 'tokenizer'}" in capsys.readouterr().err


def test_tokenize_counts_read_naturally(tok_dir, capsys):
    assert fastgpt(["tokenize", "s", "--vocab", str(tok_dir), "--color", "never"]) == 0
    assert "\n1 token, 1 character, 1 byte (" in capsys.readouterr().out
