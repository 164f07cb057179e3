"""``fastgpt chat``: multi-line input, streamed display of text and tool calls, and the loop's
commands, driven end to end through a real (tiny, random) model dir."""

import io
import json

import pytest
import torch

from fastgpt.chat.cli import StreamPrinter, chat_loop, read_message
from fastgpt.conversation import SpecialTokenFormat, calculator_call, python_call
from fastgpt.model import GPT, GPTConfig
from fastgpt.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(["Hello there, how are you today? 12 * 7 = 84. 日本語 " * 20], vocab_size=300)


def _save_model(tok, model_dir, vocab_size: int | None = None):
    """A one-layer random model with ``tok`` saved as a model dir (``vocab_size`` defaults to the
    tokenizer's)."""
    torch.manual_seed(0)
    config = GPTConfig.from_preset(
        "tiny",
        vocab_size=vocab_size or tok.vocab_size,
        n_layer=1,
        n_head=2,
        n_kv_head=2,
        n_embd=32,
        max_seq_len=64,
    )
    GPT(config).save_pretrained(model_dir)
    tok.save(model_dir)
    return model_dir


def test_read_message_joins_continued_lines_and_blocks():
    lines = iter(["one \\\n", "two\n", '"""\n', "a\n", "  b\n", '"""\n', "last\n"])
    shown = []
    assert read_message(lines, shown.append) == "one \ntwo"
    assert read_message(lines, shown.append) == "a\n  b"
    assert read_message(lines, shown.append) == "last"
    assert read_message(lines, shown.append) is None
    assert shown.count("...  ") == 1


def _printed(tok, fmt, ids) -> str:
    """What the chat loop shows for a reply streamed token by token (``finish`` at its end, as the
    loop does)."""
    out = io.StringIO()
    printer = StreamPrinter(tok, fmt, out)
    for t in ids:
        printer.feed(t)
    printer.finish()
    return out.getvalue()


@pytest.mark.parametrize(
    "text, call, output, after, shown",
    [
        (
            "Hello 日本語 ",
            calculator_call("12 * 7"),
            "84",
            " so 84.",
            "Hello 日本語 [calculator: 12 * 7 = 84] so 84.",
        ),
        (
            "Count: ",
            python_call('"hello".count("l")'),
            "2\n",
            " so 2.",
            'Count: [python: "hello".count("l") = 2\n] so 2.',
        ),
    ],
)
def test_stream_printer_shows_text_and_tool_calls(tok, text, call, output, after, shown):
    fmt = SpecialTokenFormat(tok)
    # render a reply with a tool call, as the engine produces it, and stream it token by token
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": text, "tool_calls": [call]},
        {"role": "tool", "content": output},
        {"role": "assistant", "content": after},
    ]
    prompt = fmt.render_prompt(msgs[:1])
    assert _printed(tok, fmt, fmt.render(msgs)[0][len(prompt) :]) == shown


def test_stream_printer_marks_a_call_not_run(tok):
    # a call the engine handed back (its tool is not enabled) ends the reply, marked as not run
    fmt = SpecialTokenFormat(tok)
    ids = [fmt.tool_call_start_id, *tok.encode("python\n1+1"), fmt.tool_call_end_id]
    assert _printed(tok, fmt, ids) == "[python: 1+1 = (not run)]"


@pytest.mark.parametrize(
    "flags, tools",
    [
        ([], ("calculator",)),
        (["--tools", "python,calculator"], ("python", "calculator")),
        (["--tools", "none"], ()),
        (["--tools", "python", "--no_tools"], ()),
    ],
)
def test_tools_flag_reaches_the_engine(tok, tmp_path, monkeypatch, capsys, flags, tools):
    import fastgpt.chat.cli as chat_cli

    engine = _RecordingEngine(tok)
    monkeypatch.setattr(chat_cli, "_load", lambda args: engine)
    assert chat_cli.main(["--model", str(tmp_path), "--prompt", "Hi", *flags]) == 0
    assert engine.settings[0]["tools"] == tools
    assert capsys.readouterr().out == "ok\n"


class _RecordingEngine:
    """Stands in for the engine to check what the loop sends (the loop, not the engine, is under test)."""

    def __init__(self, tok):
        self.tokenizer, self.chat_format = tok, SpecialTokenFormat(tok)
        self.prompts, self.settings = [], []

    def stream(self, prompt, **kw):
        self.prompts.append(prompt)
        self.settings.append(dict(kw))
        yield from self.tokenizer.encode("ok")
        yield self.chat_format.ids["assistant"][1]


def test_chat_loop_history_reset_and_temperature(tok):
    engine = _RecordingEngine(tok)
    fmt = engine.chat_format
    out = io.StringIO()
    lines = ["hi\n", "/temp 0.25\n", "again\n", "/reset\n", "fresh\n", "/quit\n"]
    chat_loop(engine, {"temperature": 0.6, "max_tokens": 8}, None, lines, out)
    hi = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    assert engine.prompts[0] == fmt.render_prompt(hi[:1])
    assert engine.prompts[1] == fmt.render_prompt([*hi, {"role": "user", "content": "again"}])  # history kept
    assert engine.prompts[2] == fmt.render_prompt([{"role": "user", "content": "fresh"}])  # after /reset
    assert [s["temperature"] for s in engine.settings] == [0.6, 0.25, 0.25]
    assert out.getvalue().count("assistant> ok") == 3


def test_mistyped_command_is_not_sent_to_the_model(tok):
    engine = _RecordingEngine(tok)
    out = io.StringIO()
    chat_loop(
        engine, {"temperature": 0.6, "max_tokens": 8}, None, ["/tmep 0.3\n", "/etc/hosts?\n", "/quit\n"], out
    )
    assert "unknown command /tmep" in out.getvalue()
    # a message that merely starts with a slash (a path) is still a message
    assert engine.prompts == [engine.chat_format.render_prompt([{"role": "user", "content": "/etc/hosts?"}])]


def test_one_shot_prompt_on_a_real_model_dir(tok, tmp_path, capsys):
    from fastgpt.chat.cli import main

    _save_model(tok, tmp_path)
    assert (
        main(["--model", str(tmp_path), "--prompt", "Hello", "--max_tokens", "5", "--temperature", "0"]) == 0
    )
    printed = capsys.readouterr().out
    assert printed.endswith("\n") and len(printed) > 1


def test_a_pretraining_runs_model_gets_a_note_to_finetune_it(tok, tmp_path, capsys):
    """After the README's main job a user chats with out/pretrain/model: say it is a base model."""
    from fastgpt.chat.cli import main

    for stage in ("pretrain", "sft"):
        model_dir = _save_model(tok, tmp_path / stage / "model")
        (model_dir.parent / "config.json").write_text(json.dumps({"stage": stage, "max_steps": 1}))
        assert main(["--model", str(model_dir), "--prompt", "Hi", "--max_tokens", "2"]) == 0
        err = capsys.readouterr().err
        if stage == "pretrain":
            assert f"note: {model_dir} is a pretrained base model" in err
            assert f"bash launch/sft.sh --model={model_dir}" in err
        else:
            assert "base model" not in err


@pytest.mark.slow
def test_one_shot_compiled_reply_equals_eager(tok, tmp_path, capsys):
    """``--compile default`` decodes through the compiled step: the greedy reply is the eager one."""
    from fastgpt.chat.cli import main

    _save_model(tok, tmp_path)
    replies = []
    for mode in ("off", "default"):
        args = ["--model", str(tmp_path), "--prompt", "Hello", "--max_tokens", "12", "--temperature", "0"]
        assert main([*args, "--compile", mode]) == 0
        replies.append(capsys.readouterr().out)
    assert replies[0] == replies[1] and len(replies[0]) > 1


def test_unusable_model_dir_dtype_or_prompt_is_one_error_line(tok, tmp_path, capsys):
    """A run dir instead of its model dir, a dtype name torch does not have, a device this machine
    lacks, a prompt longer than the context: exit 2 with one line naming the problem, no traceback."""
    from fastgpt.chat.cli import main

    model_dir = _save_model(tok, tmp_path / "run" / "model")
    (tmp_path / "run" / "config.json").write_text('{"preset": "tiny"}')  # what a training run writes
    cases = [
        (["--model", str(tmp_path / "run"), "--prompt", "Hi"], f"its model is {model_dir}"),
        (["--model", str(model_dir), "--prompt", "Hi", "--dtype", "double"], "dtype 'double'"),
        (["--model", str(model_dir), "--prompt", "Hello there " * 40], "context"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", str(model_dir), "--prompt", "Hi", "--device", "cuda"], "CUDA"))
    for argv, expected in cases:
        assert main([*argv, "--max_tokens", "4"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastgpt chat: error: ") and expected in err and err.count("\n") == 1, err
    assert main(["--model", str(model_dir), "--prompt", "Hi", "--dtype", "bf16", "--max_tokens", "4"]) == 0


def test_default_device_is_cuda_when_there_is_one(monkeypatch, tmp_path):
    """As serve, eval and sample: a GPU machine chats on the GPU unless --device says otherwise."""
    import fastgpt.model
    from fastgpt.chat.cli import _load, build_parser

    asked = []

    def record(path, *, dtype=None, device=None):
        asked.append(device)
        raise ValueError("stop here")

    monkeypatch.setattr(fastgpt.model, "from_pretrained", record)
    for available, argv, expected in [
        (True, [], "cuda"),
        (False, [], "cpu"),
        (True, ["--device", "cpu"], "cpu"),
    ]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda a=available: a)
        with pytest.raises(ValueError, match="stop here"):
            _load(build_parser().parse_args(["--model", str(tmp_path), *argv]))
        assert asked.pop() == expected


def test_a_base_model_without_chat_tokens_is_refused_in_one_line(tok, tmp_path, capsys):
    """Its embedding ends at <|bos|>: a chat would need token ids past it, so the command refuses the
    model in one line naming its embedding size."""
    from fastgpt.chat.cli import main

    _save_model(tok, tmp_path, vocab_size=tok.bos_id + 1)
    assert main(["--model", str(tmp_path), "--prompt", "Hi", "--max_tokens", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"model has {tok.bos_id + 1} token embeddings" in err, err


class _ScriptedTextEngine:
    """Stands in for the engine with a chat template that writes tool calls as text: each stream()
    yields the next scripted reply (the loop that runs the calls is under test)."""

    def __init__(self, tok, fmt, replies):
        self.tokenizer, self.chat_format = tok, fmt
        self.replies, self.prompts, self.settings = list(replies), [], []
        self.tool_registry = {"python": lambda code: f"ran {code}", "calculator": lambda expression: "?"}

    def stream(self, prompt, **kw):
        self.prompts.append(prompt)
        self.settings.append(dict(kw))
        yield from self.tokenizer.encode(self.replies.pop(0))
        yield self.tokenizer.token_id("<|im_end|>")


def test_tool_calls_written_as_text_are_run_and_the_model_replies_again():
    from fastgpt.chat.cli import _reply
    from fastgpt.chat.template import CHATML_TOOLS_TEMPLATE, TemplateFormat

    tok = Tokenizer.train(
        ["Hello there 42 tool call python code " * 20],
        vocab_size=300,
        special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fmt = TemplateFormat(tok, CHATML_TOOLS_TEMPLATE)
    call = '<tool_call>\n{"name": "python", "arguments": {"code": "6*7"}}\n</tool_call>'
    engine = _ScriptedTextEngine(tok, fmt, ["Let me run it." + call, "It is 42."])
    out = io.StringIO()
    user = [{"role": "user", "content": "6*7?"}]
    added = _reply(engine, user, {"tools": ("python",), "max_tokens": 50}, out)
    assert added == [
        {"role": "assistant", "content": "Let me run it.", "tool_calls": [python_call("6*7")]},
        {"role": "tool", "content": "ran 6*7"},
        {"role": "assistant", "content": "It is 42."},
    ]
    assert engine.prompts[1] == fmt.render_prompt(user + added[:2])
    assert engine.settings[0]["tools"] == ()  # the engine cannot run text calls mid-reply
    assert "[python: 6*7 = ran 6*7]\n" in out.getvalue()
    # a call of a tool that is not enabled ends the reply without running it
    engine = _ScriptedTextEngine(tok, fmt, ["x" + call])
    added = _reply(engine, user, {"tools": ("calculator",), "max_tokens": 50}, io.StringIO())
    assert len(added) == 1 and added[0]["tool_calls"] == [python_call("6*7")]
