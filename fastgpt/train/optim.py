"""Optimizers and the learning-rate schedule.

- AdamW over the model's parameter groups (decay on hidden matrices and an untied head; none on
  embeddings, norms, biases), the fused kernel on CPU and CUDA.
- Muon for the hidden 2-D matrices: SGD momentum (Nesterov) whose update is replaced by the nearest
  semi-orthogonal matrix, computed with a Newton–Schulz iteration, so every singular direction of the
  update moves at a similar rate; embeddings, the output head, norms and biases keep AdamW inside the
  same optimizer object (one ``state_dict``, one thing for DeepSpeed, the loss scaler and the schedule).
  Written from the published description (K. Jordan et al., 2024, "Muon: an optimizer for hidden
  layers in neural networks").
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.adamw import adamw as adamw_update

from fastgpt.train.config import TrainConfig


def newton_schulz_orthogonalize(
    g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Approximately ``U V^T`` for ``g = U S V^T`` (``g`` 2-D), computed in ``dtype``.

    A quintic iteration ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, started from ``g`` scaled to
    spectral norm <= 1. Its coefficients are chosen for speed, not exactness: five steps map every
    singular value into roughly [0.7, 1.2], which is all the update direction needs."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # iterate on the wide orientation: X X^T is then the smaller Gram matrix
        x = x.t()
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm
    for _ in range(steps):
        gram = x @ x.t()
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.t()
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for groups with ``use_muon=True`` (2-D matrices), AdamW for the others.

    Muon group keys: ``lr``, ``momentum``, ``weight_decay``. AdamW group keys: ``lr``, ``betas``,
    ``eps``, ``weight_decay``. ``ns_dtype`` is the Newton–Schulz dtype (bf16 is 2-3x faster where the
    hardware has it; the loop passes its autocast dtype)."""

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        *,
        ns_dtype: torch.dtype = torch.float32,
        fused: bool | None = None,
    ):
        defaults = dict(lr=0.02, momentum=0.95, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8, use_muon=True)
        super().__init__(param_groups, defaults)
        self.ns_dtype, self.fused = ns_dtype, fused
        for group in self.param_groups:
            if group["use_muon"]:
                for p in group["params"]:
                    if p.ndim != 2:
                        raise ValueError(
                            f"Muon only handles 2-D matrices, got a parameter of shape {tuple(p.shape)}"
                        )

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)

    def _muon_step(self, group: dict[str, Any]) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - group["momentum"])  # EMA of gradients
            update = p.grad.lerp(buf, group["momentum"])  # Nesterov: look one momentum step ahead
            update = newton_schulz_orthogonalize(update, dtype=self.ns_dtype)
            # tall matrices: scale so the update's RMS per element does not shrink with the aspect ratio
            scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"] * scale)

    def _adamw_step(self, group: dict[str, Any]) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adamw_update(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            fused=self.fused,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, *, ns_dtype: torch.dtype = torch.float32
) -> torch.optim.Optimizer:
    """AdamW over ``model.param_groups`` or, for ``optimizer=muon``, one :class:`Muon` with the
    ``matrix`` groups on Muon (``muon_lr``) and the rest on AdamW (``lr``). Every group records its
    ``base_lr`` for the schedule.

    AdamW is the fused kernel (one pass over each tensor) on CPU and CUDA: on CPU it is >10x faster
    than the multi-tensor ``foreach`` path, on GPU it saves launches."""
    groups = model.param_groups(cfg.weight_decay)
    device_type = next(model.parameters()).device.type
    fused = device_type in ("cpu", "cuda")
    adam = dict(betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    if cfg.optimizer == "adamw":
        for g in groups:
            g["base_lr"] = cfg.lr
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused, **adam)
    for g in groups:
        if g["kind"] == "matrix":
            g.update(use_muon=True, lr=cfg.muon_lr, base_lr=cfg.muon_lr, momentum=cfg.muon_momentum)
        else:
            g.update(use_muon=False, lr=cfg.lr, base_lr=cfg.lr, **adam)
    return Muon(groups, ns_dtype=ns_dtype, fused=fused)


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
