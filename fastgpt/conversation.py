"""Conversations: one message format, readers for common files, and chat rendering with loss masks.

A conversation is an OpenAI-style ``messages`` list::

    [{"role": "system", "content": "..."},            # optional, first only
     {"role": "user", "content": "What is 12*7?"},
     {"role": "assistant", "content": "Let me compute it.",
      "tool_calls": [{"type": "function", "function": {"name": "calculator",
                                                        "arguments": {"expression": "12*7"}}}]},
     {"role": "tool", "content": "84"},
     {"role": "assistant", "content": "12*7 = 84."}]

Every stage (SFT, RL, serving, chat) reads conversations through :func:`validate_messages` and renders
them through a :class:`ChatFormat` (below; jinja templates in ``fastgpt/chat/template.py``), so a file
that trains also serves.

Readers accept ``.jsonl`` (one conversation per line) and ``.json`` (a list of them), each record being
``{"messages": [...]}``, a bare messages list, or ShareGPT-style
``{"conversations": [{"from": "human"|"gpt"|..., "value": ...}], "system"?: ...}``. A malformed record
is skipped and counted (the first few reasons are kept for the log), or is a hard error with
``strict=True``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastgpt.errors import UserError

__all__ = [
    "BUILTIN_TOOLS",
    "CALCULATOR",
    "FASTGPT_CHAT_TEMPLATE",
    "PYTHON",
    "ChatFormat",
    "ConversationError",
    "ConversationTooLong",
    "Rendered",
    "SpecialTokenFormat",
    "ReadStats",
    "calculator_call",
    "iter_conversations",
    "parse_tool_call_text",
    "python_call",
    "read_conversations",
    "sharegpt_to_messages",
    "tool_call",
    "tool_call_expression",
    "tool_call_text",
    "validate_messages",
]

ROLES = ("system", "user", "assistant", "tool")
CALCULATOR = "calculator"
PYTHON = "python"
BUILTIN_TOOLS = (CALCULATOR, PYTHON)
# the one string argument a built-in tool takes; fastgpt's format writes it bare (no JSON around it)
TOOL_ARGUMENT = {CALCULATOR: "expression", PYTHON: "code"}
_TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")

Message = dict[str, Any]


class ConversationError(UserError):
    """A conversation that breaks the format; the message names the message index and the rule."""


# --------------------------------------------------------------------------------------------- validation
def tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style tool call of ``name`` with ``arguments`` (an object)."""
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def calculator_call(expression: str) -> dict[str, Any]:
    """An OpenAI-style tool call of the calculator on ``expression``."""
    return tool_call(CALCULATOR, {"expression": expression})


def python_call(code: str) -> dict[str, Any]:
    """An OpenAI-style tool call of the sandboxed Python tool on ``code``."""
    return tool_call(PYTHON, {"code": code})


def tool_call_expression(call: dict[str, Any]) -> str:
    """The calculator expression of a (validated) tool call."""
    return call["function"]["arguments"]["expression"]


def tool_call_text(call: dict[str, Any]) -> str:
    """What fastgpt's format writes between ``<|tool_call_start|>`` and ``<|tool_call_end|>`` for a
    (validated) call: the calculator's expression bare (the format's first, calculator-only version,
    so calculator data and checkpoints read and write the same tokens as before); any other tool as
    its name, a newline, then its argument -- the bare ``code`` for ``python``, the arguments as JSON
    for other tools::

        12*7                      calculator
        python\nprint(12*7)       python
        get_weather\n{"city": "Paris"}

    No calculator expression starts with ``NAME`` and a newline (a newline is a syntax error there),
    so :func:`parse_tool_call_text` tells the two apart without ambiguity."""
    fn = call["function"]
    name, args = fn["name"], fn["arguments"]
    if name == CALCULATOR:
        return args["expression"]
    if name in TOOL_ARGUMENT:  # a built-in tool's other arguments (none are defined) are not written
        return f"{name}\n{args[TOOL_ARGUMENT[name]]}"
    return f"{name}\n{json.dumps(args, ensure_ascii=False)}"


def parse_tool_call_text(text: str) -> dict[str, Any]:
    """The call that :func:`tool_call_text` wrote as ``text`` (what a model wrote between the call
    tokens): ``NAME\nREST`` names a tool, anything else is a calculator expression. ``python``'s
    REST is its code; another tool's REST is its JSON arguments, or, when it is not a JSON object,
    ``{"input": REST}`` (a model's malformed arguments are shown to whoever runs the tool, not lost)."""
    head, sep, rest = text.partition("\n")
    if not sep or not _TOOL_NAME.fullmatch(head):
        return calculator_call(text)
    if head in TOOL_ARGUMENT:
        return tool_call(head, {TOOL_ARGUMENT[head]: rest})
    try:
        args = json.loads(rest)
    except json.JSONDecodeError:
        args = None
    return tool_call(head, args if isinstance(args, dict) else {"input": rest})


def _normalize_tool_call(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise ConversationError(f"{where}: a tool call must be {{'type': 'function', 'function': {{...}}}}")
    fn = call["function"]
    name, args = fn.get("name"), fn.get("arguments", {})
    if not isinstance(name, str) or not name:
        raise ConversationError(f"{where}: tool call without a function name")
    if isinstance(args, str):  # OpenAI sends arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ConversationError(
                f"{where}: tool call arguments are not valid JSON: {args[:60]!r}"
            ) from None
    if not isinstance(args, dict):
        raise ConversationError(f"{where}: tool call arguments must be an object, got {type(args).__name__}")
    if name in TOOL_ARGUMENT and not isinstance(args.get(TOOL_ARGUMENT[name]), str):
        raise ConversationError(f"{where}: {name} call needs a string {TOOL_ARGUMENT[name]!r} argument")
    out = {"type": "function", "function": {"name": name, "arguments": args}}
    if "id" in call:
        out["id"] = call["id"]
    return out


def validate_messages(messages: Any, *, require_assistant: bool = True) -> list[Message]:
    """A normalized copy of ``messages``, or :class:`ConversationError` saying what is wrong.

    Rules: roles are system/user/assistant/tool; ``content`` is a string (an assistant message that
    makes tool calls may have empty or null content); a system message may only come first; the first
    other message is the user's; after a user comes an assistant; after an assistant comes a user, or,
    if it made tool calls, one tool message per call; after the tool messages comes an assistant. With
    ``require_assistant`` (training data) the conversation must end with an assistant reply that makes
    no tool call; otherwise (a prompt) it may end anywhere. Tool-call arguments given as a JSON string
    are parsed into an object.
    """
    if not isinstance(messages, list) or not messages:
        raise ConversationError("a conversation must be a non-empty list of messages")
    out: list[Message] = []
    pending_tool_results = 0
    for i, m in enumerate(messages):
        where = f"message {i}"
        if not isinstance(m, dict):
            raise ConversationError(f"{where}: expected an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise ConversationError(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = m.get("content")
        calls = m.get("tool_calls") or []
        if role == "assistant" and content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise ConversationError(f"{where}: 'content' must be a string, got {type(content).__name__}")
        prev = out[-1]["role"] if out else None
        if role == "system":
            if i != 0:
                raise ConversationError(f"{where}: a system message may only come first")
        elif pending_tool_results:
            if role != "tool":
                raise ConversationError(f"{where}: expected a tool result, got {role!r}")
            pending_tool_results -= 1
        elif role == "user":
            if prev not in (None, "system", "assistant"):
                raise ConversationError(
                    f"{where}: a user message must follow an assistant reply, not {prev!r}"
                )
        elif role == "assistant":
            if prev not in ("user", "tool"):
                raise ConversationError(f"{where}: an assistant reply must follow a user or tool message")
        elif role == "tool":
            raise ConversationError(f"{where}: a tool result without a tool call before it")
        msg: Message = {"role": role, "content": content}
        if calls:
            if role != "assistant":
                raise ConversationError(f"{where}: only assistant messages make tool calls")
            if not isinstance(calls, list):
                raise ConversationError(f"{where}: 'tool_calls' must be a list")
            msg["tool_calls"] = [
                _normalize_tool_call(c, f"{where} tool call {j}") for j, c in enumerate(calls)
            ]
            pending_tool_results = len(calls)
        out.append(msg)
    if not any(m["role"] != "system" for m in out):
        raise ConversationError("a conversation needs at least one user message")
    if require_assistant:
        last = out[-1]
        if last["role"] != "assistant" or "tool_calls" in last:
            raise ConversationError("a training conversation must end with an assistant reply")
    elif pending_tool_results:
        raise ConversationError("the conversation ends before the tool results of its last tool call")
    return out


# --------------------------------------------------------------------------------------------- ShareGPT
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


def sharegpt_to_messages(record: dict[str, Any]) -> list[Message]:
    """``{"conversations": [{"from", "value"}], "system"?}`` -> messages. A ``function_call`` turn
    (LLaMA-Factory's tool-call convention: its value is ``{"name", "arguments"}`` JSON) becomes a tool
    call of the preceding or a new assistant message."""
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise ConversationError("ShareGPT record without a 'conversations' list")
    messages: list[Message] = []
    system = record.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ConversationError(f"turn {j}: ShareGPT turns need 'from' and 'value'")
        source, value = str(turn["from"]).lower(), turn["value"]
        if source == "function_call":
            try:
                call = json.loads(value) if isinstance(value, str) else value
                call = {
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConversationError(
                    f"turn {j}: function_call value is not {{name, arguments}} JSON"
                ) from None
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            continue
        if source not in _SHAREGPT_ROLES:
            raise ConversationError(f"turn {j}: unknown ShareGPT speaker {turn['from']!r}")
        messages.append({"role": _SHAREGPT_ROLES[source], "content": value})
    return messages


# --------------------------------------------------------------------------------------------- readers
@dataclass
class ReadStats:
    """What a reader kept and why it skipped the rest (the first few reasons, for the log)."""

    read: int = 0
    kept: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    max_reasons: int = 5

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.reasons) < self.max_reasons:
            self.reasons.append(reason)

    def summary(self, name: str) -> str:
        text = f"{name}: kept {self.kept} of {self.read} conversations"
        if self.skipped:
            text += f", skipped {self.skipped} (first reasons: {'; '.join(self.reasons)})"
        return text


def record_to_messages(record: Any) -> list[Message]:
    """One file record (messages object, bare list or ShareGPT) -> unvalidated messages."""
    if isinstance(record, list):
        return record
    if isinstance(record, dict):
        if "messages" in record:
            return record["messages"]
        if "conversations" in record:
            return sharegpt_to_messages(record)
    raise ConversationError(
        "expected {'messages': [...]}, a messages list, or ShareGPT {'conversations': [...]}"
    )


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed record or the exception that parsing raised) for each record of a file."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    yield f"{path}:{lineno}", ConversationError(f"invalid JSON ({e.msg})")
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConversationError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ConversationError(f"{path}: expected a JSON list of conversations")
        for k, record in enumerate(data):
            yield f"{path}[{k}]", record
    else:
        raise ConversationError(f"{path}: unsupported conversation file (expected .jsonl or .json)")


def iter_conversations(
    records: Iterable[tuple[str, Any]], *, strict: bool = False, stats: ReadStats | None = None
) -> Iterator[list[Message]]:
    """Validate ``(location, record)`` pairs; skip and count bad ones (or raise with ``strict``)."""
    stats = stats if stats is not None else ReadStats()
    for where, record in records:
        stats.read += 1
        try:
            if isinstance(record, Exception):
                raise record
            messages = validate_messages(record_to_messages(record))
        except ConversationError as e:
            if strict:
                raise ConversationError(f"{where}: {e}") from None
            stats.skip(f"{where}: {e}")
            continue
        stats.kept += 1
        yield messages


def read_conversations(
    path: str | Path, *, strict: bool = False, stats: ReadStats | None = None
) -> list[list[Message]]:
    """All valid conversations of a ``.jsonl`` / ``.json`` file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conversation file not found: {path}")
    return list(iter_conversations(_records(path), strict=strict, stats=stats))


# ================================================================================== chat formats (rendering)
class ConversationTooLong(ConversationError):
    """Not even the first exchange of a conversation fits the length limit."""


@dataclass
class Rendered:
    """A rendered conversation: token ids, the loss mask (1 on tokens the assistant produces), and how
    many assistant turns truncation dropped from the end."""

    ids: list[int]
    loss_mask: list[int]
    dropped_turns: int = 0


@dataclass
class _Full:
    ids: list[int]
    loss_mask: list[int]
    turn_ends: list[int]  # token index just after each complete assistant turn (a reply without tool calls)


class ChatFormat:
    """How conversations become token ids, and which tokens the model is trained to produce.

    Two implementations share this interface: :class:`SpecialTokenFormat` (fastgpt's own chat special
    tokens, built token by token) and :class:`TemplateFormat` (a model dir's jinja chat template,
    rendered as transformers renders it). :func:`fastgpt.chat.template.format_for` picks one for a model.

    Truncation rule (``max_len``): keep the longest prefix that ends at the end of a complete assistant
    turn and fits; the turns after it are dropped (counted in :attr:`Rendered.dropped_turns`). A turn is
    never cut in the middle, so the model never learns a reply without its end. If not even the first
    turn fits, :class:`ConversationTooLong` is raised and the caller drops (and counts) the conversation.
    """

    tokenizer: Any
    stop_ids: set[int]
    # the calculator protocol; ``None`` where the format has no tool tokens
    tool_call_start_id: int | None = None
    tool_call_end_id: int | None = None
    tool_output_start_id: int | None = None
    tool_output_end_id: int | None = None

    # ---------------------------------------------------------------- to implement
    def _render_full(self, messages: list[Message]) -> _Full:
        raise NotImplementedError

    def _render_prompt(self, messages: list[Message]) -> list[int]:
        raise NotImplementedError

    def template(self) -> str:
        """The jinja source of this format (what :func:`export_chat_template` writes)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- shared
    @property
    def supports_tools(self) -> bool:
        return self.tool_call_start_id is not None

    def check_fits(self, vocab_size: int, where: str) -> None:
        """Raise :class:`ConversationError` when this format uses token ids the model has no embedding
        for: fastgpt's chat tokens are appended above a loaded vocabulary's highest id, so a base model
        that never learned them (GPT-2, a pretrained-only import) cannot chat in this format."""
        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        tool_ids = {self.tool_call_start_id, self.tool_call_end_id, self.tool_output_start_id}
        used = max([*self.render(probe)[0], *self.stop_ids, *(t for t in tool_ids if t is not None)])
        if used >= vocab_size:
            raise ConversationError(
                f"{where}: the chat format uses token id {used} but the model has {vocab_size} token "
                "embeddings (a base model without chat tokens): finetune it with fastgpt sft, use a model "
                "dir with its own chat template, or continue text with fastgpt sample"
            )

    def render(self, messages: list[Message], *, max_len: int | None = None) -> tuple[list[int], list[int]]:
        """``(ids, loss_mask)`` of a training conversation, truncated to ``max_len`` by the class rule."""
        r = self.render_truncated(messages, max_len)
        return r.ids, r.loss_mask

    def render_truncated(self, messages: list[Message], max_len: int | None = None) -> Rendered:
        full = self._render_full(validate_messages(messages))
        if max_len is None or len(full.ids) <= max_len:
            return Rendered(full.ids, full.loss_mask, 0)
        fitting = [end for end in full.turn_ends if end <= max_len]
        if not fitting:
            raise ConversationTooLong(
                f"the first assistant turn ends at token {full.turn_ends[0]} > max_len={max_len}"
            )
        end = fitting[-1]
        return Rendered(full.ids[:end], full.loss_mask[:end], len(full.turn_ends) - len(fitting))

    def render_prompt(self, messages: list[Message]) -> list[int]:
        """The conversation so far, ending where the assistant's next tokens go (after the assistant
        start, or after a tool output inside the assistant's turn)."""
        messages = validate_messages(messages, require_assistant=False)
        if messages[-1]["role"] not in ("user", "tool"):
            raise ConversationError("a prompt must end with a user message (or a tool result)")
        return self._render_prompt(messages)

    def tool_output_ids(self, text: str) -> list[int]:
        """The tokens the engine inserts after a tool call: output start, the result, output end."""
        if not self.supports_tools:
            raise ConversationError("this chat format has no tool tokens")
        return [self.tool_output_start_id, *self.tokenizer.encode(text), self.tool_output_end_id]

    def parse_reply(self, tokens: list[int]) -> list[Message]:
        """The messages an assistant reply (the tokens after :meth:`render_prompt`, stop token
        excluded) stands for: ``[assistant]``, or with tool calls ``[assistant+call, tool, ...,
        assistant]`` -- what a chat history or a server appends."""
        decode = self.tokenizer.decode
        if not self.supports_tools:
            return [{"role": "assistant", "content": decode(tokens)}]
        messages: list[Message] = []
        text: list[int] = []
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            if tok == self.tool_call_start_id and self.tool_call_end_id in tokens[i + 1 :]:
                end = tokens.index(self.tool_call_end_id, i + 1)
                call = parse_tool_call_text(decode(tokens[i + 1 : end]))
                messages.append({"role": "assistant", "content": decode(text), "tool_calls": [call]})
                text, i = [], end + 1
                if i < len(tokens) and tokens[i] == self.tool_output_start_id:
                    out_end = (
                        tokens.index(self.tool_output_end_id, i + 1)
                        if self.tool_output_end_id in tokens[i:]
                        else len(tokens)
                    )
                    messages.append({"role": "tool", "content": decode(tokens[i + 1 : out_end])})
                    i = out_end + 1
                continue
            text.append(tok)
            i += 1
        if text or not messages or messages[-1]["role"] == "tool":
            messages.append({"role": "assistant", "content": decode(text)})
        return messages


FASTGPT_ROLE_TOKENS = {
    "system": ("<|system_start|>", "<|system_end|>"),
    "user": ("<|user_start|>", "<|user_end|>"),
    "assistant": ("<|assistant_start|>", "<|assistant_end|>"),
    "tool_call": ("<|tool_call_start|>", "<|tool_call_end|>"),
    "tool": ("<|tool_output_start|>", "<|tool_output_end|>"),
}
BOS = "<|bos|>"


class SpecialTokenFormat(ChatFormat):
    """fastgpt's chat format, assembled from special-token ids (no string parsing)::

        <|bos|><|system_start|>S<|system_end|><|user_start|>U<|user_end|>
        <|assistant_start|>A<|tool_call_start|>CALL<|tool_call_end|><|tool_output_start|>R<|tool_output_end|>
        A2<|assistant_end|><|user_start|>...

    (no newlines in reality). CALL is :func:`tool_call_text`: a calculator expression bare (as in the
    format's calculator-only first version), any other tool as ``NAME`` + newline + its argument
    (``python\nprint(1)``). A tool call, its output and the reply after it are one assistant turn,
    exactly as the engine produces them: the model writes the call, the engine inserts the output and
    the model goes on. Loss mask: 1 on the assistant's text, tool calls and ``<|assistant_end|>``; 0 on
    ``<|bos|>``, ``<|assistant_start|>``, system, user and tool-output tokens. One call per assistant
    message (the engine runs each call as soon as it is written).
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        tid = tokenizer.token_id
        self.bos_id = tid(BOS)
        self.ids = {role: (tid(a), tid(b)) for role, (a, b) in FASTGPT_ROLE_TOKENS.items()}
        self.tool_call_start_id, self.tool_call_end_id = self.ids["tool_call"]
        self.tool_output_start_id, self.tool_output_end_id = self.ids["tool"]
        self.stop_ids = {self.ids["assistant"][1], self.bos_id}

    def template(self) -> str:
        return FASTGPT_CHAT_TEMPLATE

    def _render_messages(self, messages: list[Message]) -> _Full:
        enc = self.tokenizer.encode
        ids, mask, turn_ends = [self.bos_id], [0], []

        def add(tokens: list[int], m: int) -> None:
            ids.extend(tokens)
            mask.extend([m] * len(tokens))

        prev = None
        for i, msg in enumerate(messages):
            role = msg["role"]
            if role in ("system", "user"):
                start, end = self.ids[role]
                add([start, *enc(msg["content"]), end], 0)
            elif role == "tool":
                start, end = self.ids["tool"]
                add([start, *enc(msg["content"]), end], 0)
            else:
                if prev != "tool":  # after a tool output the assistant's turn goes on
                    add([self.ids["assistant"][0]], 0)
                add(enc(msg["content"]), 1)
                calls = msg.get("tool_calls", [])
                if len(calls) > 1:
                    raise ConversationError(f"message {i}: fastgpt's format runs one tool call per message")
                for call in calls:
                    name = call["function"]["name"]
                    if name != CALCULATOR and not _TOOL_NAME.fullmatch(name):
                        raise ConversationError(
                            f"message {i}: tool name {name!r} is not an identifier (letters, digits, _ . -)"
                        )
                    start, end = self.ids["tool_call"]
                    add([start, *enc(tool_call_text(call)), end], 1)
                if not calls:
                    add([self.ids["assistant"][1]], 1)
                    turn_ends.append(len(ids))
            prev = role
        return _Full(ids, mask, turn_ends)

    def _render_full(self, messages: list[Message]) -> _Full:
        return self._render_messages(messages)

    def _render_prompt(self, messages: list[Message]) -> list[int]:
        ids = self._render_messages(messages).ids
        if messages[-1]["role"] == "user":
            ids.append(self.ids["assistant"][0])
        return ids


# The same format as a jinja chat template, so transformers' apply_chat_template (and anything else that
# reads chat_template.jinja) renders exactly the ids SpecialTokenFormat builds. Tested for parity.
_TEMPLATE_TURNS = (  # every role's turn up to an assistant reply's tool calls (both versions)
    "<|bos|>"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system_start|>{{ message['content'] }}<|system_end|>"
    "{% elif message['role'] == 'user' %}<|user_start|>{{ message['content'] }}<|user_end|>"
    "{% elif message['role'] == 'tool' %}<|tool_output_start|>{{ message['content'] }}<|tool_output_end|>"
    "{% elif message['role'] == 'assistant' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|assistant_start|>{% endif %}"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
)
_TEMPLATE_END = (  # after the tool calls: the end of turn, and the generation prompt
    "{% endfor %}"
    "{% else %}<|assistant_end|>{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] == 'user' %}<|assistant_start|>{% endif %}"
)
FASTGPT_CHAT_TEMPLATE = (
    _TEMPLATE_TURNS + "<|tool_call_start|>"
    "{% if call['function']['name'] == 'calculator' %}{{ call['function']['arguments']['expression'] }}"
    "{% elif call['function']['name'] == 'python' %}python{{ '\\n' }}{{ call['function']['arguments']['code'] }}"
    "{% else %}{{ call['function']['name'] }}{{ '\\n' }}{{ call['function']['arguments'] | tojson }}"
    "{% endif %}"
    "<|tool_call_end|>" + _TEMPLATE_END
)
# The calculator-only first version, as model dirs saved before named tools carry it: recognised as
# fastgpt's format (it renders calculator calls exactly as the current one does).
FASTGPT_CHAT_TEMPLATE_V1 = (
    _TEMPLATE_TURNS
    + "<|tool_call_start|>{{ call['function']['arguments']['expression'] }}<|tool_call_end|>"
    + _TEMPLATE_END
)
FASTGPT_CHAT_TEMPLATES = (FASTGPT_CHAT_TEMPLATE, FASTGPT_CHAT_TEMPLATE_V1)
