"""``Engine(..., compile=True)``: the torch.compile'd static-cache decode step must give the eager
engine's and the full-recompute greedy tokens, token for token (fp32), compile once per shape, and never
decode with stale weights after an in-place weight change.

Each compile of the 2-layer test model costs about 5-12 s on 2 shared CPU cores (C++ kernels and wrapper),
max-autotune about 20-30 s; the default tests compile five graphs in all (about 40 s); max-autotune and
the other model variants are marked slow (about 70 s)."""

import model_support
import pytest
import torch
from model_support import full_recompute_greedy

from fastgpt.decode_step import MIN_STATIC_CACHE_LEN, static_cache_len
from fastgpt.engine import Engine
from fastgpt.model import GPT


def tiny_model(family: str = "llama", seq_len: int = 192, **overrides) -> GPT:
    """init_std 0.3, larger than the training init, so greedy decoding does not repeat one token."""
    return model_support.tiny_model(300, family, seq_len, **{"init_std": 0.3, **overrides})


def prompts_of(lengths: list[int], seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 300, (n,), generator=gen).tolist() for n in lengths]


def greedy(engine: Engine, prompts: list[list[int]], max_tokens: int, n: int = 1) -> list[list[int]]:
    out = engine.generate(prompts, max_tokens=max_tokens, temperature=0, stop_ids=set(), n=n)
    return [c.tokens for cs in out for c in cs]


def check_compiled_matches(
    model: GPT, prompts: list[list[int]], max_tokens: int, mode: str | bool = True
) -> Engine:
    compiled = Engine(model, None, compile=mode)
    got = greedy(compiled, prompts, max_tokens)
    assert got == greedy(Engine(model, None), prompts, max_tokens)
    for prompt, tokens in zip(prompts, got):
        steps = min(max_tokens, model.config.max_seq_len - max(map(len, prompts)))
        assert tokens == full_recompute_greedy(model, prompt, steps)
    return compiled


@pytest.mark.parametrize("mode", ["default", pytest.param("max-autotune", marks=pytest.mark.slow)])
def test_compiled_greedy_equals_eager_and_full_recompute_batched(mode):
    """Two prompts of different lengths (left padding, per-row positions and padding documents in the
    mask); then two greedy rows sharing one prefill (the repeated cache; same batch and cache length,
    so the same graph). Both compile modes (max-autotune swaps the matmul implementations)."""
    model = tiny_model()
    compiled = check_compiled_matches(model, prompts_of([7, 19]), max_tokens=16, mode=mode)
    prompt = prompts_of([11], seed=2)
    rows = greedy(compiled, prompt, 10, n=2)
    assert rows == [full_recompute_greedy(model, prompt[0], 10)] * 2
    # sampling reads the same logits: same seed, same samples and log-probabilities as eager
    kwargs = dict(max_tokens=10, temperature=1.0, n=2, seed=5, stop_ids=set(), logprobs=True)
    got = compiled.generate(prompt, **kwargs)[0]
    want = Engine(model, None).generate(prompt, **kwargs)[0]
    assert [c.tokens for c in got] == [c.tokens for c in want]
    torch.testing.assert_close(
        torch.tensor([c.logprobs for c in got]), torch.tensor([c.logprobs for c in want]), atol=1e-4, rtol=0
    )


def test_compiled_prompt_near_the_context_end():
    """The cache is the whole context (96, not a power of two) and fills up exactly."""
    model = tiny_model(seq_len=96)
    compiled = check_compiled_matches(model, prompts_of([90, 84]), max_tokens=20)  # capped at 6
    assert static_cache_len(90 + 6, 96) == 96
    assert compiled.compile_seconds > 0


def test_compiled_step_compiles_once_per_shape():
    """Requests whose cache fits the same length bucket reuse the graph: no compile time added."""
    model = tiny_model()
    engine = Engine(model, None, compile=True)
    first = greedy(engine, prompts_of([5]), 8)
    after_first = engine.compile_seconds
    assert after_first > 0 and len(engine._compiled_step._graphs) == 1
    for length, new in [(20, 3), (40, 20)]:  # caches of 23 and 60 slots: both the 64 bucket
        prompt = prompts_of([length], seed=length)
        assert greedy(engine, prompt, new)[0] == full_recompute_greedy(model, prompt[0], new)
    assert engine.compile_seconds == after_first and len(engine._compiled_step._graphs) == 1
    assert greedy(engine, prompts_of([5]), 8) == first


def test_compiled_engine_follows_in_place_weight_changes():
    """Frozen weights are copies: after an optimizer-style in-place update the engine must recompile
    rather than decode with the old weights."""
    model = tiny_model()
    engine = Engine(model, None, compile=True)
    prompt = prompts_of([9])
    before = greedy(engine, prompt, 12)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.7)
    after = greedy(engine, prompt, 12)
    assert after[0] == full_recompute_greedy(model, prompt[0], 12)
    assert after != before  # the change is big enough to change the greedy tokens


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, overrides",
    [("gpt2", {}), ("llama", {"window": 8}), ("llama", {"tie_embeddings": False})],
)
def test_compiled_greedy_other_model_variants(family, overrides):
    """Learned positions and LayerNorm/GELU (gpt2), a sliding window shorter than the prompt, an
    untied output head."""
    model = tiny_model(family, **overrides)
    check_compiled_matches(model, prompts_of([13, 4]), max_tokens=12)


def test_unknown_compile_mode_is_an_error():
    with pytest.raises(ValueError, match="max-autotune"):
        Engine(tiny_model(), None, compile="fastest")


def test_static_cache_len_buckets():
    assert static_cache_len(1, 4096) == MIN_STATIC_CACHE_LEN
    assert static_cache_len(65, 4096) == 128
    assert static_cache_len(128, 4096) == 128
    assert static_cache_len(300, 256) == 300  # never shorter than needed (the engine caps before)
    assert static_cache_len(130, 192) == 192


def test_live_compiled_engine_does_not_recompile_after_an_optimizer_step_or_a_shrinking_batch():
    """``compile="live"`` (RL rollouts): the weights are graph inputs, so an optimizer step changes the
    tokens (the graph reads the new weights) without a recompile (dynamo's graph counter and the compile
    time stay put), and rows leaving the batch within a bucket compile nothing new."""
    from torch._dynamo.utils import counters

    model = tiny_model()
    engine = Engine(model, None, compile="live")
    prompts = prompts_of([5, 9, 3, 7])
    first = greedy(engine, prompts, 10)
    assert first == greedy(Engine(model, None), prompts, 10)
    graphs, seconds = counters["stats"]["unique_graphs"], engine.compile_seconds
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.train()
    model(torch.tensor(prompts_of([12])), torch.tensor(prompts_of([12], seed=2))).backward()
    optimizer.step()
    model.eval()
    after = greedy(engine, prompts, 10)
    assert after == greedy(Engine(model, None), prompts, 10) and after != first
    assert counters["stats"]["unique_graphs"] == graphs and engine.compile_seconds == seconds
    # three of four rows stop early: the batch shrinks to the 2- and 1-row buckets (new shapes) ...
    stops = {after[0][1], after[1][1], after[2][1]} - set(after[3])
    engine.generate(prompts, max_tokens=10, temperature=0, stop_ids=stops)
    shrunk = counters["stats"]["unique_graphs"]
    assert graphs < shrunk <= graphs + 2
    engine.generate(prompts, max_tokens=10, temperature=0, stop_ids=stops)  # ... and reuses it
    assert counters["stats"]["unique_graphs"] == shrunk
