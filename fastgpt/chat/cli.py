"""``fastgpt chat``: talk to a model in the terminal.

    fastgpt chat --model out/sft/model                    # interactive, streamed replies
    fastgpt chat --model out/sft/model --prompt "Hi!"     # one reply on stdout, for scripts

Interactive commands: ``/reset`` (forget the conversation), ``/temp 0.7`` (sampling temperature),
``/system TEXT`` (set the system message and reset), ``/quit``. Multi-line input: end a line with
``\\`` to continue it, or enclose a block between two lines of ``\"\"\"``.

Tools: ``--tools python,calculator`` names the tools the model may call (default ``calculator``;
``none`` or ``--no_tools`` runs none). Calls are run as the model writes them and shown inline as
``[calculator: EXPR = RESULT]`` or ``[python: CODE = OUTPUT]``; a call of a tool that is not enabled
is shown as ``[NAME: ARGS = (not run)]`` and ends the reply.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from fastgpt import cli
from fastgpt.chat.template import format_for
from fastgpt.conversation import TOOL_ARGUMENT, parse_tool_call_text
from fastgpt.errors import UserError, report_user_error
from fastgpt.tools import parse_tool_names, run_tool

__all__ = ["StreamPrinter", "main", "read_message"]


def build_parser() -> argparse.ArgumentParser:
    p = cli.model_command_parser("fastgpt chat", "Chat with a model in the terminal.")
    p.add_argument("--prompt", help="send this one message, print the reply and exit")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=50, help="sample from the k most likely tokens")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling, in (0, 1]; default: off")
    p.add_argument("--max_tokens", type=int, default=256, help="most tokens in one reply")
    p.add_argument("--seed", type=int, default=None, help="a fixed seed gives the same replies again")
    cli.add_tool_arguments(
        p,
        "comma-separated tools the model may call, run as it writes the call: calculator, python "
        "(sandboxed, docs/jagged.md); 'none' for no tools",
        "run no tools (same as --tools none)",
    )
    p.add_argument(
        "--compile",
        choices=["off", "default", "max-autotune"],
        default="off",
        help="decode through a torch.compile'd step (docs/inference.md): ~2-5x faster tokens after a "
        "10-80 s compile per reply-length bucket; needs a C++ compiler on CPU",
    )
    return p


def read_message(lines: Iterator[str], prompt: Callable[[str], None]) -> str | None:
    """One user message from ``lines`` (None at end of input), joining ``\\``-continued lines and
    ``\"\"\"`` blocks."""
    prompt("you> ")
    try:
        line = next(lines)
    except StopIteration:
        return None
    line = line.rstrip("\n")
    if line.strip() == '"""':
        block = []
        for more in lines:
            if more.rstrip("\n").strip() == '"""':
                break
            block.append(more.rstrip("\n"))
        return "\n".join(block)
    parts = []
    while line.endswith("\\"):
        parts.append(line[:-1])
        prompt("...  ")
        line = next(lines, "").rstrip("\n")
    parts.append(line)
    return "\n".join(parts)


class StreamPrinter:
    """Prints a streamed reply: text as soon as it decodes to whole characters, tool calls as
    ``[NAME: ARGUMENT = OUTPUT]`` once the call is complete (its tool's name is its first line),
    nothing for the stop token."""

    def __init__(self, tokenizer: Any, chat_format: Any, out: TextIO):
        self.tok, self.fmt, self.out = tokenizer, chat_format, out
        self.pending: list[int] = []  # text tokens not yet printed (an incomplete UTF-8 character)
        self.call: list[int] | None = None  # tokens of the tool call being written
        self.awaiting_output = False  # a call was shown; its output has not begun
        self.special = {
            chat_format.tool_output_start_id: "",
            chat_format.tool_output_end_id: "]",
        }
        self.special.pop(None, None)

    def feed(self, token: int) -> None:
        if token in self.fmt.stop_ids:
            return
        if token is not None and token == self.fmt.tool_call_start_id:
            self.flush()
            self.call = []
        elif self.call is not None:
            if token == self.fmt.tool_call_end_id:
                self._show_call(self.tok.decode(self.call))
                self.call = None
            else:
                self.call.append(token)
        elif token in self.special:
            self.flush()
            self.awaiting_output = False
            self.out.write(self.special[token])
        else:
            self.pending.append(token)
            text = self.tok.decode(self.pending)
            if not text.endswith("\ufffd"):
                self.out.write(text)
                self.pending = []
        self.out.flush()

    def _show_call(self, text: str) -> None:
        self._show_call_text(parse_tool_call_text(text))
        self.awaiting_output = True

    def _show_call_text(self, call: dict) -> None:
        fn = call["function"]
        name, args = fn["name"], fn["arguments"]
        shown = args[TOOL_ARGUMENT[name]] if name in TOOL_ARGUMENT else json.dumps(args, ensure_ascii=False)
        self.out.write(f"[{name}: {shown} = ")

    def flush(self) -> None:
        if self.pending:
            self.out.write(self.tok.decode(self.pending))
            self.pending = []

    def finish(self) -> None:
        """End of the reply: the rest of the text; a call that was not run is marked as such."""
        self.flush()
        if self.call is not None:  # cut off inside a call (the length limit)
            self.out.write(f"[tool call: {self.tok.decode(self.call)} (cut off)]")
            self.call = None
        elif self.awaiting_output:
            self.out.write("(not run)]")
            self.awaiting_output = False


def base_model_note(model_dir: str | Path) -> str | None:
    """A one-line note when ``model_dir`` is the model of a fastgpt pretraining run (its run dir's
    config.json says ``"stage": "pretrain"``): such a model continues text, it has not learned to answer,
    and the first thing a user does after the README's main job is chat with it."""
    from fastgpt.train.config import run_config_of  # heavy: loads torch; deferred until used

    if (run_config_of(model_dir) or {}).get("stage") != "pretrain":
        return None
    return (
        f"note: {model_dir} is a pretrained base model: it continues text rather than answering. "
        f"Finetune it into an assistant with: bash launch/sft.sh --model={model_dir}"
    )


def _load(args: argparse.Namespace):
    import torch  # heavy: torch, loaded only when the command runs (--help starts without it)

    from fastgpt.engine import Engine  # heavy: loads torch; deferred until used
    from fastgpt.model import from_pretrained  # heavy: loads torch; deferred until used
    from fastgpt.tokenizer import Tokenizer  # heavy: loads tokenizers, numpy; deferred until used

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")  # as serve, eval, sample
    model = from_pretrained(args.model, dtype=args.dtype, device=device)
    tokenizer = Tokenizer.load(args.model)
    chat_format = format_for(args.model)
    chat_format.check_fits(model.config.vocab_size, args.model)
    note = base_model_note(args.model)
    if note:
        print(note, file=sys.stderr)
    compile_mode = getattr(args, "compile", "off")
    return Engine(
        model, tokenizer, chat_format=chat_format, compile=False if compile_mode == "off" else compile_mode
    )


MAX_TOOL_ROUNDS = 4  # replies in a row that may call tools written as text, before the loop stops


def _reply(engine, messages: list[dict], settings: dict, out: TextIO) -> list[dict]:
    """Stream one assistant reply to ``out``; return the messages it adds to the history.

    In fastgpt's format the engine runs the enabled tools inside the reply. A chat template that
    writes tool calls as text (``TemplateFormat.tool_syntax``) ends its turn after the calls: they are
    run here, shown as ``[NAME: ARGUMENT = OUTPUT]``, added as tool messages, and the model replies
    again (at most :data:`MAX_TOOL_ROUNDS` times); a call of a tool that is not enabled ends the reply."""
    fmt = engine.chat_format
    enabled = tuple(settings.get("tools") or ())
    text_tools = getattr(fmt, "tool_syntax", None) is not None and not fmt.supports_tools
    stream_settings = {**settings, "tools": enabled if fmt.supports_tools else ()}
    added: list[dict] = []
    for _ in range(MAX_TOOL_ROUNDS + 1):
        printer = StreamPrinter(engine.tokenizer, fmt, out)
        tokens = []
        prompt = fmt.render_prompt([*messages, *added])
        for token in engine.stream(prompt, stop_ids=fmt.stop_ids, **stream_settings):
            tokens.append(token)
            printer.feed(token)
        printer.finish()
        out.write("\n")
        out.flush()
        if tokens and tokens[-1] in fmt.stop_ids:
            tokens = tokens[:-1]
        new = fmt.parse_reply(tokens)
        added += new
        calls = new[-1].get("tool_calls") if text_tools else None
        if not calls or any(c["function"]["name"] not in enabled for c in calls):
            return added
        registry = {n: engine.tool_registry[n] for n in enabled}
        for call in calls:
            output = run_tool(call, registry)
            printer._show_call_text(call)
            out.write(f"{output}]\n")
            added.append({"role": "tool", "content": output})
    return added


def chat_loop(engine, settings: dict, system: str | None, lines: Iterable[str], out: TextIO) -> None:
    """The interactive loop (``lines`` is stdin in use, a list in tests)."""
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    it = iter(lines)
    show = lambda s: (out.write(s), out.flush())
    show('Chatting. /reset, /temp T, /system TEXT, /quit; end a line with \\ or use """ for several lines.\n')
    while True:
        text = read_message(it, show)
        if text is None or text.strip() in ("/quit", "/exit"):
            show("\n" if text is None else "")
            return
        command, _, arg = text.strip().partition(" ")
        if command == "/reset":
            messages = list(base)
            show("(conversation reset)\n")
            continue
        if command == "/temp":
            try:
                settings["temperature"] = max(0.0, float(arg))
                show(f"(temperature {settings['temperature']})\n")
            except ValueError:
                show("(usage: /temp 0.7)\n")
            continue
        if command == "/system":
            base = [{"role": "system", "content": arg}] if arg else []
            messages = list(base)
            show("(system message set; conversation reset)\n")
            continue
        if re.fullmatch(r"/[A-Za-z]+", command):  # a mistyped command is not sent to the model
            show(f"(unknown command {command}; commands: /reset, /temp T, /system TEXT, /quit)\n")
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        show("assistant> ")
        try:
            messages += _reply(engine, messages, settings, out)
        except ValueError as e:  # e.g. the conversation outgrew the context
            show(f"\n(error: {e}; use /reset)\n")
            messages.pop()


def check_args(args: argparse.Namespace) -> None:
    """Sampling flags in range, before the model loads (one line naming the flag)."""
    from fastgpt.model.sampling import check_sampling  # heavy: loads torch; deferred until used

    check_sampling(args.temperature, args.top_k, args.top_p, flag="--")
    parse_tool_names(args.tools)
    if args.max_tokens < 1:
        raise UserError(f"--max_tokens must be >= 1, got {args.max_tokens}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        tools = () if args.no_tools else parse_tool_names(args.tools)
        engine = _load(args)
    except UserError as e:  # a model dir, tokenizer, dtype or device that cannot be used, named
        return report_user_error("chat", e)
    settings = dict(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        tools=tools,
    )
    if args.prompt is not None:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        try:
            _reply(engine, [*messages, {"role": "user", "content": args.prompt}], settings, sys.stdout)
        except UserError as e:  # e.g. a prompt longer than the model's context
            return report_user_error("chat", e)
        return 0
    chat_loop(engine, settings, args.system, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
