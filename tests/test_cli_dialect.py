"""One CLI dialect: every command's options are ``--snake_case``; a hyphenated spelling of a known
option still works for a deprecation period, with one warning line naming the new spelling."""

from __future__ import annotations

import re

import pytest

from fastgpt import cli
from fastgpt.serve.server import build_parser as serve_parser
from fastgpt.train.config import TrainConfig, parse_args


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_every_command_documents_only_snake_case_options(command, capsys):
    """``fastgpt <command> --help`` of every command, tools and training stages alike."""
    try:
        code = cli.main([command, "--help"])
    except SystemExit as e:  # argparse exits after printing help
        code = e.code
    assert code in (0, None)
    text = capsys.readouterr().out
    flags = re.findall(r"(?<![\w-])--[a-z][a-z0-9_.-]*", text)
    assert flags, text
    assert [f for f in flags if "-" in f[2:]] == [], f"fastgpt {command} --help shows hyphenated options"


def test_hyphenated_alias_works_and_warns_once(capsys):
    args = serve_parser().parse_args(["--model", "m", "--api-key", "k", "--max-queue=3", "--max-queue", "4"])
    assert args.api_key == "k" and args.max_queue == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "fastgpt serve: warning: --api-key is deprecated, use --api_key (one spelling for every command)",
        "fastgpt serve: warning: --max-queue is deprecated, use --max_queue (one spelling for every command)",
    ]


def test_unknown_hyphenated_option_is_still_an_error(capsys):
    with pytest.raises(SystemExit):
        serve_parser().parse_args(["--model", "m", "--no-such-flag"])
    assert "--no-such-flag" in capsys.readouterr().err


def test_values_that_look_like_flags_are_left_alone():
    # a positional / value with hyphens (a prompt, a path) is not rewritten
    known = {"--prompt", "--max_tokens"}
    assert cli.canonical_flag("--max-tokens=5", known) == "--max_tokens=5"
    assert cli.canonical_flag("--max_tokens=5", known) is None
    assert cli.canonical_flag("some-text", known) is None
    assert cli.canonical_flag("--", known) is None
    assert cli.canonical_flag("--not-known", known) is None


def test_training_stage_keys_accept_hyphens_with_a_warning(capsys):
    cfg = parse_args(TrainConfig, ["--max-steps=7", "--max_steps=7", "--lr=0.5"])
    assert cfg.max_steps == 7 and cfg.lr == 0.5
    err = capsys.readouterr().err
    assert "warning: --max-steps is deprecated, use --max_steps" in err
    assert err.count("warning") == 1


def test_the_rl_demo_speaks_the_same_dialect(capsys):
    """``python -m fastgpt.rl.demo`` (not a subcommand) parses with the same parser as the tools."""
    from fastgpt.rl import demo

    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0
    flags = re.findall(r"(?<![\w-])--[a-z][a-z0-9_.-]*", capsys.readouterr().out)
    assert "--vocab_size" in flags and [f for f in flags if "-" in f[2:]] == []
    with pytest.raises(SystemExit):  # parsed (with the warning), then stopped by an unknown flag
        demo.main(["--vocab-size=64", "--no_such_flag"])
    err = capsys.readouterr().err
    assert "--vocab-size is deprecated, use --vocab_size" in err and "--no_such_flag" in err
