"""Jinja chat templates: render a model dir's own template, and export fastgpt's.

Imported chat models (SmolLM2's ChatML, Llama-3's, ...) carry a jinja template in
``chat_template.jinja`` or ``tokenizer_config.json``. :class:`TemplateFormat` renders it the way
transformers' ``apply_chat_template`` does (same sandboxed environment, same globals and ``tojson``),
then tokenizes the text the way a Hugging Face tokenizer does: added-token strings such as
``<|im_start|>`` become their ids and the text between them is encoded as ordinary text.

Loss masks come from prefix renders: rendering ``messages[:i]`` with the generation prompt and
``messages[:i+1]`` without it brackets assistant message ``i`` in the full text; tokens inside the
bracket (up to and including the end-of-turn token, not the newline some templates add after it) get
mask 1. A template whose renders are not prefixes of one another (some strip old reasoning, for
instance) is refused with a clear error rather than masked wrongly.

:func:`export_chat_template` writes a format's template into a model dir so that transformers renders
the same ids as fastgpt.

Tool calls in a template: a template that renders OpenAI ``tool_calls`` (``function.name`` and
``function.arguments``) as JSON between two text markers -- ``<tool_call>{"name": ..., "arguments":
...}</tool_call>`` (Hermes, Qwen2.5, SmolLM3, :data:`CHATML_TOOLS_TEMPLATE`), ``[TOOL_CALLS][...]``
and the like -- is probed once: a call of a made-up tool is rendered and the text around its JSON
becomes the markers (:attr:`TemplateFormat.tool_syntax`). :meth:`TemplateFormat.parse_reply` then
reads the calls a model writes back into ``tool_calls`` (a JSON list of calls after one marker, as
SmolLM2-1.7B was trained to write, is read too). Such calls are text, not special tokens, so the
engine does not run them mid-generation: the caller does (``fastgpt chat`` runs its ``--tools`` and
generates again; the server returns them to the client). SmolLM2's own template (the GGUF's) renders
no tool calls; :data:`CHATML_TOOLS_TEMPLATE` is the same ChatML with them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fastgpt.conversation import (
    BOS,
    FASTGPT_CHAT_TEMPLATE,
    FASTGPT_CHAT_TEMPLATES,
    FASTGPT_ROLE_TOKENS,
    ChatFormat,
    ConversationError,
    Message,
    SpecialTokenFormat,
    _Full,
    tool_call,
)
from fastgpt.errors import UserError

__all__ = [
    "CHATML_TOOLS_TEMPLATE",
    "TemplateFormat",
    "compile_template",
    "export_chat_template",
    "format_for",
    "read_template",
]

TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")

# SmolLM2-135M-Instruct's ChatML (its default system prompt included: a conversation without tool calls
# renders exactly as with the GGUF's template), plus tool calls as JSON between <tool_call> markers after
# the assistant's text, one call per block; tool results are messages of role "tool". When the caller
# passes ``tools`` (transformers' apply_chat_template(tools=...)), their JSON schemas are listed in the
# system message.
CHATML_TOOLS_TEMPLATE = r"""{%- for message in messages -%}
{%- if loop.first and messages[0]['role'] != 'system' -%}
{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face' }}
{%- if tools -%}{{ '\n\nYou can call tools. Write each call as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>. Tools:' }}{%- for t in tools -%}{{ '\n' + t | tojson }}{%- endfor -%}{%- endif -%}
{{ '<|im_end|>\n' }}
{%- endif -%}
{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') }}
{%- if message['role'] == 'system' and tools -%}{{ '\n\nYou can call tools. Write each call as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>. Tools:' }}{%- for t in tools -%}{{ '\n' + t | tojson }}{%- endfor -%}{%- endif -%}
{%- if message['role'] == 'assistant' and message['tool_calls'] -%}
{%- for call in message['tool_calls'] -%}
{{ '<tool_call>\n' + {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson + '\n</tool_call>' }}
{%- endfor -%}
{%- endif -%}
{{ '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}
"""
_PROBE_TOOL = "fastgpt_probe_tool"
_PROBE_ARGS = {"fastgpt_probe_argument": "fastgpt-probe-value"}


def _calls_in(value: Any) -> list[dict[str, Any]] | None:
    """The calls a decoded JSON value stands for: ``{"name", "arguments"|"parameters"}`` or a list of
    them; None for anything else."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = {"input": args}
        if not isinstance(args, dict):
            return None
        calls.append(tool_call(item["name"], args))
    return calls or None


# ----------------------------------------------------------------------------------------------- jinja
def compile_template(source: str):
    """A jinja template compiled as transformers compiles chat templates (sandboxed, trim/lstrip
    blocks, loop controls, ``raise_exception``, ``strftime_now``, non-escaping ``tojson``, and a
    ``{% generation %}`` tag that renders its body)."""
    import jinja2  # heavy: jinja2, only when a template format is built
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_template(model_dir: str | Path) -> tuple[str | None, dict[str, str]]:
    """(template source or None, special token strings such as ``bos_token``) of a model dir.
    ``chat_template.jinja`` wins over ``tokenizer_config.json``'s ``chat_template``."""
    model_dir = Path(model_dir)
    config: dict[str, Any] = {}
    if (model_dir / TOKENIZER_CONFIG).is_file():
        try:
            config = json.loads((model_dir / TOKENIZER_CONFIG).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{model_dir / TOKENIZER_CONFIG}: invalid JSON ({e.msg})") from None
    special = {k: t for k in _SPECIAL_KEYS if (t := _token_text(config.get(k))) is not None}
    template = None
    if (model_dir / TEMPLATE_FILE).is_file():
        template = (model_dir / TEMPLATE_FILE).read_text(encoding="utf-8")
    elif isinstance(config.get("chat_template"), str):
        template = config["chat_template"]
    elif isinstance(config.get("chat_template"), list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in config["chat_template"] if isinstance(t, dict)}
        template = named.get("default")
    return template, special


def _added_tokens(model_dir: Path | None, tokenizer: Any) -> dict[str, int]:
    """Every string the tokenizer treats as one token before ordinary encoding, as transformers does:
    the added tokens listed in the dir's ``tokenizer.json``. Not fastgpt's chat tokens that
    :class:`fastgpt.Tokenizer` appends above an imported vocabulary (the model has no embedding for
    them: a user typing ``<|assistant_end|>`` to SmolLM2 must get text, not an id past the embedding)
    nor its ``<|bos|>`` alias. Without a ``tokenizer.json``: the tokenizer's special tokens."""
    if model_dir is not None and (model_dir / "tokenizer.json").is_file():
        data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
        added = {tok["content"]: tok["id"] for tok in data.get("added_tokens", [])}
        if added:
            return added
    return dict(getattr(tokenizer, "special_tokens", {}) or {})


# ----------------------------------------------------------------------------------------------- format
class TemplateFormat(ChatFormat):
    """A chat format defined by a jinja template (see the module docstring for how masks are found)."""

    def __init__(
        self,
        tokenizer: Any,
        template: str,
        *,
        special: dict[str, str] | None = None,
        added_tokens: dict[str, int] | None = None,
    ):
        self.tokenizer = tokenizer
        self.source = template
        self._template = compile_template(template)
        self.special = dict(special or {})
        added = dict(added_tokens if added_tokens is not None else tokenizer.special_tokens)
        # fastgpt's chat tokens (and its <|bos|> alias), which fastgpt.Tokenizer appends to any vocabulary
        # and saves with it, mean nothing to a template that never writes them (SmolLM2's ChatML, also
        # after fastgpt SFT): a message that contains their text keeps it as text, never an id the model
        # may have no embedding for
        fastgpt_only = {t for pair in FASTGPT_ROLE_TOKENS.values() for t in pair} | {BOS}
        self.added = {t: i for t, i in added.items() if t not in fastgpt_only or t in template}
        if not self.added:
            raise UserError("a chat template needs its special tokens (none found in the tokenizer)")
        self._split = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")"
        )
        self._stop_strings = self._find_stop_strings()
        self.stop_ids = {self.added[s] for s in self._stop_strings}
        # fastgpt's tool tokens, where the tokenizer has them and the template is fastgpt's own
        names = dict(zip(("tool_call_start_id", "tool_call_end_id"), FASTGPT_ROLE_TOKENS["tool_call"]))
        names.update(zip(("tool_output_start_id", "tool_output_end_id"), FASTGPT_ROLE_TOKENS["tool"]))
        if all(text in self.added for text in names.values()) and "<|tool_call_start|>" in template:
            for attr, text in names.items():
                setattr(self, attr, self.added[text])
        # (text before a call's JSON, text after it) where the template writes tool calls as text
        self.tool_syntax: tuple[str, str] | None = None if self.supports_tools else self._find_tool_syntax()

    def template(self) -> str:
        return self.source

    # ------------------------------------------------------------------ text
    def render_text(self, messages: list[Message], *, add_generation_prompt: bool = False) -> str:
        return self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self.special
        )

    def _find_stop_strings(self) -> list[str]:
        """The end-of-turn token (the added token right after an assistant reply) and the eos token."""
        probe = "fastgpt-probe-reply"
        text = self.render_text([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}])
        after = text[text.rindex(probe) + len(probe) :] if probe in text else ""
        stops = [s for s in self.added if after.startswith(s)][:1]
        eos = self.special.get("eos_token")
        if eos in self.added and eos not in stops:
            stops.append(eos)
        if not stops:
            raise UserError("cannot tell where an assistant turn ends in this chat template (no end token)")
        return stops

    def _find_tool_syntax(self) -> tuple[str, str] | None:
        """Render a call of a made-up tool and take the text around its JSON as the call markers; None
        when the template does not write tool calls that way (or at all)."""
        user = {"role": "user", "content": "hi"}
        call = {"role": "assistant", "content": "", "tool_calls": [tool_call(_PROBE_TOOL, dict(_PROBE_ARGS))]}
        try:
            before = self.render_text([user], add_generation_prompt=True)
            upto = self.render_text([user, call])
        except Exception:  # noqa: BLE001 - a template that refuses tool calls has no tool syntax
            return None
        if not upto.startswith(before) or _PROBE_TOOL not in upto[len(before) :]:
            return None
        reply = upto[len(before) :]
        name_at = reply.index(_PROBE_TOOL)
        decoder = json.JSONDecoder()
        for start in range(name_at, -1, -1):
            if reply[start] not in "{[":
                continue
            try:
                value, end = decoder.raw_decode(reply, start)
            except json.JSONDecodeError:
                continue
            calls = _calls_in(value)
            if end > name_at and calls is not None and len(calls) == 1:
                if calls[0]["function"] == {"name": _PROBE_TOOL, "arguments": _PROBE_ARGS}:
                    break
        else:
            return None
        after = reply[end:]
        ends = [after.find(s) for s in self._stop_strings if s in after]
        after = after[: min(ends)] if ends else after
        opening = reply[:start]
        return (opening, after) if opening.strip() else None

    def parse_reply(self, tokens: list[int]) -> list[Message]:
        """As :meth:`ChatFormat.parse_reply`; for a template that writes tool calls as text
        (:attr:`tool_syntax`), the calls in the reply become the message's ``tool_calls`` (the text
        before the first call is its content). Text that only looks like a call (no valid JSON after
        the marker) stays text."""
        if self.tool_syntax is None:
            return super().parse_reply(tokens)
        text = self.tokenizer.decode(tokens)
        content, calls = self.split_tool_calls(text)
        message: Message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return [message]

    def split_tool_calls(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """``(content, calls)`` of an assistant reply's text under :attr:`tool_syntax`."""
        if self.tool_syntax is None:
            return text, []
        opening, closing = self.tool_syntax
        marker, close = opening.strip(), closing.strip()
        lead = opening[: opening.index(marker)]  # what the template puts between the content and a call
        decoder = json.JSONDecoder()
        calls: list[dict[str, Any]] = []
        first = None
        pos = 0
        while (at := text.find(marker, pos)) >= 0:
            i = at + len(marker)
            while i < len(text) and text[i].isspace():
                i += 1
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                break
            found = _calls_in(value)
            if found is None:
                break
            first = at if first is None else first
            calls += found
            pos = end
            rest = text[pos:].lstrip()
            if close and rest.startswith(close):
                pos = len(text) - len(rest) + len(close)
        if first is None:
            return text, []
        content = text[:first]
        if lead and content.endswith(lead):
            content = content[: -len(lead)]
        return content, calls

    @cached_property
    def _byte_lengths(self) -> np.ndarray:
        return np.asarray(self.tokenizer.token_byte_lengths())

    def encode_text(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of rendered text and each token's end offset in UTF-8 bytes."""
        ids: list[int] = []
        ends: list[int] = []
        pos = 0
        for piece in self._split.split(text):
            if not piece:
                continue
            if piece in self.added:
                ids.append(self.added[piece])
                pos += len(piece.encode("utf-8"))
                ends.append(pos)
                continue
            piece_ids = self.tokenizer.encode(piece)
            lengths = self._byte_lengths[piece_ids] if piece_ids else np.zeros(0, dtype=np.int64)
            if int(lengths.sum()) != len(piece.encode("utf-8")):
                raise ValueError("the tokenizer's token byte lengths do not add up to the text it encoded")
            ids.extend(piece_ids)
            ends.extend((pos + np.cumsum(lengths)).tolist())
            pos = ends[-1] if ends else pos
        return ids, ends

    # ------------------------------------------------------------------ ChatFormat
    def _render_full(self, messages: list[Message]) -> _Full:
        full = self.render_text(messages)
        spans: list[tuple[int, int]] = []  # character spans of assistant output
        turn_end_chars: list[int] = []
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            before = self.render_text(messages[:i], add_generation_prompt=True)
            upto = self.render_text(messages[: i + 1])
            if not (upto.startswith(before) and full.startswith(upto)):
                raise ConversationError(
                    "this chat template does not render conversations as prefixes of one another, "
                    "so assistant tokens cannot be located for the loss mask"
                )
            reply = upto[len(before) :]
            end = max((reply.rfind(s) + len(s) for s in self._stop_strings if s in reply), default=len(reply))
            spans.append((len(before), len(before) + end))
            if "tool_calls" not in msg:
                turn_end_chars.append(len(upto))
        ids, ends = self.encode_text(full)
        starts = [0, *ends[:-1]]
        to_bytes = lambda c: len(full[:c].encode("utf-8"))
        byte_spans = [(to_bytes(a), to_bytes(b)) for a, b in spans]
        mask = [int(any(a <= s and e <= b for a, b in byte_spans)) for s, e in zip(starts, ends)]
        turn_ends = [int(np.searchsorted(ends, to_bytes(c), side="right")) for c in turn_end_chars]
        return _Full(ids, mask, turn_ends)

    def _render_prompt(self, messages: list[Message]) -> list[int]:
        return self.encode_text(self.render_text(messages, add_generation_prompt=True))[0]


# ----------------------------------------------------------------------------------------------- choice
def _has_fastgpt_tokens(tokenizer: Any) -> bool:
    names = [t for pair in FASTGPT_ROLE_TOKENS.values() for t in pair] + ["<|bos|>"]
    return all(n in (getattr(tokenizer, "special_tokens", {}) or {}) for n in names)


def format_for(source: Any) -> ChatFormat:
    """The chat format of a model dir (or of a tokenizer object / tokenizer dir).

    A dir whose ``chat_template.jinja`` / ``tokenizer_config.json`` carries a template other than
    fastgpt's own is rendered with that template (:class:`TemplateFormat`); otherwise fastgpt's special
    tokens are used (:class:`SpecialTokenFormat`). It lives here, not on :class:`ChatFormat`, because it
    chooses among the formats of both modules: ``conversation`` defines the formats and imports nothing
    from this one.
    """
    if isinstance(source, str | os.PathLike):
        from fastgpt.tokenizer import Tokenizer  # heavy: loads tokenizers, numpy; deferred until used

        model_dir = Path(source)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model dir not found: {model_dir}")
        tokenizer = Tokenizer.load(model_dir)
        template, special = read_template(model_dir)
    else:
        model_dir, tokenizer = None, source
        # fastgpt.Tokenizer keeps the chat_template.jinja it was loaded with
        template = getattr(tokenizer, "chat_template", None) or getattr(tokenizer, "_chat_template", None)
        config = getattr(tokenizer, "_hf_config", None) or {}
        special = {k: t for k in _SPECIAL_KEYS if (t := _token_text(config.get(k))) is not None}
    if template is None or template.strip() in FASTGPT_CHAT_TEMPLATES:
        if _has_fastgpt_tokens(tokenizer):
            return SpecialTokenFormat(tokenizer)
        if template is None:
            raise UserError(
                f"{model_dir or 'tokenizer'}: no chat template and no fastgpt chat special tokens; "
                "add a chat_template.jinja or use a tokenizer trained by fastgpt"
            )
    return TemplateFormat(
        tokenizer, template, special=special, added_tokens=_added_tokens(model_dir, tokenizer)
    )


# ----------------------------------------------------------------------------------------------- export
def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def export_chat_template(model_dir: str | Path, template: str | ChatFormat = FASTGPT_CHAT_TEMPLATE) -> None:
    """Write ``template`` into ``model_dir`` as ``chat_template.jinja`` and as ``chat_template`` in
    ``tokenizer_config.json`` (created if missing), so transformers' ``apply_chat_template`` renders
    what fastgpt renders."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    source = template.template() if isinstance(template, ChatFormat) else template
    config_path = model_dir / TOKENIZER_CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    config["chat_template"] = source
    _atomic_write(model_dir / TEMPLATE_FILE, source)
    _atomic_write(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
