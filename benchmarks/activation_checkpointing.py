"""Peak tensor memory and time of one training step (forward + backward) with and without per-block
activation checkpointing, on CPU.

    python benchmarks/activation_checkpointing.py --preset tiny --batch 16 --seq 256 --threads 1

Peak memory is torch's ``MemTracker`` (every live CPU tensor: parameters, gradients, activations,
temporaries), so it is deterministic; times are medians of alternating steps (A, B, A, B, ...).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.distributed._tools.mem_tracker import MemTracker

from fastgpt.model import GPT, GPTConfig
from fastgpt.model.gpt import set_activation_checkpointing


def peak_mib(model: GPT, x: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        model(x, x).backward()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] / 2**20


def step_s(model: GPT, x: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    model(x, x).backward()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(args.preset))
    x = torch.randint(0, model.config.vocab_size, (args.batch, args.seq))
    peaks, times = {}, {False: [], True: []}
    for ckpt in (False, True):
        set_activation_checkpointing(model, ckpt)
        peaks[ckpt] = peak_mib(model, x)
    for _ in range(args.repeats):
        for ckpt in (False, True):
            set_activation_checkpointing(model, ckpt)
            times[ckpt].append(step_s(model, x))
    plain, ckpt = statistics.median(times[False]), statistics.median(times[True])
    print(f"peak MiB: plain {peaks[False]:.1f}, checkpointed {peaks[True]:.1f}")
    print(f"step s:   plain {plain:.2f}, checkpointed {ckpt:.2f} (x{ckpt / plain:.2f})")


if __name__ == "__main__":
    main()
