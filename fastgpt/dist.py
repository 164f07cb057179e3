"""Distributed plumbing: the torchrun environment, process groups, collectives, DeepSpeed engines.

One process per device. ``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; without them fastgpt runs as a single process and never touches ``torch.distributed``.
The backend is NCCL on CUDA and gloo on CPU (DeepSpeed on CPU ranks included).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from fastgpt.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_info: DistInfo | None = None


def init_distributed(device: str = "auto") -> DistInfo:
    """Read the torchrun environment, pick this process's device and join the process group once."""
    global _info
    _check_device(device)
    if _info is not None:
        return _info
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    _info = DistInfo(rank, local_rank, world_size, dev)
    return _info


def _check_device(device: str) -> None:
    """One line naming ``--device`` when this machine cannot use it (torch's own errors are an
    AssertionError deep in ``torch.cuda`` or a RuntimeError listing every backend it knows)."""
    if device == "auto":
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UserError(f"--device={device}: expected auto, cpu, cuda or cuda:N") from None
    if kind not in ("cpu", "cuda"):
        raise UserError(f"--device={device}: training runs on auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={device}: CUDA is not available on this machine (use auto or cpu)")


def init_single_process_group(device: torch.device) -> None:
    """A process group of one (rank 0 of 1) on a free loopback port, for DeepSpeed in a process that
    was started without torchrun (``python -m fastgpt.pretrain --zero=1``)."""
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in (
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", str(port)),
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
    ):
        os.environ.setdefault(key, value)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def info() -> DistInfo:
    return _info if _info is not None else init_distributed()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place on a copy); the identity for a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class PeerFailed(RuntimeError):
    """Raised on the other ranks when rank 0 fails in work it does for all of them (:func:`main_first`).
    Rank 0 prints the reason; the others exit quietly instead of dying in their next collective with a
    gloo/NCCL 'Connection closed by peer' traceback printed after (and burying) rank 0's error line."""


def main_first(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on rank 0 while the other ranks wait (data preparation, creating the run
    dir); rank 0's exception is re-raised there and becomes :class:`PeerFailed` on every other rank.
    Returns ``fn``'s result on rank 0, None elsewhere; a plain call for a single process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return fn(*args, **kwargs)
    result = None
    if dist.get_rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            broadcast_object(True)
            raise
        broadcast_object(False)
    elif broadcast_object(None):
        raise PeerFailed("rank 0 failed; its error is printed above")
    return result


def destroy(wait_for_peers: bool = False) -> None:
    """Release the process group. ``wait_for_peers`` (a run that ended normally on every rank) first
    meets the other ranks in a barrier, so no rank tears its connections down while a peer still writes
    its last files: a rank that did so could abort at exit on CPU ('terminate called without an active
    exception', SIGABRT), failing a finished run. Error paths call it without waiting: a peer that
    failed may never arrive."""
    global _info
    if dist.is_initialized():
        if wait_for_peers and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
    _info = None


class DeepSpeedUnavailable(UserError, RuntimeError):
    """DeepSpeed is needed (``--zero>=1`` or several processes) but cannot be imported."""


def require_deepspeed():
    """Import DeepSpeed or fail with the install command."""
    try:
        import deepspeed  # heavy, optional: deepspeed (multi-process and ZeRO runs only)
    except ImportError as e:
        raise DeepSpeedUnavailable(
            f"--zero>=1 and multi-process training need DeepSpeed, which cannot be imported ({e}); "
            "install it with: pip install deepspeed"
        ) from e
    return deepspeed


def deepspeed_config(
    zero: int,
    *,
    micro_batch_size: int,
    grad_accum: int,
    world_size: int,
    grad_clip: float,
    offload: bool = False,
    base_config: str | os.PathLike | None = None,
    muon: bool = False,
) -> dict[str, Any]:
    """The DeepSpeed config for a ZeRO stage: from ``launch/deepspeed/zero{N}[_offload].json`` when the
    file is given, with the batch geometry and clipping always set from the training config (one source
    of truth). Mixed precision is done with ``torch.autocast`` around the forward in the training loop,
    so DeepSpeed keeps fp32 weights and optimizer state (the same on CPU and GPU). ``muon``: the
    optimizer is fastgpt's Muon, which ZeRO does not know; it is allowed explicitly (its ZeRO partitions
    are handled by :func:`fastgpt.train.optim.shard_muon_for_zero`)."""
    cfg: dict[str, Any] = {}
    if base_config is not None:
        with open(base_config) as f:
            cfg = json.load(f)
    cfg.setdefault("zero_optimization", {})["stage"] = zero
    if offload and zero >= 1:
        cfg["zero_optimization"].setdefault("offload_optimizer", {"device": "cpu", "pin_memory": True})
        if zero == 3:
            cfg["zero_optimization"].setdefault("offload_param", {"device": "cpu", "pin_memory": True})
        # the loop's optimizer is torch's AdamW (fused, vectorised on CPU too), not DeepSpeedCPUAdam
        cfg.setdefault("zero_force_ds_cpu_optimizer", False)
    cfg["train_micro_batch_size_per_gpu"] = micro_batch_size
    cfg["gradient_accumulation_steps"] = grad_accum
    cfg["train_batch_size"] = micro_batch_size * grad_accum * world_size
    cfg["gradient_clipping"] = grad_clip if grad_clip > 0 else 0.0
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("wall_clock_breakdown", False)
    if muon:
        cfg["zero_allow_untested_optimizer"] = True
    cfg["bf16"] = {"enabled": False}
    cfg["fp16"] = {"enabled": False}
    return cfg
