"""Fused linear cross-entropy (Triton path, interpreter) with a DeepSpeed ZeRO-3 partitioned weight.

Two CPU ranks (gloo) run DeepSpeed ZeRO-3 over a small head. The LM-head weight is used two ways:
``external`` - read by the parent module's forward (a GPT's LM head or tied embedding: DeepSpeed gathers
it when the attribute is read) - and ``own`` - read inside its own module's forward (gathered by the
module hooks). For ``mean`` (gradients computed in the forward) and ``none`` (the backward recomputes
with the weight, which DeepSpeed's backward hooks gather again) the per-rank loss must equal the
single-process reference and DeepSpeed's averaged full gradients the average of the per-rank reference
gradients (fp32: 1e-5). Finally the op gets a still-partitioned weight (taken from named_parameters()
outside any forward) and must gather it itself, give the reference loss and leave it partitioned.
"""

import json
import os
import subprocess
import textwrap

import pytest
from train_support import torchrun

WORKER = textwrap.dedent(
    """
    import json, os
    import torch
    import torch.nn as nn
    import deepspeed
    from deepspeed.utils import safe_get_full_grad
    import fastgpt.kernels.cross_entropy as ce
    from fastgpt.kernels.cross_entropy import linear_cross_entropy_reference, linear_cross_entropy_triton

    seen = []  # the weight's ZeRO status each time the op asks for it whole (forward, and backward for none)
    _gathered = ce._gathered
    ce._gathered = lambda w: (seen.append(str(getattr(w, "ds_status", None))), _gathered(w))[1]

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    C, V, N = 16, 300, 12


    class LossHead(nn.Module):
        # the loss inside the module that owns the weight: DeepSpeed has gathered it
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(V, C) * 0.3)

        def forward(self, x, t, reduction, fn):
            self.status = getattr(self.weight, "ds_status", None)
            return fn(x, self.weight, t, reduction=reduction)


    class Model(nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind
            self.proj = nn.Linear(C, C)
            self.head = LossHead()

        def forward(self, h, t, reduction, fn):
            x = self.proj(h)
            if self.kind == "own":
                loss, self.status = self.head(x, t, reduction, fn), self.head.status
            else:  # the weight read outside its module's forward: not gathered by DeepSpeed's hooks
                self.status = getattr(self.head.weight, "ds_status", None)
                loss = fn(x, self.head.weight, t, reduction=reduction)
            return loss if reduction != "none" else (loss * torch.linspace(0.5, 1.5, N)).sum() / N


    def fused(h, w, t, reduction):
        return linear_cross_entropy_triton(h, w, t, reduction=reduction, chunk_rows=5)


    def batch(r):
        g = torch.Generator().manual_seed(100 + r)
        t = torch.randint(0, V, (N,), generator=g)
        t[3] = -100
        return torch.randn(N, C, generator=g), t


    torch.manual_seed(0)
    init = Model("own").state_dict()
    report = {}
    for kind in ("external", "own"):
        for reduction in ("mean", "none"):
            ref_grads, ref_losses = [], []
            for r in range(world):  # the reference: each rank's batch in one plain process
                ref = Model(kind)
                ref.load_state_dict(init)
                loss = ref(*batch(r), reduction, linear_cross_entropy_reference)
                loss.backward()
                ref_losses.append(loss.item())
                ref_grads.append({n: p.grad.clone() for n, p in ref.named_parameters()})
            model = Model(kind)
            model.load_state_dict(init)
            config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
                      "zero_allow_untested_optimizer": True}
            engine, *_ = deepspeed.initialize(
                model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), config=config
            )
            seen.clear()
            loss = engine(*batch(rank), reduction, fused)
            engine.backward(loss)
            errors = {"loss": abs(loss.item() - ref_losses[rank])}
            for name, p in model.named_parameters():
                expected = sum(g[name] for g in ref_grads) / world
                errors[name] = (safe_get_full_grad(p) - expected).abs().max().item()
            report[f"{kind}-{reduction}"] = {"errors": errors, "status": str(model.status), "seen": list(seen)}
            if kind == "own" and reduction == "mean":
                # A reference taken from named_parameters() outside any forward stays partitioned:
                # the op must gather it itself.
                weight = dict(model.named_parameters())["head.weight"]
                x = torch.randn(N, C)
                seen.clear()
                with torch.no_grad():
                    loss = fused(x, weight, batch(rank)[1], "mean").item()
                ref = Model(kind)
                ref.load_state_dict(init)
                expected = linear_cross_entropy_reference(x, ref.head.weight, batch(rank)[1]).item()
                report["outside-forward"] = {
                    "errors": {"loss": abs(loss - expected)}, "status": seen[0], "seen": list(seen),
                    "after": str(weight.ds_status), "numel_after": weight.numel(),
                }
    if rank == 0:
        print("REPORT " + json.dumps(report), flush=True)
    # leave together and tear the process group down: a rank that exits with gloo's threads still
    # running can abort ("terminate called without an active exception") after the work is done
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    """
)


@pytest.mark.slow
@pytest.mark.multiproc
def test_linear_cross_entropy_with_zero3_partitioned_weight(tmp_path):
    script = tmp_path / "zero3_worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    cmd = torchrun(str(script))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(lines[0][len("REPORT ") :])
    assert set(report) == {"external-mean", "external-none", "own-mean", "own-none", "outside-forward"}
    for case, entry in report.items():
        for name, error in entry["errors"].items():
            assert error <= 1e-5, f"{case}: {name} differs by {error}"
    # Inside the engine's forward/backward DeepSpeed hands the op the whole weight (it gathers on access
    # and in its backward hooks); outside, the op gathers it and leaves it partitioned again.
    assert all(
        s == "ZeroParamStatus.AVAILABLE" for c in report if c != "outside-forward" for s in report[c]["seen"]
    )
    outside = report["outside-forward"]
    assert outside["status"] == "ZeroParamStatus.NOT_AVAILABLE"
    assert outside["after"] == "ZeroParamStatus.NOT_AVAILABLE" and outside["numel_after"] == 0
