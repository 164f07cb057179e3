"""The stage commands (``python -m fastgpt.pretrain|sft|grpo|reward|ppo|dpo``) answer a user's mistake
(a :class:`fastgpt.errors.UserError`) with one ``error:`` line naming the key or path and exit status 2;
any other exception is a bug and keeps its traceback (``FASTGPT_DEBUG=1``: user errors too)."""

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
    """Its embedding ends at <|bos|>: a chat needs token ids past it, so each RL stage refuses the model
    in one line instead of indexing past the embedding."""
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


# --- user errors apart from bugs (fastgpt.errors.UserError) ---------------------------------------------


@pytest.mark.parametrize(
    ("stage", "loader", "bug"),
    [
        ("dpo", "fastgpt.rl.common", ValueError),
        ("grpo", "fastgpt.rl.common", IndexError),
        ("sft", "fastgpt.sft", KeyError),
    ],
)
def test_a_bug_inside_the_library_keeps_its_traceback(
    stage, loader, bug, run_dir, capsys, tmp_path, monkeypatch
):
    """An exception that is not a UserError (here from loading the model) is a bug: it propagates (Python
    prints its traceback) instead of reading like a bad flag."""

    def broken(*args, **kwargs):
        raise bug("not enough values to unpack (expected 3, got 2)")

    monkeypatch.setattr(f"{loader}.from_pretrained", broken)
    with pytest.raises(bug, match="not enough values to unpack"):
        importlib.import_module(f"fastgpt.{stage}").main(
            [f"--model={run_dir / 'model'}", "--max_steps=1", f"--out_dir={tmp_path}"]
        )
    assert "error:" not in capsys.readouterr().err


def test_fastgpt_debug_shows_the_traceback_of_a_user_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGPT_DEBUG", "1")
    assert importlib.import_module("fastgpt.dpo").main(["--max_step=3", f"--out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last)") and "UserError" in err
    assert err.splitlines()[-1].startswith("fastgpt dpo: error: unknown option --max_step")
    monkeypatch.setenv("FASTGPT_DEBUG", "0")  # "0" is off
    _error(capsys, "dpo", ["--max_step=3", f"--out_dir={tmp_path}"])


def test_a_tool_command_reports_user_errors_in_one_line_and_bugs_with_a_traceback(
    tmp_path, capsys, monkeypatch
):
    from fastgpt.chat import cli as chat_cli

    assert chat_cli.main(["--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastgpt chat: error: ") and err.count("\n") == 1 and "nope" in err
    monkeypatch.setenv("FASTGPT_DEBUG", "1")
    assert chat_cli.main(["--model", str(tmp_path / "nope")]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err

    def broken(args):
        raise ValueError("an internal mistake")

    monkeypatch.setattr(chat_cli, "_load", broken)
    with pytest.raises(ValueError, match="an internal mistake"):
        chat_cli.main(["--model", str(tmp_path)])


def test_the_fastgpt_command_reports_a_user_error_a_command_let_through(capsys, monkeypatch):
    """``fastgpt <command>``: a UserError that escapes a command's own handling is still one line."""
    from fastgpt import cli
    from fastgpt.errors import UserError
    from fastgpt.eval import report

    def main(argv):
        raise UserError("--runs: nothing to report")

    monkeypatch.setattr(report, "main", main)
    assert cli.main(["report"]) == 2
    assert capsys.readouterr().err == "fastgpt report: error: --runs: nothing to report\n"
