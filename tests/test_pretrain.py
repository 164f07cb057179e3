"""``python -m fastgpt.pretrain``: each kind of bad input ends with one ``error:`` line naming the key,
file or value and what was expected (exit status 2), never a traceback."""

from __future__ import annotations

import shutil

import pytest
from train_support import make_corpus, one_thread, pretrain_args

from fastgpt.pretrain import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _error(capsys, args) -> str:
    with one_thread():
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastgpt pretrain: error: ") and "Traceback" not in err
    return err


def test_unknown_key_suggests_the_close_one(corpus, tmp_path, capsys):
    err = _error(capsys, pretrain_args(corpus, tmp_path) + ["--eval_evry=5"])
    assert "unknown option --eval_evry" in err and "--eval_every" in err


def test_unknown_preset_lists_the_presets(corpus, tmp_path, capsys):
    err = _error(capsys, pretrain_args(corpus, tmp_path, preset="gpt-5"))
    assert "--preset: expected one of tiny" in err and "gpt2" in err


def test_shard_dir_without_manifest(corpus, tmp_path, capsys):
    bare = tmp_path / "shards"
    bare.mkdir()
    for f in corpus.glob("*.bin"):
        shutil.copy(f, bare / f.name)
    err = _error(capsys, pretrain_args(bare, tmp_path / "out"))
    assert f"--data={bare}" in err and "no manifest.json" in err


def test_tokenizer_that_did_not_make_the_data(corpus, tmp_path, capsys):
    other = make_corpus(tmp_path / "other", vocab_size=300, seed=1) / "tokenizer"
    err = _error(capsys, pretrain_args(corpus, tmp_path / "out", tokenizer=str(other)))
    assert "the tokens were made by tokenizer" in err and str(corpus / "tokenizer") in err


def test_bad_value_and_impossible_batch(corpus, tmp_path, capsys):
    assert "--zero: expected 0, 1, 2 or 3" in _error(capsys, pretrain_args(corpus, tmp_path, zero=5))
    err = _error(capsys, pretrain_args(corpus, tmp_path, total_batch_tokens=100))
    assert "--total_batch_tokens=100 is not a multiple" in err


@pytest.mark.parametrize("device", ["gpu", "mps", "cuda"])
def test_a_device_this_machine_cannot_use(corpus, tmp_path, capsys, device):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert f"--device={device}: " in _error(capsys, pretrain_args(corpus, tmp_path, device=device))
