"""The inference engine against full recomputation (no KV cache), exact sampling distributions, and a
scripted model for stop tokens and calculator tool calls."""

import pytest
import torch
from model_support import full_recompute_greedy, tiny_model

from fastgpt.conversation import SpecialTokenFormat, python_call
from fastgpt.engine import Engine
from fastgpt.model import GPT, sample_next_token
from fastgpt.tokenizer import Tokenizer
from fastgpt.tools import calculate

TEXT = "The calculator says 12 * 7 = 84. Who are you? I am a small model. " * 20


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train([TEXT], vocab_size=300)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_greedy_equals_full_recompute(tokenizer, family):
    model = tiny_model(tokenizer.vocab_size, family)
    engine = Engine(model, tokenizer)
    prompts = [tokenizer.encode("Who are you?"), tokenizer.encode("The calculator says 12 * 7"), [5]]
    out = engine.generate(prompts, max_tokens=12, temperature=0, stop_ids=set())
    for prompt, (completion,) in zip(prompts, out):
        assert completion.tokens == full_recompute_greedy(model, prompt, 12)
        assert completion.finish_reason == "length"
        assert completion.sampled == [1] * 12
    streamed = list(engine.stream(prompts[0], max_tokens=12, temperature=0, stop_ids=set()))
    assert streamed == out[0][0].tokens


def test_n_samples_from_one_prefill_have_the_models_logprobs(tokenizer):
    model = tiny_model(tokenizer.vocab_size)
    engine = Engine(model, tokenizer)
    prompt = tokenizer.encode("I am a small")
    samples = engine.generate(
        [prompt], max_tokens=8, temperature=1.0, n=4, seed=3, stop_ids=set(), logprobs=True
    )[0]
    assert len(samples) == 4 and len({tuple(s.tokens) for s in samples}) > 1
    for s in samples:  # each row's cache (copied from the shared prefill) gives the full-recompute logprobs
        seq = torch.tensor([prompt + s.tokens])
        with torch.no_grad():
            ref = torch.log_softmax(model(seq)[0, len(prompt) - 1 : -1].float(), -1)
        expected = ref.gather(-1, torch.tensor(s.tokens)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(s.logprobs), expected, atol=2e-4, rtol=0)
    again = engine.generate([prompt], max_tokens=8, temperature=1.0, n=4, seed=3, stop_ids=set())[0]
    assert [s.tokens for s in again] == [s.tokens for s in samples]  # the seed fixes the samples


def test_sampling_follows_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    draws = 20000
    counts = torch.bincount(
        sample_next_token(logits.expand(draws, -1), 0.7, generator=gen), minlength=5
    ).float()
    expected = torch.softmax(logits[0] / 0.7, -1)
    assert torch.allclose(counts / draws, expected, atol=0.015)
    top2 = sample_next_token(logits.expand(draws, -1), 1.0, top_k=2, generator=gen)
    p = torch.softmax(logits[0, :2], -1)
    assert set(top2.tolist()) == {0, 1} and abs((top2 == 0).float().mean() - p[0]) < 0.015
    # top_p: the smallest set whose probability reaches top_p (here the first two tokens)
    probs = torch.softmax(logits[0], -1)
    top_p = float(probs[0] + probs[1]) - 1e-3
    nucleus = sample_next_token(logits.expand(draws, -1), top_p=top_p, generator=gen)
    assert set(nucleus.tolist()) == {0, 1}
    assert sample_next_token(logits, 0).item() == 0


class ScriptedModel(torch.nn.Module):
    """A real tiny GPT (so the KV cache is exercised for real) whose output is overridden by a script:
    the next token is a function of the tokens the engine has fed so far (padding excluded)."""

    def __init__(self, inner: GPT, script):
        super().__init__()
        self.inner, self.config, self.script = inner, inner.config, script
        self.history: list[list[int]] = []

    def forward(self, idx, *, position_ids=None, doc_ids=None, kv_cache=None, logits_to_keep=0):
        logits = self.inner(
            idx, position_ids=position_ids, doc_ids=doc_ids, kv_cache=kv_cache, logits_to_keep=1
        )
        if not self.history:
            self.history = [[] for _ in range(idx.size(0))]
        if len(self.history) != idx.size(0):  # prefill shared by n samples
            self.history = [list(self.history[0]) for _ in range(idx.size(0))]
        for b in range(idx.size(0)):
            keep = doc_ids[b] != 0 if doc_ids is not None else torch.ones_like(idx[b], dtype=torch.bool)
            self.history[b] += idx[b][keep].tolist()
            logits[b, -1] = -1e9
            logits[b, -1, self.script(self.history[b])] = 1e9
        return logits


def calculator_script(fmt: SpecialTokenFormat, tokenizer, expression: str):
    """Write a calculator call, then copy whatever tool output the engine inserted, then stop."""
    call = [fmt.tool_call_start_id, *tokenizer.encode(expression), fmt.tool_call_end_id]
    answer_prefix = tokenizer.encode(" so the answer is ")

    def script(history: list[int]) -> int:
        start = history.index(fmt.ids["assistant"][0]) + 1
        reply = history[start:]
        if len(reply) < len(call):
            return call[len(reply)]
        if fmt.tool_output_end_id not in reply:
            return 0  # the engine must be feeding the tool output now; this token is ignored
        out = reply[reply.index(fmt.tool_output_start_id) + 1 : reply.index(fmt.tool_output_end_id)]
        tail = reply[reply.index(fmt.tool_output_end_id) + 1 :]
        planned = answer_prefix + out + [fmt.ids["assistant"][1]]
        return planned[len(tail)]

    return script


@pytest.mark.parametrize("expression", ["12 * 7", "1 / 0"])
def test_tool_call_is_run_and_its_output_inserted(tokenizer, expression):
    fmt = SpecialTokenFormat(tokenizer)
    model = ScriptedModel(tiny_model(tokenizer.vocab_size), calculator_script(fmt, tokenizer, expression))
    engine = Engine(model, tokenizer, chat_format=fmt)
    reply = engine.chat(
        [{"role": "user", "content": "What is it?"}], max_tokens=150, temperature=0.8, tools=True, seed=0
    )
    result = calculate(expression)  # "84", or "error: division by zero" that the model then sees
    inserted = fmt.tool_output_ids(result)
    assert reply.finish_reason == "stop"
    assert reply.tokens[-1] == fmt.ids["assistant"][1]
    n_call = len(tokenizer.encode(expression)) + 2
    assert reply.tokens[n_call : n_call + len(inserted)] == inserted
    assert reply.sampled == [1] * n_call + [0] * len(inserted) + [1] * (
        len(reply.tokens) - n_call - len(inserted)
    )
    assert reply.text.endswith(f" so the answer is {result}")
    messages = fmt.parse_reply(reply.tokens[:-1])
    assert [m["role"] for m in messages] == ["assistant", "tool", "assistant"]
    assert messages[1]["content"] == result


def test_tool_call_without_tools_stops_for_the_caller(tokenizer):
    fmt = SpecialTokenFormat(tokenizer)
    model = ScriptedModel(tiny_model(tokenizer.vocab_size), calculator_script(fmt, tokenizer, "2+3"))
    engine = Engine(model, tokenizer, chat_format=fmt)
    reply = engine.chat([{"role": "user", "content": "2+3?"}], max_tokens=30, tools=False)
    assert reply.finish_reason == "tool_calls"
    assert reply.tokens[-1] == fmt.tool_call_end_id


def test_python_call_is_run_mid_generation(tokenizer):
    fmt = SpecialTokenFormat(tokenizer)
    code = '"strawberry".count("r")'
    model = ScriptedModel(
        tiny_model(tokenizer.vocab_size), calculator_script(fmt, tokenizer, f"python\n{code}")
    )
    engine = Engine(model, tokenizer, chat_format=fmt)
    reply = engine.chat([{"role": "user", "content": "r's?"}], max_tokens=80, temperature=0, tools=["python"])
    assert reply.finish_reason == "stop"
    assert reply.text.endswith(" so the answer is 3\n")  # the cell's output, "3\n", copied by the model
    messages = fmt.parse_reply(reply.tokens[:-1])
    assert messages[0]["tool_calls"] == [python_call(code)]
    assert messages[1] == {"role": "tool", "content": "3\n"}


def test_a_call_of_a_tool_that_is_not_enabled_goes_to_the_caller(tokenizer):
    fmt = SpecialTokenFormat(tokenizer)
    model = ScriptedModel(tiny_model(tokenizer.vocab_size), calculator_script(fmt, tokenizer, "python\n1+1"))
    seen = []
    registry = {"calculator": calculate, "python": lambda code: seen.append(code) or "2"}
    engine = Engine(model, tokenizer, chat_format=fmt, tool_registry=registry)
    prompt = [{"role": "user", "content": "1+1?"}]
    reply = engine.chat(prompt, max_tokens=40, temperature=0, tools=["calculator"])
    assert reply.finish_reason == "tool_calls" and seen == []
    assert fmt.parse_reply(reply.tokens)[0]["tool_calls"] == [python_call("1+1")]
    # enabled, the registry's callable runs with the call's argument
    model.history = []  # the script reads the reply from the row's first assistant start
    reply = engine.chat(prompt, max_tokens=40, temperature=0, tools=True)
    assert reply.finish_reason == "stop" and seen == ["1+1"]
    assert reply.text.endswith(" so the answer is 2")
    with pytest.raises(ValueError, match="'search' is not registered"):
        engine.chat(prompt, max_tokens=4, tools=["search"])


def test_prompt_longer_than_the_context_is_an_error(tokenizer):
    engine = Engine(tiny_model(tokenizer.vocab_size, seq_len=32), tokenizer)
    with pytest.raises(ValueError, match="no room in the model's context of 32"):
        engine.generate([[1] * 32], max_tokens=4)
    # max_tokens is capped at the room left
    (c,) = engine.generate([[1] * 28], max_tokens=50, temperature=0, stop_ids=set())[0]
    assert len(c.tokens) == 4 and c.finish_reason == "length"


def test_prompt_id_past_the_embedding_is_a_clear_error(tokenizer):
    # the tokenizer knows more ids than this model embeds (an imported model: fastgpt's chat tokens are
    # appended above its vocabulary): a ValueError naming the id, not an IndexError from the embedding
    engine = Engine(tiny_model(tokenizer.bos_id + 1, seq_len=32), tokenizer)
    with pytest.raises(
        ValueError, match=f"token id {tokenizer.bos_id + 1} is outside the model's vocabulary"
    ):
        engine.generate([[1, 2], [1, tokenizer.bos_id + 1]], max_tokens=2)
