"""GRPO's logged metrics keep the values of the pre-refactor formulas: loss, clip_frac, entropy, kl
(beta > 0), reward_mean and accuracy of a few steps, recomputed here from the rollout's tensors with
plain torch over the whole rollout at once (no micro-batches, no loop), with grad_accum = 2 micro-batches
and updates_per_batch = 2 (the second step off-policy, so the clip and the KL are not trivially 0)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fastgpt.grpo import GRPOConfig, GRPOStage, micro_batch_shape
from fastgpt.model import from_pretrained
from fastgpt.rl.advantages import group_advantages
from fastgpt.rl.toy import tiny_model_dir
from fastgpt.tasks import get_task
from fastgpt.tokenizer import Tokenizer
from fastgpt.train.trainer import Trainer


def _task(tmp_path: Path):
    path = tmp_path / "say_digits.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Say digits ({i}).", "answer": i}) + "\n" for i in range(40))
    )
    return get_task(str(path))


def _graded(completion: str, problem=None) -> float:
    """A reward that differs between almost any two samples, so every group has a signal."""
    return sum(map(ord, completion)) % 97 / 97


def _expected(model, reference, rollout, old, beta, eps, group_size):
    """The pre-refactor formulas over the whole rollout in one go."""
    ids, resp = rollout.batch.ids, rollout.batch.response_mask
    mask = resp[:, 1:].float()
    with torch.no_grad():

        def logp(m):
            logits = m(ids[:, :-1]).float()
            return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0] * mask

        lp, ref = logp(model), logp(reference)
    old = lp if old is None else old
    r = rollout.rewards.view(-1, group_size)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1, 1)
    ratio = torch.exp(lp - old)
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    clipped = ((adv > 0) & (ratio > 1 + eps)) | ((adv < 0) & (ratio < 1 - eps))
    q = ref - lp
    kl = torch.exp(q) - q - 1
    n = mask.sum()
    return lp, {
        "loss": float(((per_token + beta * kl) * mask).sum() / n),
        "clip_frac": float((clipped.float() * mask).sum() / n),
        "entropy": float(-(lp * mask).sum() / n),
        "kl": float((kl * mask).sum() / n),
        "reward_mean": float(rollout.rewards.mean()),
        "accuracy": float(rollout.correct.mean()),
    }


def test_grpo_step_metrics_equal_the_formulas(tmp_path):
    model_dir = tiny_model_dir(tmp_path / "m")
    model, tokenizer = from_pretrained(model_dir), Tokenizer.load(model_dir)
    cfg = GRPOConfig(
        out_dir=str(tmp_path / "run"),
        group_size=4,
        prompts_per_step=2,
        batch_size=4,  # 8 rows -> 2 micro-batches per step
        max_new_tokens=10,
        beta=0.1,
        clip_low=0.01,  # a narrow clip: the second (off-policy) update clips some tokens for sure
        updates_per_batch=2,
        max_steps=4,
        lr=3e-2,
        dtype="fp32",
        progress=False,
        eval_every=0,
        eval_problems=2,
    )
    assert micro_batch_shape(cfg, 1) == (4, 2)
    stage = GRPOStage(model, tokenizer, _task(tmp_path), cfg, correctness_fn=_graded)
    reference = from_pretrained(model_dir).eval()
    trainer = Trainer(cfg, model, micro_batch_size=4, grad_accum=2)
    trainer.begin(stage)
    logged = []
    for _rollout_index in range(2):
        rollout = stage.rollout()
        advantages, zero_var = group_advantages(rollout.rewards, cfg.group_size)
        batches = stage.micro_batches(rollout, advantages, zero_var)
        stats = stage.rollout_metrics(rollout, zero_var)
        old = None
        for _update in range(cfg.updates_per_batch):
            lp, expected = _expected(model, reference, rollout, old, cfg.beta, cfg.clip_low, cfg.group_size)
            old = lp if old is None else old  # the second update compares against the rollout-time policy
            got = trainer.update(stage, batches, metrics=stats, timings={"time_rollout_s": 0.0})
            logged.append((got, expected))
    trainer.end(stage)
    for got, expected in logged:
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        assert {"time_rollout_s", "time_update_s"} <= set(got)
    assert logged[1][0]["clip_frac"] > 0 and logged[1][0]["kl"] > 0  # the formulas were exercised
    assert logged[0][0]["kl"] == pytest.approx(0.0, abs=1e-6)  # first update: policy == reference


@pytest.mark.parametrize("module", ["grpo", "ppo"])
@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--zero=3", "--zero=3: {m} samples rollouts from whole weights"),
        ("--grad_accum=2", "unknown option --grad_accum for {m} (micro-batches per step"),
        ("--seq_len=64", "unknown option --seq_len for {m} (rows are prompt + completion"),
        ("--total_batch_tokens=4096", "unknown option --total_batch_tokens for {m} (a step's rows"),
    ],
)
def test_rl_stages_refuse_flags_they_do_not_use_in_one_line(module, flag, expected, tmp_path):
    import importlib

    config = {"grpo": "GRPOConfig", "ppo": "PPOConfig"}[module]
    cls = getattr(importlib.import_module(f"fastgpt.{module}"), config)
    from fastgpt.train.config import parse_args

    match = re.escape(expected.format(m=module))
    with pytest.raises(ValueError, match=match):  # at parsing (a key the stage lacks) or validation
        parse_args(cls, [flag, "--max_steps=1", f"--out_dir={tmp_path}"]).validate()


def test_grpo_resumed_run_continues_exactly(tmp_path):
    """2 steps, then a resumed run to 4, log the same steps 3 and 4 as one 4-step run (same rollouts,
    same optimizer state); with updates_per_batch=2 the checkpoint falls between rollouts."""
    from fastgpt.grpo import main

    model_dir = tiny_model_dir(tmp_path / "m")
    task = tmp_path / "say_digits.jsonl"
    task.write_text(
        "".join(json.dumps({"prompt": f"Say digits ({i}).", "answer": i}) + "\n" for i in range(40))
    )
    common = [f"--model={model_dir}", f"--task={task}", "--reward=fastgpt.rl.toy:digit_fraction"]
    common += ["--group_size=4", "--prompts_per_step=2", "--max_new_tokens=6", "--lr=1e-2", "--beta=0.05"]
    common += ["--updates_per_batch=2", "--dtype=fp32", "--progress=false", "--log_every=1", "--eval_every=0"]
    common += ["--eval_problems=2"]

    def steps(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r for r in rows if "loss" in r}

    assert main([*common, "--max_steps=4", f"--out_dir={tmp_path / 'straight'}"]) == 0
    assert main([*common, "--max_steps=2", f"--out_dir={tmp_path / 'resumed'}"]) == 0
    assert main([*common, "--max_steps=4", f"--out_dir={tmp_path / 'resumed'}"]) == 0
    straight, resumed = steps(tmp_path / "straight"), steps(tmp_path / "resumed")
    for step in (3, 4):
        for key in ("loss", "reward_mean", "kl", "grad_norm"):
            assert resumed[step][key] == pytest.approx(straight[step][key], rel=1e-5, abs=1e-7), (step, key)
