"""Token ids of one choice -> the text a client sees, as it streams.

Three jobs the engine leaves to the server:

- **Incremental detokenization.** A token can end in the middle of a UTF-8 character, and some
  tokenizers (SentencePiece) decode a token differently at the start of a string than after other text.
  :class:`IncrementalDetokenizer` re-decodes a short window of recent tokens and emits only the new,
  complete characters, so the streamed pieces always concatenate to the one-shot decode.
- **Special tokens.** Chat-control tokens never reach the client. A tool call is held back until it is
  complete (its first line names the tool, :func:`fastgpt.conversation.parse_tool_call_text`), then
  shown one of two ways: ``inline`` when the server runs that tool (the reply reads
  ``[calculator: 12*7 = 84]``, ``[python: CODE = OUTPUT]``), or returned as an OpenAI ``tool_calls``
  entry for the client to run.
- **Stop strings.** OpenAI's ``stop`` ends a choice before the first occurrence of any of its strings;
  text that might be the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from fastgpt.conversation import TOOL_ARGUMENT, parse_tool_call_text

__all__ = ["IncrementalDetokenizer", "ReplyDecoder"]


class IncrementalDetokenizer:
    """Decodes a growing token list piece by piece; the pieces concatenate to ``decode(all tokens)``."""

    def __init__(self, tokenizer: Any):
        self._decode = tokenizer.decode
        self._tokens: list[int] = []
        self._prefix = 0  # tokens before this index were emitted and are kept only as decoding context
        self._read = 0  # tokens before this index were emitted

    def add(self, token: int) -> str:
        self._tokens.append(token)
        done = self._decode(self._tokens[self._prefix : self._read])
        text = self._decode(self._tokens[self._prefix :])
        if len(text) > len(done) and not text.endswith("\ufffd"):  # U+FFFD: an unfinished character
            self._prefix, self._read = self._read, len(self._tokens)
            return text[len(done) :]
        return ""

    def flush(self) -> str:
        """Whatever is left (a broken character comes out as U+FFFD); starts a fresh segment."""
        done = self._decode(self._tokens[self._prefix : self._read])
        text = self._decode(self._tokens[self._prefix :])
        self._tokens, self._prefix, self._read = [], 0, 0
        return text[len(done) :]


class ReplyDecoder:
    """The visible text (and client-side tool calls) of one choice, fed one token at a time.

    ``chat_format`` is None for plain text completions. ``inline_tools``: the names of the tools the
    server runs (their calls and outputs are shown in the text); a call of any other tool goes to
    :attr:`tool_calls` (``{"name", "arguments"}``) for the client. ``tool_mode`` is the shorthand:
    ``inline`` (every call shown inline) or ``client`` (every call to the client).
    After :meth:`feed` returns, ``stopped`` tells whether a stop string ended the choice.
    """

    def __init__(
        self,
        tokenizer: Any,
        chat_format: Any = None,
        stop: list[str] | None = None,
        tool_mode: str = "inline",
        inline_tools: Collection[str] | None = None,
    ):
        if tool_mode not in ("inline", "client"):
            raise ValueError(f"tool_mode must be 'inline' or 'client', got {tool_mode!r}")
        self._inline_all = inline_tools is None and tool_mode == "inline"
        self._inline = frozenset(inline_tools or ())
        self.tokenizer = tokenizer
        self._text = IncrementalDetokenizer(tokenizer)
        self._stops = list(stop or [])
        self._held = ""  # decoded text not yet shown: it may be the start of a stop string
        self.content = ""  # everything shown so far
        self.stopped = False
        self.tool_calls: list[dict[str, Any]] = []  # client-side calls: {"name", "arguments"}
        self._call: list[int] | None = None  # tokens of a call being written
        self._ignored = set(getattr(tokenizer, "special_tokens", {}).values())
        # the tool output of an inline call: token -> (state it is valid in, text shown, next state);
        # the same token anywhere else (a model that writes a stray output end, say) is an ignored
        # special token
        self._markers: dict[int, tuple[str | None, str, str | None]] = {}
        self._tool_state: str | None = None
        self._tools = False
        # a chat template that writes calls as text: from its call marker on, text is captured (not
        # shown) and read into tool_calls when the choice ends
        self._fmt = chat_format
        self._call_markers: list[str] = []
        self._capture: str | None = None
        fmt = chat_format
        if fmt is not None and not fmt.supports_tools and getattr(fmt, "tool_syntax", None) is not None:
            self._call_markers = [fmt.tool_syntax[0].strip()]
        if fmt is not None:
            self._ignored |= set(fmt.stop_ids)
            if fmt.supports_tools:
                self._tools = True
                self._call_start, self._call_end = fmt.tool_call_start_id, fmt.tool_call_end_id
                self._markers = {
                    fmt.tool_output_start_id: ("await_output", "", "output"),
                    fmt.tool_output_end_id: ("output", "]", None),
                }

    # -------------------------------------------------------------------------------------- feeding
    def feed(self, token: int) -> str:
        """The text this token adds to the visible reply ("" while text is held back)."""
        if self.stopped:
            return ""
        if self._tools and token == self._call_start and self._tool_state is None:
            self._call = []
            return self._show(self._text.flush())
        if self._call is not None:
            if token != self._call_end:
                self._call.append(token)
                return ""
            fn = parse_tool_call_text(self.tokenizer.decode(self._call))["function"]
            self._call = None
            if not (self._inline_all or fn["name"] in self._inline):
                self.tool_calls.append(fn)
                return ""
            name, args = fn["name"], fn["arguments"]
            shown = (
                args[TOOL_ARGUMENT[name]] if name in TOOL_ARGUMENT else json.dumps(args, ensure_ascii=False)
            )
            self._tool_state = "await_output"
            return self._show(f"[{name}: {shown} = ")
        if token in self._markers and self._markers[token][0] == self._tool_state:
            _, text, self._tool_state = self._markers[token]
            return self._show(self._text.flush() + text)
        if token in self._ignored:
            return self._show(self._text.flush())
        return self._show(self._text.add(token))

    def finish(self) -> str:
        """The rest of the text once the choice has ended (held-back text is released)."""
        if self.stopped:
            return ""
        out = self._show(self._text.flush())
        out += self._held
        self.content += self._held
        self._held = ""
        if self._capture is not None:
            _, calls = self._fmt.split_tool_calls(self._capture)
            if calls:
                self.tool_calls += [c["function"] for c in calls]
            else:  # only looked like a call: it is text
                out += self._capture
                self.content += self._capture
            self._capture = None
        return out

    # -------------------------------------------------------------------------------------- stop strings
    def _show(self, text: str) -> str:
        if not text:
            return ""
        if self._capture is not None:
            self._capture += text
            return ""
        if not self._stops and not self._call_markers:
            self.content += text
            return text
        held = self._held + text
        hits = [
            (i, s in self._stops) for s in (*self._stops, *self._call_markers) if (i := held.find(s)) >= 0
        ]
        if hits:
            at, is_stop = min(hits)
            out, self._held = held[:at], ""
            if is_stop:
                self.stopped = True
            else:
                self._capture = held[at:]
        else:
            keep = self._partial_stop_len(held)
            out, self._held = held[: len(held) - keep], held[len(held) - keep :]
        self.content += out
        return out

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest end of ``text`` that is the beginning of some stop string."""
        best = 0
        for s in (*self._stops, *self._call_markers):
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best
