"""``fastgpt tokenize`` and ``fastgpt train-tokenizer``.

``fastgpt tokenize "text"`` prints the text with each token on a coloured background, then the ids,
so one sees at a glance why a model finds spelling, digits or rare scripts hard: "strawberry" is two
or three tokens, "12345" splits into "123" + "45", and a rare character may be several byte tokens
(shown as ``\\xNN`` escapes: none of them is a character on its own).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fastgpt import cli
from fastgpt.cli import HelpFormatter
from fastgpt.data.errors import DataError
from fastgpt.data.sources import ReadOptions, expand_sources, iter_documents
from fastgpt.errors import report_user_error
from fastgpt.tokenizer import NAMED_VOCABS, Tokenizer, TokenizerError

__all__ = ["main", "main_tokenize", "main_train_tokenizer", "render_tokens"]

# background colours (ANSI 256-colour palette), pale enough for black text
_BACKGROUNDS = (153, 194, 223, 225, 187, 152, 217, 230)


def _token_text(data: bytes) -> tuple[str, bool]:
    """A token's bytes as display text (pieces of characters as ``\\xNN``); ``False`` if there are such pieces."""
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="backslashreplace"), False


def _visible(text: str) -> str:
    return text.replace("\n", "↵\n").replace("\t", "→\t").replace("\r", "␍")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def render_tokens(tok: Tokenizer, ids: list[int], color: bool) -> str:
    """The tokens of ``ids`` one after another, coloured (``color``) or bracketed."""
    parts = []
    for i, token_id in enumerate(ids):
        text, whole = _token_text(tok.token_bytes(token_id))
        text = _visible(text)
        if not color:
            parts.append(f"[{text}]")
            continue
        style = f"48;5;{_BACKGROUNDS[i % len(_BACKGROUNDS)]};38;5;16" + ("" if whole else ";3")
        # keep colour off across line breaks so the background does not bleed to the terminal edge
        parts.append("\n".join(f"\x1b[{style}m{line}\x1b[0m" if line else "" for line in text.split("\n")))
    return "".join(parts)


def main_tokenize(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="fastgpt tokenize",
        description="Show how a tokenizer splits text: coloured tokens, then the ids.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("text", nargs="*", help="text to tokenize (default: read stdin)")
    parser.add_argument(
        "--vocab",
        default="gpt2",
        help=f"tokenizer dir/file, model dir, or a named vocabulary ({', '.join(NAMED_VOCABS)}); default gpt2",
    )
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour each token's background (auto: on a terminal, unless NO_COLOR is set)")  # fmt: skip
    parser.add_argument("--ids_only", action="store_true", help="print only the ids")
    args = parser.parse_args(argv)
    text = " ".join(args.text) if args.text and args.text != ["-"] else sys.stdin.read()
    try:
        tok = Tokenizer.load(args.vocab)
    except TokenizerError as e:
        return report_user_error("tokenize", e, status=1)
    ids = tok.encode(text)
    if args.ids_only:
        print(" ".join(map(str, ids)))
        return 0
    color = args.color == "always" or (
        args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    n_bytes = len(text.encode("utf-8"))
    print(render_tokens(tok, ids, color))
    print(
        f"\n{_count(len(ids), 'token')}, {_count(len(text), 'character')}, {_count(n_bytes, 'byte')} "
        f"({n_bytes / max(len(ids), 1):.2f} bytes/token) with {tok.name or args.vocab} (vocab {tok.vocab_size:,})"
    )
    print(ids)
    return 0


def main_train_tokenizer(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="fastgpt train-tokenizer",
        description="Train a byte-level BPE tokenizer and save it as a dir.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--source",
        action="append",
        required=True,
        help="file, dir, glob, built-in corpus or hf:NAME; repeatable",
    )
    parser.add_argument(
        "--vocab_size", type=int, default=4096, help="tokens in the vocabulary, specials included"
    )
    parser.add_argument("--out", required=True, help="output dir (fastgpt / transformers tokenizer dir)")
    parser.add_argument("--text_field", default="text", help="JSONL field / parquet column with the text")
    parser.add_argument("--txt_mode", choices=("file", "blocks"), default="file",
                        help=".txt documents: one per file, or one per blank-line-separated block")  # fmt: skip
    parser.add_argument("--max_chars", type=float, default=2e9, help="train on at most this much text")
    args = parser.parse_args(argv)

    seen = {"chars": 0}

    def texts():
        for doc in iter_documents(expand_sources(args.source), ReadOptions(args.text_field, args.txt_mode)):
            seen["chars"] += len(doc)
            yield doc
            if seen["chars"] >= args.max_chars:
                return

    start = time.perf_counter()
    try:
        if Path(args.out).exists() and not Path(args.out).is_dir():  # known before a long training run
            raise TokenizerError(f"--out {args.out}: exists and is not a directory (a tokenizer is a dir)")
        tok = Tokenizer.train(texts(), vocab_size=args.vocab_size, show_progress=sys.stderr.isatty())
        tok.save(args.out)
    except (DataError, TokenizerError) as e:
        return report_user_error("train-tokenizer", e, status=1)
    print(
        f"{args.out}: {tok.vocab_size:,} tokens trained on {seen['chars']:,} characters in "
        f"{time.perf_counter() - start:.1f}s (hash {tok.hash[:12]})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fastgpt.tokenizer_cli tokenize|train-tokenizer ...``"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train-tokenizer":
        return main_train_tokenizer(argv[1:])
    return main_tokenize(argv[1:] if argv and argv[0] == "tokenize" else argv)


if __name__ == "__main__":
    sys.exit(main())
