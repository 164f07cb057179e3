"""What the kernel tests target, and the input dtypes that follows from it (docs/kernels.md, "Test modes").

Three modes, chosen by environment variables read by ``tests/conftest.py`` and the kernels themselves:

- default (CPU): the Triton interpreter with its own small tiles; every dtype the kernels take, fp32
  included.
- GPU mode, ``FASTGPT_TEST_DEVICE=cuda`` (``benchmarks/gpu_suite.sh``): the kernels compiled for the GPU,
  tiles from its architecture.
- GPU-tiles mode, ``FASTGPT_KERNEL_ARCH=sm80|sm90`` on CPU: the interpreter running the tile table (and
  grid sizes) a launch on that architecture picks.

In the last two a launch is shaped for a GPU (:func:`target_arch` is not None), and the tests then give a
kernel only dtypes it takes on a GPU: :func:`attention_dtype_for` turns fp32 attention inputs, which
``attention_triton`` refuses on a GPU, into fp16. Every other kernel takes fp32 on a GPU too.
"""

from __future__ import annotations

import os

import torch
from fastgpt.kernels._target import launch_arch

TEST_DEVICE = os.environ.get("FASTGPT_TEST_DEVICE", "cpu")


def target_arch() -> str | None:
    """The architecture family the kernels' launches are shaped for here (``sm80``/``sm90``), or None
    for the interpreter's own tiles."""
    return launch_arch(torch.device(TEST_DEVICE))


def attention_dtype_for(requested: torch.dtype, arch: str | None) -> torch.dtype:
    """The dtype a test that asks for ``requested`` gives ``attention_triton`` when launches target
    ``arch``: fp32 becomes fp16 on a GPU target (the kernel is fp16/bf16-only there; fp16 rather than
    bf16 so that GPU-tiles mode can run it under the interpreter, whose bf16 ``tl.dot`` is wrong)."""
    if arch is not None and requested == torch.float32:
        return torch.float16
    return requested


def attention_dtype(requested: torch.dtype = torch.float32) -> torch.dtype:
    """:func:`attention_dtype_for` this run's target."""
    return attention_dtype_for(requested, target_arch())
