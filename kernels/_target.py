"""Which GPU a kernel launch is shaped for: the one decision every launcher's tile choice hangs on.

On a CUDA tensor the launch target is the device's own architecture family (``sm80`` for Ampere/Ada and
sm_12x, ``sm90`` for Hopper/Blackwell-class parts). Under the Triton interpreter (CPU tensors) there is no
GPU, and the launchers use small interpreter tiles chosen to cross many tile edges in short tests - unless
``FASTGPT_KERNEL_ARCH=sm80|sm90`` is set: then the interpreter runs the tile table (and the SM count that
sizes the norms' backward grid) that a launch on that architecture would pick. That switch exists for the
tests' "GPU tiles" mode (docs/kernels.md): it checks numerically, on CPU, every tile shape a GPU would run.
It is read at each launch (not at import), and it is ignored for CUDA tensors, whose real device decides.
"""

from __future__ import annotations

import os

import torch

ARCH_ENV = "FASTGPT_KERNEL_ARCH"
ARCH_FAMILIES = ("sm80", "sm90")
# SMs of the reference part of each family (A100 SXM: 108, H100 SXM: 132); the norms' backward launches
# about two programs per SM.
SM_COUNT = {"sm80": 108, "sm90": 132}


def arch_family(capability: tuple[int, int]) -> str:
    """``sm90`` for Hopper-class parts (228 KB shared memory), ``sm80`` for Ampere/Ada and the rest."""
    major = capability[0]
    if major < 8:
        raise RuntimeError(
            f"fastgpt's Triton kernels need an sm_80 or newer GPU; got sm_{major}{capability[1]}"
        )
    return "sm90" if major in (9, 10) else "sm80"


def forced_arch() -> str | None:
    """The architecture family named by ``FASTGPT_KERNEL_ARCH`` (tests only), or None when unset."""
    value = os.environ.get(ARCH_ENV, "").strip().lower()
    if not value:
        return None
    if value not in ARCH_FAMILIES:
        raise ValueError(f"{ARCH_ENV} must be one of {', '.join(ARCH_FAMILIES)} (or unset); got {value!r}")
    return value


def launch_arch(device: torch.device) -> str | None:
    """The architecture family whose tiles a launch on ``device`` uses: the GPU's own for CUDA tensors,
    ``FASTGPT_KERNEL_ARCH`` under the interpreter when set, else None (the interpreter's own tiles)."""
    if device.type == "cuda":
        return arch_family(torch.cuda.get_device_capability(device))
    return forced_arch()


def sm_count(device: torch.device) -> int | None:
    """Streaming multiprocessors of the launch target (None: the interpreter's own small grids)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    arch = forced_arch()
    return None if arch is None else SM_COUNT[arch]
