"""Run outputs: ``metrics.jsonl`` (one JSON object per logged step), optional wandb, and MFU.

Reports, plots and benchmarks read ``metrics.jsonl``; nothing scrapes the console.
"""

from __future__ import annotations

import functools
import json
import netrc
import os
import time
from pathlib import Path
from typing import Any

import torch

# Dense (no sparsity) datasheet peaks per GPU, FLOP/s: bf16/fp16 tensor cores, tf32 tensor cores, and
# plain fp32 (CUDA cores). Matched against torch.cuda.get_device_name in this order ("H100 PCIe" before
# "H100"); a card not listed has no peak and its MFU is logged as NaN.
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},  # SXM
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
}


def gpu_peak_flops(name: str, dtype: torch.dtype, *, tf32: bool) -> float:
    """The dense datasheet peak of the card called ``name`` for matmuls in ``dtype`` (fp32 matmuls run
    on tf32 tensor cores when ``tf32``); NaN for a card not in :data:`GPU_PEAK_FLOPS`."""
    for key, peaks in GPU_PEAK_FLOPS.items():
        if key in name:
            if dtype in (torch.bfloat16, torch.float16):
                return peaks["bf16"]
            return peaks["tf32"] if tf32 else peaks["fp32"]
    return float("nan")


def _best_rate(fn: Any, args: tuple, flops: float, *, runs: int = 3, budget_s: float = 0.25) -> float:
    """FLOP/s of ``fn(*args)`` per second of this thread's CPU time, the best of a few runs."""
    fn(*args)  # warm-up: oneDNN/MKL pick their kernel here
    best, spent, n = float("inf"), 0.0, 0
    while n < runs and (n == 0 or spent < budget_s):
        t0 = time.thread_time()
        fn(*args)
        dt = time.thread_time() - t0
        spent, n = spent + dt, n + 1
        if dt > 0:
            best = min(best, dt)
    return flops / best


@functools.cache
def measure_cpu_matmul_flops(dtype: torch.dtype, sizes: tuple[int, ...] = (256, 512)) -> float:
    """One CPU thread's matmul rate in ``dtype`` (FLOP/s): the best of ``a @ b`` and ``F.linear`` (the
    two reach different kernels: in bf16 on a CPU without native bf16 ``linear`` goes through oneDNN
    and runs ~5x faster than ``mm``) at a few square sizes.

    Timed by the calling thread's CPU time (``time.thread_time``) with one intra-op thread, so the
    rate is what a core does while it runs this process: on a loaded machine a wall-clock measurement
    counts the time other processes held the core, and a peak measured that way at start-up fell to
    a third of the true rate (MFU then read 1.1). Cached per dtype."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = 0.0
        for n in sizes:
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            flops = 2.0 * n**3
            best = max(best, _best_rate(torch.matmul, (a, b), flops))
            best = max(best, _best_rate(torch.nn.functional.linear, (a, b), flops))
        return best
    finally:
        torch.set_num_threads(before)


def cpu_cores_in_use() -> int:
    """Cores this process's intra-op threads can run on: its thread count, capped by its CPU
    affinity (two threads pinned to one core compute no faster than one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores))


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The peak matmul rate of the one device this process trains on, for MFU (the loop divides by
    it the model FLOPs of this process's share of the tokens, so MFU is per device).

    GPU: the card's dense datasheet number for ``dtype`` (:func:`gpu_peak_flops`; fp32 counts as tf32
    when torch lets fp32 matmuls use tf32). CPU: the cores this process uses (:func:`cpu_cores_in_use`)
    times one thread's measured matmul rate in ``dtype`` (:func:`measure_cpu_matmul_flops`): threads
    never scale better than linearly, so this bounds what the process's matmuls can do."""
    if device.type == "cuda":
        tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype, tf32=tf32)
    return cpu_cores_in_use() * measure_cpu_matmul_flops(dtype)


def wandb_mode() -> str:
    """``$WANDB_MODE`` if set; else ``online`` when an API key is configured (``$WANDB_API_KEY`` or a
    ``wandb login`` entry in ~/.netrc), ``offline`` otherwise: enabling wandb never needs an account."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        has_login = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        has_login = False
    return "online" if has_login else "offline"


class MetricsLogger:
    """Appends one JSON line per call to ``out_dir/metrics.jsonl`` (main process only) and mirrors
    to wandb when enabled. wandb is never required: offline when no API key is set, and
    ``WANDB_MODE`` is respected."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        enabled: bool,
        wandb: bool = False,
        project: str = "fastgpt",
        run_config: dict[str, Any] | None = None,
    ):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.wandb_run = None
        if enabled and wandb:
            try:
                import wandb as wb  # heavy, optional: wandb (--wandb=true only)
            except ImportError:
                print("wandb is not installed; logging to metrics.jsonl only")
            else:
                mode = wandb_mode()
                self.wandb_run = wb.init(project=project, config=run_config, dir=str(out_dir), mode=mode)
                print(
                    f"wandb: {mode} run in {out_dir}/wandb"
                    + (" (sync later: wandb sync)" if mode == "offline" else "")
                )

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(
                {k: v for k, v in clean.items() if isinstance(v, (int, float))}, step=clean.get("step")
            )

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
