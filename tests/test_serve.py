"""The OpenAI-compatible server against the engine it wraps, through the official ``openai`` client and
raw HTTP: the same tokens as ``Engine.generate`` (greedy and seeded sampling), streaming equal to the
whole reply, batching of concurrent requests, a full queue, tool calls, the API key, and every bad
input answered 4xx with an OpenAI error body. A tiny random-weight model served on a free port."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
import torch

from fastgpt.conversation import SpecialTokenFormat
from fastgpt.engine import Engine
from fastgpt.model import GPT, GPTConfig
from fastgpt.serve.background import serve_in_thread
from fastgpt.serve.protocol import Limits
from fastgpt.serve.server import ServeConfig, create_app
from fastgpt.tokenizer import Tokenizer
from fastgpt.tools import calculate

TEXT = "The calculator says 12 * 7 = 84. Who are you? I am a small model, café naïve. " * 20
CONTEXT = 96
NAME = "tiny"
LIMITS = Limits(max_prompt_tokens=80, max_tokens=64, default_max_tokens=16, max_n=4, max_request_bytes=20_000)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train([TEXT], vocab_size=300)


@pytest.fixture(scope="module")
def engine(tokenizer):
    torch.manual_seed(0)
    config = GPTConfig.from_preset(
        "tiny",
        vocab_size=tokenizer.vocab_size,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=64,
        max_seq_len=CONTEXT,
    )
    return Engine(GPT(config).eval(), tokenizer)


@pytest.fixture(scope="module")
def server(engine):
    # calculator calls of this random model go back to the client (finish_reason "tool_calls"), so a
    # reply is exactly the engine's tokens up to the call; the server-side calculator is tested below
    config = ServeConfig(model_name=NAME, limits=LIMITS, max_batch_rows=8, max_queue=16, server_tools=False)
    app = create_app(engine, config)
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def visible(tokenizer, tokens: list[int]) -> str:
    """What a client should see of a reply: its text up to a tool call, without special tokens."""
    call_start = tokenizer.token_id("<|tool_call_start|>")
    if call_start in tokens:
        tokens = tokens[: tokens.index(call_start)]
    special = set(tokenizer.special_tokens.values())
    segments, current = [], []  # special tokens are dropped; the text between them decodes on its own
    for t in tokens:
        if t in special:
            segments.append(current)
            current = []
        else:
            current.append(t)
    return "".join(tokenizer.decode(seg) for seg in [*segments, current])


def chat_reference(engine, messages, **kw):
    fmt = engine.chat_format
    prompt = fmt.render_prompt(messages)
    return prompt, engine.generate([prompt], stop_ids=fmt.stop_ids, tools=False, **kw)[0]


USER = [{"role": "user", "content": "Who are you?"}]


# ------------------------------------------------------------------------------------------ the openai client
def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME  # GET /v1/models/{name}, as clients check a model
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.models.retrieve("gpt-4o")
    health = httpx.get(server[0] + "/health").json()
    assert health["status"] == "ok" and health["model"] == NAME


def test_greedy_chat_is_the_engines_reply(client, engine, tokenizer):
    prompt, (ref,) = chat_reference(engine, USER, max_tokens=20, temperature=0)
    r = client.chat.completions.create(model=NAME, messages=USER, max_tokens=20, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == visible(tokenizer, ref.tokens)
    assert choice.finish_reason == ref.finish_reason
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.completion_tokens == len(ref.tokens)
    assert r.object == "chat.completion" and r.model == NAME and r.id.startswith("chatcmpl-")


def test_stream_concatenates_to_the_whole_reply(client, server):
    kwargs = dict(model=NAME, messages=USER, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    # the raw event stream ends with the OpenAI terminator
    raw = httpx.post(server[0] + "/v1/chat/completions", json={**kwargs, "stream": True}, timeout=60).text
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_seeded_samples_are_the_engines_samples(client, engine, tokenizer):
    _, refs = chat_reference(engine, USER, max_tokens=12, temperature=0.9, top_p=0.95, n=3, seed=7)
    r = client.chat.completions.create(
        model=NAME, messages=USER, max_tokens=12, temperature=0.9, top_p=0.95, n=3, seed=7
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == [visible(tokenizer, s.tokens) for s in refs]
    assert len({c.message.content for c in r.choices}) > 1  # three different samples


def test_text_completions_several_prompts(client, engine, tokenizer):
    texts = ["The calculator", "Who are"]
    prompts = [tokenizer.encode(t, add_bos=True) for t in texts]
    refs = engine.generate(prompts, max_tokens=10, temperature=1.0, n=2, seed=3, stop_ids={tokenizer.bos_id})
    r = client.completions.create(model=NAME, prompt=texts, n=2, max_tokens=10, temperature=1.0, seed=3)
    assert [c.text for c in r.choices] == [visible(tokenizer, s.tokens) for group in refs for s in group]
    assert r.usage.prompt_tokens == sum(map(len, prompts))
    streamed = {}
    for chunk in client.completions.create(
        model=NAME, prompt=texts, n=2, max_tokens=10, temperature=1.0, seed=3, stream=True
    ):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert [streamed[i] for i in range(4)] == [c.text for c in r.choices]


def test_stop_string_cuts_before_it(client, engine, tokenizer):
    prompt = tokenizer.encode("Who are", add_bos=True)
    (ref,) = engine.generate([prompt], max_tokens=30, temperature=0, stop_ids={tokenizer.bos_id})[0]
    full = visible(tokenizer, ref.tokens)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert len(stop) == 2 and stop.strip()  # precondition: a reply long enough to cut
    kwargs = dict(model=NAME, prompt="Who are", max_tokens=30, temperature=0)
    r = client.completions.create(stop=[stop, "\x00"], **kwargs)
    assert r.choices[0].text == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    chunks = client.completions.create(stop=stop, stream=True, **kwargs)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full[: full.index(stop)]


# ------------------------------------------------------------------------------------------ concurrency
def test_concurrent_requests_are_batched_and_exact(server, engine, tokenizer):
    url, app = server
    questions = [f"Who are you? {'I am ' * k}" for k in range(6)]
    expected = [
        visible(
            tokenizer,
            chat_reference(engine, [{"role": "user", "content": q}], max_tokens=16, temperature=0)[1][
                0
            ].tokens,
        )
        for q in questions
    ]
    before = dict(app.state.scheduler.stats)

    async def ask_all():
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        long = aclient.chat.completions.create(model=NAME, messages=USER, max_tokens=60, temperature=0)
        calls = [
            aclient.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": q}], max_tokens=16, temperature=0
            )
            for q in questions
        ]
        return await asyncio.gather(long, *calls)

    _, *replies = asyncio.run(ask_all())
    assert [r.choices[0].message.content for r in replies] == expected
    stats = app.state.scheduler.stats
    assert stats["requests"] - before["requests"] == 7
    assert stats["batches"] - before["batches"] < 7  # some requests shared a decode
    assert stats["largest_batch_rows"] > 1


class GatedEngine(Engine):
    """The real engine, held at its first step until ``gate`` opens (to fill the queue on purpose)."""

    gate: threading.Event

    def stream_batch(self, *args, **kwargs):
        self.gate.wait(30)
        yield from super().stream_batch(*args, **kwargs)


def test_full_queue_answers_429_then_serves(engine):
    gated = GatedEngine(engine.model, engine.tokenizer)
    gated.gate = threading.Event()
    app = create_app(gated, ServeConfig(model_name=NAME, limits=LIMITS, max_batch_rows=4, max_queue=1))
    body = {"model": NAME, "messages": USER, "max_tokens": 4, "temperature": 0}
    with serve_in_thread(app) as url:
        results = {}

        def post(name):
            results[name] = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)

        first = threading.Thread(target=post, args=("first",))
        first.start()
        _wait_for(lambda: httpx.get(url + "/health").json()["busy"])  # the worker holds the first one
        second = threading.Thread(target=post, args=("second",))
        second.start()
        _wait_for(lambda: httpx.get(url + "/health").json()["queued"] == 1)
        third = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert third.status_code == 429
        assert "busy" in third.json()["error"]["message"]
        gated.gate.set()
        first.join(60), second.join(60)
        assert results["first"].status_code == results["second"].status_code == 200
        assert results["first"].json()["choices"] == results["second"].json()["choices"]


def _wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_client_that_disconnects_stops_its_generation(engine):
    gated = GatedEngine(engine.model, engine.tokenizer)
    gated.gate = threading.Event()
    app = create_app(gated, ServeConfig(model_name=NAME, limits=LIMITS, max_batch_rows=4))
    scheduler = app.state.scheduler
    body = {"model": NAME, "messages": USER, "max_tokens": 64, "temperature": 0, "stream": True}
    with serve_in_thread(app) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            next(r.iter_lines())  # the first chunk, then hang up
        # abandoned while queued (dropped unseen) or while the worker holds it at the gate
        _wait_for(lambda: scheduler.queued == 0 and all(job.cancelled for job in scheduler.running))
        gated.gate.set()  # the engine starts decoding only now
        _wait_for(lambda: not scheduler.busy)
        assert scheduler.stats["tokens"] == 0
        again = httpx.post(
            url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 5}, timeout=60
        )
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] >= 1
        _wait_for(lambda: not scheduler.busy)  # the worker counts a step after sending it
        assert scheduler.stats["tokens"] == again.json()["usage"]["completion_tokens"]


def test_non_streaming_client_that_times_out_stops_its_generation(engine):
    # a client's read timeout (or a closed app) on a non-streamed request: the server must not decode the
    # whole reply for nobody while later requests wait behind it
    gated = GatedEngine(engine.model, engine.tokenizer)
    gated.gate = threading.Event()
    app = create_app(gated, ServeConfig(model_name=NAME, limits=LIMITS, max_batch_rows=4))
    scheduler = app.state.scheduler
    body = {"model": NAME, "messages": USER, "max_tokens": 64, "temperature": 0}
    with serve_in_thread(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
        _wait_for(lambda: scheduler.queued == 0 and all(job.cancelled for job in scheduler.running))
        gated.gate.set()
        _wait_for(lambda: not scheduler.busy)
        assert scheduler.stats["tokens"] == 0
        again = httpx.post(url + "/v1/chat/completions", json={**body, "max_tokens": 5}, timeout=60)
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] >= 1


# ------------------------------------------------------------------------------------------ bad input
def _chat(**over):
    return {"model": NAME, "messages": USER, "max_tokens": 4, **over}


BAD = [
    ("not json", b"{'model': ", 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("missing messages", {"model": NAME}, 400, "messages"),
    ("messages not a list", _chat(messages="hello"), 400, "messages"),
    ("unknown role", _chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages"),
    (
        "two user turns in a row",
        _chat(messages=USER + USER + [{"role": "assistant", "content": "x"}]),
        400,
        "messages",
    ),
    ("content of the wrong type", _chat(messages=[{"role": "user", "content": 5}]), 400, "messages"),
    ("temperature a string", _chat(temperature="hot"), 400, "temperature"),
    ("temperature out of range", _chat(temperature=3.5), 400, "temperature"),
    ("n a string", _chat(n="2"), 400, "n"),
    ("n zero", _chat(n=0), 400, "n"),
    ("n over the limit", _chat(n=LIMITS.max_n + 1), 400, "n"),
    ("max_tokens over the limit", _chat(max_tokens=LIMITS.max_tokens + 1), 400, "max_tokens"),
    ("max_tokens negative", _chat(max_tokens=-1), 400, "max_tokens"),
    ("stream not a bool", _chat(stream="yes"), 400, "stream"),
    ("too many stop strings", _chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (
        "prompt over the context",
        _chat(messages=[{"role": "user", "content": "café " * 200}]),
        400,
        "messages",
    ),
    ("unknown model", _chat(model="gpt-4"), 404, "model"),
    ("logprobs", _chat(logprobs=True), 400, "logprobs"),
    ("unknown tool type", _chat(tools=[{"type": "browser"}]), 400, "tools"),
    ("built-in tool the server does not run", _chat(tools=[{"type": "python"}]), 400, "tools"),
    ("function tool without a name", _chat(tools=[{"type": "function", "function": {}}]), 400, "tools"),
    (
        "function name not an identifier",
        _chat(tools=[{"type": "function", "function": {"name": "a b"}}]),
        400,
        "tools",
    ),
    ("body too large", _chat(messages=[{"role": "user", "content": "x" * 30_000}]), 413, None),
]


@pytest.mark.parametrize("name,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_chat_request_is_a_4xx_with_an_openai_error(server, name, body, status, param):
    url = server[0] + "/v1/chat/completions"
    r = (
        httpx.post(url, content=body, timeout=30)
        if isinstance(body, bytes)
        else httpx.post(url, json=body, timeout=30)
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param
    if name == "prompt over the context":
        assert error["code"] == "context_length_exceeded"


def test_null_options_and_the_developer_role_are_accepted(server):
    """Clients send ``"n": null`` / ``"stream": null`` (nullable in OpenAI's schema) and the newer
    ``developer`` role for the system message: each reply equals the plain request's (greedy)."""
    url = server[0] + "/v1/chat/completions"
    system = [{"role": "system", "content": "Be brief."}, *USER]
    developer = [{"role": "developer", "content": "Be brief."}, *USER]

    def reply(body):
        r = httpx.post(url, json={**_chat(temperature=0), **body}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]

    assert reply({"n": None, "stream": None}) == reply({})
    assert reply({"messages": developer}) == reply({"messages": system})
    completions = server[0] + "/v1/completions"
    body = {"model": NAME, "prompt": "Who", "max_tokens": 4, "temperature": 0}
    plain = httpx.post(completions, json=body, timeout=60).json()["choices"][0]["text"]
    nulls = httpx.post(completions, json={**body, "n": None, "echo": None, "stream": None}, timeout=60)
    assert nulls.status_code == 200 and nulls.json()["choices"][0]["text"] == plain


def test_token_id_prompts_continue_as_their_text_does(client, tokenizer, server):
    """OpenAI's token-array prompts (what lm-eval's local-completions sends): the ids of a text, BOS
    included, continue exactly as the text does; ids outside the vocabulary are a 400."""
    ids = tokenizer.encode("Who are", add_bos=True)
    text = client.completions.create(model=NAME, prompt="Who are", max_tokens=6, temperature=0)
    one = client.completions.create(model=NAME, prompt=ids, max_tokens=6, temperature=0)
    two = client.completions.create(model=NAME, prompt=[ids, ids[:2]], max_tokens=6, temperature=0)
    assert one.choices[0].text == text.choices[0].text == two.choices[0].text
    assert one.usage.prompt_tokens == len(ids) and len(two.choices) == 2
    for bad in ([tokenizer.vocab_size], [[]]):
        r = httpx.post(server[0] + "/v1/completions", json={"model": NAME, "prompt": bad}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text


def test_openai_client_raises_on_bad_input(client):
    with pytest.raises(openai.BadRequestError, match="n=9"):
        client.chat.completions.create(model=NAME, messages=USER, n=9)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=USER)
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model=NAME, prompt=["a"] * 3, n=2)


@pytest.mark.parametrize(
    "method,path,status",
    [("GET", "/v1/nothing", 404), ("GET", "/v1/chat/completions", 405), ("POST", "/v1/models", 405)],
)
def test_unknown_routes_answer_in_openai_shape(server, method, path, status):
    r = httpx.request(method, server[0] + path, timeout=30)
    assert r.status_code == status and r.json()["error"]["message"]


# ------------------------------------------------------------------------------------------ api key
def test_api_key_is_required_on_v1_only(engine):
    app = create_app(engine, ServeConfig(model_name=NAME, limits=LIMITS, api_key="s3cret"))
    with serve_in_thread(app) as url:
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.get(url + "/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model=NAME, messages=USER, max_tokens=3).choices[0].finish_reason


# ------------------------------------------------------------------------------------------ tool calls
class ScriptedGPT(torch.nn.Module):
    """A real tiny GPT (the KV cache is exercised) whose next token is dictated by ``script(history)``,
    ``history`` being the row's tokens so far (left padding excluded)."""

    def __init__(self, inner: GPT, script):
        super().__init__()
        self.inner, self.config, self.script = inner, inner.config, script
        self.history: list[list[int]] = []

    def forward(self, idx, *, doc_ids=None, **kwargs):
        logits = self.inner(idx, doc_ids=doc_ids, **kwargs)
        if idx.size(1) > 1 or not self.history:  # a prefill starts new rows
            self.history = [[] for _ in range(idx.size(0))]
        elif len(self.history) != idx.size(0):  # each prompt's prefill is shared by its n samples
            n = idx.size(0) // len(self.history)
            self.history = [list(h) for h in self.history for _ in range(n)]
        for b in range(idx.size(0)):
            self.history[b] += idx[b][doc_ids[b] != 0].tolist() if doc_ids is not None else idx[b].tolist()
            logits[b, -1] = -1e9
            logits[b, -1, self.script(self.history[b])] = 1e9
        return logits


@pytest.fixture(scope="module")
def tool_server(engine, tokenizer):
    fmt = SpecialTokenFormat(tokenizer)
    model = ScriptedGPT(engine.model, tool_script(fmt, tokenizer, "12*7"))  # a bare call: the calculator
    app = create_app(Engine(model, tokenizer), ServeConfig(model_name=NAME, limits=LIMITS, max_batch_rows=8))
    with serve_in_thread(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


QUESTION = [{"role": "user", "content": "What is 12 times 7?"}]
CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}


def test_server_runs_the_calculator_inline(tool_server, tokenizer):
    result = calculate("12*7")
    assert result == "84"
    r = tool_server.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=40, temperature=0)
    assert r.choices[0].message.content == f"[calculator: 12*7 = {result}] The answer is {result}"
    assert r.choices[0].finish_reason == "stop"
    chunks = tool_server.chat.completions.create(
        model=NAME, messages=QUESTION, max_tokens=40, temperature=0, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    )


def test_declared_calculator_returns_tool_calls_to_the_client(tool_server):
    r = tool_server.chat.completions.create(
        model=NAME, messages=QUESTION, tools=[CALCULATOR_TOOL], max_tokens=40, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "12*7"}
    # the client runs the tool and sends the result back; the model finishes its answer
    history = QUESTION + [
        {"role": "assistant", "content": choice.message.content, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": calculate("12*7")},
    ]
    final = tool_server.chat.completions.create(
        model=NAME, messages=history, tools=[CALCULATOR_TOOL], max_tokens=40, temperature=0
    )
    assert final.choices[0].message.content == " The answer is 84"
    assert final.choices[0].finish_reason == "stop"
    # streamed, the call arrives as a tool_calls delta
    chunks = list(
        tool_server.chat.completions.create(
            model=NAME, messages=QUESTION, tools=[CALCULATOR_TOOL], max_tokens=40, temperature=0, stream=True
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [json.loads(tc.function.arguments) for tc in calls] == [{"expression": "12*7"}]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def tool_script(fmt: SpecialTokenFormat, tokenizer, call_text: str):
    """Write the call ``call_text``; once a tool output is there, answer with it and stop. Without an
    output (the call went to the client, who sends it back as a tool message) answer from the prompt's
    last tool output."""
    call = [fmt.tool_call_start_id, *tokenizer.encode(call_text), fmt.tool_call_end_id]
    prefix = tokenizer.encode(" The answer is ")

    def script(history: list[int]) -> int:
        reply = history[len(history) - history[::-1].index(fmt.ids["assistant"][0]) :]
        if fmt.tool_output_end_id in reply:
            out_start, out_end = reply.index(fmt.tool_output_start_id), reply.index(fmt.tool_output_end_id)
            target = prefix + reply[out_start + 1 : out_end] + [fmt.ids["assistant"][1]]
            return target[min(len(reply) - out_end - 1, len(target) - 1)]
        return call[min(len(reply), len(call) - 1)]

    return script


@pytest.fixture(scope="module")
def python_server(engine, tokenizer):
    """A model that calls python; a server that may run python (and the calculator)."""
    fmt = SpecialTokenFormat(tokenizer)
    model = ScriptedGPT(engine.model, tool_script(fmt, tokenizer, "python\nprint(6*7)"))
    config = ServeConfig(
        model_name=NAME, limits=LIMITS, max_batch_rows=8, server_tools=("calculator", "python")
    )
    with serve_in_thread(create_app(Engine(model, tokenizer), config)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_declared_builtin_python_is_run_by_the_server(python_server):
    r = python_server.chat.completions.create(
        model=NAME, messages=QUESTION, tools=[{"type": "python"}], max_tokens=60, temperature=0
    )
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    assert r.choices[0].message.content == "[python: print(6*7) = 42\n] The answer is 42\n"


def test_python_declared_as_a_function_is_the_clients(python_server):
    python_fn = {"type": "function", "function": {"name": "python", "parameters": {"type": "object"}}}
    weather = {"type": "function", "function": {"name": "get_weather"}}
    r = python_server.chat.completions.create(
        model=NAME, messages=QUESTION, tools=[python_fn, weather], max_tokens=60, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "python" and json.loads(call.function.arguments) == {"code": "print(6*7)"}
    # the client runs it and sends the output back; the model answers with it
    history = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "42"},
    ]
    final = python_server.chat.completions.create(
        model=NAME, messages=history, tools=[python_fn, weather], max_tokens=40, temperature=0
    )
    assert final.choices[0].message.content == " The answer is 42"


def test_without_a_tools_field_the_servers_tools_run(python_server):
    r = python_server.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=60, temperature=0)
    assert r.choices[0].message.content == "[python: print(6*7) = 42\n] The answer is 42\n"


@pytest.fixture(scope="module")
def template_server():
    """A ChatML model whose template writes tool calls as text (CHATML_TOOLS_TEMPLATE): it calls
    get_weather, and once a tool result is in the conversation it answers."""
    from fastgpt.chat.template import CHATML_TOOLS_TEMPLATE, TemplateFormat

    tok = Tokenizer.train(
        [TEXT + " sunny weather Paris tool_call name arguments"],
        vocab_size=300,
        special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fmt = TemplateFormat(tok, CHATML_TOOLS_TEMPLATE)
    im_start, im_end = tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>")
    header = tok.encode("assistant\n")
    call = tok.encode(
        'Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    answer = tok.encode("It is sunny.")
    tool_header = tok.encode("tool\n")

    def script(history: list[int]) -> int:
        last = len(history) - history[::-1].index(im_start)
        reply = history[last + len(header) :]
        starts = [i for i, t in enumerate(history) if t == im_start]
        after_tool = any(history[i + 1 : i + 1 + len(tool_header)] == tool_header for i in starts)
        planned = (answer if after_tool else call) + [im_end]
        return planned[min(len(reply), len(planned) - 1)]

    torch.manual_seed(0)
    config = GPTConfig.from_preset(
        "tiny", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, max_seq_len=512
    )
    engine = Engine(ScriptedGPT(GPT(config).eval(), script), tok, chat_format=fmt)
    limits = Limits(max_prompt_tokens=300, max_tokens=200, default_max_tokens=16, max_n=4)
    with serve_in_thread(create_app(engine, ServeConfig(model_name=NAME, limits=limits))) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_template_tool_calls_written_as_text_go_back_to_the_client(template_server):
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    r = template_server.chat.completions.create(
        model=NAME, messages=ask, tools=[weather], max_tokens=200, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(
        template_server.chat.completions.create(
            model=NAME, messages=ask, tools=[weather], max_tokens=200, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Let me look."
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_weather"]
    # the client runs it and sends the result back
    history = ask + [
        {"role": "assistant", "content": choice.message.content, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    final = template_server.chat.completions.create(
        model=NAME, messages=history, tools=[weather], max_tokens=200, temperature=0
    )
    assert final.choices[0].message.content == "It is sunny." and final.choices[0].finish_reason == "stop"
    # built-ins cannot run inside a reply written as text
    with pytest.raises(openai.BadRequestError, match="as text"):
        template_server.chat.completions.create(
            model=NAME, messages=ask, tools=[{"type": "python"}], max_tokens=4
        )


# ------------------------------------------------------------------------------------------ the command
def test_fastgpt_serve_command(engine, tokenizer, tmp_path):
    """``fastgpt serve --model DIR`` in its own process: loads the dir, binds, answers, shuts down."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    model_dir = tmp_path / "sft" / "model"
    engine.model.save_pretrained(model_dir)
    tokenizer.save(model_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "fastgpt.cli", "serve", "--model", str(model_dir), "--port", str(port)]
    cmd += ["--api_key", "k", "--max_tokens", "8", "--log_level", "warning"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "FASTGPT_API_KEY": ""}
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait_for(up, timeout=120)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["sft"]  # named after the run dir
        r = client.chat.completions.create(model="sft", messages=USER, max_tokens=8, temperature=0)
        _, (ref,) = chat_reference(engine, USER, max_tokens=8, temperature=0)
        assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
        assert r.usage.completion_tokens == len(ref.tokens) or r.choices[0].finish_reason == "tool_calls"
        with pytest.raises(openai.BadRequestError, match="max_tokens=9"):
            client.chat.completions.create(model="sft", messages=USER, max_tokens=9)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_fastgpt_serve_refuses_an_unusable_model_dir_in_one_line(engine, tokenizer, tmp_path, capsys):
    """A run dir given for its model dir, or a dtype name torch lacks: exit 2 before binding a port."""
    from fastgpt.serve.server import main

    model_dir = tmp_path / "run" / "model"
    engine.model.save_pretrained(model_dir)
    tokenizer.save(model_dir)
    (tmp_path / "run" / "config.json").write_text('{"preset": "tiny"}')  # what a training run writes
    for argv, expected in [
        (["--model", str(tmp_path / "run")], f"its model is {model_dir}"),
        (["--model", str(model_dir), "--dtype", "half-precision"], "dtype 'half-precision'"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastgpt serve: error: ") and expected in err and err.count("\n") == 1, err


def test_a_base_model_serves_completions_and_refuses_chat(tokenizer):
    """An embedding that ends at <|bos|> has no chat tokens: chat is a 400 naming /v1/completions, not
    a server error; text completion works."""
    config = GPTConfig.from_preset(
        "tiny",
        vocab_size=tokenizer.bos_id + 1,
        n_layer=1,
        n_head=2,
        n_kv_head=2,
        n_embd=32,
        max_seq_len=CONTEXT,
    )
    engine = Engine(GPT(config).eval(), tokenizer)
    with serve_in_thread(create_app(engine, ServeConfig(model_name=NAME, limits=LIMITS))) as url:
        chat = httpx.post(url + "/v1/chat/completions", json=_chat(), timeout=60)
        assert chat.status_code == 400 and "/v1/completions" in chat.json()["error"]["message"]
        text = httpx.post(
            url + "/v1/completions", json={"model": NAME, "prompt": "Who", "max_tokens": 3}, timeout=60
        )
        assert text.status_code == 200 and text.json()["usage"]["completion_tokens"] >= 1
        # a token id the tokenizer knows (a chat token) but the embedding lacks: 400, not a 500
        ids = httpx.post(
            url + "/v1/completions",
            json={"model": NAME, "prompt": [tokenizer.bos_id + 1], "max_tokens": 3},
            timeout=60,
        )
        assert ids.status_code == 400 and ids.json()["error"]["param"] == "prompt", ids.text
        assert f"0..{tokenizer.bos_id}" in ids.json()["error"]["message"]
