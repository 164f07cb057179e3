"""benchmarks/rl_step.py runs end to end on a random tiny model and prints its ratio line."""

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
    ratio = re.search(r"rollout ratio \(transformers s / fastgpt s\): ([0-9.]+)x", out.stdout)
    assert ratio and float(ratio.group(1)) > 0
    assert re.search(r"fastgpt: median [0-9.]+s per rollout", out.stdout)
