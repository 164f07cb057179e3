"""benchmarks/gpu_suite.sh on a machine without a GPU: its phases (correctness before any benchmark) and
its stop at a failing correctness phase, one line per failing test, with a stand-in python."""

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def test_dry_run_lists_the_correctness_phase_before_the_benchmarks(tmp_path):
    proc = subprocess.run(
        ["bash", str(SUITE), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    phases = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("=== ")]
    assert phases == ["machine", "kernel_tests", "kernels_bench", "decode_bench", "train_throughput"]
    assert "FASTGPT_TEST_DEVICE=cuda" in proc.stdout and not (tmp_path / "out").exists()


def test_a_failing_correctness_phase_stops_before_the_benchmarks(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        "  *pytest*) echo 'FAILED tests/test_kernel_norms.py::test_a - AssertionError: x'; "
        "echo 'ERROR tests/test_kernel_rope.py::test_b - RuntimeError: y'; echo '1 failed'; exit 1;;\n"
        "  *kernels.py*|*train_throughput*) echo BENCHMARK RAN; exit 0;;\n"
        "  *) exit 0;;\n"
        "esac\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PYTHON": str(fake)}
    proc = subprocess.run(
        ["bash", str(SUITE), str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1
    assert "BENCHMARK RAN" not in proc.stdout and "kernels_bench" not in proc.stdout
    tail = proc.stdout.splitlines()[-3:]
    assert tail == [
        "gpu suite: correctness phase failed, benchmarks not run:",
        "FAILED tests/test_kernel_norms.py::test_a - AssertionError: x",
        "ERROR tests/test_kernel_rope.py::test_b - RuntimeError: y",
    ]
