"""Ahead-of-time build check of every Triton kernel, for Ampere (sm_80) and Hopper (sm_90), no GPU needed.

Each ``fastgpt.kernels.<op>`` module that defines ``AOT_CONFIGS`` lists every configuration its launchers
can pick, as dicts::

    {"name": "rms_norm_fwd",             # kernel name shown in the table
     "fn": _rms_norm_fwd_kernel,          # the @triton.jit function
     "signature": {"X": "*bf16", "n_cols": "i32", "eps": "fp32", "BLOCK_H": "constexpr", ...},
     "constexprs": {"BLOCK_H": 1024, ...},
     "num_warps": 4, "num_stages": 3,     # optional compile options
     "attrs": {(0,): [["tt.divisibility", 16]]},  # optional specialisation hints, as ASTSource takes
     "archs": [90],                       # optional: only these SM versions (default: all)
     "tensor_cores": True}                # optional: its SASS must hold HGMMA/HMMA (checked, see below)

This script compiles each one with the real Triton compiler (``triton.compile(ASTSource(...),
target=GPUTarget("cuda", cap, 32))``), which catches what the CPU interpreter cannot: illegal ``tl.dot``
shapes, bf16 lowering errors, shared memory beyond what one block may use. It reads the shared memory
from the compiled metadata and the registers and per-thread stack (where spilled registers live) from
``cuobjdump --dump-resource-usage`` (shipped inside the triton wheel), prints one table row per
(kernel, config, arch), and exits non-zero on any compile error or shared memory over the limit.

For attention and cross-entropy (``SASS_MODULES``; ``--sass all`` for every kernel) it also counts SASS
opcodes in ``cuobjdump -sass``: warpgroup MMA (``HGMMA``, sm_90) and ``HMMA`` (sm_80 and small tiles on
sm_90) are tensor-core instructions, ``LDGSTS`` is cp.async, ``UTMALDG`` a TMA load, ``STL``/``LDL`` local
memory traffic (spills). A config that declares ``"tensor_cores": True`` (every attention kernel with a
``tl.dot``) fails the check when its SASS has no tensor-core instruction: a ``tl.dot`` lowered to FMAs runs
an order of magnitude slower and nothing else would say so.

Run: ``python -m fastgpt.kernels.build_check [--markdown FILE] [--arch 90] [--match RE] [--modules M,...]
[--jobs N] [--sass auto|all|none]``.

The compiles run in worker processes started with ``TRITON_INTERPRET`` removed from their environment
(the interpreter replaces ``@triton.jit`` functions, so a process that imported the kernels under it
cannot compile them) and with a fresh Triton cache, so every row is a real compile.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from fastgpt.kernels._launches import kernel_modules

ARCHS = (80, 90)
# Shared memory one thread block may use (the SM has 1 KB more, reserved by the system):
# A100 (sm_80) 164 KB per SM / 163 KB per block; H100 (sm_90) 228 KB per SM / 227 KB per block.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
# Modules whose configs get SASS opcode counts by default (``--sass auto``): the tl.dot kernels and the
# cross-entropy. Dumping SASS costs about a quarter of a compile, so the memory-bound kernels skip it.
SASS_MODULES = {"attention", "attention_backward", "cross_entropy"}
# Opcodes counted in the SASS: tensor cores (warpgroup / warp MMA), cp.async, TMA loads, local memory.
SASS_OPCODES = ("HGMMA", "HMMA", "LDGSTS", "UTMALDG", "STL", "LDL")
_SASS_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)")
_COMPILE_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@dataclass
class Row:
    module: str
    kernel: str
    config: str
    arch: int
    smem: int | None = None
    regs: int | None = None
    spill: int | None = None
    seconds: float = 0.0
    error: str | None = None
    sass: dict[str, int] | None = None  # opcode -> count (SASS_OPCODES), None when not dumped
    tensor_cores: bool = False  # the config declares that its SASS must use tensor cores

    @property
    def over_limit(self) -> bool:
        return self.smem is not None and self.smem > SMEM_LIMIT[self.arch]

    @property
    def mma(self) -> int | None:
        """Tensor-core instructions in the SASS (HGMMA + HMMA), None when the SASS was not dumped."""
        return None if self.sass is None else self.sass["HGMMA"] + self.sass["HMMA"]

    @property
    def no_tensor_cores(self) -> bool:
        return self.tensor_cores and self.error is None and not self.mma

    @property
    def failed(self) -> bool:
        return self.error is not None or self.over_limit or self.no_tensor_cores

    @property
    def status(self) -> str:
        if self.error:
            return "COMPILE ERROR"
        if self.over_limit:
            return f"SMEM > {SMEM_LIMIT[self.arch] // 1024} KB"
        if self.no_tensor_cores:
            return "NO TENSOR CORES"
        return "spills" if self.spill else "ok"


# ------------------------------------------------------------------------------------ in the workers
def _describe(cfg: dict) -> str:
    """Human-readable config: the main dtype (first pointer argument), the constexprs, the options."""
    pointer_types = [t[1:] for t in cfg["signature"].values() if isinstance(t, str) and t.startswith("*")]
    parts = [pointer_types[0]] if pointer_types else []
    parts += [f"{k}={v}" for k, v in cfg.get("constexprs", {}).items()]
    parts += [f"{k}={cfg[k]}" for k in _COMPILE_OPTIONS if k in cfg]
    return " ".join(parts)


def _list_configs(modules: list[str]) -> list[tuple[str, int, str, str, tuple[int, ...] | None]]:
    """``(module, index, kernel name, config description, archs or None)`` for every AOT config."""
    out = []
    for name in modules:
        module = importlib.import_module(name)
        for i, cfg in enumerate(getattr(module, "AOT_CONFIGS", None) or []):
            archs = tuple(cfg["archs"]) if cfg.get("archs") else None
            out.append((name, i, cfg["name"], _describe(cfg), archs))
    return out


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    """What triton's bundled ``cuobjdump`` prints with ``flags`` for ``cubin``."""
    import triton  # heavy, optional: triton (GPU builds)

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([tool, *flags, f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """``(registers, stack bytes)`` of the (single) kernel in ``cubin``, from cuobjdump."""
    out = _cuobjdump(cubin, "--dump-resource-usage")
    match = re.search(r"REG:(\d+)\s+STACK:(\d+)", out)
    if match is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{out}")
    return int(match.group(1)), int(match.group(2))


def sass_counts(cubin: bytes) -> dict[str, int]:
    """How many of each ``SASS_OPCODES`` instruction ``cuobjdump -sass`` lists for ``cubin`` (opcode
    modifiers such as ``HGMMA.64x64x16.F32.BF16`` count under the base opcode; predicated ones too)."""
    out = _cuobjdump(cubin, "-sass")
    counts = dict.fromkeys(SASS_OPCODES, 0)
    n_instructions = 0
    for match in _SASS_INSTRUCTION.finditer(out):
        n_instructions += 1
        if match.group(1) in counts:
            counts[match.group(1)] += 1
    if n_instructions == 0:
        raise RuntimeError("cuobjdump -sass listed no instructions")
    return counts


def _compile_one(module: str, index: int, arch: int, sass: str = "auto") -> Row:
    import triton  # heavy, optional: triton (GPU builds)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cfg = importlib.import_module(module).AOT_CONFIGS[index]
    short = module.rsplit(".", 1)[-1]
    row = Row(short, cfg["name"], _describe(cfg), arch, tensor_cores=bool(cfg.get("tensor_cores")))
    dump_sass = sass == "all" or (sass == "auto" and (short in SASS_MODULES or row.tensor_cores))
    start = time.perf_counter()
    try:
        src = ASTSource(
            fn=cfg["fn"],
            signature=cfg["signature"],
            constexprs=cfg.get("constexprs", {}),
            attrs=cfg.get("attrs"),
        )
        options = {k: cfg[k] for k in _COMPILE_OPTIONS if k in cfg}
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        row.smem = int(compiled.metadata.shared)
        row.regs, row.spill = _resource_usage(compiled.asm["cubin"])
        if dump_sass:
            row.sass = sass_counts(compiled.asm["cubin"])
    except Exception as e:  # noqa: BLE001 - every failure becomes a table row and a non-zero exit
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        row.error = f"{type(e).__name__}: {lines[-1] if lines else ''}"[:300]
    row.seconds = time.perf_counter() - start
    return row


# --------------------------------------------------------------------------------------- the driver
def discover_modules() -> list[str]:
    """Every ``fastgpt.kernels.<op>`` module: the same list the launch recorder wraps and checks against
    (``fastgpt.kernels._launches.kernel_modules``), so what is compiled and what is checked cannot drift."""
    return kernel_modules()


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default, stated to silence triton's warning
    return env


def run(modules: list[str], archs: list[int], match: str | None, jobs: int, sass: str = "auto") -> list[Row]:
    """Compile every selected config in ``jobs`` spawned processes; rows in a stable order."""
    cache = tempfile.mkdtemp(prefix="fastgpt-aot-cache-")
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(_worker_env())
    os.environ["TRITON_CACHE_DIR"] = cache
    try:
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            configs = pool.submit(_list_configs, modules).result()
            if match:
                pattern = re.compile(match)
                configs = [c for c in configs if pattern.search(_row_id(c[0], c[2], c[3]))]
            tasks = [
                (m, i, arch) for m, i, _, _, only in configs for arch in archs if only is None or arch in only
            ]
            futures = [pool.submit(_compile_one, *t, sass) for t in tasks]
            rows = [f.result() for f in futures]
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def _row_id(module: str, kernel: str, config: str) -> str:
    return f"{module.rsplit('.', 1)[-1]}.{kernel}[{config}]"


def _fmt(value) -> str:
    return "-" if value is None else str(value)


def format_table(rows: list[Row], markdown: bool) -> str:
    header = ["kernel", "config", "arch", "smem (B)", "regs", "spill/stack (B)", *SASS_OPCODES, "status"]
    body = [
        [
            f"{r.module}.{r.kernel}",
            r.config,
            f"sm_{r.arch}",
            _fmt(r.smem),
            _fmt(r.regs),
            _fmt(r.spill),
            *(_fmt(None if r.sass is None else r.sass[op]) for op in SASS_OPCODES),
            r.status,
        ]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)) for cells in [header, *body])


def summary(rows: list[Row], seconds: float, jobs: int) -> str:
    errors = sum(r.error is not None for r in rows)
    over = sum(r.over_limit for r in rows)
    spills = sorted({_row_id(r.module, r.kernel, r.config) + f"@sm_{r.arch}" for r in rows if r.spill})
    text = (
        f"{len(rows)} compiles ({len({(r.module, r.kernel, r.config) for r in rows})} configs x arch) in "
        f"{seconds:.1f} s on {jobs} processes: {errors} compile errors, {over} over the shared-memory "
        f"limit, {len(spills)} with spills"
    )
    dumped = [r for r in rows if r.sass is not None]
    if dumped:
        expecting = [r for r in rows if r.tensor_cores]
        text += (
            f"\nSASS of {len(dumped)} compiles: {sum(r.mma > 0 for r in dumped)} with tensor-core instructions "
            f"({sum(r.sass['HGMMA'] > 0 for r in dumped)} HGMMA, {sum(r.sass['HMMA'] > 0 for r in dumped)} HMMA), "
            f"{sum(r.sass['LDGSTS'] > 0 for r in dumped)} with cp.async, {sum(r.sass['UTMALDG'] > 0 for r in dumped)} "
            f"with TMA loads, {sum(r.sass['STL'] + r.sass['LDL'] > 0 for r in dumped)} with local-memory traffic; "
            f"{sum(r.no_tensor_cores for r in expecting)} of {len(expecting)} tensor-core configs without them"
        )
    if spills:
        text += "\nspilling: " + ", ".join(spills)
    for r in rows:
        if r.error:
            text += f"\nERROR {_row_id(r.module, r.kernel, r.config)} sm_{r.arch}: {r.error}"
    return text


def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build_check-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastgpt.kernels.build_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--arch", type=int, nargs="+", choices=ARCHS, default=list(ARCHS), help="SM versions")
    parser.add_argument("--match", help="regex on 'module.kernel[config]' selecting the configs to compile")
    parser.add_argument("--modules", help="comma-separated modules to check instead of all fastgpt.kernels")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as markdown to FILE")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    parser.add_argument(
        "--sass",
        choices=("auto", "all", "none"),
        default="auto",
        help="count SASS opcodes: auto = attention, cross-entropy and configs that declare tensor_cores",
    )
    args = parser.parse_args(argv)

    modules = args.modules.split(",") if args.modules else discover_modules()
    start = time.perf_counter()
    rows = run(modules, args.arch, args.match, max(1, args.jobs), args.sass)
    seconds = time.perf_counter() - start
    if not rows:
        print(f"build_check: no AOT configs selected (modules: {', '.join(modules)})", file=sys.stderr)
        return 1
    print(format_table(rows, markdown=False))
    text = summary(rows, seconds, args.jobs)
    print(text)
    if args.markdown:
        _write_atomic(args.markdown, format_table(rows, markdown=True) + "\n")
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
