"""The launch scripts as a user runs them: ``bash launch/pretrain.sh --key=value``. With one process
a mistake must read as the program's one error line and exit status (torchrun would wrap it in a
ChildFailedError traceback report)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _launch(script: str, args: list[str], cwd: Path, timeout: int, **env: str) -> subprocess.CompletedProcess:
    """``bash launch/<script>.sh args`` as a user runs it (this venv's python and torchrun on PATH)."""
    full = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(
        ["bash", str(ROOT / "launch" / f"{script}.sh"), *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.mark.parametrize("script", ["pretrain", "sft", "grpo"])
def test_a_typo_on_one_process_is_one_line_and_exit_2(script, tmp_path):
    proc = _launch(
        script,
        ["--max_step=3", f"--out_dir={tmp_path}"],
        tmp_path,
        300,
        NPROC_PER_NODE="1",
        OMP_NUM_THREADS="1",
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        f"fastgpt {script}: error: unknown option --max_step for {script}; did you mean --max_steps"
    )


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
    settings = {"NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", **env}
    proc = _launch("pretrain", ["--max_steps=1", f"--out_dir={tmp_path}/run"], tmp_path, 60, **settings)
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


def _fake_slurm(tmp_path: Path, srun_body: str) -> dict[str, str]:
    """``scontrol`` and ``srun`` stand-ins on PATH (no SLURM here) and a 2-node job's environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a long node list: a `| head -n 1` reader would kill it with SIGPIPE (pipefail: a failed job)
    (bin_dir / "scontrol").write_text(
        '#!/usr/bin/env bash\nprintf "node-a\\nnode-b\\n"\nseq -f "node-%g" 200000\n'
    )
    (bin_dir / "srun").write_text("#!/usr/bin/env bash\n" + srun_body)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SRUN_", "NPROC", "MASTER_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env.update(
        SLURM_JOB_ID="123456",
        SLURM_JOB_NUM_NODES="2",
        SLURM_JOB_NODELIST="node-[a-b]",
        SLURM_SUBMIT_DIR=str(ROOT),
        SLURM_CPUS_PER_TASK="64",
        SLURM_GPUS_ON_NODE="4",
    )
    return env


def test_slurm_script_hands_torchrun_the_job_geometry(tmp_path):
    """launch/slurm/pretrain.sbatch under a stand-in srun: srun must get the job's CPUs per task (it does
    not inherit --cpus-per-task from sbatch since SLURM 22.05: without it the whole node's torchrun is
    confined to one CPU), one process per allocated GPU (as --gpus-per-node says), and each node's
    SLURM_NODEID must reach launch/_torchrun.sh as NODE_RANK (a NODE_RANK >= NNODES is refused there)."""
    script = ROOT / "launch" / "slurm" / "pretrain.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    show = 'echo "NNODES=$NNODES NPROC_PER_NODE=$NPROC_PER_NODE MASTER_ADDR=$MASTER_ADDR '
    show += 'MASTER_PORT=$MASTER_PORT SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-} PWD=$PWD"\n'
    show += 'shift; SLURM_NODEID=5 "$@"\n'  # drop --kill-on-bad-exit=1, run the node's command as node 5
    env = _fake_slurm(tmp_path, show)
    proc = subprocess.run(
        ["bash", str(script), "--max_steps=1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.stdout, f"exit {proc.returncode}: {proc.stderr}"
    assert proc.stdout.splitlines()[0] == (
        f"NNODES=2 NPROC_PER_NODE=4 MASTER_ADDR=node-a MASTER_PORT={20000 + 123456 % 20000} "
        f"SRUN_CPUS_PER_TASK=64 PWD={ROOT}"
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["launch: NODE_RANK=5: expected 0..1 for NNODES=2"]


def test_slurm_script_run_outside_slurm_says_how_to_submit(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm" / "pretrain.sbatch")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "pretrain.sbatch: not inside a SLURM job; submit it with: sbatch launch/slurm/pretrain.sbatch"
        " [--key=value ...]"
    ]


def test_default_omp_threads_are_the_cores_this_job_may_use(tmp_path):
    """OMP_NUM_THREADS defaulted to all of the node's cores / NPROC_PER_NODE, also inside a SLURM task
    or taskset that may use only some of them (oversubscribed threads made CPU steps several times
    slower). Here: pinned to one core, one process gets one thread."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux CPU affinity and 2+ cores")
    if shutil.which("taskset") is None:
        pytest.skip("needs taskset")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", NPROC_PER_NODE="1")
    # the launcher ends with `exec python -m $MODULE`: a shell function of that name reports instead
    cmd = f'MODULE=x; exec() {{ echo "OMP=$OMP_NUM_THREADS"; exit 0; }}; source "{ROOT}/launch/_torchrun.sh"'
    proc = subprocess.run(
        ["taskset", "-c", "0", "bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.stdout.strip() == "OMP=1", proc.stderr


@pytest.mark.slow
def test_jagged_rl_script_runs_sft_grpo_eval_and_report(tmp_path):
    """launch/jagged_rl.sh end to end on a random tiny model with tiny budgets: the GRPO run logs the
    tool-use share next to held-out accuracy, and the report carries the with/without-tools table."""
    import json

    from fastgpt.rl.toy import tiny_model_dir

    model = tiny_model_dir(tmp_path / "base")
    out = tmp_path / "run"
    done = _launch(
        "jagged_rl",
        [f"--model={model}", f"--out={out}"],
        tmp_path,
        timeout=900,
        SFT_ARGS="--max_steps=2 --eval_every=0 --batch_size=4",
        GRPO_ARGS="--max_steps=1 --eval_every=1 --eval_problems=4 --group_size=2 --prompts_per_step=2",
        EVAL_ARGS="--problems 2 --max_new_tokens 8",
        OMP_NUM_THREADS="1",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("heldout_tool_use" in m for m in metrics) and any("tool_use" in m for m in metrics)
    mixture = (out / "sft-mixture.yaml").read_text()
    assert "jagged_multiply" in mixture and "max_digits" in mixture
    report = (out / "report.md").read_text()
    assert "| without tools | with tools |" in report.replace("  ", " ")
    for task in ("jagged_letter_count", "jagged_multiply"):
        assert task in report
