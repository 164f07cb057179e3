"""The OpenAI wire format: request validation, error bodies, and response/chunk builders.

Requests are parsed here rather than by FastAPI's automatic body models so that every way a body can
be wrong (not JSON, not an object, a field of the wrong type, a value out of range, an option fastgpt
does not implement) becomes one 4xx answer in OpenAI's error shape::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

which the official ``openai`` client turns into ``BadRequestError`` & co. Unknown fields are ignored
(clients send newer options than a server knows); known fields are type-checked strictly (``"n": "2"``
is an error, not 2). Options that change what a sampler would return but that fastgpt does not
implement (``logprobs``, penalties, ``logit_bias``, JSON mode) are refused rather than silently dropped.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

__all__ = [
    "APIError",
    "ChatRequest",
    "CompletionRequest",
    "Limits",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "error_body",
    "parse_body",
]


class APIError(Exception):
    """An error answered to the client as ``status`` with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (server flags of the same names)."""

    max_prompt_tokens: int = 4096  # also capped by the model's context
    max_tokens: int = 1024  # the largest ``max_tokens`` a request may ask for
    default_max_tokens: int = 256  # when a request gives none (capped by the room left in the context)
    max_n: int = 8  # choices per request; also bounds prompts x n for /v1/completions
    max_request_bytes: int = 1 << 20


# --------------------------------------------------------------------------------------------- requests
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Fields shared by both endpoints."""

    model: str
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)  # not OpenAI; vLLM and others accept it too
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # accepted only at their neutral values (see _refuse_unsupported)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | int | None = None

    @field_validator("n", "stream", mode="before")
    @classmethod
    def _null_means_default(cls, value: Any, info: ValidationInfo) -> Any:
        # OpenAI documents these as nullable and some clients send ``"n": null``, ``"stream": null``
        return cls.model_fields[info.field_name].default if value is None else value

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "'stop' takes at most 4 strings", param="stop")
        if any(not s for s in stops):
            raise APIError(400, "'stop' strings must not be empty", param="stop")
        return stops


class ChatRequest(_Sampling):
    messages: list[Any]
    max_completion_tokens: int | None = Field(default=None, ge=1)  # newer name of max_tokens
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    # text (BOS prepended, as pretraining documents start) or, as OpenAI allows, token ids used as given
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None

    @field_validator("echo", mode="before")
    @classmethod
    def _null_echo_is_false(cls, value: Any) -> Any:
        return False if value is None else value

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a string, or a list of token ids (``[1, 2]`` is one prompt)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(x, int) for x in self.prompt):
            return [self.prompt]  # type: ignore[list-item]
        return list(self.prompt)  # type: ignore[arg-type]


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic adds the union member's type to the location ("stop.list[str]"): keep only field names
    parts = [str(p) for p in loc if isinstance(p, int) or not any(c in str(p) for c in "[]")]
    return ".".join(parts) if parts else "body"


def parse_body(raw: bytes, model: type[_Sampling], limits: Limits) -> _Sampling:
    """Validate a request body into ``model`` or raise :class:`APIError` (400/413)."""
    if len(raw) > limits.max_request_bytes:
        raise APIError(
            413, f"request body of {len(raw):,} bytes exceeds the limit of {limits.max_request_bytes:,}"
        )
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        req = model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = _field_path(first["loc"])
        extra = f" ({len(e.errors()) - 1} more problems)" if len(e.errors()) > 1 else ""
        raise APIError(400, f"invalid field '{param}': {first['msg']}{extra}", param=param) from None
    _refuse_unsupported(req, limits)
    return req


def _refuse_unsupported(req: _Sampling, limits: Limits) -> None:
    if req.n > limits.max_n:
        raise APIError(400, f"n={req.n} exceeds this server's limit of {limits.max_n}", param="n")
    max_tokens = requested_max_tokens(req)
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise APIError(
            400,
            f"max_tokens={max_tokens} exceeds this server's limit of {limits.max_tokens}",
            param="max_tokens",
        )
    if req.logprobs:
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise APIError(400, f"{name} is not supported by this server (leave it 0)", param=name)
    if req.logit_bias:
        raise APIError(400, "logit_bias is not supported by this server", param="logit_bias")
    if isinstance(req, ChatRequest):
        fmt = (req.response_format or {}).get("type", "text")
        if fmt != "text":
            raise APIError(
                400, f"response_format {fmt!r} is not supported (only 'text')", param="response_format"
            )
    if isinstance(req, CompletionRequest):
        if req.echo:
            raise APIError(400, "echo is not supported by this server", param="echo")
        if req.suffix:
            raise APIError(400, "suffix is not supported by this server", param="suffix")
        prompts = req.prompts()
        if not prompts:
            raise APIError(400, "'prompt' must not be an empty list", param="prompt")
        if any(isinstance(p, list) and not p for p in prompts):
            raise APIError(400, "a token-id prompt must not be empty", param="prompt")
        if len(prompts) * req.n > limits.max_n:
            raise APIError(
                400,
                f"{len(prompts)} prompts x n={req.n} = {len(prompts) * req.n} completions exceeds this "
                f"server's limit of {limits.max_n}",
                param="prompt",
            )
    req.stop_strings()


def requested_max_tokens(req: _Sampling) -> int | None:
    if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
        return req.max_completion_tokens
    return req.max_tokens


# --------------------------------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _body(
    object_: str,
    id_: str,
    model: str,
    created: int,
    choices: list[dict[str, Any]],
    usage_: dict[str, int] | None,
) -> dict[str, Any]:
    """The fields every completion response and stream chunk has (``usage`` only when given)."""
    body = {
        "id": id_,
        "object": object_,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


def _choice(index: int, field: str, value: Any, finish_reason: str | None) -> dict[str, Any]:
    """One entry of ``choices``: ``field`` is ``message`` / ``text`` (responses) or ``delta`` / ``text``
    (chunks)."""
    return {"index": index, field: value, "logprobs": None, "finish_reason": finish_reason}


def _response(object_: str, field: str) -> Callable[..., dict[str, Any]]:
    """The builder of one non-streamed response type, whose choices carry ``field``."""

    def build(
        id_: str,
        model: str,
        created: int,
        choices: list[dict[str, Any]],
        prompt_tokens: int,
        completion_tokens: int,
    ) -> dict[str, Any]:
        listed = [_choice(i, field, c[field], c["finish_reason"]) for i, c in enumerate(choices)]
        return _body(object_, id_, model, created, listed, usage(prompt_tokens, completion_tokens))

    build.__doc__ = f"``choices``: ``{{'{field}': ..., 'finish_reason': ...}}`` in index order."
    return build


chat_response = _response("chat.completion", "message")
completion_response = _response("text_completion", "text")


def chat_chunk(
    id_: str,
    model: str,
    created: int,
    index: int | None,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage_: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``index=None`` gives the final usage-only chunk (no choices)."""
    choices = [] if index is None else [_choice(index, "delta", delta or {}, finish_reason)]
    return _body("chat.completion.chunk", id_, model, created, choices, usage_)


def completion_chunk(
    id_: str,
    model: str,
    created: int,
    index: int | None,
    text: str = "",
    finish_reason: str | None = None,
    usage_: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One ``text_completion`` stream chunk; ``index=None`` gives the final usage-only chunk."""
    choices = [] if index is None else [_choice(index, "text", text, finish_reason)]
    return _body("text_completion", id_, model, created, choices, usage_)


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "fastgpt"}


def models_list(name: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(name, created)]}


def now() -> int:
    return int(time.time())
