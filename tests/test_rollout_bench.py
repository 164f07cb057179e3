"""benchmarks/rl_step.py runs the full GRPO step on both sides on a random tiny model and prints the
ratio, fastgpt's time split and both rollout rates."""

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
