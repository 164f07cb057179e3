"""GPU-tiles mode: every kernel under the Triton interpreter with the launch configuration a GPU of each
architecture family would use, in fp16, against the same references as the default tests.

``FASTGPT_KERNEL_ARCH=sm80|sm90`` (set per test here; read by ``kernels/_target.py`` at each launch)
makes the launchers pick that architecture's tile table on CPU tensors. What changes with it:

- attention: the tiles of ``tile_configs(head_dim, arch)`` (128x64, 16x128, ... instead of the
  interpreter's 32x16 / 16x32), so tile edges, masked/unmasked tile ranges and ragged tails fall where
  they fall on the GPU; fp32 is refused there as on a GPU, so these tests run fp16 (the interpreter's
  bf16 ``tl.dot`` is wrong; bf16 on a GPU is covered by the AOT compile and GPU mode);
- norms: the backward's grid of two programs per SM of the family's reference part (A100: 108 SMs,
  H100: 132), so each program walks the row groups a GPU's would.

RoPE, SwiGLU/GELU and cross-entropy pick their tiles from the shapes alone (the same table on every
device, and the same as the default tests); they are run here with the forced target as well so that each
kernel has a GPU-tiles check per family. The test sizes are the smallest that still cross several GPU
tiles (attention ~3 s per case). ``-m slow`` adds head dim 96 and runs every kernel test module in
GPU-tiles mode in a subprocess per family (minutes each).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_kernel_activations as activations_tests
import test_kernel_attention as attention_tests
import test_kernel_cross_entropy as cross_entropy_tests
import test_kernel_norms as norms_tests
import test_kernel_rope as rope_tests
import torch
from fastgpt.kernels import attention as attention_module
from fastgpt.kernels import attention_backward as attention_backward_module
from fastgpt.kernels._target import ARCH_ENV
from fastgpt.kernels.attention import tile_configs
from kernel_modes import TEST_DEVICE, target_arch

ARCHS = ["sm80", "sm90"]
FP16 = torch.float16

pytestmark = pytest.mark.skipif(
    TEST_DEVICE != "cpu", reason="GPU-tiles mode simulates a GPU's tiles on CPU; this run has the GPU itself"
)


@pytest.fixture(params=ARCHS)
def arch(request, monkeypatch):
    monkeypatch.setenv(ARCH_ENV, request.param)
    assert target_arch() == request.param
    return request.param


@pytest.fixture
def attention_tiles(monkeypatch):
    """The (BLOCK_M, BLOCK_N) of every attention kernel launch, seen at Triton's ``run`` (the launch)."""
    seen = {}
    for role, module, name in (
        ("fwd", attention_module, "_attn_fwd_kernel"),
        ("bwd_dkdv", attention_backward_module, "_attn_bwd_dkdv_kernel"),
        ("bwd_dq", attention_backward_module, "_attn_bwd_dq_kernel"),
    ):
        kernel = getattr(module, name)
        run = kernel.run

        def observed(*args, _role=role, _run=run, **kwargs):
            seen[_role] = (kwargs["BLOCK_M"], kwargs["BLOCK_N"])
            return _run(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", observed)
    return seen


def _length(arch: str, D: int) -> int:
    """A full tile of the table's largest edge, then a ragged one."""
    return max(max(c.block_m, c.block_n) for c in tile_configs(D, arch).values()) + 22


def _check_attention(arch, seen, D, Tq=None, **kw):
    tiles = tile_configs(D, arch)
    assert tiles != tile_configs(D, None)
    T = _length(arch, D)
    q, k, v = attention_tests._inputs(1, 4, 2, Tq or T, T, D)
    assert q.dtype == FP16  # fp32 is refused on GPU tiles: the mode's dtype rule applies
    attention_tests._check(q, k, v, **kw)
    assert seen == {role: (c.block_m, c.block_n) for role, c in tiles.items()}


@pytest.mark.parametrize("D", [32, 64, 128])
def test_attention_with_gpu_tiles(arch, attention_tiles, D):
    """Causal GQA at each padded head dim (each has its own tile table per family)."""
    _check_attention(arch, attention_tiles, D)


@pytest.mark.slow
def test_attention_with_gpu_tiles_head_dim_96(arch, attention_tiles):
    """96 runs on the 128 tiles with the last 32 columns masked."""
    _check_attention(arch, attention_tiles, 96)


def test_attention_features_with_gpu_tiles(arch, attention_tiles):
    """Packed documents (a one-token document, edges inside GPU tiles) + sliding window, and KV-cache
    decode alignment (Tq < Tk)."""
    D = 64
    T = _length(arch, D)
    doc = torch.tensor([[0] * 40 + [1] + [2] * 70 + [3] * (T - 111)])
    _check_attention(arch, attention_tiles, D, doc_ids=doc, window=50)
    _check_attention(arch, attention_tiles, D, Tq=20)


def test_attention_tile_skipping_with_gpu_tiles(arch):
    """NaN in the key tiles the GPU tile table must skip (sizes follow that table)."""
    attention_tests.test_hidden_tiles_are_skipped("documents")


def test_norms_with_gpu_grids(arch, monkeypatch):
    """300 rows: the backward runs 150 programs of 2 rows (2 x SM count caps it at 216 / 264), not the
    interpreter's 4 programs of 75 (the grids are seen at the launch)."""
    from fastgpt.kernels import norms

    grids = []
    for kernel in (norms._rms_norm_bwd_kernel, norms._layer_norm_bwd_kernel):
        run = kernel.run

        def observed(*args, _run=run, **kwargs):
            grids.append((kwargs["grid"], args[-1]))  # (grid, rows_per_program)
            return _run(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", observed)
    shape = ((10, 30), 100)
    norms_tests.test_rms_norm_forward_and_grads(*shape, FP16)
    norms_tests.test_add_rms_norm_forward_and_grads(*shape, FP16)
    norms_tests.test_layer_norm_forward_and_grads(*shape, FP16)
    assert grids and all(g == ((150,), 2) for g in grids), grids


def test_launch_target_switch():
    """The switch itself: unset -> the interpreter's tiles; a bad value is one clear error naming it."""
    from fastgpt.kernels._target import launch_arch, sm_count

    cpu = torch.device("cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ARCH_ENV, raising=False)
        assert launch_arch(cpu) is None and sm_count(cpu) is None
        mp.setenv(ARCH_ENV, "sm90")
        assert launch_arch(cpu) == "sm90" and sm_count(cpu) == 132
        mp.setenv(ARCH_ENV, "sm75")
        with pytest.raises(ValueError, match="FASTGPT_KERNEL_ARCH must be one of sm80, sm90"):
            launch_arch(cpu)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # exp(+-200) -> inf
def test_rope_activations_cross_entropy_with_gpu_target(arch):
    """Shape-only tile tables: the same tiles as on any device, run once per family in fp16."""
    rope_tests.test_rope_forward_and_grads(2, 4, 2, 9, 64, FP16)
    activations_tests.test_swiglu_forward_and_grads((3,), 1500, FP16)
    activations_tests.test_gelu_tanh_forward_and_grads((5, 7), 37, FP16)
    cross_entropy_tests.test_cross_entropy_loss_and_grad(
        7, 5000, FP16, "mean", {"z_loss": 1e-2, "softcap": 5.0, "ignore_index": -1}
    )
    cross_entropy_tests.test_linear_cross_entropy_loss_and_grads(13, 24, 4200, 5, FP16, "mean", True)


# -------------------------------------------------------------------------------- whole modules, slow
KERNEL_TEST_FILES = [
    "tests/test_kernel_attention.py",
    "tests/test_kernel_attention_docs.py",
    "tests/test_kernel_attention_decode.py",
    "tests/test_kernel_norms.py",
    "tests/test_kernel_rope.py",
    "tests/test_kernel_activations.py",
    "tests/test_kernel_cross_entropy.py",
]


@pytest.mark.slow
@pytest.mark.parametrize("family", ARCHS)
def test_every_kernel_test_passes_in_gpu_tiles_mode(family):
    """Every default kernel test (attention's 30-odd included), in GPU-tiles mode: fp32 attention inputs
    would be refused by the kernel's own check, and any tile-size assumption would fail."""
    env = {**os.environ, ARCH_ENV: family, "FASTGPT_TEST_DEVICE": "cpu"}
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_TEST_FILES],
        cwd=root, env=env, capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
