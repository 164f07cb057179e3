"""Optimizers and the learning-rate schedule.

- AdamW over the model's parameter groups (decay only on matrices; fused kernel where the device has
  one).
- Muon for hidden 2-D matrices: SGD momentum whose update is replaced by the nearest semi-orthogonal
  matrix (computed with a Newton–Schulz iteration), so every direction of the update moves at a similar
  rate; embeddings, the output head, norms and biases keep AdamW. Written from the published
  description (Jordan et al., 2024).
"""

from __future__ import annotations

import math

import torch

from fastgpt.train.config import TrainConfig


def newton_schulz_orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately ``U V^T`` for ``g = U S V^T``: a quintic Newton–Schulz iteration whose
    coefficients push singular values towards 1 quickly (they land in roughly [0.7, 1.2], which is
    what matters for the update direction). Runs in bf16 on GPU, fp32 on CPU."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # iterate on the wide orientation: X X^T is the smaller Gram matrix
        x = x.t()
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.t()
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.t()
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum + orthogonalised updates for 2-D weight matrices (see the module docstring)."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon only handles 2-D matrices, got a parameter of shape {tuple(p.shape)}"
                    )
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"])  # Nesterov
                update = newton_schulz_orthogonalize(update)
                # rectangular matrices: scale so the update's RMS does not depend on the aspect ratio
                scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


class CombinedOptimizer:
    """Several optimizers stepped together, exposing one ``param_groups`` list so the LR schedule,
    checkpointing and ``zero_grad`` treat them as one."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.param_groups = [g for opt in optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for opt, sd in zip(self.optimizers, state_dict["optimizers"]):
            opt.load_state_dict(sd)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer | CombinedOptimizer:
    """AdamW over ``model.param_groups`` or, for ``optimizer=muon``, Muon on the ``matrix`` group and
    AdamW on the rest. Every group records its ``base_lr`` for the schedule.

    AdamW is the fused kernel (one pass over each tensor) on CPU and CUDA: on CPU it is >10x faster
    than the multi-tensor ``foreach`` path, on GPU it saves launches."""
    groups = model.param_groups(cfg.weight_decay)
    device_type = next(model.parameters()).device.type
    adam_kwargs = dict(betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=device_type in ("cpu", "cuda"))
    if cfg.optimizer == "adamw":
        for g in groups:
            g["base_lr"] = cfg.lr
        return torch.optim.AdamW(groups, lr=cfg.lr, **adam_kwargs)
    matrix = [g for g in groups if g["kind"] == "matrix"]
    rest = [g for g in groups if g["kind"] != "matrix"]
    for g in matrix:
        g["base_lr"] = cfg.muon_lr
    for g in rest:
        g["base_lr"] = cfg.lr
    opts: list[torch.optim.Optimizer] = []
    if rest:
        opts.append(torch.optim.AdamW(rest, lr=cfg.lr, **adam_kwargs))
    if matrix:
        opts.append(Muon(matrix, lr=cfg.muon_lr, momentum=cfg.muon_momentum))
    return CombinedOptimizer(opts)


def lr_multiplier(cfg: TrainConfig, step: int, progress: float) -> float:
    """Multiplier of each group's ``base_lr`` at optimizer step ``step`` (0-based) with ``progress``
    in [0, 1] of the run: linear warmup over ``warmup_steps``, then cosine to ``min_lr``,
    warmup-stable-decay (constant, then linear decay over the last ``wsd_decay_frac``), or constant."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        start = 1.0 - cfg.wsd_decay_frac
        if progress <= start:
            return 1.0
        return 1.0 - (1.0 - floor) * (progress - start) / max(cfg.wsd_decay_frac, 1e-9)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
