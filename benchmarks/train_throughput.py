"""Training throughput: tokens/s and MFU of one full training step (forward + backward + clip + optimizer)
of fastgpt, next to transformers on the same weights, in the same process.

    python benchmarks/train_throughput.py --dtype bf16 --compile true      # the CPU bench config
    python benchmarks/train_throughput.py --configs cpu-bench tiny --hf_dtypes bf16
    python benchmarks/train_throughput.py --configs gpt2 llama-1b --batch 8 --seq 1024   # on a GPU

``cpu-bench`` is vocab 8192, d_model 384, 6 layers, 6 heads, seq 256, batch 8 (llama family); any other
name is a fastgpt preset (``--seq``/``--batch`` apply to presets; default seq = min(preset, 1024)).

How it is measured, so the numbers mean something:

- One fastgpt model is initialised, saved in the Hugging Face layout and loaded by transformers
  (``LlamaForCausalLM`` / ``GPT2LMHeadModel``): every implementation trains identical weights. Their
  fp32 losses on the same batch must agree to 1e-4, and their first training-step losses (each in its
  own precision) to bf16 noise (2e-2 relative), or the run stops.
- fastgpt's step is the training loop's own (:meth:`fastgpt.train.trainer.Trainer.train_step`: the
  summed-loss normalisation, clipping, AdamW, LR schedule) with ``--dtype`` autocast and ``--compile``.
  The transformers step is the usual one: ``model(ids).logits`` -> ``F.cross_entropy`` (mean), backward,
  ``clip_grad_norm_``, ``torch.optim.AdamW`` (fused, as fastgpt's: the comparison is about the model,
  not the optimizer kernel), once per ``--hf_dtypes`` entry: ``fp32`` is transformers as it comes,
  ``bf16`` the same under bf16 autocast (same precision as fastgpt's bf16 runs); ``--hf_compile``
  compiles it.
- Steps alternate between the implementations so that load changes on a shared machine hit all alike;
  after ``--warmup`` steps each (compilation happens there), the median of ``--steps`` timed steps is
  reported. ``fastgpt_speedup`` = fastgpt's tokens/s over the row's.
- MFU = model FLOPs/token (``GPT.flops_per_token``: 6N + attention) x tokens/s / peak. The peak is the
  datasheet dense number for fastgpt's dtype on A100/H100/H200, and on a CPU the threads in use x one
  thread's matmul rate in fastgpt's dtype timed in CPU time (``fastgpt.train.metrics.peak_flops``) — an
  achievable peak, not a datasheet one (so fp32 rows are measured against the bf16 peak when fastgpt
  runs bf16).

One CSV row per (config, implementation) goes to stdout, or to ``--csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Run as ``python benchmarks/<script>.py``, this folder is first on sys.path, and its kernels.py (the
# kernel benchmark) would shadow Hugging Face's ``kernels`` package, which transformers imports when
# installed ("cannot import name 'CUDAProperties' from 'kernels'"). Nothing here imports a sibling.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

CPU_BENCH = dict(family="llama", vocab_size=8192, n_layer=6, n_head=6, n_embd=384, max_seq_len=256)
CPU_BENCH_SHAPE = (8, 256)  # (batch, seq)


@dataclass
class Row:
    config: str
    impl: str
    dtype: str
    compiled: bool
    batch: int
    seq: int
    params_m: float
    step_s: float
    tokens_per_sec: float
    mfu: float
    loss_first: float
    fastgpt_speedup: float = float("nan")  # fastgpt's tokens/s over this row's


def _bool(v: str) -> bool:
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def build_config(name: str, seq: int | None):
    from fastgpt.model import PRESETS, GPTConfig

    if name == "cpu-bench":
        return GPTConfig(**CPU_BENCH), CPU_BENCH_SHAPE[1]
    if name not in PRESETS:
        raise SystemExit(f"unknown config {name!r}: cpu-bench or one of {', '.join(PRESETS)}")
    cfg = GPTConfig.from_preset(name)
    seq = seq or min(cfg.max_seq_len, 1024)
    return cfg, seq


class RandomTokens:
    """A stage for the loop: the same fixed batch every micro-step (throughput does not depend on it)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        self.batch = (inputs, targets)

    def next_batch(self):
        return self.batch

    def count_targets(self, batch) -> int:
        return batch[1].numel()

    def loss(self, model, batch):
        return model(batch[0], batch[1], loss_reduction="sum")


def hf_model(fastgpt_model, device: torch.device):
    """transformers' model class for the family, loaded from fastgpt's HF-layout save."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    cls = LlamaForCausalLM if fastgpt_model.config.family == "llama" else GPT2LMHeadModel
    with tempfile.TemporaryDirectory() as d:
        fastgpt_model.save_pretrained(d)
        model = cls.from_pretrained(d, attn_implementation="sdpa", dtype=torch.float32)
    return model.to(device).train()


def hf_loss(model, inputs, targets):
    logits = model(input_ids=inputs).logits  # (B, T, V)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def hf_stepper(reference, inputs, targets, device: torch.device, dtype: torch.dtype, compile_: bool):
    """transformers' usual training step: autocast (unless fp32) forward, mean CE, backward, clip, AdamW."""
    forward = torch.compile(reference) if compile_ else reference
    opt = torch.optim.AdamW(
        reference.parameters(),
        lr=3e-4,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        fused=device.type in ("cpu", "cuda"),
    )

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = hf_loss(forward, inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def bench_config(name: str, args, device: torch.device, peak: float) -> list[Row]:
    from fastgpt.model import GPT
    from fastgpt.train.config import TrainConfig
    from fastgpt.train.trainer import Trainer

    gcfg, seq = build_config(name, args.seq)
    batch = args.batch or (CPU_BENCH_SHAPE[0] if name == "cpu-bench" else 8)
    gcfg.max_seq_len = max(gcfg.max_seq_len, seq)
    torch.manual_seed(0)
    model = GPT(gcfg).to(device)
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, gcfg.vocab_size, (batch, seq), generator=g).to(device)
    targets = torch.randint(0, gcfg.vocab_size, (batch, seq), generator=g).to(device)
    references = {
        f"transformers-{d}": hf_model(model, device) for d in (args.hf_dtypes if args.reference else [])
    }

    # identical weights and loss definition, checked in fp32 before any step
    with torch.no_grad():
        ours = float(model(inputs, targets))
        for impl, ref in references.items():
            theirs = float(hf_loss(ref, inputs, targets))
            if abs(ours - theirs) > 1e-4:
                raise SystemExit(f"{name}: fp32 losses differ: fastgpt {ours:.6f} vs {impl} {theirs:.6f}")

    with tempfile.TemporaryDirectory() as out_dir:
        tcfg = TrainConfig(
            out_dir=out_dir,
            max_steps=10**9,
            batch_size=batch,
            seq_len=seq,
            lr=3e-4,
            min_lr=3e-4,
            warmup_steps=0,
            schedule="constant",
            weight_decay=0.1,
            grad_clip=1.0,
            dtype=args.dtype,
            compile=args.compile,
            device=device.type,
            eval_every=0,
            progress=False,
            wandb=False,
        )
        trainer = Trainer(tcfg, model)
        stage = RandomTokens(inputs, targets)
        steppers = {"fastgpt": lambda: trainer.train_step(stage, [stage.next_batch()])["loss"]}
        dtypes = {"fastgpt": trainer.autocast_dtype}
        for impl, ref in references.items():
            dtypes[impl] = _dtype(impl.split("-")[1])
            steppers[impl] = hf_stepper(ref, inputs, targets, device, dtypes[impl], args.hf_compile)

        def timed(fn) -> tuple[float, float]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0, loss

        times: dict[str, list[float]] = {impl: [] for impl in steppers}
        first: dict[str, float] = {}
        for i in range(args.warmup + args.steps):
            for impl, fn in steppers.items():  # alternate: load changes hit every implementation alike
                dt, loss = timed(fn)
                first.setdefault(impl, loss)
                if not math.isfinite(loss):
                    raise SystemExit(f"{name}/{impl}: non-finite loss at step {i}")
                if i >= args.warmup:
                    times[impl].append(dt)
        for impl in references:  # first step: same weights, same batch; differences are precision only
            if abs(first["fastgpt"] - first[impl]) > 2e-2 * abs(first[impl]):
                raise SystemExit(
                    f"{name}: first-step losses differ beyond bf16 noise: fastgpt {first['fastgpt']:.5f} vs "
                    f"{impl} {first[impl]:.5f}"
                )

    flops = model.flops_per_token(seq)
    ours_tok_s = batch * seq / statistics.median(times["fastgpt"])
    rows = []
    for impl, ts in times.items():
        step_s = statistics.median(ts)
        tok_s = batch * seq / step_s
        rows.append(
            Row(
                name,
                impl,
                str(dtypes[impl]).replace("torch.", ""),
                args.compile if impl == "fastgpt" else args.hf_compile,
                batch,
                seq,
                round(model.num_params() / 1e6, 2),
                round(step_s, 4),
                round(tok_s, 1),
                round(flops * tok_s / peak, 4) if peak == peak else float("nan"),
                round(first[impl], 5),
                round(ours_tok_s / tok_s, 3),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["cpu-bench"])
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (presets only)")
    p.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 | fp16 (autocast; weights stay fp32)")
    p.add_argument("--compile", type=_bool, default=False, help="torch.compile fastgpt's model")
    p.add_argument("--hf_compile", type=_bool, default=False, help="torch.compile the transformers model")
    p.add_argument(
        "--hf_dtypes",
        nargs="+",
        default=["fp32", "bf16"],
        choices=["fp32", "bf16", "fp16"],
        help="transformers runs: fp32 (its default) and/or autocast dtypes",
    )
    p.add_argument("--reference", type=_bool, default=True, help="run transformers next to fastgpt")
    p.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: all cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)

    from fastgpt.train.metrics import peak_flops
    from fastgpt.train.trainer import resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    peak = peak_flops(device, resolve_dtype(args.dtype, device))
    print(
        f"# device {device}, {torch.get_num_threads()} threads, peak {peak / 1e12:.3f} TFLOP/s "
        f"({'datasheet' if device.type == 'cuda' else 'measured matmul'})",
        file=sys.stderr,
    )

    rows = [row for name in args.configs for row in bench_config(name, args, device, peak)]
    out = open(args.csv, "w", newline="") if args.csv else sys.stdout
    writer = csv.DictWriter(out, fieldnames=list(Row.__dataclass_fields__))
    writer.writeheader()
    for row in rows:
        writer.writerow(row.__dict__)
    if args.csv:
        out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
