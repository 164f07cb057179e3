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


@pytest.mark.parametrize(
    "env, message",
    [
        ({"NPROC_PER_NODE": "abc"}, "launch: NPROC_PER_NODE=abc: expected a whole number >= 1"),
        ({"NPROC_PER_NODE": "0"}, "launch: NPROC_PER_NODE=0: expected a whole number >= 1"),
        ({"NNODES": "two"}, "launch: NNODES=two: expected a whole number >= 1"),
        ({"NNODES": "2", "NODE_RANK": "2"}, "launch: NODE_RANK=2: expected 0..1 for NNODES=2"),
        ({"NNODES": "2", "MASTER_PORT": "x"}, "launch: MASTER_PORT=x: expected a whole number >= 1"),
    ],
)
def test_bad_launch_variables_are_one_line_before_torchrun(env, message, tmp_path):
    """torchrun answered NPROC_PER_NODE=abc with a traceback and 0 with a bare AssertionError, and a
    NODE_RANK >= NNODES waited for the rendezvous forever (timeout here = the hang)."""
    full = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    full.update({"NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", **env})
    proc = subprocess.run(
        ["bash", str(ROOT / "launch" / "pretrain.sh"), "--max_steps=1", f"--out_dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        env=full,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [message]


def test_gpu_suite_script_parses_and_its_test_mode_refuses_a_machine_without_cuda(tmp_path):
    """benchmarks/gpu_suite.sh only runs on a lent GPU; here: it is valid bash, and the test mode it
    uses (FASTGPT_TEST_DEVICE=cuda) stops at once with one line where CUDA is missing instead of
    running the kernel tests on CPU tensors without the interpreter."""
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")], check=True)
    if torch_cuda_available():
        pytest.skip("this machine has CUDA: the refusal cannot be shown")
    env = {**os.environ, "FASTGPT_TEST_DEVICE": "cuda"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "test_ops_dispatch.py"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    assert "FASTGPT_TEST_DEVICE=cuda: CUDA is not available here" in proc.stdout + proc.stderr


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
