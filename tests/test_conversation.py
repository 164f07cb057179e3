"""Conversation validation, file readers (jsonl, json, ShareGPT) with counted skips, and --strict."""

import json

import pytest

from fastgpt.chat.template import format_for
from fastgpt.conversation import (
    ConversationError,
    ReadStats,
    calculator_call,
    read_conversations,
    sharegpt_to_messages,
    validate_messages,
)

U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}
S = {"role": "system", "content": "be brief"}


def test_valid_conversations_pass_and_are_normalized():
    call = {"type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2+3"}'}}
    msgs = [
        S,
        U,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "5"},
        A,
    ]
    out = validate_messages(msgs)
    assert out[2]["content"] == "" and out[2]["tool_calls"][0] == calculator_call("2+3")
    assert validate_messages([U, A, U, A]) == [U, A, U, A]
    assert validate_messages([U], require_assistant=False) == [U]


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([], "non-empty"),
        ([A], "must follow a user"),
        ([U, U, A], "must follow an assistant"),
        ([U, A, S], "system message may only come first"),
        ([U, {"role": "bot", "content": "x"}], "unknown role 'bot'"),
        ([U, {"role": "assistant"}], "'content' must be a string"),
        ([U, {"role": "assistant", "content": 3}], "'content' must be a string"),
        ([U, A, {"role": "tool", "content": "5"}], "without a tool call"),
        (
            [U, {"role": "assistant", "content": "", "tool_calls": [calculator_call("1")]}, U, A],
            "expected a tool result",
        ),
        (
            [U, {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "calculator"}}]}],
            "expression",
        ),
        (
            [
                U,
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{"}}],
                },
            ],
            "JSON",
        ),
        ([U], "must end with an assistant reply"),
        ([S], "at least one user message"),
    ],
)
def test_invalid_conversations_name_the_rule(messages, fragment):
    with pytest.raises(ConversationError, match=None) as e:
        validate_messages(messages)
    assert fragment in str(e.value)


def test_prompt_may_not_stop_between_a_call_and_its_result():
    msgs = [U, {"role": "assistant", "content": "", "tool_calls": [calculator_call("1+1")]}]
    with pytest.raises(ConversationError, match="tool results"):
        validate_messages(msgs, require_assistant=False)


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_reader_skips_and_counts_bad_lines(tmp_path):
    good = json.dumps({"messages": [U, A]})
    path = _write_jsonl(
        tmp_path / "chats.jsonl",
        [
            good,
            json.dumps([U, A, U, A]),  # a bare messages list
            "{not json",
            json.dumps({"messages": [A, U]}),  # wrong order
            "",
            json.dumps({"messages": [U, {"role": "robot", "content": "x"}]}),
            json.dumps({"text": "no messages"}),
        ],
    )
    stats = ReadStats()
    convs = read_conversations(path, stats=stats)
    assert [len(c) for c in convs] == [2, 4]
    assert (stats.read, stats.kept, stats.skipped) == (6, 2, 4)
    assert stats.reasons[0].startswith(f"{path}:3: invalid JSON")
    assert f"{path}:4: message 0" in stats.reasons[1]
    assert "skipped 4" in stats.summary("chats")


def test_strict_reader_fails_on_the_first_bad_line(tmp_path):
    path = _write_jsonl(
        tmp_path / "c.jsonl", [json.dumps({"messages": [U, A]}), json.dumps({"messages": [U]})]
    )
    with pytest.raises(ConversationError, match=r"c\.jsonl:2: a training conversation must end"):
        read_conversations(path, strict=True)


def test_sharegpt_records_with_tool_calls(tmp_path):
    record = {
        "system": "You are helpful.",
        "conversations": [
            {"from": "human", "value": "What is 6*7?"},
            {
                "from": "function_call",
                "value": json.dumps({"name": "calculator", "arguments": {"expression": "6*7"}}),
            },
            {"from": "observation", "value": "42"},
            {"from": "gpt", "value": "It is 42."},
        ],
    }
    expected = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "What is 6*7?"},
        {"role": "assistant", "content": "", "tool_calls": [calculator_call("6*7")]},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "It is 42."},
    ]
    assert validate_messages(sharegpt_to_messages(record)) == expected
    path = tmp_path / "share.json"
    path.write_text(
        json.dumps([record, {"conversations": [{"from": "alien", "value": "x"}]}]), encoding="utf-8"
    )
    stats = ReadStats()
    assert read_conversations(path, stats=stats) == [expected]
    assert stats.skipped == 1 and "unknown ShareGPT speaker 'alien'" in stats.reasons[0]


def test_unsupported_or_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_conversations(tmp_path / "none.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConversationError, match="unsupported conversation file"):
        read_conversations(tmp_path / "x.txt")


def test_check_fits_names_a_chat_token_beyond_the_embedding():
    """fastgpt's ten chat tokens sit above <|bos|>; a model whose embedding stops at <|bos|> (a base
    model that never learned them) cannot chat in this format."""
    from fastgpt.tokenizer import Tokenizer

    tok = Tokenizer.train(["some text to learn merges from, 12 * 7 = 84. " * 30], vocab_size=300)
    fmt = format_for(tok)
    highest = max(
        tok.token_id(t) for t in ("<|assistant_end|>", "<|tool_call_start|>", "<|tool_output_start|>")
    )
    fmt.check_fits(tok.vocab_size, "full")
    with pytest.raises(
        ConversationError, match=rf"base: the chat format uses token id {highest} but the model has"
    ):
        fmt.check_fits(tok.bos_id + 1, "base")
