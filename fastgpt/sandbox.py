"""A sandboxed Python tool: run untrusted code (a model's, a user's) in a separate, limited process.

:func:`run_python` runs a code cell the way a notebook does -- statements run, and the value of a
final expression is shown -- and returns a :class:`ToolResult`: the printed output, and ``ok=False``
with a one-line error when the cell failed, was stopped or tried something it may not do.

The protection is layered; each layer is used when this machine allows it (:func:`sandbox_info` says
which are active) and the layers below it still hold when it does not:

1. **bubblewrap** (``bwrap``, Debian package ``bubblewrap``): new user, mount, PID, network, IPC and
   UTS namespaces. The cell sees a read-only ``/usr`` and Python installation, a private ``/dev``, its
   own temporary directory, and nothing else of the file system; it has no network interface but
   loopback in an empty namespace; it cannot see or signal host processes; every process it starts
   dies with it. Used when ``bwrap`` is installed and a probe run succeeds (it needs user namespaces,
   which some container runtimes forbid).
2. **util-linux** ``unshare``/``setpriv`` (when bwrap is not usable): a fresh network namespace and
   PID namespace where the kernel allows one, and, when the caller is root, a throw-away user id with
   no supplementary groups, no capabilities and ``no_new_privs``.
3. **A clean interpreter** (always): ``python -I -S -B``, an empty environment (none of the caller's
   variables), a fresh temporary directory as working directory (removed afterwards), stdin closed,
   its own session (process group).
4. **Kernel resource limits** (always, ``setrlimit`` in the child before the cell runs): CPU seconds,
   address space (``memory_mb``), file size, open files, no core dumps, and -- with a throw-away user
   id -- the number of processes/threads.
5. **The parent's watch** (always): a wall-clock deadline and an output cap; past either, the whole
   process group is killed (and, with a throw-away user id, every process of that user), the
   temporary directory is removed and the result says why.
6. **An audit hook** (always, :func:`sys.addaudithook` installed before the cell runs): refuses
   sockets, subprocesses, ``os.system``/``exec``/``fork``, ``ctypes``, signals to other processes,
   reading files outside the Python library and the temporary directory, and writing outside the
   temporary directory. An audit hook is *not* a security boundary -- code that reaches native calls
   can bypass it -- so it only gives clear errors early; layers 1, 2 and 4 are what hold.

A refused operation fails the cell (``ok=False``, ``error="blocked: ..."``) even if the cell catches
the exception, so a model always learns that the attempt did not work. See docs/jagged.md for what
this does and does not protect against.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache

__all__ = [
    "DEFAULT_MAX_OUTPUT_BYTES",
    "SandboxInfo",
    "ToolResult",
    "run_python",
    "sandbox_info",
    "working_sandboxes",
]

DEFAULT_MAX_OUTPUT_BYTES = 16_384  # what a model reads back; more is noise in its context
MAX_CODE_BYTES = 100_000  # the cell travels in argv (the kernel's per-argument limit is 128 KiB)
MAX_FILE_MB = 8  # largest file the cell may write (RLIMIT_FSIZE)
MAX_NEW_FILES = 64  # files the cell may create in its directory (audit hook)
MAX_OPEN_FILES = 64  # RLIMIT_NOFILE
MAX_TASKS = 16  # RLIMIT_NPROC (processes + threads) when the cell runs under a throw-away user id
_UID_BASE, _UID_SPAN = 1_500_000_000, 1 << 24  # throw-away user ids: far above any real account


@dataclass(frozen=True)
class ToolResult:
    """What a tool call produced.

    ``output`` is what the code printed (stdout and stderr, in order), followed by the ``repr`` of the
    final expression's value when there is one and it is not None; capped in size. ``error`` is None
    when ``ok``, otherwise one line: the last line of the traceback (``ZeroDivisionError: division
    by zero``), ``blocked: ...`` for a refused operation, ``TimeoutError: ...``, ``MemoryError``,
    ``OutputLimitError: ...`` or ``crashed: ...``.
    """

    ok: bool
    output: str
    error: str | None = None

    def render(self) -> str:
        """The text a model sees as the tool's output: the output, then the error line if any."""
        if self.error is None:
            return self.output
        sep = "" if not self.output or self.output.endswith("\n") else "\n"
        return f"{self.output}{sep}{self.error}"


@dataclass(frozen=True)
class SandboxInfo:
    """Which layers :func:`run_python` uses on this machine (see the module docstring)."""

    backend: str  # "bwrap" or "process"
    python: str  # the interpreter the cell runs in
    private_network: bool  # an empty network namespace
    private_pids: bool  # a PID namespace: the cell cannot see host processes; all die together
    private_files: bool  # a mount namespace showing only /usr, Python and the cell's directory
    throwaway_uid: bool  # the cell runs under its own unprivileged user id (possible when root)
    bwrap: str | None = None
    unshare: tuple[str, ...] = ()  # unshare(1) and its flags, for the "process" backend
    setpriv: str | None = None  # setpriv(1), which drops to the throw-away uid (root callers)

    def command(self, workdir: str, uid: int | None) -> tuple[list[str], int | None]:
        """(the command before the interpreter, the uid the bootstrap must drop to itself or None)."""
        drop = (
            [self.setpriv, "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--no-new-privs"]
            + ["--inh-caps=-all", "--bounding-set=-all", "--"]
            if self.setpriv and uid is not None
            else []
        )
        bootstrap_drop = uid if uid is not None and not drop else None
        if self.backend == "bwrap":
            assert self.bwrap is not None
            bwrap_args = _bwrap_args(workdir, self.python, as_root=uid is not None)
            return [self.bwrap, *bwrap_args, *drop], bootstrap_drop
        return [*self.unshare, *drop], bootstrap_drop


# ----------------------------------------------------------------------------- the child's bootstrap
# Runs in the child interpreter before the cell: limits, optional privilege drop, the audit hook, then
# the cell. It talks back through stdout: everything the cell prints, then a marker and a JSON record.
_BOOTSTRAP = r"""
import ast, json, os, resource, signal, sys, traceback

def _sandbox_main():
    cfg = json.loads(sys.argv[1])
    code = sys.argv[2]
    del sys.argv[1:]
    marker = cfg["marker"].encode()
    work = cfg["workdir"]

    def report(record):
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        os.write(1, marker + json.dumps(record).encode())

    for name, (soft, hard) in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write fails with EFBIG instead

    def on_cpu_limit(signum, frame):
        report({"ok": False, "error": "TimeoutError: CPU time limit of %ss exceeded" % cfg["cpu_s"]})
        os._exit(3)

    signal.signal(signal.SIGXCPU, on_cpu_limit)
    if cfg["drop_uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["drop_uid"])
        os.setuid(cfg["drop_uid"])
    os.environ.clear()
    os.environ.update({"HOME": work, "TMPDIR": work, "PWD": work})
    os.chdir(work)

    read_roots = tuple(os.path.realpath(p) for p in [*sys.path, *cfg["read_roots"]] if p)
    write_root = os.path.realpath(work)
    devices = frozenset(("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"))
    blocked_events = frozenset(cfg["blocked_events"])
    blocked_prefixes = tuple(cfg["blocked_prefixes"])
    blocked_modules = frozenset(cfg["blocked_modules"])
    path_events = frozenset(cfg["path_events"])
    max_new_files = cfg["max_new_files"]
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    state = {"violation": None, "created": 0}

    class SandboxBlocked(PermissionError):
        pass

    def deny(what):
        message = "blocked: " + what
        if state["violation"] is None:
            state["violation"] = message
        raise SandboxBlocked(message)

    def resolve(path):
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if hasattr(path, "__fspath__"):
            path = os.fspath(path)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
        if not isinstance(path, str):
            return None
        return os.path.realpath(os.path.join(os.getcwd(), path))

    def under(path, root):
        return path == root or path.startswith(root.rstrip("/") + "/")

    def check_path(path, write, what):
        if path is None or isinstance(path, int):
            return  # an already-open descriptor (or the current directory)
        real = resolve(path)
        if real is None:
            return
        if under(real, write_root):
            return
        if real in devices and (not write or real != "/dev/random"):
            return
        if not write and any(under(real, root) for root in read_roots):
            return
        deny("%s %s (outside the sandbox directory)" % (what, real))

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if isinstance(mode, str):
                write = any(c in mode for c in "wax+")
            else:
                write = bool((flags or 0) & write_flags)
            check_path(path, write, "write" if write else "read")
            if write and isinstance(path, (str, bytes)) and not os.path.exists(resolve(path) or ""):
                state["created"] += 1
                if state["created"] > max_new_files:
                    deny("creating more than %d files" % max_new_files)
        elif event in path_events:
            for i in path_events_args.get(event, (0,)):
                if i < len(args):
                    check_path(args[i], True, event)
        elif event in ("os.listdir", "os.scandir", "glob.glob"):
            check_path(args[0] if args else None, False, "list")
        elif event == "import":
            if str(args[0]).partition(".")[0] in blocked_modules:
                deny("import " + str(args[0]))
        elif event in blocked_events or event.startswith(blocked_prefixes):
            deny(event)

    path_events_args = {"os.rename": (0, 1), "os.link": (1,), "os.symlink": (1,)}
    sys.addaudithook(hook)

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    record = {"ok": True, "error": None}
    try:
        tree = ast.parse(code, filename="<cell>", mode="exec")
        last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        if last is not None:
            tree.body.pop()
        exec(compile(tree, "<cell>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
            if value is not None:
                text = repr(value)
                limit = cfg["max_repr"]
                if len(text) > limit:
                    text = text[:limit] + "... (%d characters)" % len(text)
                print(text)
    except SystemExit as e:
        if e.code not in (None, 0):
            record = {"ok": False, "error": "SystemExit: %s" % (e.code,)}
    except BaseException as e:
        if isinstance(e, SandboxBlocked):
            line = str(e)
        elif isinstance(e, MemoryError):
            line = "MemoryError" + (": %s" % e if str(e) else "")
        else:
            lines = traceback.format_exception_only(type(e), e)
            line = lines[-1].strip() if lines else type(e).__name__
        record = {"ok": False, "error": line}
    if state["violation"] is not None:
        record = {"ok": False, "error": state["violation"]}
    report(record)

_sandbox_main()
"""

_BLOCKED_EVENTS = (
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "os.startfile",
    "pty.spawn",
    "subprocess.Popen",
    "resource.setrlimit",
    "resource.prlimit",
    "gc.get_objects",
    "gc.get_referrers",
    "gc.get_referents",
    "sys._current_frames",
    "webbrowser.open",
)
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "_ctypes.")
_BLOCKED_MODULES = ("ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters")
# besides the child's own sys.path (the standard library), which it adds itself
_EXTRA_READ_ROOTS = ("/usr/share/zoneinfo",)
_PATH_EVENTS = (
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.mkdir",
    "os.chmod",
    "os.chown",
    "os.truncate",
    "os.utime",
    "os.link",
    "os.symlink",
    "os.chflags",
    "os.lchflags",
    "os.mkfifo",
    "os.mknod",
    "os.setxattr",
    "os.removexattr",
)


def _python() -> str:
    """The real interpreter behind ``sys.executable`` (a venv's ``python`` is a symlink to it; run
    directly, it finds no ``pyvenv.cfg`` and so no site-packages)."""
    return os.path.realpath(sys.executable)


def _bwrap_args(workdir: str, python: str, *, as_root: bool) -> list[str]:
    """bubblewrap's options: every namespace, read-only system and Python, the cell's directory.

    Run by root, bwrap makes no user namespace; the cell starts as root without capabilities except
    SETUID/SETGID, which setpriv (or the bootstrap) spends at once to become the throw-away uid, so
    outside the sandbox the cell is that unprivileged uid (its process limit and cleanup by uid work).
    Run by anyone else, bwrap maps the caller's uid into a new user namespace.
    """
    spaces = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if not as_root:
        spaces.append("--unshare-user")
    args = [*spaces, "--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL"]
    if as_root:
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = os.path.realpath(sys.base_prefix)
    exe_dir = os.path.dirname(python)
    binds = [prefix] if not prefix.startswith("/usr/") else []
    if not exe_dir.startswith(("/usr/", prefix + "/")):
        binds.append(exe_dir)
    made: set[str] = set()
    for path in [*binds, workdir]:  # bwrap makes missing parents 0700: make them traversable
        parent = os.path.dirname(path)
        chain = []
        while parent not in ("/", "") and parent not in made and not parent.startswith("/usr/"):
            chain.append(parent)
            parent = os.path.dirname(parent)
        for d in reversed(chain):
            args += ["--perms", "0755", "--dir", d]
            made.add(d)
    for path in binds:
        args += ["--ro-bind", path, path]
    # no --chdir: the directory is the throw-away uid's (mode 0700); the bootstrap enters it
    args += ["--dev", "/dev", "--bind", workdir, workdir]
    return args


def _start_interpreter(
    wrapper: list[str], python: str, args: list[str], workdir: str, *, stderr: int
) -> subprocess.Popen:
    """Start ``python`` under the sandbox command ``wrapper`` as every cell is started: isolated mode, no
    site, no bytecode files, no stdin, an empty environment, in ``workdir``, in a session of its own (so
    :func:`_kill_all` ends its whole group). The probe starts its trivial cell the same way, so it tests
    what a cell will get."""
    return subprocess.Popen(
        [*wrapper, python, "-I", "-S", "-B", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={},
        cwd=workdir,
        start_new_session=True,
        close_fds=True,
    )


def _probe(info: SandboxInfo, workdir: str, uid: int | None, expected_prefix: bytes) -> bool:
    """Whether a trivial cell runs under ``info`` here, with the interpreter's own standard library."""
    prefix, _ = info.command(workdir, uid)
    check = "import sys, fractions, decimal; print('ok' if sys.base_prefix == %r else sys.base_prefix)"
    args = ["-c", check % os.fsdecode(expected_prefix)]
    try:
        proc = _start_interpreter(prefix, info.python, args, workdir, stderr=subprocess.DEVNULL)
    except OSError:
        return False
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        return False
    finally:
        _kill_all(proc, uid)
        proc.stdout.close()
    return proc.returncode == 0 and out.strip() == b"ok"


def working_sandboxes(python: str | None = None, *, first_only: bool = False) -> list[SandboxInfo]:
    """Every layer combination that works on this machine for ``python`` (default: the interpreter
    behind ``sys.executable``), strongest first; each is probed with a trivial cell (~0.05 s each).
    Tests use it to run the hostile suite under each; :func:`sandbox_info` takes the first."""
    python = python or _python()
    try:
        expected = subprocess.run(
            [python, "-I", "-S", "-c", "import sys; print(sys.base_prefix)"],
            capture_output=True,
            env={},
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise ValueError(f"sandbox: cannot run the interpreter {python!r} ({e})") from e
    root = os.geteuid() == 0
    uid = _UID_BASE if root else None
    bwrap, unshare, setpriv = shutil.which("bwrap"), shutil.which("unshare"), shutil.which("setpriv")
    candidates = []
    if bwrap:
        if setpriv:
            candidates.append(SandboxInfo("bwrap", python, True, True, True, root, bwrap, setpriv=setpriv))
        candidates.append(SandboxInfo("bwrap", python, True, True, True, root, bwrap))
    user_ns = () if root else ("--user", "--map-current-user")
    for flags, pids in [(("--net", "--pid", "--fork", "--kill-child"), True), (("--net",), False)]:
        for drop in [setpriv, None] if root else [None]:
            if unshare and (drop or not setpriv or not root):
                wrap = (unshare, *user_ns, *flags, "--")
                candidates.append(SandboxInfo("process", python, True, pids, False, root, None, wrap, drop))
    if root and setpriv:
        candidates.append(SandboxInfo("process", python, False, False, False, root, setpriv=setpriv))
    found = []
    with tempfile.TemporaryDirectory(prefix="fastgpt-sandbox-probe-") as probe_dir:
        if root:
            os.chown(probe_dir, _UID_BASE, _UID_BASE)
        for info in candidates:
            if _probe(info, probe_dir, uid, expected):
                found.append(info)
                if first_only:
                    break
    return found


@cache
def sandbox_info() -> SandboxInfo:
    """The strongest layers that work here (probed once per process); see the module docstring.
    When nothing but the bootstrap works, a root caller still gets the throw-away uid (dropped by the
    bootstrap itself) and everyone gets rlimits, the parent's watch and the audit hook."""
    found = working_sandboxes(first_only=True)
    return found[0] if found else SandboxInfo("process", _python(), False, False, False, os.geteuid() == 0)


def _uid_processes(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                fields = dict(line.split(b":", 1) for line in f if b":" in line)
            if int(fields[b"Uid"].split()[0]) == uid and not fields[b"State"].strip().startswith(b"Z"):
                pids.append(int(entry))
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return pids


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the cell's process group, reap the cell and, under a throw-away uid, kill every process
    of that uid (a process that left the group with setsid() is still that uid's)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if uid is None:
        return
    for _ in range(100):
        pids = _uid_processes(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _remove_tree(path: str) -> None:
    def retry(func, p, _exc):  # the cell may have made a directory unreadable: give it back
        try:
            os.chmod(os.path.dirname(p) or p, 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _signal_error(sig: int, killed_by_us: bool) -> str:
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    if sig == signal.SIGSEGV:
        return "crashed: SIGSEGV (segmentation fault: recursion too deep or a native crash)"
    if sig in (signal.SIGXCPU,):
        return "TimeoutError: CPU time limit exceeded"
    if sig == signal.SIGKILL and not killed_by_us:
        return "killed: SIGKILL (a resource limit: CPU time or memory)"
    return f"crashed: {name}"


def run_python(
    code: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 256,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    sandbox: SandboxInfo | None = None,
) -> ToolResult:
    """Run ``code`` as a notebook cell in a fresh sandboxed process (see the module docstring).

    Never raises for anything the code does: failures, limits and refused operations come back as
    ``ok=False`` with a one-line ``error``. Raises :class:`ValueError` only for bad arguments (a
    non-string cell, a non-positive limit). ``timeout_s`` is wall-clock time for the whole call,
    interpreter start included; the CPU limit is the same number of seconds rounded up. ``sandbox``
    picks the layers (one of :func:`working_sandboxes`); by default :func:`sandbox_info`'s.
    """
    if not isinstance(code, str):
        raise ValueError(f"run_python: code must be a str, got {type(code).__name__}")
    if not timeout_s > 0 or not math.isfinite(timeout_s):
        raise ValueError(f"run_python: timeout_s must be a positive number of seconds, got {timeout_s}")
    if memory_mb < 32:
        raise ValueError(
            f"run_python: memory_mb must be at least 32 (the interpreter needs it), got {memory_mb}"
        )
    if max_output_bytes < 1:
        raise ValueError(f"run_python: max_output_bytes must be positive, got {max_output_bytes}")
    if "\x00" in code:
        return ToolResult(False, "", "ValueError: source code cannot contain null bytes")
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        return ToolResult(False, "", f"ValueError: code longer than {MAX_CODE_BYTES} bytes")

    info = sandbox or sandbox_info()
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if info.throwaway_uid else None
    workdir = tempfile.mkdtemp(prefix="fastgpt-sandbox-")
    try:
        return _run(code, info, uid, workdir, timeout_s, memory_mb, max_output_bytes)
    finally:
        _remove_tree(workdir)


def _run(
    code: str,
    info: SandboxInfo,
    uid: int | None,
    workdir: str,
    timeout_s: float,
    memory_mb: int,
    max_output_bytes: int,
) -> ToolResult:
    cpu_s = max(1, math.ceil(timeout_s))
    rlimits = {
        "RLIMIT_CPU": (cpu_s, cpu_s + 1),
        "RLIMIT_AS": (memory_mb << 20, memory_mb << 20),
        "RLIMIT_FSIZE": (MAX_FILE_MB << 20, MAX_FILE_MB << 20),
        "RLIMIT_NOFILE": (MAX_OPEN_FILES, MAX_OPEN_FILES),
        "RLIMIT_CORE": (0, 0),
    }
    if uid is not None:  # counted per user: meaningful only for a user id nothing else runs as
        rlimits["RLIMIT_NPROC"] = (MAX_TASKS, MAX_TASKS)
    marker = "\x00fastgpt-sandbox-" + secrets.token_hex(8) + "\x00"
    config = {
        "marker": marker,
        "workdir": workdir,
        "rlimits": rlimits,
        "cpu_s": cpu_s,
        "drop_uid": None,
        "read_roots": _EXTRA_READ_ROOTS,
        "blocked_events": _BLOCKED_EVENTS,
        "blocked_prefixes": _BLOCKED_PREFIXES,
        "blocked_modules": _BLOCKED_MODULES,
        "path_events": _PATH_EVENTS,
        "max_new_files": MAX_NEW_FILES,
        "max_repr": max(16, max_output_bytes - 64),  # room for the "... (N characters)" note
    }
    if uid is not None:
        os.chown(workdir, uid, uid)
    wrapper, config["drop_uid"] = info.command(workdir, uid)
    os.chmod(workdir, 0o700)
    args = ["-u", "-c", _BOOTSTRAP, json.dumps(config), code]

    start = time.monotonic()
    deadline = start + timeout_s
    try:
        proc = _start_interpreter(wrapper, info.python, args, workdir, stderr=subprocess.STDOUT)
    except OSError as e:
        return ToolResult(False, "", f"SandboxError: could not start the interpreter ({e})")

    limit = max_output_bytes + len(marker) + 4096  # room for the result record after the output
    chunks: list[bytes] = []
    size = 0
    timed_out = overflow = False
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            fd = proc.stdout.fileno()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                if not sel.select(timeout=left):
                    continue
                data = os.read(fd, 65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if size > limit:
                    overflow = True
                    break
        if not (timed_out or overflow):
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        _kill_all(proc, uid)  # the cell and anything it left behind (its group; its uid's processes)
        proc.stdout.close()

    raw = b"".join(chunks)
    record = None
    at = raw.rfind(marker.encode())
    if at >= 0:
        try:
            record = json.loads(raw[at + len(marker) :].decode("utf-8", "replace"))
        except ValueError:
            record = None
        raw = raw[:at]
    cut = len(raw) > max_output_bytes
    output = raw[:max_output_bytes].decode("utf-8", "replace")
    if overflow or (cut and record is None):
        return ToolResult(False, output, f"OutputLimitError: output exceeded {max_output_bytes} bytes")
    if timed_out and record is None:
        return ToolResult(False, output, f"TimeoutError: ran longer than {timeout_s:g}s (wall clock)")
    if record is not None:
        ok, error = bool(record.get("ok")), record.get("error")
        if cut and ok:
            ok, error = False, f"OutputLimitError: output exceeded {max_output_bytes} bytes"
        return ToolResult(ok, output, None if ok else str(error).splitlines()[0] if error else "error")
    rc = proc.returncode
    if rc is not None and rc < 0:
        return ToolResult(False, output, _signal_error(-rc, killed_by_us=False))
    if rc is not None and rc > 128 and -(rc - 128) in (-s for s in signal.Signals._value2member_map_):
        return ToolResult(False, output, _signal_error(rc - 128, killed_by_us=False))
    if rc == 0:
        return ToolResult(True, output, None)
    return ToolResult(False, output, f"crashed: the interpreter exited with status {rc}")
