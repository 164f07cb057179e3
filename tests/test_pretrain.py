"""``python -m fastgpt.pretrain``: each kind of bad input ends with one ``error:`` line naming the key,
file or value and what was expected (exit status 2), never a traceback."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest
from train_support import make_corpus, one_thread, pretrain_args, start_pretrain

from fastgpt.pretrain import main


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


def test_continued_pretraining_of_a_hugging_face_model(corpus, tmp_path, capsys, monkeypatch):
    """``--init_from`` a transformers model dir: loading its vocabulary appends fastgpt's chat tokens
    above its highest id, which its embedding lacks; documents never hold them, so the run trains."""
    import transformers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from fastgpt.tokenizer import Tokenizer

    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "cache"))  # the text is prepared into the cache
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    hf_tok = HFTokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    hf_tok.train([str(corpus.parent / "corpus.txt")], trainer)
    hf_tok.save(str(hf_dir / "tokenizer.json"))
    config = transformers.LlamaConfig(
        vocab_size=hf_tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(hf_dir)
    assert Tokenizer.load(hf_dir).vocab_size > config.vocab_size  # the appended chat tokens

    args = pretrain_args(corpus.parent / "corpus.txt", tmp_path / "out", init_from=str(hf_dir), max_steps=2)
    args = [a for a in args if not a.startswith("--model.")]  # the architecture is the HF model's
    with one_thread():
        assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_data_without_a_val_split_trains_without_validation(corpus, tmp_path, capsys):
    """``fastgpt prepare --val_fraction 0`` is allowed; pretraining on it must not fail at the first eval."""
    from fastgpt.data.prepare import prepare
    from fastgpt.tokenizer import Tokenizer

    no_val = tmp_path / "no_val"
    prepare([str(corpus.parent / "corpus.txt")], Tokenizer.load(corpus / "tokenizer"), no_val,
            val_fraction=0.0, workers=1, txt_mode="blocks", progress=False)  # fmt: skip
    with one_thread():
        assert main(pretrain_args(no_val, tmp_path / "out", max_steps=2, eval_every=1)) == 0
    assert "no validation: the val split" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and not any("val_loss" in m for m in metrics)


def test_raw_jsonl_data_with_its_own_text_field(tmp_path, capsys, monkeypatch):
    """The error for a JSONL without a 'text' field names the key, --text_field, that pretraining takes."""
    monkeypatch.setenv("FASTGPT_CACHE", str(tmp_path / "cache"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(json.dumps({"body": f"the king speaks to the queen {i} times."}) + "\n" for i in range(400))
    )
    args = pretrain_args(rows, tmp_path / "out", max_steps=1, vocab_size=300)
    assert "no 'text' field (fields: body); pick one with --text_field" in _error(capsys, args)
    with one_thread():
        assert main([*args, "--text_field=body"]) == 0
    assert "--txt_mode: expected file or blocks" in _error(capsys, [*args, "--txt_mode=lines"])


def test_an_out_dir_that_is_a_file(corpus, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert str(tmp_path / "a_file") in _error(capsys, pretrain_args(corpus, tmp_path / "a_file"))


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_status_130(corpus, tmp_path):
    """SIGINT during training ends the run with status 130 and one line naming how to resume, no
    KeyboardInterrupt traceback."""
    args = pretrain_args(corpus, tmp_path / "run", max_steps=100000, log_every=1, progress="false")
    proc = start_pretrain(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("fastgpt pretrain: interrupted; run the same command")
    assert "Traceback" not in err
