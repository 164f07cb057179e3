"""Run outputs: ``metrics.jsonl`` (one JSON object per logged step), optional wandb, and MFU.

Reports, plots and benchmarks read ``metrics.jsonl``; nothing scrapes the console.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
GPU_PEAK_FLOPS = {
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
    "A10G": 125e12,
    "L4": 121e12,
    "4090": 165e12,
}


def measure_cpu_matmul_flops(dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> float:
    """This CPU's achievable matmul rate in ``dtype`` (FLOP/s): the denominator for MFU on a CPU, which
    has no datasheet peak for PyTorch. The fastest of a few runs, because on a shared machine the slower
    ones measure the other processes, not the CPU."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up (oneDNN picks its kernel here)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops if dtype in (torch.bfloat16, torch.float16) else flops / 2
        return float("nan")
    return measure_cpu_matmul_flops(dtype if dtype in (torch.bfloat16, torch.float32) else torch.float32)


def wandb_mode() -> str:
    """``$WANDB_MODE`` if set; else ``online`` when an API key is configured (``$WANDB_API_KEY`` or a
    ``wandb login`` entry in ~/.netrc), ``offline`` otherwise: enabling wandb never needs an account."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

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
                import wandb as wb
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
