"""Streaming text for the server: the pieces always concatenate to the tokenizer's one-shot decode
(byte-level BPE with characters split across tokens, and SentencePiece-style tokenizers whose decode of a
lone token drops its leading space), and stop strings cut exactly where ``str.find`` says."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from fastgpt.serve.decode import IncrementalDetokenizer, ReplyDecoder
from fastgpt.tokenizer import Tokenizer

TEXT = "Who are you? I am a small model: café, naïve, 日本語, 🙂 emoji. 12 * 7 = 84. " * 30


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train([TEXT], vocab_size=320)


def pieces(tokenizer, ids):
    d = IncrementalDetokenizer(tokenizer)
    out = [d.add(i) for i in ids]
    return out + [d.flush()]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab café日本🙂\n.")), max_size=40))
def test_pieces_of_encoded_text_concatenate_to_it(tokenizer, text):
    ids = tokenizer.encode(text)
    out = pieces(tokenizer, ids)
    assert "".join(out) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in p for p in out)  # a character split over tokens comes out whole


def test_pieces_of_random_tokens_concatenate_to_the_decode(tokenizer):
    rng = random.Random(0)
    special = set(tokenizer.special_tokens.values())
    for _ in range(300):
        ids = [
            i
            for i in (rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 25)))
            if i not in special
        ]
        assert "".join(pieces(tokenizer, ids)) == tokenizer.decode(ids)


class _HF:
    """A SentencePiece-style (Metaspace) tokenizer: decoding a token on its own drops its leading space."""

    def __init__(self):
        hf = HFTokenizer(models.BPE(unk_token="<unk>"))
        hf.pre_tokenizer = pre_tokenizers.Metaspace()
        hf.decoder = decoders.Metaspace()
        hf.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"]))
        self.hf = hf

    def encode(self, text):
        return self.hf.encode(text).ids

    def decode(self, ids):
        return self.hf.decode(list(ids))


def test_metaspace_tokenizer_keeps_its_spaces():
    tok = _HF()
    text = "Who are you? I am a small model."
    ids = tok.encode(text)
    assert "".join(tok.decode([i]) for i in ids) != tok.decode(ids)  # naive per-token decoding is wrong
    assert "".join(pieces(tok, ids)) == tok.decode(ids)


@settings(max_examples=80, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab c.日")), max_size=30),
    st.lists(
        st.text(alphabet=st.sampled_from(list("ab c.日")), min_size=1, max_size=3), min_size=1, max_size=3
    ),
)
def test_stop_strings_cut_at_the_first_occurrence(tokenizer, text, stops):
    """Generation stops at the first token after which the text holds a stop string, and the reply is
    the text before that string's earliest occurrence (reference: str.find on each decoded prefix)."""
    ids = tokenizer.encode(text)
    expected, stopped = text, False
    for n in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:n])
        hits = [prefix.find(s) for s in stops if s in prefix]
        if hits:
            expected, stopped = prefix[: min(hits)], True
            break
    dec = ReplyDecoder(tokenizer, None, stops)
    shown = ""
    for i in ids:
        shown += dec.feed(i)
        if dec.stopped:
            break
    if not dec.stopped:
        shown += dec.finish()
    assert shown == expected == dec.content
    assert dec.stopped == stopped


def test_special_tokens_are_not_shown(tokenizer):
    dec = ReplyDecoder(tokenizer)
    ids = [
        tokenizer.bos_id,
        *tokenizer.encode("hi"),
        tokenizer.token_id("<|user_start|>"),
        *tokenizer.encode(" there"),
    ]
    assert "".join(dec.feed(i) for i in ids) + dec.finish() == "hi there"


def test_inline_calculator_rendering_and_stray_tool_tokens(tokenizer):
    from fastgpt.conversation import SpecialTokenFormat

    fmt = SpecialTokenFormat(tokenizer)
    call = [fmt.tool_call_start_id, *tokenizer.encode("12*7"), fmt.tool_call_end_id]
    output = fmt.tool_output_ids("84")
    reply = [*tokenizer.encode("Let me see."), *call, *output, *tokenizer.encode(" So 84.")]
    dec = ReplyDecoder(tokenizer, fmt, tool_mode="inline")
    assert "".join(dec.feed(t) for t in reply) + dec.finish() == "Let me see.[calculator: 12*7 = 84] So 84."
    # tool tokens out of order are stray special tokens: not shown
    stray = [fmt.tool_call_end_id, *tokenizer.encode("ab"), fmt.tool_output_end_id, fmt.tool_output_start_id]
    dec = ReplyDecoder(tokenizer, fmt, tool_mode="inline")
    assert "".join(dec.feed(t) for t in stray) + dec.finish() == "ab"
    # the client runs the tool: the call is captured, not shown
    dec = ReplyDecoder(tokenizer, fmt, tool_mode="client")
    assert "".join(dec.feed(t) for t in [*tokenizer.encode("Hm."), *call]) + dec.finish() == "Hm."
    assert dec.tool_calls == [{"name": "calculator", "arguments": {"expression": "12*7"}}]


def test_server_run_tools_inline_and_the_clients_tools_returned(tokenizer):
    from fastgpt.conversation import SpecialTokenFormat

    fmt = SpecialTokenFormat(tokenizer)

    def call(text):
        return [fmt.tool_call_start_id, *tokenizer.encode(text), fmt.tool_call_end_id]

    reply = [*call("python\nprint(2)"), *fmt.tool_output_ids("2\n"), *tokenizer.encode("ok")]
    reply += call('lookup\n{"q": "a"}')
    dec = ReplyDecoder(tokenizer, fmt, inline_tools={"python"})
    assert "".join(dec.feed(t) for t in reply) + dec.finish() == "[python: print(2) = 2\n]ok"
    assert dec.tool_calls == [{"name": "lookup", "arguments": {"q": "a"}}]
