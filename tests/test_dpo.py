"""DPO end to end on a tiny model: precomputed reference log-probs equal on-the-fly ones, log-probabilities
match a direct computation, and the implicit-reward margin grows on toy pairs."""

from __future__ import annotations

import json
import random

import pytest
import torch

from fastgpt.chat.template import format_for
from fastgpt.dpo import DPOConfig, DPOStage, main, pair_logprobs
from fastgpt.rl.pairs import render_pairs
from fastgpt.rl.toy import tiny_model_dir
from fastgpt.tasks.preferences import load_pairs


def _toy_pairs(path, n=120):
    rng = random.Random(1)
    lines = []
    for i in range(n):
        digits = " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(2, 4)))
        words = " ".join(rng.choice(["What", "is", "Let", "me", "add"]) for _ in range(rng.randint(2, 4)))
        lines.append(json.dumps({"prompt": f"Question {i}?", "chosen": digits, "rejected": words}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_precomputed_reference_equals_on_the_fly_and_direct_logprobs(tmp_path, loss_type):
    from fastgpt.model import from_pretrained

    model_dir = tiny_model_dir(tmp_path / "m")
    fmt = format_for(model_dir)
    pairs = render_pairs(
        load_pairs(str(_toy_pairs(tmp_path / "p.jsonl", 12)), log=lambda _: None), fmt, max_len=160
    )
    policy = from_pretrained(model_dir)
    cfg = DPOConfig(batch_size=4, max_steps=1, loss_type=loss_type)
    pre = DPOStage(policy, pairs, pairs[:4], cfg, log=lambda _: None)  # precomputes the reference
    fly = DPOStage(
        policy,
        pairs,
        pairs[:4],
        DPOConfig(batch_size=4, max_steps=1, loss_type=loss_type, precompute_ref=False),
    )
    batch = pre.next_batch()
    fly_batch = fly.next_batch()
    assert torch.equal(batch["ids"], fly_batch["ids"])
    loss_pre, m_pre = pre.loss(policy, batch)
    loss_fly, m_fly = fly.loss(policy, fly_batch)
    torch.testing.assert_close(loss_pre, loss_fly, atol=1e-5, rtol=1e-5)
    assert m_pre["margin"][0] == pytest.approx(0.0, abs=1e-5)  # policy == reference before training
    assert m_pre["margin"][1] == 4  # (sum, count) over the 4 pairs
    expected = {
        "sigmoid": torch.log(torch.tensor(2.0)) * 4,
        "ipo": torch.tensor((1 / (2 * cfg.beta)) ** 2) * 4,
    }
    torch.testing.assert_close(loss_pre, expected[loss_type], atol=1e-4, rtol=1e-5)
    # reply log-probability against a plain log-softmax over the full sequence
    chosen, _ = pair_logprobs(policy, batch, average=False)
    ids, mask = batch["ids"][0], batch["response_mask"][0]
    with torch.no_grad():
        logits = policy(ids[None, :-1])[0]
        direct = torch.log_softmax(logits.float(), -1).gather(-1, ids[1:, None]).squeeze(-1)[mask[1:]].sum()
    torch.testing.assert_close(chosen[0].detach(), direct, atol=1e-4, rtol=1e-5)


def test_dpo_margin_grows_on_toy_pairs(tmp_path, capsys):
    model_dir = tiny_model_dir(tmp_path / "m")
    out = tmp_path / "dpo"
    args = [f"--model={model_dir}", f"--data={_toy_pairs(tmp_path / 'p.jsonl')}", f"--out_dir={out}"]
    args += [
        "--max_steps=20",
        "--batch_size=8",
        "--lr=1e-3",
        "--beta=0.1",
        "--warmup_steps=0",
        "--eval_every=10",
    ]
    args += ["--heldout_fraction=0.2", "--dtype=fp32", "--progress=false", "--log_every=1"]
    assert main(args) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "heldout_margin" in m]
    assert [m["step"] for m in evals] == [0, 10, 20]
    assert evals[0]["heldout_margin"] == pytest.approx(0.0, abs=1e-4)
    assert evals[0]["heldout_loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2 at the start
    assert evals[1]["heldout_margin"] > 0.1 and evals[2]["heldout_margin"] > evals[1]["heldout_margin"]
    assert evals[2]["heldout_reward_accuracy"] >= 0.9
    steps = [m for m in metrics if "margin" in m]
    for key in ("chosen_logp", "rejected_logp", "chosen_reward", "rejected_reward", "reward_accuracy"):
        assert all(key in m for m in steps), key
    assert steps[-1]["margin"] > steps[0]["margin"]
    assert (out / "model" / "model.safetensors").is_file() and (
        out / "model" / "chat_template.jinja"
    ).is_file()
    # the run ends by saying where its outputs went, as pretraining and SFT do
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3].startswith("done: step 20, ") and "heldout_margin=" in printed[-3]
    assert printed[-2] == f"model written to {out / 'model'} (chat: fastgpt chat --model {out / 'model'})"
    assert printed[-1] == f"metrics: {out / 'metrics.jsonl'}"
