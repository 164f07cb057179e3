"""PPO end to end on a tiny model: a short run with a reward model completes and logs KL and reward;
the shared value head computes the policy's own log-probabilities."""

from __future__ import annotations

import json

import pytest
import torch

from fastgpt.model import from_pretrained
from fastgpt.ppo import load_prompts, main
from fastgpt.rl.heads import PolicyWithValue, ScalarHeadModel
from fastgpt.rl.toy import tiny_model_dir


def test_shared_value_head_logprobs_equal_the_policys(tmp_path):
    policy = from_pretrained(tiny_model_dir(tmp_path / "m"))
    model = PolicyWithValue(policy)
    inputs = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    targets = torch.tensor([[4, 5, 6, -100], [-100, 9, 10, 11]])
    with torch.no_grad():
        logprobs, values = model.logprobs_and_values(inputs, targets)
        torch.testing.assert_close(logprobs, policy.token_logprobs(inputs, targets))
    assert values.shape == (2, 4) and torch.count_nonzero(values) == 0  # the value head starts at 0
    critic = ScalarHeadModel(from_pretrained(tmp_path / "m"), kind="value")
    separate = PolicyWithValue(policy, critic)
    with torch.no_grad():
        lp2, v2 = separate.logprobs_and_values(inputs, targets)
        torch.testing.assert_close(lp2, logprobs)
        torch.testing.assert_close(v2, critic(inputs))


def test_load_prompts_from_a_prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        json.dumps({"prompt": "Hi"})
        + "\n"
        + json.dumps({"prompt": [{"role": "user", "content": "Yo"}]})
        + "\n"
    )
    assert load_prompts(str(path)) == [
        ({"role": "user", "content": "Hi"},),
        ({"role": "user", "content": "Yo"},),
    ]
    path.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps({"question": "?"}) + "\n")
    with pytest.raises(ValueError, match=r"prompts\.jsonl:2: missing field 'prompt'"):
        load_prompts(str(path))


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_short_ppo_run_logs_kl_and_reward(tmp_path, critic):
    policy_dir = tiny_model_dir(tmp_path / "policy")
    rm_dir = tiny_model_dir(tmp_path / "rm", seed=1)  # an untrained reward model: a fresh head on a tiny LM
    ScalarHeadModel.from_pretrained(rm_dir).save_pretrained(rm_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Tell me about {i}."}) for i in range(40)) + "\n")
    out = tmp_path / "ppo"
    args = [f"--model={policy_dir}", f"--reward_model={rm_dir}", f"--prompts={prompts}", f"--out_dir={out}"]
    args += [
        "--max_steps=6",
        "--prompts_per_step=4",
        "--max_new_tokens=8",
        "--ppo_epochs=2",
        "--num_minibatches=2",
    ]
    args += ["--lr=1e-3", "--kl_coef=0.1", "--eval_every=0", "--eval_prompts=2", f"--critic={critic}"]
    args += ["--dtype=fp32", "--progress=false", "--log_every=1"]
    assert main(args) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 7))
    for key in (
        "reward_mean",
        "kl",
        "nonscore_reward",
        "clip_frac",
        "value_loss",
        "entropy",
        "completion_len",
    ):
        assert all(key in m and m[key] == m[key] for m in steps), key  # present and not NaN
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # first rollout: the policy is the reference
    assert steps[-1]["kl"] != 0.0  # later rollouts come from an updated policy
    assert steps[-1]["nonscore_reward"] == pytest.approx(-0.1 * steps[-1]["kl_per_reply"], rel=1e-4, abs=1e-7)
    evals = [m for m in metrics if "heldout_reward" in m]
    assert [m["step"] for m in evals] == [0, 6]
    assert (out / "model" / "model.safetensors").is_file()
    assert (
        out / "model" / ("value_head.safetensors" if critic == "shared" else "critic.safetensors")
    ).is_file()
