"""``fastgpt serve``: an OpenAI-compatible HTTP server and a web chat for a model dir.

    fastgpt serve --model out/sft/model                 # http://127.0.0.1:8000 (web chat at /)
    fastgpt serve --model out/sft/model --api_key KEY   # or FASTGPT_API_KEY=KEY

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with ``stream: true`` as
server-sent events ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /health``, and the web chat at
``GET /``. Bodies follow OpenAI's schema, so the official ``openai`` client works with
``base_url="http://127.0.0.1:8000/v1"``. Requests are batched by :mod:`fastgpt.serve.scheduler`; the
wire format and every 4xx answer live in :mod:`fastgpt.serve.protocol`.

Tools (docs/serving.md): the server runs built-in tools itself (``--tools``, default ``calculator``;
``python`` is the sandboxed Python tool) and shows their calls inline as ``[calculator: 12*7 = 84]``.
A request's ``tools`` field changes that per request: a *function* tool
(``{"type": "function", "function": {"name": ...}}``) is the client's code, so the model's calls of it
come back as OpenAI ``tool_calls`` (``finish_reason="tool_calls"``) for the client to run -- also when
it is named ``calculator`` or ``python``; a *built-in* entry (``{"type": "python"}``,
``{"type": "calculator"}``, as OpenAI declares its own hosted tools by type) asks the server to run that
tool, and a request that declares tools gets only the built-ins it names run. A call of any tool the
server does not run comes back as ``tool_calls``.

The server binds to 127.0.0.1 unless told otherwise; with an API key every ``/v1`` route needs
``Authorization: Bearer KEY`` (compared in constant time). ``/`` and ``/health`` stay open (the page
asks for the key itself).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastgpt import cli
from fastgpt.chat.template import format_for
from fastgpt.conversation import _TOOL_NAME, BUILTIN_TOOLS, ConversationError
from fastgpt.errors import UserError, report_user_error
from fastgpt.serve.decode import ReplyDecoder
from fastgpt.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    Limits,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    error_body,
    model_card,
    models_list,
    new_id,
    now,
    parse_body,
    requested_max_tokens,
    usage,
)
from fastgpt.serve.scheduler import BatchKey, Done, Failed, GenerationJob, QueueFull, Scheduler, Step
from fastgpt.tools import parse_tool_names

__all__ = ["ServeConfig", "create_app", "main"]

log = logging.getLogger("fastgpt.serve")
STATIC = Path(__file__).parent / "static"


@dataclass
class ServeConfig:
    model_name: str = "fastgpt"
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    max_batch_rows: int = 8
    max_queue: int = 64
    # the built-in tools (fastgpt.tools.TOOLS) the server runs; True/False: the calculator / none
    server_tools: bool | tuple[str, ...] = ("calculator",)

    def tools_run(self) -> tuple[str, ...]:
        if isinstance(self.server_tools, bool):
            return ("calculator",) if self.server_tools else ()
        return tuple(self.server_tools)


# --------------------------------------------------------------------------------------------- app
def create_app(engine: Any, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (a :class:`fastgpt.Engine`); the scheduler thread runs while
    the app is alive (its lifespan)."""
    config = config or ServeConfig()
    limits = config.limits
    scheduler = Scheduler(engine, max_batch_rows=config.max_batch_rows, max_queue=config.max_queue)
    if limits.max_n > config.max_batch_rows:
        raise UserError(f"max_n={limits.max_n} cannot exceed max_batch_rows={config.max_batch_rows}")
    tokenizer = engine.tokenizer
    chat_format = _chat_format_or_none(engine)
    # ids a prompt may use: the model's embedding can be smaller than the tokenizer (fastgpt's chat
    # tokens are appended above an imported vocabulary)
    embedded = min(tokenizer.vocab_size, engine.model.config.vocab_size)
    created = now()

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="fastgpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler

    # ------------------------------------------------------------------ errors in OpenAI's shape
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), type=kind), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        log.exception("unhandled error")
        return JSONResponse(
            error_body(f"internal error: {type(e).__name__}", type="server_error"), status_code=500
        )

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), config.api_key.encode()
        ):
            raise APIError(
                401, "missing or incorrect API key (send 'Authorization: Bearer KEY')", code="invalid_api_key"
            )

    def check_model(name: str) -> None:
        if name != config.model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {config.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def check_prompt(tokens: int, param: str) -> None:
        ceiling = min(limits.max_prompt_tokens, scheduler.context_len - 1)
        if tokens > ceiling:
            raise APIError(
                400,
                f"the prompt is {tokens} tokens; this server accepts at most {ceiling} (the model's context is "
                f"{scheduler.context_len} tokens and the reply needs at least one)",
                param=param,
                code="context_length_exceeded",
            )

    def submit(job: GenerationJob) -> None:
        try:
            scheduler.submit(job)
        except QueueFull as e:
            raise APIError(
                429, f"the server is busy: {e}; retry shortly", type="server_overloaded", code="queue_full"
            ) from None

    # ------------------------------------------------------------------ routes
    @app.get("/", response_class=HTMLResponse)
    async def web_chat():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": config.model_name,
            "busy": scheduler.busy,
            "queued": scheduler.queued,
            "stats": dict(scheduler.stats),
        }

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return models_list(config.model_name, created)

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):  # the client's models.retrieve(name)
        authorize(request)
        check_model(name)
        return model_card(config.model_name, created)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        req: ChatRequest = parse_body(await read_body(request, limits), ChatRequest, limits)  # type: ignore[assignment]
        check_model(req.model)
        if chat_format is None:
            raise APIError(
                400, "this model has no chat format (no chat tokens or template); use /v1/completions"
            )
        run = _tools_to_run(req, chat_format, config.tools_run())
        prompt = _render_prompt(chat_format, req.messages)
        check_prompt(len(prompt), "messages")
        job = _job([prompt], req, limits, chat_format.stop_ids, run)
        decoders = [
            ReplyDecoder(tokenizer, chat_format, req.stop_strings(), inline_tools=run)
            for _ in range(job.rows)
        ]
        submit(job)
        reply = ChatReply(job, decoders, config.model_name, len(prompt))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(reply.sse(include_usage), media_type="text/event-stream")
        return JSONResponse(await reply.collect(request))

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        req: CompletionRequest = parse_body(await read_body(request, limits), CompletionRequest, limits)  # type: ignore[assignment]
        check_model(req.model)
        prompts = [_prompt_ids(tokenizer, p, embedded) for p in req.prompts()]
        for p in prompts:
            check_prompt(len(p), "prompt")
        job = _job(prompts, req, limits, {tokenizer.bos_id}, frozenset())
        decoders = [ReplyDecoder(tokenizer, None, req.stop_strings()) for _ in range(job.rows)]
        submit(job)
        reply = CompletionReply(job, decoders, config.model_name, sum(map(len, prompts)))
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(reply.sse(include_usage), media_type="text/event-stream")
        return JSONResponse(await reply.collect(request))

    return app


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request body, refusing (413) one over the limit without reading more of it than the limit."""
    too_large = APIError(413, f"the request body exceeds the limit of {limits.max_request_bytes:,} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_request_bytes:
            raise too_large
    return bytes(body)


def _prompt_ids(tokenizer: Any, prompt: str | list[int], vocab_size: int) -> list[int]:
    """Text is encoded with BOS in front (documents start with BOS in training); token ids are used as
    given, once checked against the ids the model has embeddings for (``vocab_size``)."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_bos=True)
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise APIError(
            400,
            f"token id {bad[0]} is outside the model's vocabulary (0..{vocab_size - 1})",
            param="prompt",
        )
    return list(prompt)


def _chat_format_or_none(engine: Any) -> Any:
    try:
        chat_format = engine.chat_format
        # a base model whose embedding lacks the chat tokens (GPT-2, a pretrained-only import)
        chat_format.check_fits(engine.model.config.vocab_size, "this model")
        return chat_format
    except Exception as e:  # a tokenizer without chat tokens or template: completions only
        log.warning("no chat format for this model (%s): /v1/chat/completions is disabled", e)
        return None


def _job(
    prompts: list[list[int]], req: Any, limits: Limits, stop_ids: set[int], tools: frozenset[str]
) -> GenerationJob:
    key = BatchKey(
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_k=req.top_k,
        top_p=None if req.top_p in (None, 1.0) else float(req.top_p),
        seed=req.seed,
        stop_ids=frozenset(stop_ids),
        tools=tools,
    )
    max_tokens = requested_max_tokens(req) or limits.default_max_tokens
    return GenerationJob(prompts=prompts, n=req.n, max_tokens=max_tokens, key=key)


def _text_content(content: Any, where: str) -> Any:
    """OpenAI content may be a list of parts; fastgpt models read text only."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, f"{where}: only text content parts are supported", param="messages")
        texts.append(part["text"])
    return "".join(texts)


def _render_prompt(chat_format: Any, messages: list[Any]) -> list[int]:
    normalized = []
    for i, m in enumerate(messages):
        if isinstance(m, dict) and "content" in m:
            m = {**m, "content": _text_content(m["content"], f"messages[{i}]")}
        if isinstance(m, dict) and m.get("role") == "developer":
            m = {**m, "role": "system"}  # OpenAI's newer name for the system message
        normalized.append(m)
    try:
        return chat_format.render_prompt(normalized)
    except ConversationError as e:
        raise APIError(400, f"invalid 'messages': {e}", param="messages") from None


def _tools_to_run(req: ChatRequest, chat_format: Any, server_tools: tuple[str, ...]) -> frozenset[str]:
    """The built-in tools the engine runs for this request (see the module docstring): the server's
    own without a ``tools`` field (or with ``tool_choice: "none"``), else the built-ins it declares by
    type. Checks every declared tool. A chat template that writes calls as text (no tool tokens) can
    return function calls to the client but not run built-ins mid-reply; one without tool syntax
    cannot call tools at all."""
    text_calls = getattr(chat_format, "tool_syntax", None) is not None
    if not chat_format.supports_tools:
        if req.tools and req.tool_choice != "none" and not text_calls:
            raise APIError(
                400,
                "this model's chat format has no tool tokens or tool-call syntax, so it cannot call tools",
                param="tools",
            )
        server_tools = ()  # nothing runs inside a reply written as text
        if not text_calls:
            return frozenset()
    if not req.tools or req.tool_choice == "none":
        return frozenset(server_tools)
    run = set()
    for i, tool in enumerate(req.tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            fn = tool.get("function")
            if (
                not isinstance(fn, dict)
                or not isinstance(fn.get("name"), str)
                or not _TOOL_NAME.fullmatch(fn["name"])
            ):
                raise APIError(
                    400,
                    f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}} with a name of "
                    "letters, digits, '_', '.' or '-'",
                    param="tools",
                )
        elif kind in server_tools:
            run.add(kind)
        elif isinstance(kind, str) and kind in BUILTIN_TOOLS:
            why = (
                "this model's chat template writes tool calls as text, which the server returns to the "
                "client instead of running them (declare it as a function tool)"
                if not chat_format.supports_tools
                else f"it runs: {', '.join(server_tools) or 'none'}; see fastgpt serve --tools"
            )
            raise APIError(
                400, f"tools[{i}]: this server does not run the {kind!r} tool ({why})", param="tools"
            )
        else:
            raise APIError(
                400,
                f"tools[{i}]: unknown tool type {kind!r}; expected 'function' or a built-in tool "
                f"({', '.join(BUILTIN_TOOLS)})",
                param="tools",
            )
    return frozenset(run)


# --------------------------------------------------------------------------------------------- replies
class _Reply:
    """Turns a job's events into OpenAI choices, whole (:meth:`collect`) or streamed (:meth:`sse`)."""

    def __init__(self, job: GenerationJob, decoders: list[ReplyDecoder], model: str, prompt_tokens: int):
        self.job, self.decoders, self.model, self.prompt_tokens = job, decoders, model, prompt_tokens
        self.id, self.created = new_id(self.id_prefix), now()
        self.finish: list[str | None] = [None] * job.rows
        self.produced = [0] * job.rows

    id_prefix = "cmpl"

    async def _steps(self) -> AsyncIterator[Step]:
        while True:
            event = await self.job.events.get()
            if isinstance(event, Done):
                return
            if isinstance(event, Failed):
                raise APIError(500, event.message, type="server_error")
            yield event

    def _apply(self, step: Step) -> list[tuple[int, str, str | None]]:
        """Feed a step to the decoders: ``[(row, new_text, finish_reason or None)]``."""
        out = []
        for row, token in step.tokens:
            if self.finish[row] is not None:
                continue
            self.produced[row] += 1
            dec = self.decoders[row]
            text = dec.feed(token)
            if dec.stopped:
                self.finish[row] = "stop"
                self.job.cut[row] = True  # tell the scheduler this row is done
            out.append((row, text, self.finish[row]))
        for row, reason in step.finished:
            if self.finish[row] is None:
                text = self.decoders[row].finish()  # first: it reads the calls of a reply written as text
                self.finish[row] = self._reason(row, reason)
                out.append((row, text, self.finish[row]))
        return out

    def _reason(self, row: int, reason: str) -> str:
        return reason

    def _all_done(self) -> bool:
        return all(f is not None for f in self.finish)

    async def _updates(self) -> AsyncIterator[tuple[int, str, str | None]]:
        async for step in self._steps():
            for item in self._apply(step):
                yield item
            if self._all_done():
                return

    def _release(self) -> None:
        if not self._all_done():
            self.job.cancelled = True  # the client went away, or an error: stop spending compute on it

    async def collect(self, request: Request | None = None) -> dict[str, Any]:
        """The whole reply. With ``request``, a client that hangs up before it is ready (a timeout,
        a closed app) cancels the job, as a closed stream does, so it does not hold the engine."""
        watcher = asyncio.create_task(self._cancel_on_disconnect(request)) if request is not None else None
        try:
            async for _ in self._updates():
                pass
        finally:
            if watcher is not None:
                watcher.cancel()
            self._release()
        return self._response()

    async def _cancel_on_disconnect(self, request: Request) -> None:
        # the body has been read, so the next ASGI message is the client's disconnect
        try:
            while (await request.receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 - whatever the transport does, the client is gone
            pass
        self.job.cancelled = True

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        try:
            for row in range(self.job.rows):
                opening = self._opening(row)
                if opening is not None:
                    yield _sse(opening)
            async for row, text, finish in self._updates():
                for chunk in self._chunks(row, text, finish):
                    yield _sse(chunk)
            if include_usage:
                yield _sse(self._usage_chunk())
        except APIError as e:
            yield _sse(e.body())
        finally:
            self._release()
        yield "data: [DONE]\n\n"

    def _usage(self) -> dict[str, int]:
        return usage(self.prompt_tokens, sum(self.produced))

    # per endpoint
    def _opening(self, row: int) -> dict[str, Any] | None:
        return None

    def _chunks(self, row: int, text: str, finish: str | None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _usage_chunk(self) -> dict[str, Any]:
        raise NotImplementedError

    def _response(self) -> dict[str, Any]:
        raise NotImplementedError


class ChatReply(_Reply):
    id_prefix = "chatcmpl"

    def _reason(self, row: int, reason: str) -> str:
        return "tool_calls" if self.decoders[row].tool_calls else reason

    def _tool_calls(self, row: int) -> list[dict[str, Any]]:
        return [
            {
                "id": new_id("call"),
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)},
            }
            for c in self.decoders[row].tool_calls
        ]

    def _opening(self, row: int) -> dict[str, Any]:
        return chat_chunk(self.id, self.model, self.created, row, {"role": "assistant", "content": ""})

    def _chunks(self, row: int, text: str, finish: str | None) -> list[dict[str, Any]]:
        chunks = []
        if text:
            chunks.append(chat_chunk(self.id, self.model, self.created, row, {"content": text}))
        if finish is not None:
            if self.decoders[row].tool_calls:
                calls = [{"index": i, **c} for i, c in enumerate(self._tool_calls(row))]
                chunks.append(chat_chunk(self.id, self.model, self.created, row, {"tool_calls": calls}))
            chunks.append(chat_chunk(self.id, self.model, self.created, row, {}, finish))
        return chunks

    def _usage_chunk(self) -> dict[str, Any]:
        return chat_chunk(self.id, self.model, self.created, None, usage_=self._usage())

    def _response(self) -> dict[str, Any]:
        choices = []
        for row, dec in enumerate(self.decoders):
            message: dict[str, Any] = {"role": "assistant", "content": dec.content}
            if dec.tool_calls:
                message["content"] = dec.content or None
                message["tool_calls"] = self._tool_calls(row)
            choices.append({"message": message, "finish_reason": self.finish[row]})
        u = self._usage()
        return chat_response(
            self.id, self.model, self.created, choices, u["prompt_tokens"], u["completion_tokens"]
        )


class CompletionReply(_Reply):
    id_prefix = "cmpl"

    def _reason(self, row: int, reason: str) -> str:
        return "stop" if reason == "tool_calls" else reason  # the completions API has no tool calls

    def _chunks(self, row: int, text: str, finish: str | None) -> list[dict[str, Any]]:
        if not text and finish is None:
            return []
        return [completion_chunk(self.id, self.model, self.created, row, text, finish)]

    def _usage_chunk(self) -> dict[str, Any]:
        return completion_chunk(self.id, self.model, self.created, None, usage_=self._usage())

    def _response(self) -> dict[str, Any]:
        choices = [{"text": d.content, "finish_reason": f} for d, f in zip(self.decoders, self.finish)]
        u = self._usage()
        return completion_response(
            self.id, self.model, self.created, choices, u["prompt_tokens"], u["completion_tokens"]
        )


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# --------------------------------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    d, lim = ServeConfig(), Limits()
    p = cli.model_command_parser("fastgpt serve", "OpenAI-compatible server and web chat for a model dir.")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument(
        "--served_model_name", default=None, help="the name clients pass as 'model' (default: from the dir)"
    )
    p.add_argument(
        "--api_key",
        dest="api_key",
        default=os.environ.get("FASTGPT_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 routes (default: $FASTGPT_API_KEY, else none)",
    )
    g = p.add_argument_group("limits")
    g.add_argument(
        "--max_prompt_tokens", type=int, default=lim.max_prompt_tokens, help="also capped at the context - 1"
    )
    g.add_argument(
        "--max_tokens", type=int, default=lim.max_tokens, help="largest max_tokens a request may ask for"
    )
    g.add_argument(
        "--default_max_tokens", type=int, default=lim.default_max_tokens, help="when a request gives none"
    )
    g.add_argument("--max_n", type=int, default=lim.max_n, help="most choices per request")
    g.add_argument(
        "--max_request_bytes", type=int, default=lim.max_request_bytes, help="larger bodies get 413"
    )
    g.add_argument("--max_batch_rows", type=int, default=d.max_batch_rows, help="rows decoded together")
    g.add_argument("--max_queue", type=int, default=d.max_queue, help="waiting requests before answering 429")
    cli.add_tool_arguments(
        p,
        "built-in tools the server runs itself (comma-separated: calculator, python; 'none'); a "
        "request's tools field narrows this (docs/serving.md)",
        "run no tools in the server (--tools none)",
    )
    p.add_argument("--log_level", default="info", help="debug | info | warning | error")
    return p


def default_model_name(model_dir: str | Path) -> str:
    """The dir's name, or its parent's for the ``out_dir/model`` layout every stage writes."""
    path = Path(model_dir).resolve()
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def load_engine(model_dir: str, device: str | None = None, dtype: str | None = None) -> Any:
    import torch  # heavy: torch, loaded only when the command runs (--help starts without it)

    from fastgpt.engine import Engine  # heavy: loads torch; deferred until used
    from fastgpt.model import from_pretrained  # heavy: loads torch; deferred until used
    from fastgpt.tokenizer import Tokenizer  # heavy: loads tokenizers, numpy; deferred until used

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = from_pretrained(model_dir, dtype=dtype, device=device)
    tokenizer = Tokenizer.load(model_dir)
    try:
        chat_format = format_for(model_dir)
    except Exception:
        chat_format = None  # completions only; create_app says so
    return Engine(model, tokenizer, chat_format=chat_format)


def _check_limits(args: argparse.Namespace) -> str | None:
    """What is wrong with the limit flags, if anything (one line naming the flag)."""
    names = ("max_prompt_tokens", "max_tokens", "default_max_tokens", "max_n", "max_request_bytes")
    for name in (*names, "max_batch_rows", "max_queue"):
        if getattr(args, name) < 1:
            return f"--{name} must be >= 1, got {getattr(args, name)}"
    if args.max_n > args.max_batch_rows:
        return f"--max_n {args.max_n} cannot exceed --max_batch_rows {args.max_batch_rows} (raise it too)"
    if not 0 <= args.port <= 65535:
        return f"--port must be in 0..65535, got {args.port}"
    return None


def main(argv: list[str] | None = None) -> int:
    import uvicorn  # optional: uvicorn (pip install 'fastgpt[serve]')

    args = build_parser().parse_args(argv)
    if not Path(args.model).is_dir():
        print(f"fastgpt serve: --model {args.model!r} is not a directory", file=sys.stderr)
        return 2
    problem = _check_limits(args)
    try:
        tools = parse_tool_names(args.tools)
    except UserError as e:
        problem = problem or str(e)
    if problem:  # before the model loads
        print(f"fastgpt serve: error: {problem}", file=sys.stderr)
        return 2
    limits = Limits(
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        default_max_tokens=min(args.default_max_tokens, args.max_tokens),
        max_n=args.max_n,
        max_request_bytes=args.max_request_bytes,
    )
    config = ServeConfig(
        model_name=args.served_model_name or default_model_name(args.model),
        limits=limits,
        api_key=args.api_key or None,
        max_batch_rows=args.max_batch_rows,
        max_queue=args.max_queue,
        server_tools=() if args.no_tools else tools,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        log.warning(
            "binding to %s without an API key: anyone who can reach this port can use the model", args.host
        )
    try:
        engine = load_engine(args.model, args.device, args.dtype)
    except UserError as e:  # a model dir, tokenizer, dtype or device that cannot be used, named
        return report_user_error("serve", e)
    app = create_app(engine, config)
    print(
        f"fastgpt serve: model {config.model_name!r} at http://{args.host}:{args.port}/ (API at /v1)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
