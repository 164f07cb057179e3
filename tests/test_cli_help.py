"""``fastgpt <command> --help``: every option of the argparse-based commands has a description, and
each option with a value default shows it (``fastgpt.cli.HelpFormatter``)."""

from __future__ import annotations

import re
import sys

import pytest

from fastgpt.cli import main as fastgpt
from fastgpt.tokenizer import Tokenizer

COMMANDS = ["tokenize", "train-tokenizer", "prepare", "sample", "chat", "serve", "eval", "report", "export"]


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        fastgpt([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _option_help(text: str) -> dict[str, str]:
    """``--flag`` -> its description, joined over wrapped lines (argparse's layout)."""
    options: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"  (-\w, )?(--[\w-]+)(?: [A-Z_{][^ ]*)?(?:, --[\w-]+ [A-Z_]+)?(?:  +(.*))?$", line)
        if m:
            current = m.group(2)
            options[current] = (m.group(3) or "").strip()
        elif current and line.startswith(" " * 20):
            options[current] = (options[current] + " " + line.strip()).strip()
        else:
            current = None
    return options


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_described(command, capsys):
    options = _option_help(_help(capsys, command))
    assert "--help" in options and len(options) > 2
    undescribed = [flag for flag, text in options.items() if not text]
    assert not undescribed, f"fastgpt {command} --help: no description for {undescribed}"


def test_defaults_are_shown(capsys):
    from fastgpt.serve.server import build_parser

    options = _option_help(_help(capsys, "serve"))
    for action in build_parser()._actions:
        if action.option_strings and isinstance(action.default, int) and not isinstance(action.default, bool):
            flag = action.option_strings[0]
            assert f"(default: {action.default})" in options[flag], (flag, options[flag])


def test_the_router_version_typos_and_no_command(capsys):
    import fastgpt as package

    assert fastgpt(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastgpt {package.__version__}"
    assert fastgpt(["pretrian"]) == 2
    assert "unknown command 'pretrian' (did you mean pretrain" in capsys.readouterr().err
    assert fastgpt([]) == 2  # a script that forgot the command must notice
    assert "usage: fastgpt <command>" in capsys.readouterr().err


def test_warnings_are_one_line_for_a_command_user(tmp_path):
    import subprocess
    import sys

    corpus = tmp_path / "small.txt"
    corpus.write_text("a tiny corpus " * 20)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastgpt.cli",
            "train-tokenizer",
            "--source",
            str(corpus),
            "--out",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"fastgpt train-tokenizer: warning: the training corpus ({len(corpus.read_text()):,} characters) "
        f"supports only {Tokenizer.load(tmp_path / 't').vocab_size} tokens, fewer than vocab_size=4096"
    ]


def test_one_line_warnings_end_with_the_command(tmp_path, capsys):
    """Run from Python, a command's warning label must not stick to later, unrelated warnings."""
    import warnings

    before = warnings.formatwarning
    corpus = tmp_path / "small.txt"
    corpus.write_text("a tiny corpus " * 20)
    with pytest.warns(UserWarning, match="supports only"):
        assert fastgpt(["train-tokenizer", "--source", str(corpus), "--out", str(tmp_path / "t")]) == 0
    assert warnings.formatwarning is before
    assert "fastgpt" not in warnings.formatwarning("later", UserWarning, "x.py", 1, "")


def test_a_missing_optional_package_names_the_extra(monkeypatch, capsys):
    """``pip install -e .`` has no fastapi: ``fastgpt serve`` says which extra brings it."""
    monkeypatch.delitem(sys.modules, "fastgpt.serve.server", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert fastgpt(["serve", "--model", "anything"]) == 2
    assert capsys.readouterr().err.strip() == "fastgpt serve: needs 'fastapi': pip install 'fastgpt[serve]'"
