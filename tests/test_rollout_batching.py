"""The engine's continuous batching (finished rows leave the batch) and per-prompt sampling streams: a
batch of prompts of different lengths, some finishing early, gives each prompt exactly what it gets
alone, greedy and sampled."""

import pytest
import torch
from model_support import tiny_model

from fastgpt.conversation import SpecialTokenFormat
from fastgpt.engine import Engine, batch_bucket
from fastgpt.model import GPT
from fastgpt.tokenizer import Tokenizer
from fastgpt.tools import calculate

TEXT = "The calculator says 12 * 7 = 84. Who are you? I am a small model. " * 20


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train([TEXT], vocab_size=300)


def prompts_of(lengths: list[int]) -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(1, 250, (n,), generator=gen).tolist() for n in lengths]


def test_batch_bucket():
    assert [batch_bucket(r) for r in (1, 2, 3, 5, 8, 9, 32)] == [1, 2, 4, 8, 8, 16, 32]


def test_continuous_batching_greedy_equals_one_at_a_time(tokenizer):
    model = tiny_model(tokenizer.vocab_size, init_std=0.3)
    engine = Engine(model, tokenizer)
    prompts = prompts_of([3, 11, 6, 20, 1, 9])
    alone = [engine.generate([p], max_tokens=16, temperature=0, stop_ids=set())[0][0].tokens for p in prompts]
    # stop tokens that end some rows early (at different steps) while the others run to the limit
    stops = {alone[0][2], alone[3][5]}
    expect = []
    for tokens in alone:
        cut = next((i + 1 for i, t in enumerate(tokens) if t in stops), len(tokens))
        expect.append(tokens[:cut])
    assert len({len(e) for e in expect}) > 1 and any(len(e) == 16 for e in expect)
    out = engine.generate(prompts, max_tokens=16, temperature=0, stop_ids=stops, logprobs=True)
    assert [g[0].tokens for g in out] == expect
    for g, e in zip(out, expect):
        assert g[0].finish_reason == ("stop" if e[-1] in stops else "length")
        assert len(g[0].logprobs) == len(e)


def test_sampling_depends_only_on_the_prompts_seed(tokenizer):
    model = tiny_model(tokenizer.vocab_size, init_std=0.3)
    engine = Engine(model, tokenizer)
    prompts = prompts_of([4, 13, 7])
    stops = {5, 17, 40}  # some rows stop early, so the batch shrinks under the others
    together = engine.generate(prompts, max_tokens=12, n=4, seeds=[7, 8, 9], stop_ids=stops)
    alone = [
        engine.generate([p], max_tokens=12, n=4, seeds=[s], stop_ids=stops)[0]
        for p, s in zip(prompts, [7, 8, 9])
    ]
    reordered = engine.generate(prompts[::-1], max_tokens=12, n=4, seeds=[9, 8, 7], stop_ids=stops)[::-1]
    tokens = lambda groups: [[c.tokens for c in g] for g in groups]  # noqa: E731
    assert tokens(together) == tokens(alone) == tokens(reordered)
    assert len({tuple(c.tokens) for g in together for c in g}) > 6  # real samples, not one path
    other = engine.generate(prompts, max_tokens=12, n=4, seeds=[7, 8, 10], stop_ids=stops)
    assert tokens(other)[:2] == tokens(together)[:2] and tokens(other)[2] != tokens(together)[2]


class MarkovScript(torch.nn.Module):
    """A real tiny GPT (the cache is exercised) whose next token is a fixed function of the token just
    fed: a deterministic path per prompt, whatever rows share the batch or leave it."""

    def __init__(self, inner: GPT, table: dict[int, int], default: int):
        super().__init__()
        self.inner, self.config, self.table, self.default = inner, inner.config, table, default

    def forward(self, idx, *, position_ids=None, doc_ids=None, kv_cache=None, logits_to_keep=0):
        logits = self.inner(
            idx, position_ids=position_ids, doc_ids=doc_ids, kv_cache=kv_cache, logits_to_keep=1
        )
        nxt = torch.tensor([self.table.get(int(t), self.default) for t in idx[:, -1]])
        logits[:, -1] = -1e9
        logits[torch.arange(idx.size(0)), -1, nxt] = 1e9
        return logits


def test_tool_rows_in_a_shrinking_batch_match_one_at_a_time(tokenizer):
    fmt = SpecialTokenFormat(tokenizer)
    seven, plus, one = (tokenizer.encode(s)[0] for s in ("7", "+", "1"))
    end_turn = fmt.ids["assistant"][1]
    # a prompt ending in `calls` calls 7+1 and stops after the output; `stops` stops at once; `loops` runs
    calls, stops, loops, other = [t for t in range(200, 220) if t not in (seven, plus, one)][:4]
    table = {calls: fmt.tool_call_start_id, fmt.tool_call_start_id: seven, seven: plus, plus: one}
    table |= {one: fmt.tool_call_end_id, fmt.tool_output_end_id: end_turn, stops: end_turn}
    table |= {loops: other, other: loops}
    model = MarkovScript(tiny_model(tokenizer.vocab_size, init_std=0.3), table, default=end_turn)
    engine = Engine(model, tokenizer, chat_format=fmt)
    # three rows stop at once, so the batch shrinks (6 -> 4 slots) while the others are inside their calls
    prompts = [[3, loops], [4, 5, calls], [stops], [6, calls], [7, stops], [stops]]
    alone = [engine.generate([p], max_tokens=20, temperature=0, tools=True)[0][0] for p in prompts]
    together = [g[0] for g in engine.generate(prompts, max_tokens=20, temperature=0, tools=True)]
    assert [c.tokens for c in together] == [c.tokens for c in alone]
    assert [c.sampled for c in together] == [c.sampled for c in alone]
    assert [c.finish_reason for c in together] == ["length"] + ["stop"] * 5
    inserted = fmt.tool_output_ids(calculate("7+1"))
    call = together[1]
    assert call.tokens[5 : 5 + len(inserted)] == inserted and call.sampled[5 : 5 + len(inserted)] == [
        0
    ] * len(inserted)
    assert sum(call.sampled) == len(call.tokens) - len(inserted)
    handed = engine.generate([prompts[1]], max_tokens=20, temperature=0, tools=False)[0][0]
    assert handed.finish_reason == "tool_calls" and handed.tokens[-1] == fmt.tool_call_end_id
