"""The launch scripts as a user runs them: ``bash launch/pretrain.sh --key=value``. With one process
a mistake must read as the program's one error line and exit status (torchrun would wrap it in a
ChildFailedError traceback report)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["pretrain", "sft", "grpo"])
def test_a_typo_on_one_process_is_one_line_and_exit_2(script, tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NPROC_PER_NODE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "launch" / f"{script}.sh"), "--max_step=3", f"--out_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"fastgpt {script}: error: unknown option --max_step (did you mean --max_steps")
