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
    dec = ReplyDecoder(tokenizer, None, stops)
    shown = ""
    for i in tokenizer.encode(text):
        shown += dec.feed(i)
        if dec.stopped:
            break
    if not dec.stopped:
        shown += dec.finish()
    hits = [text.find(s) for s in stops if s in text]
    expected = text[: min(hits)] if hits else text
    assert shown == expected == dec.content
    assert dec.stopped == bool(hits)


def test_special_tokens_are_not_shown(tokenizer):
    dec = ReplyDecoder(tokenizer)
    ids = [
        tokenizer.bos_id,
        *tokenizer.encode("hi"),
        tokenizer.token_id("<|user_start|>"),
        *tokenizer.encode(" there"),
    ]
    assert "".join(dec.feed(i) for i in ids) + dec.finish() == "hi there"
