"""GRPO end to end on a tiny model: the reward rises, metrics and the model dir are written, zero-variance
groups are masked, and 2 ranks under ZeRO-2 reproduce the single-rank first step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_support import torchrun

from fastgpt.chat.template import format_for
from fastgpt.grpo import GRPOConfig, GRPOStage, main
from fastgpt.rl.advantages import group_advantages
from fastgpt.rl.rollout import Rollout
from fastgpt.rl.sequences import collate_responses
from fastgpt.rl.toy import digit_fraction, tiny_model_dir
from fastgpt.tasks import get_task


def _toy_task(tmp_path: Path) -> Path:
    path = tmp_path / "say_digits.jsonl"
    lines = [json.dumps({"prompt": f"Say some digits ({i}).", "answer": i % 10}) for i in range(60)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _grpo_args(model_dir: Path, task: Path, out_dir: Path, *extra: str) -> list[str]:
    return [
        f"--model={model_dir}",
        f"--task={task}",
        "--reward=fastgpt.rl.toy:digit_fraction",
        "--group_size=8",
        "--prompts_per_step=4",
        "--max_new_tokens=6",
        "--lr=3e-3",
        "--dtype=fp32",
        "--progress=false",
        "--log_every=1",
        "--eval_problems=4",
        f"--out_dir={out_dir}",
        *extra,
    ]


def test_grpo_reward_rises_on_a_toy_task(tmp_path):
    model_dir = tiny_model_dir(tmp_path / "start")
    out = tmp_path / "grpo"
    args = _grpo_args(
        model_dir, _toy_task(tmp_path), out, "--max_steps=24", "--beta=0.04", "--updates_per_batch=2"
    )
    assert main(args + ["--lr=1e-2", "--eval_every=12", "--batch_size=16"]) == 0

    metrics = _read_metrics(out)
    steps = [m for m in metrics if "reward_mean" in m]
    assert [m["step"] for m in steps] == list(range(1, 25))
    first = sum(m["reward_mean"] for m in steps[:6]) / 6
    last = sum(m["reward_mean"] for m in steps[-6:]) / 6
    assert last > first + 0.3, (first, last)  # measured: 0.02 -> 0.7 (seeded)
    for key in ("accuracy", "kl", "clip_frac", "entropy", "completion_len", "zero_var_frac", "loss"):
        assert all(key in m for m in steps), key
    assert steps[-1]["kl"] > 0  # beta > 0: a reference is kept and the policy moved away from it
    assert any(m["clip_frac"] > 0 for m in steps)  # the second update on a rollout is off-policy
    evals = [m for m in metrics if "heldout_accuracy" in m]
    assert [m["step"] for m in evals] == [0, 12, 24]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (out / "model" / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["stage"] == "grpo"


def test_zero_variance_groups_are_counted_and_dropped(tmp_path):
    from fastgpt.model import from_pretrained
    from fastgpt.tokenizer import Tokenizer

    model_dir = tiny_model_dir(tmp_path / "m")
    task = get_task(str(_toy_task(tmp_path)))
    model, tokenizer = from_pretrained(model_dir), Tokenizer.load(model_dir)
    cfg = GRPOConfig(group_size=2, prompts_per_step=2, max_steps=1, drop_zero_var=True)
    stage = GRPOStage(model, tokenizer, task, cfg, correctness_fn=digit_fraction)
    # two groups of two: rewards (1, 1) carry no signal, (1, 0) do
    batch = collate_responses([[1, 2], [1, 2], [3], [3]], [[5, 6], [5], [7, 8, 9], [7]])
    rollout = Rollout(
        problems=task.split("train", 2),
        batch=batch,
        rewards=torch.tensor([1.0, 1.0, 1.0, 0.0]),
        correct=torch.tensor([1.0, 1.0, 1.0, 0.0]),
        completion_lens=torch.tensor([2.0, 1.0, 3.0, 1.0]),
        tool_calls=torch.tensor([1.0, 0.0, 0.0, 0.0]),
        texts=["", "", "", ""],
        finish_reasons=["stop", "length", "stop", "stop"],
        group_size=2,
    )
    advantages, zero_var = group_advantages(rollout.rewards, 2)
    (micro,) = stage.micro_batches(rollout, advantages, zero_var)
    stats = stage.rollout_metrics(rollout, zero_var)
    assert stats["zero_var_frac"] == 0.5
    assert stats["truncated_frac"] == 0.25
    assert "tool_use" not in stats  # without --tools there is no tool to use
    stage.cfg.tools = True
    assert stage.rollout_metrics(rollout, zero_var)["tool_use"] == 0.25
    assert micro["mask"][:2].sum() == 0  # the zero-variance group is out of the loss ...
    assert micro["mask"][2:].sum() == 4  # ... the other keeps its 3 + 1 response targets
    assert float(micro["count"]) == 4  # ... and of the normaliser
    torch.testing.assert_close(micro["advantages"][2:], torch.tensor([0.5, -0.5]) / (2**-0.5 + 1e-4))
    loss, _ = stage.loss(model, micro)
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_rank_zero2_matches_single_rank_first_step(tmp_path):
    model_dir = tiny_model_dir(tmp_path / "start")
    task = _toy_task(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    # a longer completion budget makes early stops (unequal lengths, hence a nonzero loss) likely
    # step 2 reuses the rollout (updates_per_batch=2): its loss, off-policy after one update, is nonzero
    # and checks that the first update was the same on 1 and on 2 ranks
    common = ["--max_steps=2", "--updates_per_batch=2", "--eval_every=0", "--eval_problems=2", "--beta=0.04"]
    common += ["--max_new_tokens=12"]
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "fastgpt.grpo", *_grpo_args(model_dir, task, single, *common)],
        check=True,
        env=env,
        timeout=600,
    )
    double = tmp_path / "double"
    subprocess.run(
        torchrun("-m", "fastgpt.grpo", *_grpo_args(model_dir, task, double, *common, "--zero=2")),
        check=True,
        env=env,
        timeout=600,
    )
    one, one_b = [m for m in _read_metrics(single) if "loss" in m]
    two, two_b = [m for m in _read_metrics(double) if "loss" in m]
    assert one["reward_mean"] == pytest.approx(two["reward_mean"], abs=1e-6)  # the same rollouts
    # first step: on-policy, the loss is sum(A_i * len_i) / tokens (~0 when lengths are equal), so the
    # gradient norm is the informative comparison
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-4, abs=1e-6)
    assert one["grad_norm"] == pytest.approx(two["grad_norm"], rel=1e-4)
    assert abs(one_b["loss"]) > 1e-4 and one_b["kl"] > 0
    for key in ("loss", "kl", "grad_norm"):
        assert one_b[key] == pytest.approx(two_b[key], rel=2e-3), key
    assert json.loads((double / "config.json").read_text())["world_size"] == 2


def test_reward_reads_the_assistants_words_not_the_tools_output(tmp_path):
    from fastgpt.engine import Completion
    from fastgpt.rl.rollout import assistant_text

    fmt = format_for(tiny_model_dir(tmp_path / "m"))
    enc = fmt.tokenizer.encode
    call = [fmt.tool_call_start_id, *enc("10 - 7"), fmt.tool_call_end_id]
    output = fmt.tool_output_ids("3")  # inserted by the engine, not sampled
    end = next(iter(fmt.stop_ids - {fmt.bos_id}))

    def completion(said: str) -> Completion:
        tokens = [*call, *output, *enc(said), end]
        sampled = [1] * len(call) + [0] * len(output) + [1] * (len(tokens) - len(call) - len(output))
        text = fmt.tokenizer.decode(tokens[:-1])
        return Completion(tokens=tokens, text=text, finish_reason="stop", sampled=sampled)

    task = get_task(str(_toy_task(tmp_path)))
    problem = next(p for p in task.split("train") if p.answer == "3")
    answered = completion("So it is 3.\n#### 3")
    assert assistant_text(fmt, answered) == "So it is 3.\n#### 3"
    silent = completion("no idea")
    assert task.is_correct(silent.text, problem)  # the full text ends with the tool's 3 ...
    assert assistant_text(fmt, silent) == "no idea"  # ... which the assistant never said
    assert task.is_correct(assistant_text(fmt, answered), problem)
    assert not task.is_correct(assistant_text(fmt, silent), problem)


class _ScriptedEngine:
    """Stands in for the inference engine: answers each prompt with the next scripted completion."""

    def __init__(self, chat_format, completions):
        self.chat_format, self.completions = chat_format, list(completions)

    def generate(self, prompts, **kwargs):
        return [[self.completions.pop(0)] for _ in prompts]


def test_heldout_tool_use_is_the_share_of_greedy_answers_that_call_a_tool(tmp_path):
    from fastgpt.engine import Completion
    from fastgpt.model import from_pretrained
    from fastgpt.tokenizer import Tokenizer

    model_dir = tiny_model_dir(tmp_path / "m")
    fmt = format_for(model_dir)
    enc, end = fmt.tokenizer.encode, next(iter(fmt.stop_ids - {fmt.bos_id}))
    task = get_task(str(_toy_task(tmp_path)), heldout_fraction=0.5)
    cfg = GRPOConfig(group_size=2, prompts_per_step=2, max_steps=1, eval_problems=4, tools=True)
    stage = GRPOStage(from_pretrained(model_dir), Tokenizer.load(model_dir), task, cfg)
    heldout = stage.heldout
    assert len(heldout) == 4

    def reply(problem, call: bool, right: bool) -> Completion:
        said = enc(f"#### {problem.answer if right else 'x'}")
        call_ids = [fmt.tool_call_start_id, *enc("1 + 1"), fmt.tool_call_end_id] if call else []
        output = fmt.tool_output_ids("2") if call else []
        tokens = [*call_ids, *output, *said, end]
        sampled = [1] * len(call_ids) + [0] * len(output) + [1] * (len(said) + 1)
        return Completion(tokens, fmt.tokenizer.decode(tokens[:-1]), "stop", sampled=sampled)

    # a tool call and right, a tool call and wrong, direct and right, direct and wrong
    script = [reply(p, call, right) for p, (call, right) in zip(heldout, [(1, 1), (1, 0), (0, 1), (0, 0)])]
    stage.engine = _ScriptedEngine(fmt, script)
    result = stage.evaluate()
    assert result["heldout_accuracy"] == 0.5 and result["heldout_n"] == 4
    assert result["heldout_tool_use"] == 0.5
    stage.cfg.tools = False
    stage.engine = _ScriptedEngine(fmt, script[2:] + script[:2])
    assert "heldout_tool_use" not in stage.evaluate()


def test_demo_sft_conversations_match_what_the_engine_inserts():
    """The demonstration's SFT tool outputs must be exactly what the engine's calculator returns during
    GRPO rollouts, or SFT would teach a different protocol than RL rewards."""
    from fastgpt.conversation import tool_call_expression
    from fastgpt.rl.demo import DEFAULT_OPTIONS, sft_conversation
    from fastgpt.tools import calculate

    task = get_task("chain_sum", **DEFAULT_OPTIONS)
    for problem in task.split("train", 50):
        messages = sft_conversation(problem)
        expression = tool_call_expression(messages[-3]["tool_calls"][0])
        assert calculate(expression) == messages[-2]["content"] == problem.answer
        assert task.is_correct(messages[-1]["content"], problem)
        direct = sft_conversation(problem, use_calculator=False)
        assert direct[-1]["role"] == "assistant" and task.is_correct(direct[-1]["content"], problem)


def test_a_task_with_few_held_out_problems_says_so(tmp_path, capsys):
    task = tmp_path / "twenty.jsonl"
    task.write_text("".join(f'{{"prompt": "What is {i} plus 1?", "answer": {i + 1}}}\n' for i in range(20)))
    n = len(get_task(str(task)).split("heldout"))
    assert 0 < n < 4  # fewer than --eval_problems=4 by the hash split
    out = tmp_path / "grpo"
    args = _grpo_args(tiny_model_dir(tmp_path / "start"), task, out, "--max_steps=1", "--eval_every=0")
    assert main([*args, "--group_size=2", "--prompts_per_step=2"]) == 0
    assert f"grpo: only {n} held-out problem(s) in task 'twenty'" in capsys.readouterr().out


def test_a_task_without_held_out_problems_logs_no_accuracy(tmp_path, capsys):
    """Two problems, neither held out by hash: heldout_accuracy would be a false 0 over no problems."""
    task = tmp_path / "two.jsonl"
    task.write_text(
        '{"prompt": "What is 2 plus 3?", "answer": 5}\n{"prompt": "What is 4 plus 3?", "answer": 7}\n'
    )
    assert get_task(str(task)).split("heldout") == []
    out = tmp_path / "grpo"
    args = _grpo_args(tiny_model_dir(tmp_path / "start"), task, out, "--max_steps=1", "--eval_every=1")
    assert main([*args, "--group_size=2", "--prompts_per_step=2"]) == 0
    assert "has no held-out problems, so heldout_accuracy is not measured" in (
        out_text := capsys.readouterr().out
    )
    assert "--heldout_fraction=0.1 now" in out_text
    assert not any("heldout_accuracy" in m for m in _read_metrics(out))
