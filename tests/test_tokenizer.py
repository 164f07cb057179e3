"""Tokenizer: training, special tokens, round trip, save/load, transformers interop, HF tokenizer.json."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from fastgpt.tokenizer import BOS, SPECIAL_TOKENS, Tokenizer, TokenizerError


def _corpus(n_docs: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    syllables = "ka ri to na mi su ve lo pe an is th er ou".split()
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    words += [
        "naïve",
        "café",
        "Straße",
        "日本語",
        "данные",
        "🙂",
        "don't",
        "I'll",
        "    ",
        "\n",
        "2024",
        "3.14",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) for _ in range(n_docs)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(_corpus(), vocab_size=400)


def test_trained_vocabulary_layout(tok):
    assert tok.vocab_size == 400
    ids = [tok.token_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(400 - len(SPECIAL_TOKENS), 400))  # appended at the top, in contract order
    assert tok.bos_id == tok.token_id(BOS) == ids[0]
    # all 256 bytes are tokens, so text never seen in training still encodes
    unseen = "ǅ ꙮ 𓀀 \x00\x7f"
    assert tok.decode(tok.encode(unseen)) == unseen


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_decode_encode_roundtrip(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.sampled_from([*SPECIAL_TOKENS, "<|endoftext|>", "<|", "|>", "bos", " ", "x"]), max_size=12)
)
def test_special_token_strings_in_text_stay_text(tok, pieces):
    text = "".join(pieces)
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(ids) == text


def test_add_bos_and_batch(tok):
    texts = _corpus(5, seed=1) + ["", "<|bos|>"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, add_bos=True) == [[tok.bos_id, *tok.encode(t)] for t in texts]
    assert tok.decode([tok.bos_id, tok.token_id("<|user_start|>")]) == "<|bos|><|user_start|>"


def test_token_byte_lengths_sum_to_utf8_length(tok):
    lengths = tok.token_byte_lengths()
    assert lengths.shape == (tok.vocab_size,) and lengths.dtype == np.int32
    assert all(lengths[i] == 0 for i in tok.special_tokens.values())
    for text in _corpus(5, seed=2) + ["日本語 🙂 é"]:
        ids = tok.encode(text, add_bos=True)
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
        assert b"".join(tok.token_bytes(i) for i in ids[1:]) == text.encode("utf-8")


def test_save_load_same_ids_and_hash(tok, tmp_path):
    tok.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.hash == tok.hash and loaded.special_tokens == tok.special_tokens
    texts = _corpus(10, seed=3)
    assert loaded.encode_batch(texts) == tok.encode_batch(texts)
    assert Tokenizer.load(tmp_path / "tokenizer.json").hash == tok.hash  # the file alone, too
    other = Tokenizer.train(_corpus(seed=9), vocab_size=400)
    assert other.hash != tok.hash


def test_engine_choice_is_verified(tok, tmp_path):
    """tiktoken encodes only tokenizer.json files it provably reproduces; others go to HF tokenizers."""
    data = json.loads((tok.save(tmp_path / "a") / "tokenizer.json").read_text())
    (tmp_path / "bare").mkdir()  # no fastgpt metadata: the merges are re-derived and checked
    (tmp_path / "bare" / "tokenizer.json").write_text(json.dumps(data))
    assert Tokenizer.load(tmp_path / "bare").engine == "tiktoken"
    merges = data["model"]["merges"]
    merges[-1], merges[-2] = merges[-2], merges[-1]  # a different BPE: must not be run by tiktoken
    (tmp_path / "edited").mkdir()
    (tmp_path / "edited" / "tokenizer.json").write_text(json.dumps(data))
    edited = Tokenizer.load(tmp_path / "edited")
    assert edited.engine == "tokenizers"
    reference = HFTokenizer.from_file(str(tmp_path / "edited" / "tokenizer.json"))
    for text in _corpus(10, seed=6):
        assert edited.encode(text) == reference.encode(text).ids


def test_saved_dir_loads_in_transformers(tok, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok.save(tmp_path)
    for hf in (AutoTokenizer.from_pretrained(tmp_path), PreTrainedTokenizerFast.from_pretrained(tmp_path)):
        for text in _corpus(8, seed=4) + ["  leading and trailing  ", "é\n\n\t x"]:
            assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
            assert hf.decode(tok.encode(text)) == text
        assert hf.bos_token_id == tok.bos_id
        assert hf.eos_token_id == tok.token_id("<|assistant_end|>")
        assert hf.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [tok.token_id(t) for t in SPECIAL_TOKENS]


def test_train_rejects_bad_input():
    with pytest.raises(TokenizerError, match="no room for merges"):
        Tokenizer.train(["abc"], vocab_size=200)
    with pytest.raises(TokenizerError, match="corpus is empty"):
        Tokenizer.train([], vocab_size=300)
    with pytest.raises(TokenizerError, match="training text 1 is bytes"):
        Tokenizer.train(["ok", b"bytes"], vocab_size=300)
    with pytest.warns(UserWarning, match="supports only"):
        small = Tokenizer.train(["tiny corpus"], vocab_size=1000)
    assert small.vocab_size < 1000 and small.decode(small.encode("tiny")) == "tiny"


def test_extra_special_tokens(tmp_path):
    tok = Tokenizer.train(_corpus(20), vocab_size=320, special_tokens=["<|fim|>", BOS])
    assert tok.token_id("<|fim|>") == 319 and tok.token_id(BOS) == 320 - 12
    assert tok.encode("<|fim|>") != [319]
    with pytest.raises(TokenizerError, match="not a special token"):
        tok.token_id("<|nope|>")


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(TokenizerError, match="no such file"):
        Tokenizer.load(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="no tokenizer here"):
        Tokenizer.load(tmp_path)
    bad_tiktoken = tmp_path / "x.tiktoken"
    bad_tiktoken.write_text("YQ== 0\nnot base64 at all\n")
    with pytest.raises(TokenizerError, match=r"x.tiktoken:2: expected '<base64 token> <rank>'"):
        Tokenizer.load(bad_tiktoken)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "encoder.json").write_text("[1, 2]")
    (tmp_path / "g" / "vocab.bpe").write_text("#version: 0.2\n")
    with pytest.raises(TokenizerError, match="encoder.json: expected a JSON object"):
        Tokenizer.load(tmp_path / "g")
    not_hf = tmp_path / "other.json"
    not_hf.write_text('{"vocab": {}}')
    with pytest.raises(TokenizerError, match="not an HF tokenizer.json"):
        Tokenizer.load(not_hf)
    with pytest.raises(TokenizerError, match="encoder.json: expected a JSON object"):
        Tokenizer.load(tmp_path / "g" / "vocab.bpe")  # either file of the pair finds the other
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TokenizerError, match="not a tokenizer file"):
        Tokenizer.load(tmp_path / "notes.txt")
    with pytest.raises(TokenizerError, match="unknown vocabulary"):
        from fastgpt.tokenizer import vocabulary_files

        vocabulary_files("gpt5")


def _sentencepiece_style_tokenizer_json(folder) -> HFTokenizer:
    """A Llama/SmolLM-style HF tokenizer (NFKC, Metaspace, byte fallback, <s>/</s>) built offline."""
    hf = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    hf.normalizer = normalizers.NFKC()
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
    )
    hf.train_from_iterator(_corpus(), trainer)
    data = json.loads(hf.to_str())  # byte-fallback pieces are ordinary vocabulary entries, as in Llama
    data["added_tokens"] = [t for t in data["added_tokens"] if not t["content"].startswith("<0x")]
    hf = HFTokenizer.from_str(json.dumps(data))
    hf.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return hf


def test_hf_tokenizer_json_parity(tmp_path):
    reference = _sentencepiece_style_tokenizer_json(tmp_path)
    tok = Tokenizer.load(tmp_path)
    texts = _corpus(10, seed=5) + ["ﬁne ① Ⅸ", "unseen: ǅ 𓀀"]
    for text in texts:
        assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids
    assert tok.bos_id == reference.token_to_id("<s>")
    # chat tokens were appended after the highest id, in contract order
    top = max(reference.get_vocab().values())
    assert [tok.token_id(t) for t in SPECIAL_TOKENS[1:]] == list(range(top + 1, top + len(SPECIAL_TOKENS)))
    # byte lengths: SentencePiece pieces, byte-fallback tokens and the "▁" space marker
    lengths = tok.token_byte_lengths()
    for text in texts:
        normalized = reference.normalizer.normalize_str(text)
        ids = reference.encode(text, add_special_tokens=False).ids
        assert int(lengths[ids].sum()) == len(normalized.encode()) + 1  # Metaspace prepends one "▁"
    # saved and reloaded (now with fastgpt's metadata) it keeps ids and <s> as bos
    tok.save(tmp_path / "saved")
    again = Tokenizer.load(tmp_path / "saved")
    assert again.hash == tok.hash and again.bos_id == tok.bos_id
