"""The SFT and RL commands (``python -m fastgpt.sft|grpo|reward|ppo|dpo``) answer a user's mistake with
one ``error:`` line naming the key or path and exit status 2, as ``fastgpt pretrain`` does, never a
traceback."""

from __future__ import annotations

import importlib

import pytest

from fastgpt.model import GPT, GPTConfig
from fastgpt.tokenizer import Tokenizer

STAGES = ["sft", "grpo", "reward", "ppo", "dpo"]


def _error(capsys, stage: str, argv: list[str]) -> str:
    assert importlib.import_module(f"fastgpt.{stage}").main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastgpt {stage}: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("stage", STAGES)
def test_a_mistyped_key_is_one_line(stage, capsys, tmp_path):
    err = _error(capsys, stage, ["--max_step=3", f"--out_dir={tmp_path}"])
    assert "unknown option --max_step" in err and "--max_steps" in err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished run's out_dir: its own config.json and the model under model/."""
    run = tmp_path_factory.mktemp("run")
    tok = Tokenizer.train(["What is 2 + 3? It is 5. " * 40], vocab_size=300)
    config = GPTConfig.from_preset(
        "tiny", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, max_seq_len=64
    )
    GPT(config).save_pretrained(run / "model")
    tok.save(run / "model")
    (run / "config.json").write_text('{"stage": "pretrain"}')
    return run


@pytest.mark.parametrize("stage", ["sft", "grpo", "dpo"])
def test_a_run_dir_for_the_model_names_its_model_dir(stage, run_dir, capsys, tmp_path):
    err = _error(capsys, stage, [f"--model={run_dir}", "--max_steps=1", f"--out_dir={tmp_path}"])
    assert str(run_dir / "model") in err


def test_a_missing_data_file_is_named(run_dir, capsys, tmp_path):
    missing = tmp_path / "nope.jsonl"
    err = _error(
        capsys, "dpo", [f"--model={run_dir / 'model'}", f"--data={missing}", f"--out_dir={tmp_path}"]
    )
    assert str(missing) in err


def test_an_out_dir_that_is_a_file_is_one_line(run_dir, capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = [f"--model={run_dir / 'model'}", f"--out_dir={a_file}", "--max_steps=1", "--data=identity"]
    assert str(a_file) in _error(capsys, "sft", argv)


@pytest.mark.parametrize("stage", ["grpo", "dpo", "reward"])
def test_a_base_model_without_chat_tokens_is_one_line(stage, tmp_path, capsys):
    """Its embedding ends at <|bos|>: the RL stages would index past it (an IndexError before)."""
    tok = Tokenizer.train(["What is 2 + 3? It is 5. " * 40], vocab_size=300)
    config = GPTConfig.from_preset(
        "tiny", vocab_size=tok.bos_id + 1, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, max_seq_len=64
    )
    GPT(config).save_pretrained(tmp_path / "base")
    tok.save(tmp_path / "base")
    err = _error(
        capsys, stage, [f"--model={tmp_path / 'base'}", "--max_steps=1", f"--out_dir={tmp_path / 'out'}"]
    )
    assert f"model has {tok.bos_id + 1} token embeddings" in err


@pytest.mark.parametrize("stage", ["grpo", "dpo", "reward", "ppo"])
def test_a_missing_or_empty_model_dir_says_what_to_run_first(stage, capsys, tmp_path):
    rest = [f"--out_dir={tmp_path / 'out'}"] + ([f"--reward_model={tmp_path}"] if stage == "ppo" else [])
    err = _error(capsys, stage, [f"--model={tmp_path / 'nope'}", *rest])
    assert "no such directory" in err and "bash launch/sft.sh" in err
    err = _error(capsys, stage, [f"--model={tmp_path}", *rest])
    assert "not a model directory (no config.json)" in err
    assert _error(capsys, stage, rest).endswith(
        "--model=DIR is required (a fastgpt or Hugging Face model directory)\n"
    )


def test_ppo_without_a_reward_model_is_one_line(capsys, tmp_path):
    err = _error(capsys, "ppo", [f"--model={tmp_path}", f"--out_dir={tmp_path / 'out'}"])
    assert "--reward_model=DIR is required" in err


@pytest.mark.parametrize("stage", ["pretrain", *STAGES])
def test_every_rank_reports_its_error(stage, capsys, tmp_path, monkeypatch):
    """Each rank prints its own error line: torchrun may stop local rank 0 (SIGTERM) as soon as another
    rank exits, before it prints, and an error can be one rank's own (a shard only it reads)."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert importlib.import_module(f"fastgpt.{stage}").main(["--max_step=3", f"--out_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.startswith(f"fastgpt {stage}: error: unknown option --max_step")
