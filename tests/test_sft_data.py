"""Built-in SFT sets and mixtures: generated answers are right, sets are valid, mixing obeys epochs."""

import json
import re
import zipfile
from fractions import Fraction

import pytest

from fastgpt.conversation import tool_call_expression, validate_messages
from fastgpt.sft_data import load_mixture, parse_mixture
from fastgpt.sft_data.arithmetic import arithmetic_conversations
from fastgpt.sft_data.chatterbot import chatterbot_conversations
from fastgpt.sft_data.identity import identity_conversations
from fastgpt.sft_data.unknown import unknown_entity_conversations


def _exact(expression: str) -> Fraction:
    """Independent reference for the generator's simple expressions: exact rational arithmetic."""
    tokens = re.findall(r"\d+(?:\.\d+)?|//|[-+*/%]", expression)
    values, ops = [Fraction(tokens[0])], []
    for op, num in zip(tokens[1::2], tokens[2::2]):
        v = Fraction(num)
        if op in "*/%" or op == "//":
            a = values.pop()
            values.append({"*": a * v, "/": a / v, "//": Fraction(a // v), "%": a % v}[op])
        else:
            ops.append(op)
            values.append(v)
    total = values[0]
    for op, v in zip(ops, values[1:]):
        total = total + v if op == "+" else total - v
    return total


def test_arithmetic_tool_results_are_correct_and_the_answer_comes_last():
    for conv in arithmetic_conversations(200, seed=3):
        validate_messages(conv)
        calls = [(m, conv[i + 1]) for i, m in enumerate(conv) if m.get("tool_calls")]
        assert len(calls) >= 1
        for call_msg, tool_msg in calls:
            exact = _exact(tool_call_expression(call_msg["tool_calls"][0]))
            assert Fraction(tool_msg["content"]) == exact
        final = conv[-1]["content"]
        assert re.search(r"The answer is .+\.$", final)
        # the work comes first: the first assistant message has text and a call, not the answer
        assert "answer is" not in conv[1]["content"]
        # the stated answer is the last tool result (or contains it)
        assert calls[-1][1]["content"] in final.split("The answer is")[1]


def test_identity_uses_the_configured_name_and_maker():
    convs = identity_conversations(100, name="Ada", maker="Acme Labs", seed=1)
    for conv in convs:
        validate_messages(conv)
        for m in conv[1::2]:
            assert "Ada" in m["content"]
            assert "fastgpt" not in m["content"].replace("fastgpt developers", "")
    assert any("Acme Labs" in m["content"] for c in convs for m in c[1::2])


def test_unknown_entity_answers_refuse_and_name_the_entity():
    for conv in unknown_entity_conversations(100, seed=2):
        validate_messages(conv)
        answer = conv[1]["content"]
        assert re.search(r"don't know|not familiar|don't have any information", answer)
    # seeded: the same seed gives the same data, another seed other data
    assert unknown_entity_conversations(5, seed=7) == unknown_entity_conversations(5, seed=7)
    assert unknown_entity_conversations(5, seed=7) != unknown_entity_conversations(5, seed=8)


def _fake_corpus_wheel(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(
            "chatterbot_corpus/data/english/greetings.yml",
            "categories: [greetings]\nconversations:\n- - Hello\n  - Hi there\n"
            "- - How are you?\n  - Fine.\n  - Good to hear\n"  # odd: the trailing user turn is dropped
            "- - What is your name?\n  - My name is Chatterbot\n"  # clashes with identity: left out
            "- - Pick a number\n  - 42\n",
        )
        z.writestr("chatterbot_corpus/data/french/x.yml", "conversations:\n- - Bonjour\n  - Salut\n")
    return path


def test_chatterbot_reader_on_a_corpus_wheel_layout(tmp_path):
    convs = chatterbot_conversations(_fake_corpus_wheel(tmp_path / "c.whl"))
    assert convs == [
        [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}],
        [{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine."}],
        [{"role": "user", "content": "Pick a number"}, {"role": "assistant", "content": "42"}],
    ]


@pytest.mark.slow
def test_real_chatterbot_corpus_is_fetched_and_pinned():
    convs = chatterbot_conversations()
    assert 2000 <= len(convs) <= 2026
    for conv in convs:
        validate_messages(conv)


def test_mixture_specs():
    items = parse_mixture("identity*2, unknown ,x.jsonl*0.5")
    assert [(i.source, i.epochs) for i in items] == [("identity", 2.0), ("unknown", 1.0), ("x.jsonl", 0.5)]
    with pytest.raises(ValueError, match="EPOCHS"):
        parse_mixture("identity*two")
    with pytest.raises(ValueError, match="epochs must be > 0"):
        parse_mixture("identity*0")


def test_mixture_epochs_and_disjoint_validation(tmp_path):
    chats = tmp_path / "mine.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(40)
    ]
    chats.write_text("\n".join(json.dumps(r) for r in rows) + "\n{bad\n", encoding="utf-8")
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        "datasets:\n"
        "  - {name: identity, epochs: 2, options: {n: 50, name: Ada}}\n"
        "  - {path: mine.jsonl, epochs: 0.5}\n",
        encoding="utf-8",
    )
    logs = []
    train, val = load_mixture(str(mix), val_fraction=0.1, seed=0, log=logs.append)
    mine_train = [c for c in train if c[0]["content"].startswith("q")]
    mine_val = [c for c in val if c[0]["content"].startswith("q")]
    assert len(mine_val) == 4 and len(mine_train) == 18  # 40 - 4 held out, half of 36
    assert len(train) - len(mine_train) == 2 * 45  # identity: 50 - 5 held out, twice
    train_keys = {json.dumps(c) for c in train}
    assert not any(json.dumps(c) in train_keys for c in val)
    assert any("skipped 1" in line for line in logs)
    with pytest.raises(ValueError, match="has no option"):
        load_mixture(
            [parse_mixture("identity")[0].__class__("identity", 1.0, {"colour": 1})], log=logs.append
        )
    with pytest.raises(ValueError, match="neither a built-in set"):
        load_mixture("no_such_set", log=logs.append)
