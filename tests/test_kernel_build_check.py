"""The AOT build check (``python -m fastgpt.kernels.build_check``) on a few configs, for sm_90.

One run compiles one real fastgpt config (SwiGLU forward, 1024-wide tile) and two deliberately broken
kernels from a throw-away module: a 256x256x256 bf16 ``tl.dot`` whose operand tiles need 256 KB of shared
memory (over the 227 KB a Hopper block may use) and an 8-wide ``tl.dot`` that only the real compiler
rejects (the interpreter accepts it). The run must print correct rows for all three and exit non-zero.
It also runs with ``TRITON_INTERPRET=1`` inherited from the test environment, which the build check must
shed for its compiler processes. The full check over every config runs from ``.ci/run``.
"""

import os
import subprocess
import sys
import textwrap

BROKEN_KERNELS = textwrap.dedent(
    """
    import triton
    import triton.language as tl


    @triton.jit
    def _big_dot_kernel(A, B, C, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tile = offs[:, None] * BLOCK + offs[None, :]
        tl.store(C + tile, tl.dot(tl.load(A + tile), tl.load(B + tile)))


    @triton.jit
    def _tiny_dot_kernel(A, C, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tile = offs[:, None] * BLOCK + offs[None, :]
        a = tl.load(A + tile)
        tl.store(C + tile, tl.dot(a, a))


    @triton.jit
    def _ieee_dot_kernel(A, C, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tile = offs[:, None] * BLOCK + offs[None, :]
        a = tl.load(A + tile)
        tl.store(C + tile, tl.dot(a, a, input_precision="ieee"))


    AOT_CONFIGS = [
        {"name": "big_dot", "fn": _big_dot_kernel, "constexprs": {"BLOCK": 256}, "num_warps": 8,
         "signature": {"A": "*bf16", "B": "*bf16", "C": "*fp32", "BLOCK": "constexpr"}},
        {"name": "tiny_dot", "fn": _tiny_dot_kernel, "constexprs": {"BLOCK": 8},
         "signature": {"A": "*bf16", "C": "*fp32", "BLOCK": "constexpr"}},
        {"name": "ieee_dot", "fn": _ieee_dot_kernel, "constexprs": {"BLOCK": 64}, "tensor_cores": True,
         "signature": {"A": "*fp32", "C": "*fp32", "BLOCK": "constexpr"}},
        {"name": "bf16_dot", "fn": _tiny_dot_kernel, "constexprs": {"BLOCK": 64}, "tensor_cores": True,
         "signature": {"A": "*bf16", "C": "*fp32", "BLOCK": "constexpr"}},
    ]
    """
)


def markdown_rows(path) -> dict[str, dict[str, str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    return {row["kernel"]: row for row in rows}


def test_build_check_reports_real_and_broken_kernels(tmp_path):
    (tmp_path / "aot_broken_kernels.py").write_text(BROKEN_KERNELS)
    table = tmp_path / "aot.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    assert env.get("TRITON_INTERPRET") == "1"  # set by conftest: the check must cope with it
    cmd = [
        sys.executable, "-m", "fastgpt.kernels.build_check", "--arch", "90", "--jobs", "2",
        "--modules", "aot_broken_kernels,fastgpt.kernels.activations",
        "--match", r"big_dot|tiny_dot|ieee_dot|bf16_dot|swiglu_fwd\[bf16 BLOCK_M=1 BLOCK_N=1024 ", "--markdown", str(table),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr

    rows = markdown_rows(table)
    assert set(rows) == {
        "activations.swiglu_fwd",
        "aot_broken_kernels.big_dot",
        "aot_broken_kernels.tiny_dot",
        "aot_broken_kernels.ieee_dot",
        "aot_broken_kernels.bf16_dot",
    }
    good = rows["activations.swiglu_fwd"]
    assert good["arch"] == "sm_90" and good["status"] == "ok"
    assert good["config"] == "bf16 BLOCK_M=1 BLOCK_N=1024 num_warps=4"
    assert 0 <= int(good["smem (B)"]) <= 227 * 1024
    assert 8 <= int(good["regs"]) <= 255 and int(good["spill/stack (B)"]) == 0

    big = rows["aot_broken_kernels.big_dot"]
    assert int(big["smem (B)"]) >= 2 * 256 * 256 * 2  # both bf16 operand tiles staged in shared memory
    assert big["status"] == "SMEM > 227 KB"

    assert good["HGMMA"] == "-"  # SASS counted only for attention, cross-entropy and tensor_cores configs

    # SASS evidence: a bf16 tl.dot becomes warpgroup MMA on sm_90; a full-precision fp32 dot runs on FMAs,
    # which a config declaring tensor_cores must not do.
    bf16_dot = rows["aot_broken_kernels.bf16_dot"]
    assert int(bf16_dot["HGMMA"]) > 0 and bf16_dot["status"] == "ok"
    ieee = rows["aot_broken_kernels.ieee_dot"]
    assert ieee["HGMMA"] == ieee["HMMA"] == "0" and ieee["status"] == "NO TENSOR CORES"

    assert rows["aot_broken_kernels.tiny_dot"]["status"] == "COMPILE ERROR"
    assert "ERROR aot_broken_kernels.tiny_dot" in result.stdout and "K >= 16" in result.stdout
