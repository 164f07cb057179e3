"""run_python against hostile cells: each must end ok=False with a clear error inside its time limit,
leave no process and no temporary directory behind, and leave the host unaffected."""

import glob
import os
import socket
import tempfile
import threading
import time
import uuid

import pytest

from fastgpt.sandbox import SandboxInfo, run_python, sandbox_info, working_sandboxes
from fastgpt.tools import ToolResult
from fastgpt.tools import run_python as tools_run_python

TIMEOUT = 2.0


def _sandboxes() -> list[SandboxInfo]:
    """The layers run_python picks here, plus the weakest fallback that works (what a container
    without namespaces gets), with this interpreter or the system one."""
    found = [sandbox_info()]
    for python in (None, "/usr/bin/python3"):
        if python and not os.path.exists(python):
            continue
        floors = [s for s in working_sandboxes(python) if s.backend == "process"]
        if floors:
            found.append(floors[-1])
            break
    return found


SANDBOXES = _sandboxes()


@pytest.fixture(
    params=SANDBOXES, ids=lambda s: f"{s.backend}-net{int(s.private_network)}-pid{int(s.private_pids)}"
)
def sandbox(request) -> SandboxInfo:
    return request.param


def _processes_with(token: str) -> list[int]:
    """Processes whose command line holds ``token`` (the cell travels in argv, so every process the
    cell starts carries it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _sandbox_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "fastgpt-sandbox-*")))


def run_clean(code: str, sandbox: SandboxInfo, **kwargs) -> tuple[ToolResult, float]:
    """Run a cell; check it left no process and no directory behind; return it and its wall time."""
    token = uuid.uuid4().hex
    before = _sandbox_dirs()
    start = time.monotonic()
    result = run_python(
        f"# {token}\n{code}", timeout_s=kwargs.pop("timeout_s", TIMEOUT), sandbox=sandbox, **kwargs
    )
    elapsed = time.monotonic() - start
    assert _processes_with(token) == [], "a sandboxed process outlived run_python"
    assert _sandbox_dirs() - before == set(), "the sandbox directory was not removed"
    return result, elapsed


# ------------------------------------------------------------------------------------ positive cases
@pytest.mark.parametrize(
    "code, output",
    [
        ("print('hello')", "hello\n"),
        ("2 + 3", "5\n"),
        ("x = 6\nx * 7", "42\n"),
        ("print(1)\nNone", "1\n"),  # a final None is not shown, as in a notebook
        ('"strawberry".count("r")', "3\n"),
        ("'strawberry'[::-1]", "'yrrebwarts'\n"),
        ("import math; math.factorial(20)", "2432902008176640000\n"),
        ("123456789 * 987654321", "121932631112635269\n"),
        ("from collections import Counter; Counter('banana').most_common(1)", "[('a', 3)]\n"),
        ("import itertools; len(list(itertools.permutations(range(5))))", "120\n"),
        ("import re; re.findall(r'\\d+', 'a1b22c333')", "['1', '22', '333']\n"),
        ("from fractions import Fraction; Fraction(1, 3) + Fraction(1, 6)", "Fraction(1, 2)\n"),
        ("from decimal import Decimal; Decimal('9.11') < Decimal('9.9')", "True\n"),
        ("import json; json.dumps({'a': [1, 2]})", "'{\"a\": [1, 2]}'\n"),
        ("open('notes.txt', 'w').write('hi')\nopen('notes.txt').read()", "'hi'\n"),
        ("import tempfile; tempfile.NamedTemporaryFile().close()\n'ok'", "'ok'\n"),
    ],
)
def test_cells_run_like_a_notebook(code, output, sandbox):
    result, _ = run_clean(code, sandbox=sandbox)
    assert result == ToolResult(True, output, None)


def test_errors_are_the_last_traceback_line(sandbox):
    result, _ = run_clean("print('before')\n1 / 0", sandbox=sandbox)
    assert result == ToolResult(False, "before\n", "ZeroDivisionError: division by zero")
    assert result.render() == "before\nZeroDivisionError: division by zero"
    assert run_clean("def f(:\n  pass", sandbox=sandbox)[0].error.startswith("SyntaxError: ")
    assert run_clean("import sys; sys.exit(3)", sandbox=sandbox)[0].error == "SystemExit: 3"
    assert run_clean("import sys; print('x'); sys.exit(0)", sandbox=sandbox)[0] == ToolResult(
        True, "x\n", None
    )


def test_calculator_import_path_is_unchanged():
    assert tools_run_python is run_python
    from fastgpt.tools import calculate

    assert calculate("2^10") == "1024"


def test_bad_arguments_are_one_clear_error():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("1", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("1", memory_mb=1)
    with pytest.raises(ValueError, match="code must be a str"):
        run_python(b"1")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ hostile cases
@pytest.mark.parametrize(
    "code, error",
    [
        ("while True:\n    pass", "TimeoutError"),
        ("import time\ntime.sleep(60)", "TimeoutError"),
        ("import os\nwhile True:\n    os.fork()", "blocked: os.fork"),
        ("import multiprocessing\nmultiprocessing.Process(target=print).start()", "blocked"),
        (
            "import threading, time\n"
            "for _ in range(10_000):\n"
            "    threading.Thread(target=time.sleep, args=(5,)).start()",
            "RuntimeError: can't start new thread",
        ),
        ("x = bytearray(8 * 2**30)", "MemoryError"),
        ("x = [0] * 10**9", "MemoryError"),
        ("chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))", "MemoryError"),
        ("open('/etc/passwd').read()", "blocked: read /etc/passwd"),
        ("open('/root/.ssh/id_rsa').read()", "blocked: read /root/.ssh/id_rsa"),
        ("import os\nos.listdir('/')", "blocked: list /"),
        ("import os\nos.system('echo pwned')", "blocked: os.system"),
        ("import subprocess\nsubprocess.run(['echo', 'pwned'])", "blocked"),
        ("import os\nos.execv('/bin/sh', ['sh'])", "blocked: os.exec"),
        ("import ctypes\nctypes.CDLL(None).fork()", "blocked: import ctypes"),
        ("import os\nos.kill(1, 9)", "blocked: os.kill"),
        ("def f():\n    return f()\nf()", "RecursionError"),
        (
            "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))",
            "blocked: resource.setrlimit",
        ),
        ("open('/tmp/fastgpt-sandbox-escape', 'w').write('x')", "blocked: write /tmp/fastgpt-sandbox-escape"),
        ("import os\nos.symlink('/etc/passwd', 'p')\nopen('p').read()", "blocked: read /etc/passwd"),
        ("f = open('big', 'wb')\nf.write(b'x' * (64 * 2**20))", "File too large"),
        ("try:\n    open('/etc/passwd')\nexcept Exception:\n    pass\n'caught'", "blocked: read /etc/passwd"),
    ],
)
def test_hostile_cells_fail_clearly_and_in_time(code, error, sandbox):
    result, elapsed = run_clean(code, sandbox=sandbox)
    assert not result.ok
    assert error in result.error, result
    assert "\n" not in result.error
    assert elapsed < TIMEOUT + 1.5


def test_repo_and_home_files_are_not_readable(sandbox):
    repo_file = os.path.abspath(__file__)
    for path in (repo_file, os.path.expanduser("~/.bashrc"), "/proc/1/environ", "/proc/self/environ"):
        result, _ = run_clean(f"open({path!r}).read()", sandbox=sandbox)
        assert not result.ok and result.error.startswith("blocked: read"), (path, result)


def test_caller_environment_is_invisible(monkeypatch, sandbox):
    secret = "fastgpt-secret-" + uuid.uuid4().hex
    monkeypatch.setenv("FASTGPT_TEST_SECRET", secret)
    result, _ = run_clean("import os\nprint(dict(os.environ))", sandbox=sandbox)
    assert result.ok and secret not in result.output and "FASTGPT_TEST_SECRET" not in result.output
    result, _ = run_clean("import os\nopen(f'/proc/{os.getppid()}/environ', 'rb').read()", sandbox=sandbox)
    assert not result.ok and secret not in result.output


def test_sockets_cannot_reach_a_server_on_this_machine(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    try:
        code = (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')"
        )
        result, elapsed = run_clean(code, sandbox=sandbox)
        accept()
        assert not result.ok and result.error.startswith("blocked: socket"), result
        assert accepted == []
        result, _ = run_clean(
            "import socket\nsocket.socket(socket.AF_UNIX).connect('/run/x')", sandbox=sandbox
        )
        assert not result.ok and result.error.startswith("blocked: socket")
    finally:
        server.close()


def test_printing_gigabytes_is_cut_off(sandbox):
    result, elapsed = run_clean(
        "while True:\n    print('x' * 1_000_000)", max_output_bytes=4096, sandbox=sandbox
    )
    assert not result.ok and result.error == "OutputLimitError: output exceeded 4096 bytes"
    assert len(result.output) == 4096 and elapsed < TIMEOUT
    result, _ = run_clean("'y' * 10**6", max_output_bytes=100, sandbox=sandbox)
    assert result.ok and result.output.startswith("'yyy") and "characters" in result.output


def test_deep_native_recursion_is_contained(sandbox):
    result, elapsed = run_clean(
        "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)", sandbox=sandbox
    )
    assert not result.ok and elapsed < TIMEOUT + 1.5


def test_host_stays_responsive_during_a_hostile_cell():
    """A CPU-burning cell in a thread does not stop the caller from working meanwhile."""
    done: list[ToolResult] = []
    thread = threading.Thread(target=lambda: done.append(run_python("while True: pass", timeout_s=1.5)))
    start = time.monotonic()
    thread.start()
    ticks = 0
    while thread.is_alive():
        ticks += 1
        time.sleep(0.01)
    thread.join()
    assert ticks > 20 and time.monotonic() - start < 4
    assert done and done[0].error.startswith("TimeoutError")


def test_concurrent_cells_are_independent():
    results: list[ToolResult] = [None] * 4  # type: ignore[list-item]

    def work(i):
        results[i] = run_python(
            f"open('f', 'w').write('{i}')\nimport time; time.sleep(0.2)\nopen('f').read()"
        )

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.output for r in results] == [f"'{i}'\n" for i in range(4)]


def test_sandbox_info_names_its_layers():
    info = sandbox_info()
    assert info.backend in ("bwrap", "process")
    if info.backend == "bwrap":
        assert info.private_files and info.private_network and info.private_pids
