"""benchmarks/rl_step.py runs the full GRPO step on both sides on a random tiny model and prints the
ratio, fastgpt's time split and both rollout rates; its ``--trajectory`` mode trains both sides and scores
them with one evaluator on held-out questions disjoint from the training file."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_rl_step_benchmark_runs_on_a_tiny_model():
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "rl_step.py"),
        "--tiny",
        "--repeats",
        "1",
        "--max_new_tokens",
        "8",
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ratio = re.search(r"step ratio \(transformers s / fastgpt s\): ([0-9.]+)x", out.stdout)
    assert ratio and float(ratio.group(1)) > 0
    for side in ("fastgpt", "transformers"):
        assert re.search(
            side + r": median [0-9.]+s per step, rollout median [0-9.]+s, [0-9]+ rollout tok/s", out.stdout
        )
    split = re.search(r"fastgpt split \(medians\): (.*)", out.stdout)
    assert split, out.stdout
    keys = dict(part.rsplit(" ", 1) for part in split.group(1).split(", "))
    assert set(keys) == {"time_rollout_s", "time_reward_s", "time_logprobs_s", "time_update_s"}
    assert float(keys["time_rollout_s"]) > 0 and float(keys["time_update_s"]) > 0


def test_rl_step_trajectory_trains_both_sides_and_scores_them_with_one_evaluator(tmp_path):
    out_json = tmp_path / "trajectory.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "rl_step.py"),
        "--tiny",
        "--trajectory",
        "2",
        "--eval_every",
        "2",
        "--eval_problems",
        "6",
        "--max_new_tokens",
        "8",
        "--json_out",
        str(out_json),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out_json.read_text())
    assert [e["step"] for e in result["evals"]] == [0, 2]
    assert [s["step"] for s in result["steps"]] == [1, 2]
    assert result["config"]["eval_problems"] == 6
    for side in ("fastgpt", "transformers"):
        for e in result["evals"]:
            assert 0.0 <= e[side]["accuracy"] <= 1.0
            # the evaluator's copy of each side's weights reproduces that side's own logits
            assert e[side]["logit_max_abs_diff"] < 1e-3
        for s in result["steps"]:
            assert set(s[side]) == {"reward_mean", "sample_accuracy", "seconds"}
            assert s[side]["seconds"] > 0
    # both sides start from the same weights, so the one evaluator gives them the same score
    assert result["evals"][0]["fastgpt"]["accuracy"] == result["evals"][0]["transformers"]["accuracy"]
    assert re.search(r"^\s+2 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ / [0-9.]+$", out.stdout, re.M), out.stdout


def test_heldout_questions_are_distinct_and_disjoint_from_the_training_file(tmp_path):
    spec = importlib.util.spec_from_file_location("rl_step", ROOT / "benchmarks" / "rl_step.py")
    rl_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl_step)
    train = rl_step.write_task(tmp_path / "task.jsonl", 200, 0)
    heldout = rl_step.write_task(tmp_path / "heldout.jsonl", 100, 1, exclude=rl_step._prompts(train))
    lines = [json.loads(x)["prompt"] for x in heldout.read_text().splitlines()]
    assert len(lines) == len(set(lines)) == 100
    assert not set(lines) & rl_step._prompts(train)
