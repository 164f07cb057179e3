"""The GRPO step's shortcuts give the numbers of the plain computation: prompts shared by a group go
through the model once and answers run in length buckets (same log-probabilities and gradients as the
full forward), the sampler's own log-probabilities stand in for the old-policy forward only where they
equal it (fp32), and the rollout engine's prepacked output head follows in-place weight updates."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from model_support import full_recompute_greedy, tiny_model

from fastgpt import ops
from fastgpt.engine import Engine
from fastgpt.grpo import GRPOConfig, GRPOStage
from fastgpt.model import GPT, GPTConfig, from_pretrained
from fastgpt.rl.advantages import group_advantages
from fastgpt.rl.sequences import (
    ResponseBatch,
    collate_responses,
    length_buckets,
    response_logprobs,
    shared_prompt_logprobs,
    token_nll,
)
from fastgpt.rl.toy import tiny_model_dir
from fastgpt.tasks import get_task
from fastgpt.tokenizer import Tokenizer


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_shared_prompts_give_the_full_forwards_logprobs_and_gradients(family):
    torch.manual_seed(0)
    config = GPTConfig(family=family, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else 4,
                       n_embd=64, vocab_size=97, max_seq_len=64)  # fmt: skip
    model = GPT(config)
    # two groups of 3 rows with prompts of different lengths (left padding in the shared prefill),
    # responses of different lengths, and an engine-inserted (untrained) token in one of them
    prompts = [[5, 6, 7, 8, 9]] * 3 + [[11, 12, 13]] * 3
    responses = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [20], [21, 22, 23, 24], [30, 31]]
    trained = [[1] * len(r) for r in responses]
    trained[2][1] = 0
    batch = collate_responses(prompts, responses, trained=trained)
    full = response_logprobs(model, batch)
    full_grads = torch.autograd.grad(full.sum(), list(model.parameters()))
    shared = shared_prompt_logprobs(model, batch)
    assert shared is not None and shared.shape == full.shape
    shared_grads = torch.autograd.grad(shared.sum(), list(model.parameters()))
    assert torch.equal(shared != 0, full != 0)  # exactly the trained response tokens
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("overhead", [0, 3, 10**6])  # a bucket per length, a few, one bucket
def test_length_buckets_give_the_full_forwards_logprobs_and_gradients(overhead):
    torch.manual_seed(1)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, vocab_size=97, max_seq_len=64))
    # three groups (prompts of 4, 6 and 4 tokens), answers of 0-9 tokens in no order, one untrained token
    prompts = [[3, 4, 5, 6]] * 4 + [[7, 8, 9, 10, 11, 12]] * 4 + [[13, 14, 15, 16]] * 4
    lengths = [9, 1, 5, 0, 2, 9, 3, 7, 4, 4, 8, 1]
    responses = [[(17 * r + i) % 90 + 1 for i in range(n)] for r, n in enumerate(lengths)]
    trained = [[1] * n for n in lengths]
    trained[7][3] = 0
    batch = collate_responses(prompts, responses, trained=trained)
    buckets = length_buckets(lengths, overhead)
    assert sorted(r for b in buckets for r in b) == [r for r, n in enumerate(lengths) if n > 0]
    distinct = len(set(lengths) - {0})  # no overhead: a bucket per length; a huge one: one bucket
    assert len(buckets) == {0: distinct, 10**6: 1}.get(overhead, len(buckets)) and len(buckets) >= 1
    full = response_logprobs(model, batch)
    full_grads = torch.autograd.grad(full.sum(), list(model.parameters()))
    shared = shared_prompt_logprobs(model, batch, bucket_overhead=overhead)
    shared_grads = torch.autograd.grad(shared.sum(), list(model.parameters()))
    assert torch.equal(shared != 0, full != 0)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_token_nll_keeps_the_logit_gradients_and_equals_the_ops_loss_and_gradients():
    torch.manual_seed(2)
    hidden = torch.randn(300, 32, requires_grad=True)  # more rows than one chunk
    weight = torch.randn(101, 32, requires_grad=True)
    targets = torch.randint(0, 101, (300,))
    upstream = torch.randn(300)  # per-row gradient scales, as the policy loss gives them
    mine = token_nll(hidden, weight, targets)
    theirs = ops.linear_cross_entropy(hidden, weight, targets, reduction="none")
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    for a, b in zip(
        torch.autograd.grad((mine * upstream).sum(), [hidden, weight]),
        torch.autograd.grad((theirs * upstream).sum(), [hidden, weight]),
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_length_buckets_minimise_padded_tokens_plus_overhead():
    lengths = [5, 48, 6, 47, 48, 20, 22, 0]
    for overhead in (0, 8, 40, 1000):
        buckets = length_buckets(lengths, overhead)
        cost = sum(len(b) * max(lengths[r] for r in b) + overhead for b in buckets)
        # brute force over every split of the sorted nonzero lengths into consecutive runs
        ordered = sorted(n for n in lengths if n)
        best = min(
            sum((j - i) * ordered[j - 1] + overhead for i, j in zip((0, *cuts), (*cuts, len(ordered))))
            for k in range(len(ordered))
            for cuts in itertools.combinations(range(1, len(ordered)), k)
        )
        assert cost == best, overhead


def test_shared_prompts_do_not_apply_without_a_shared_prompt_or_to_a_wrapped_model():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=50, max_seq_len=32))
    distinct = collate_responses([[1, 2, 3], [4, 5, 6]], [[7], [8, 9]])
    assert shared_prompt_logprobs(model, distinct) is None
    same = collate_responses([[1, 2, 3], [1, 2, 3]], [[7], [8, 9]])
    assert shared_prompt_logprobs(torch.nn.Sequential(model), same) is None
    untrained = collate_responses([[1, 2, 3], [1, 2, 3]], [[7], [8, 9]], trained=[[0], [0, 0]])
    assert shared_prompt_logprobs(model, untrained) is None  # nothing to train: the full forward
    torch.testing.assert_close(  # the dispatching entry point falls back to the full forward
        response_logprobs(model, distinct, share_prompts=True), response_logprobs(model, distinct)
    )


def _stage(tmp_path: Path, dtype: torch.dtype) -> GRPOStage:
    model_dir = tiny_model_dir(tmp_path / "m")
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say ({i}).", "answer": i}) + "\n" for i in range(20)))
    cfg = GRPOConfig(out_dir=str(tmp_path / "run"), group_size=4, prompts_per_step=2, batch_size=4,
                     max_new_tokens=8, updates_per_batch=2, max_steps=2, progress=False, eval_every=0)  # fmt: skip
    graded = lambda text, problem=None: sum(map(ord, text)) % 97 / 97  # noqa: E731
    return GRPOStage(from_pretrained(model_dir), Tokenizer.load(model_dir), get_task(str(path)), cfg,
                     correctness_fn=graded, autocast_dtype=dtype)  # fmt: skip


def test_grpo_reuses_the_samplers_logprobs_as_old_logprobs_in_fp32_only(tmp_path):
    stage = _stage(tmp_path, torch.float32)
    assert stage.reuse_sampler_logprobs
    rollout = stage.rollout()
    assert rollout.logprobs is not None
    advantages, zero_var = group_advantages(rollout.rewards, 4)
    reused = stage.micro_batches(rollout, advantages, zero_var)
    for micro in reused:  # what the forward of the policy would have given, on the trained tokens
        rows = ResponseBatch(micro["ids"], micro["response_mask"], micro["last"], micro["prompt_lens"])
        with torch.no_grad():
            forward = response_logprobs(stage.policy, rows)
        mask = micro["mask"].bool()
        assert mask.any()
        torch.testing.assert_close(micro["old_logprobs"][mask], forward[mask], atol=2e-4, rtol=0)
        # and the loss and its metrics then equal those of the recomputed old log-probabilities
        loss, metrics = stage.loss(stage.policy, micro)
        again, metrics_again = stage.loss(stage.policy, {**micro, "old_logprobs": forward})
        torch.testing.assert_close(loss, again, atol=1e-4, rtol=1e-4)
        for k in metrics:
            assert metrics[k][0] == pytest.approx(metrics_again[k][0], abs=1e-3), k
    assert not _stage(tmp_path / "bf16", torch.bfloat16).reuse_sampler_logprobs  # bf16 rounds differently


def test_engine_prepacked_head_gives_the_models_logits_and_follows_weight_updates():
    model = tiny_model(97, tie_embeddings=False)  # an update of the head alone changes the tokens
    engine = Engine(model, None)
    head = engine._packed_head(model)
    if head is None:
        pytest.skip("no oneDNN on this CPU build: the engine uses the model's own head")
    hidden = torch.randn(5, model.config.n_embd)
    with torch.no_grad():
        torch.testing.assert_close(head(hidden), hidden @ model.lm_head_weight.t(), atol=1e-5, rtol=1e-5)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    before = [g[0].tokens for g in engine.generate(prompts, max_tokens=10, temperature=0, stop_ids=set())]
    assert before == [full_recompute_greedy(model, p, 10) for p in prompts]
    with torch.no_grad():  # an optimizer step changes the weights in place
        model.lm_head_weight.add_(torch.randn_like(model.lm_head_weight))
    after = [g[0].tokens for g in engine.generate(prompts, max_tokens=10, temperature=0, stop_ids=set())]
    assert after == [full_recompute_greedy(model, p, 10) for p in prompts] and after != before


@pytest.mark.parametrize("zero", [0, 1])
def test_rollouts_after_an_optimizer_step_sample_from_the_updated_policy(tmp_path, zero):
    """The fused AdamW step (and DeepSpeed's, zero=1 on one rank) writes weights without bumping their
    version counters; the training loop bumps them, so the engine's prepacked head (cached by version)
    is rebuilt after every update."""
    from fastgpt.grpo import step
    from fastgpt.train.trainer import Trainer

    model_dir = tiny_model_dir(tmp_path / "m")
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say ({i}).", "answer": i}) + "\n" for i in range(20)))
    cfg = GRPOConfig(out_dir=str(tmp_path / "run"), group_size=4, prompts_per_step=2, max_new_tokens=8,
                     lr=3e-2, min_lr=3e-2, max_steps=1, progress=False, eval_every=0, log_every=10**6, zero=zero)  # fmt: skip
    graded = lambda text, problem=None: sum(map(ord, text)) % 97 / 97  # noqa: E731
    policy, tokenizer = from_pretrained(model_dir), Tokenizer.load(model_dir)
    stage = GRPOStage(policy, tokenizer, get_task(str(path)), cfg, correctness_fn=graded)
    trainer = Trainer(cfg, policy, tokenizer=tokenizer, stage_name="grpo", micro_batch_size=stage.micro_rows,
                      grad_accum=stage.grad_accum)  # fmt: skip
    trainer.begin(stage)
    prompts = [tokenizer.encode("Say (3)."), tokenizer.encode("Say (11).")]

    def greedy() -> list[list[int]]:
        return [
            g[0].tokens for g in stage.engine.generate(prompts, max_tokens=8, temperature=0, stop_ids=set())
        ]

    before = greedy()
    step(stage, trainer)
    policy.eval()
    after = greedy()
    assert after == [full_recompute_greedy(policy, p, 8) for p in prompts] and after != before
    trainer.end(stage)
