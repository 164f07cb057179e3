"""The ``fastgpt`` command: one entry point, one module per subcommand.

Each subcommand lives in the module named below and exposes ``main(argv: list[str]) -> int``; this
file only routes, so adding a stage never touches another stage's code.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import sys
import warnings
from collections.abc import Collection, Iterator
from typing import Any

from fastgpt import __version__
from fastgpt.errors import UserError, report_user_error

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "tokenize": ("fastgpt.tokenizer_cli", "show how a tokenizer splits text (coloured tokens and ids)"),
    "train-tokenizer": ("fastgpt.tokenizer_cli", "train a byte-level BPE tokenizer on a corpus"),
    "prepare": ("fastgpt.data.prepare", "tokenize text sources into binary token shards"),
    "pretrain": ("fastgpt.pretrain", "pretrain a model (same as python -m fastgpt.pretrain)"),
    "sft": ("fastgpt.sft", "supervised finetuning on conversations"),
    "grpo": ("fastgpt.grpo", "reinforcement learning on verifiable rewards (GRPO)"),
    "reward": ("fastgpt.reward", "train a reward model on preference pairs"),
    "ppo": ("fastgpt.ppo", "RLHF with PPO against a reward model"),
    "dpo": ("fastgpt.dpo", "direct preference optimisation"),
    "export": ("fastgpt.checkpoint", "export a training checkpoint as an HF-format model dir"),
    "convert-gguf": ("fastgpt.model.gguf", "convert a GGUF file (e.g. SmolLM2) into a model dir"),
    "sample": ("fastgpt.sample", "sample text from a model dir"),
    "chat": ("fastgpt.chat.cli", "chat with a model in the terminal"),
    "serve": ("fastgpt.serve.server", "OpenAI-compatible HTTP server"),
    "eval": ("fastgpt.eval.cli", "evaluate a model (bpb, task accuracy, multiple choice)"),
    "report": ("fastgpt.eval.report", "write a report card from run dirs"),
}


# Optional packages (setup.py extras) that a subcommand's module imports, and the extra that brings each.
EXTRA_OF_PACKAGE: dict[str, str] = {
    "fastapi": "serve",
    "starlette": "serve",
    "pydantic": "serve",
    "uvicorn": "serve",
    "matplotlib": "report",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` for every subcommand: each option's default after its description (unless the
    description already states it, or there is nothing to show), description text kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        unset = default is None or default is False or default == "" or default is argparse.SUPPRESS
        if not action.option_strings or unset or "default" in text:
            return text
        return f"{text} (default: %(default)s)".strip()


def canonical_flag(arg: str, known: Collection[str]) -> str | None:
    """``--key-name[=v]`` spelled with hyphens -> ``--key_name[=v]`` when that is a known option, else
    None (already canonical, or not an option at all). fastgpt's one CLI dialect is ``--snake_case``
    keys (docs/architecture.md, "Command lines"); the hyphenated spelling is a deprecated alias."""
    if not arg.startswith("--") or arg == "--":
        return None
    key, sep, value = arg[2:].partition("=")
    if "-" not in key:
        return None
    snake = "--" + key.replace("-", "_")
    return snake + sep + value if snake in known else None


def warn_deprecated_spelling(prog: str, old: str, new: str) -> None:
    """The one-line deprecation note every command prints for a hyphenated flag."""
    print(
        f"{prog}: warning: {old} is deprecated, use {new} (one spelling for every command)", file=sys.stderr
    )


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every ``fastgpt`` tool command (tokenize, prepare, chat, serve, eval, ...): options
    are ``--snake_case`` like the training stages' ``--key=value`` keys, ``--help`` shows defaults
    (:class:`HelpFormatter`), and a hyphenated spelling of a known option (``--vocab-size``) still works
    with a one-line deprecation warning."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        known = self._option_string_actions
        out, warned = [], set()
        for arg in argv:
            fixed = canonical_flag(arg, known)
            if fixed is None:
                out.append(arg)
                continue
            old, new = arg.partition("=")[0], fixed.partition("=")[0]
            if old not in warned:
                warn_deprecated_spelling(self.prog, old, new)
                warned.add(old)
            out.append(fixed)
        return super().parse_known_args(out, namespace)


def model_command_parser(prog: str, description: str) -> ArgumentParser:
    """The parser of a command that loads one model dir to run it (chat, serve, eval): ``--model``
    (required), ``--device`` and ``--dtype``, spelled and explained the same in each."""
    p = ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--model", required=True, help="model dir (fastgpt or Hugging Face layout, with tokenizer)"
    )
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32)")
    return p


def add_tool_arguments(p: argparse.ArgumentParser, tools_help: str, no_tools_help: str) -> None:
    """``--tools`` (comma-separated built-in tools, default ``calculator``; ``none`` for none) and
    ``--no_tools`` (the same as ``--tools none``), for the commands that run tools (chat, serve)."""
    p.add_argument("--tools", default="calculator", help=tools_help)
    p.add_argument("--no_tools", action="store_true", help=no_tools_help)


@contextlib.contextmanager
def _warnings_as_one_line(command: str) -> Iterator[None]:
    """A command's user sees ``fastgpt prepare: warning: ...``, not the file, line number and source
    line of the ``warnings.warn`` call (Python's default, meant for developers). Restored afterwards, so
    a command run from Python (a notebook, a test) does not label later warnings as its own."""

    def one_line(message, category, filename, lineno, line=None) -> str:
        return f"fastgpt {command}: warning: {message}\n"

    saved = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = saved


def _usage() -> str:
    lines = ["usage: fastgpt <command> [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `fastgpt <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # nothing asked: the usage, as an error (scripts that forget the command notice)
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"fastgpt {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        close = difflib.get_close_matches(name, SUBCOMMANDS, n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        print(f"fastgpt: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    with _warnings_as_one_line(name):
        return _run(name, rest)


def _run(name: str, rest: list[str]) -> int:
    module_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        package = (e.name or "").split(".")[0]
        if package == "fastgpt":
            print(
                f"fastgpt {name}: not available in this version ({module_name} is missing)", file=sys.stderr
            )
            return 2
        if package in EXTRA_OF_PACKAGE:
            extra = EXTRA_OF_PACKAGE[package]
            print(f"fastgpt {name}: needs {package!r}: pip install 'fastgpt[{extra}]'", file=sys.stderr)
            return 2
        raise
    entry = getattr(module, f"main_{name.replace('-', '_')}", None) or module.main
    try:
        return int(entry(rest) or 0)
    except UserError as e:  # one a command did not report itself: still one line, not a traceback
        return report_user_error(name, e)


if __name__ == "__main__":
    sys.exit(main())
