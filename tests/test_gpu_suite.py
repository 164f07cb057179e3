"""benchmarks/gpu_suite.sh on a machine without a GPU: its phases (correctness before any benchmark) and
its stop at a failing correctness phase, one line per failing test, with a stand-in python."""

import ast
import os
import re
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
    # a file that fails to import is one ERROR line; the other files' tests still run and report
    assert "--continue-on-collection-errors" in proc.stdout


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


def _fake_python(tmp_path, pytest_body: str, import_check: str = "exit 0", machine: str = "exit 0") -> dict:
    """A stand-in ``python`` for the suite: ``pytest_body`` runs for the pytest step, ``import_check`` for
    the check that ``fastgpt.kernels`` resolves to this tree, ``machine`` for the device query of the first
    step; benchmarks print BENCHMARK RAN."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        f"  *get_device_name*) {machine};;\n"
        f"  *pytest*) {pytest_body};;\n"
        f"  *fastgpt.kernels*) {import_check};;\n"
        "  *kernels.py*|*train_throughput*) echo BENCHMARK RAN; exit 0;;\n"
        "  *) exit 0;;\n"
        "esac\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PYTHON": str(fake)}


def test_a_correctness_phase_past_its_time_limit_says_so(tmp_path):
    env = _fake_python(tmp_path, "echo '....'; exit 124")  # what timeout(1) returns for a killed step
    proc = subprocess.run(
        ["bash", str(SUITE), str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1 and "BENCHMARK RAN" not in proc.stdout
    assert proc.stdout.splitlines()[-2:] == [
        "gpu suite: correctness phase failed, benchmarks not run:",
        f"TIMEOUT kernel_tests: stopped at its 180s limit before every test had run (log: {tmp_path / 'out'}"
        "/kernel_tests.log)",
    ]


def test_kernels_not_importable_from_this_tree_stop_before_the_tests(tmp_path):
    """``pip install -e .`` failing on the lent machine (or another fastgpt on its path) would otherwise
    show as one collection error per test file."""
    env = _fake_python(tmp_path, "echo PYTEST RAN; exit 0", import_check="exit 1")
    proc = subprocess.run(
        ["bash", str(SUITE), str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1
    assert "PYTEST RAN" not in proc.stdout and "BENCHMARK RAN" not in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith(
        "gpu suite: fastgpt.kernels does not import from this tree"
    )


def _correctness_files() -> list[str]:
    """The test files of the suite's kernel_tests step, read from the script."""
    text = SUITE.read_text()
    block = text[text.index("step kernel_tests") :]
    block = block[: block.index("\nif ")]
    return re.findall(r"tests/test_\w+\.py", block)


# kernel test files the GPU phase leaves out, and why
NOT_IN_GPU_PHASE = {
    "tests/test_kernel_build_check.py": "compiles for sm_80/sm_90 on the CPU (no GPU involved); CI runs it",
    "tests/test_kernel_gpu_tiles.py": "GPU tiles under the Triton interpreter: a CPU-only mode",
    "tests/test_kernel_cross_entropy_zero3.py": "slow, two gloo processes on CPU",
    "tests/test_attention_bench.py": "benchmarks/kernels.py's attention cases on CPU; the GPU runs the benchmark itself",
}


def test_the_correctness_phase_runs_every_kernel_test_file():
    """A new kernel test file (``test_kernel_*``, ``test_attention*``) is either in the GPU phase or named
    above with a reason; every file the GPU-tiles sweep checks on CPU also runs natively on the GPU."""
    from test_kernel_gpu_tiles import KERNEL_TEST_FILES

    listed = _correctness_files()
    assert all((ROOT / f).is_file() for f in listed), listed
    kernel_files = {
        f"tests/{p.name}"
        for pattern in ("test_kernel_*.py", "test_attention*.py")
        for p in ROOT.glob(f"tests/{pattern}")
    }
    missing = sorted(kernel_files - set(listed) - set(NOT_IN_GPU_PHASE))
    assert missing == [], f"kernel test files not in gpu_suite.sh's correctness phase: {missing}"
    assert set(KERNEL_TEST_FILES) <= set(listed)


def _cpu_generators(path: Path) -> list[str]:
    """``torch.Generator()`` calls without a device: a CPU generator, which ``torch.randn(...,
    generator=g)`` refuses for the CUDA tensors GPU mode makes by default."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("torch.Generator", "Generator")
            and not node.args
            and not any(k.arg == "device" for k in node.keywords)
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_gpu_phase_tests_draw_random_numbers_on_the_default_device():
    """In GPU mode (``FASTGPT_TEST_DEVICE=cuda``) tensors made without a device land on the GPU, and a
    CPU ``torch.Generator`` passed to them raises; at import time that aborts the whole pytest run."""
    files = {ROOT / f for f in _correctness_files()} | {ROOT / "tests" / "kernel_modes.py"}
    assert _cpu_generators(ROOT / "tests" / "train_support.py")  # the scan finds one where it is
    assert [hit for f in sorted(files) for hit in _cpu_generators(f)] == []


def test_a_test_file_that_fails_to_import_is_one_line_with_its_reason(tmp_path):
    """pytest's summary names such a file without the exception; the suite adds it from the log."""
    log = [
        "..F",
        "____________ ERROR collecting tests/test_ops_compile.py ____________",
        "tests/test_ops_compile.py:129: in <module>",
        "E   RuntimeError: Expected a 'cuda' device type for generator but found 'cpu'",
        "/x/tests/test_kernel_rope.py:9: AssertionError: q",
        "=========== short test summary info ===========",
        "FAILED tests/test_kernel_rope.py::test_rope - AssertionError: q",
        "ERROR tests/test_ops_compile.py",
        "1 failed, 2 passed, 1 error",
    ]
    body = "; ".join(f"echo {line!r}" for line in log) + "; exit 1"
    proc = subprocess.run(
        ["bash", str(SUITE), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=_fake_python(tmp_path, body),
    )
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-3:] == [
        "gpu suite: correctness phase failed, benchmarks not run:",
        "FAILED tests/test_kernel_rope.py::test_rope - AssertionError: q",
        "ERROR tests/test_ops_compile.py - RuntimeError: Expected a 'cuda' device type for generator but found 'cpu'",
    ]


def test_no_usable_gpu_stops_before_anything_runs(tmp_path):
    env = _fake_python(tmp_path, "echo PYTEST RAN; exit 0", machine="echo 'AssertionError: no CUDA'; exit 1")
    proc = subprocess.run(
        ["bash", str(SUITE), str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1 and "PYTEST RAN" not in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("gpu suite: no usable GPU")


def test_a_pytest_that_stops_before_any_test_is_one_line(tmp_path):
    """A conftest error (e.g. no CUDA for ``FASTGPT_TEST_DEVICE=cuda``) leaves no FAILED/ERROR line: the
    suite reports pytest's last ``E`` line."""
    log = [
        "ImportError while loading conftest '/x/tests/conftest.py'.",
        "tests/conftest.py:26: in <module>",
        "E   pytest.UsageError: FASTGPT_TEST_DEVICE=cuda: CUDA is not available here",
    ]
    body = "; ".join(f"echo {line!r}" for line in log) + "; exit 4"
    env = _fake_python(tmp_path, body)
    proc = subprocess.run(
        ["bash", str(SUITE), str(tmp_path / "out")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-2:] == [
        "gpu suite: correctness phase failed, benchmarks not run:",
        "ERROR pytest (exit 4) - pytest.UsageError: FASTGPT_TEST_DEVICE=cuda: CUDA is not available here",
    ]
