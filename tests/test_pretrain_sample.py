"""``fastgpt sample``: greedy continuations equal a hand-written argmax loop over the model's logits;
seeded sampling repeats; a dir that is not a model is one clear error."""

from __future__ import annotations

import pytest
import torch

from fastgpt.model import GPT, GPTConfig
from fastgpt.sample import main, sample
from fastgpt.tokenizer import Tokenizer

TEXT = ["the king and the queen of the castle", "a sword, a crown and a heart", "night and day"] * 20


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def _model_dir(tmp_path):
    tok = Tokenizer.train(TEXT, vocab_size=300)
    torch.manual_seed(3)
    model = GPT(
        GPTConfig.from_preset(
            "tiny", vocab_size=tok.vocab_size, n_layer=2, n_embd=64, n_head=2, n_kv_head=1, max_seq_len=64
        )
    )
    path = tmp_path / "model"
    model.save_pretrained(path)
    tok.save(path)
    return path, model.eval(), tok


def test_greedy_sample_matches_an_argmax_loop(tmp_path):
    path, model, tok = _model_dir(tmp_path)
    prompt = "the king"
    got = sample(path, [prompt], max_tokens=12, temperature=0.0, top_k=None, device="cpu")[0][0]
    ids = tok.encode(prompt, add_bos=True)
    new = []
    with torch.no_grad():
        for _ in range(12):
            nxt = int(model(torch.tensor([ids + new]))[0, -1].argmax())
            if nxt == tok.bos_id:
                break
            new.append(nxt)
    assert got == tok.decode(new)


def test_seeded_sampling_repeats_and_cli_prints(tmp_path, capsys):
    path, _, _ = _model_dir(tmp_path)
    a = sample(path, ["night"], n=2, max_tokens=10, seed=5, device="cpu")
    b = sample(path, ["night"], n=2, max_tokens=10, seed=5, device="cpu")
    assert a == b and len(a[0]) == 2
    assert main(["--model", str(path), "--prompt", "night", "--max_tokens", "5"]) == 0
    assert "--- 'night'" in capsys.readouterr().out


def test_not_a_model_dir_is_one_clear_error(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--prompt", "x"]) == 2
    assert "not a model dir" in capsys.readouterr().err
