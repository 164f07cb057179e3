"""The commands that load one model dir (``fastgpt chat``, ``serve``, ``eval``) check their flags before
loading anything: a bad value is exit status 2 and one line ``fastgpt CMD: error: ...`` naming the flag.
The model dir of every case is empty, so only the flag check can answer with status 2."""

from __future__ import annotations

import pytest

from fastgpt.chat.cli import main as chat_main
from fastgpt.eval.cli import main as eval_main
from fastgpt.serve.server import main as serve_main

MAINS = {"chat": chat_main, "serve": serve_main, "eval": eval_main}
# the flags each command needs besides --model to get as far as its checks
BASE = {"chat": ["--prompt", "Hi"], "serve": [], "eval": ["--tasks", "chain_sum_easy"]}
CASES = [
    ("chat", ["--temperature", "-1"], "--temperature "),
    ("chat", ["--top_p", "2"], "--top_p "),
    ("chat", ["--top_k", "0"], "--top_k "),
    ("chat", ["--max_tokens", "0"], "--max_tokens "),
    ("chat", ["--tools", "python,search"], "--tools "),
    ("serve", ["--max_tokens", "0"], "--max_tokens"),
    ("serve", ["--default_max_tokens", "-5"], "--default_max_tokens"),
    ("serve", ["--max_queue", "0"], "--max_queue"),
    ("serve", ["--max_n", "16"], "--max_n 16 cannot exceed --max_batch_rows 8"),
    ("serve", ["--port", "70000"], "--port"),
    ("serve", ["--tools", "python,shell"], "--tools names an unknown tool 'shell'"),
    ("eval", ["--problems", "0"], "--problems"),
    ("eval", ["--problems", "-3"], "--problems"),
    ("eval", ["--bpb_tokens", "0"], "--bpb_tokens"),
    ("eval", ["--max_new_tokens", "0"], "--max_new_tokens"),
    ("eval", ["--batch_size", "0"], "--batch_size"),
    ("eval", ["--pass_k", "-1"], "--pass_k"),
    ("eval", ["--pass_k", "4", "--samples", "2"], "--samples"),
    ("eval", ["--temperature", "-0.5"], "--temperature"),
    ("eval", ["--out", "."], "--out"),
    ("eval", ["--compare_tools", "python,shell"], "--compare_tools"),
]


@pytest.mark.parametrize("command, flags, named", CASES, ids=[f"{c}{'_'.join(f)}" for c, f, _ in CASES])
def test_a_bad_flag_is_one_error_line_before_loading(tmp_path, capsys, command, flags, named):
    assert MAINS[command](["--model", str(tmp_path), *BASE[command], *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastgpt {command}: error: {named}") and err.count("\n") == 1, err
