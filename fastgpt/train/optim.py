"""Optimizers and the learning-rate schedule.

- AdamW over the model's parameter groups (decay on hidden matrices and an untied head; none on
  embeddings, norms, biases), the fused kernel on CPU and CUDA.
- Muon for the hidden 2-D matrices: SGD momentum (Nesterov) whose update is replaced by the nearest
  semi-orthogonal matrix, computed with a Newton–Schulz iteration, so every singular direction of the
  update moves at a similar rate; embeddings, the output head, norms and biases keep AdamW inside the
  same optimizer object (one ``state_dict``, one thing for DeepSpeed, the loss scaler and the schedule).
  Written from the published description (K. Jordan et al., 2024, "Muon: an optimizer for hidden
  layers in neural networks").
- Muon under DeepSpeed ZeRO 1-3 (:func:`shard_muon_for_zero`): ZeRO hands the optimizer flat slices of
  the parameters, while Newton–Schulz needs whole matrices. The momentum is elementwise, so it stays
  sharded; the Nesterov update is all-gathered, each rank orthogonalises the matrices it owns and keeps
  its slice of the result, so the step equals the single-process one (same clipping, same dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch.optim.adamw import adamw as adamw_update

from fastgpt.errors import UserError
from fastgpt.train.config import LoopConfig


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
            if p.ndim == 1:  # a ZeRO partition (see shard_muon_for_zero)
                self._sharded_muon_step(group, p)
                continue
            if p.grad is None:
                continue
            update = muon_update_of(self._momentum(group, p), self.ns_dtype)
            if group["weight_decay"]:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"])

    def _momentum(self, group: dict[str, Any], p: torch.Tensor) -> torch.Tensor:
        """The direction Muon orthogonalizes for ``p``: Nesterov momentum of ``p.grad`` (the state's EMA
        buffer of gradients is updated in place), elementwise, so a flat ZeRO partition gets exactly the
        values its elements would get in the whole matrix."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - group["momentum"])  # EMA of gradients
        return p.grad.lerp(buf, group["momentum"])  # Nesterov: look one momentum step ahead

    def _sharded_muon_step(self, group: dict[str, Any], p: torch.Tensor) -> None:
        """The Muon step of one flat ZeRO partition ``p``: the same arithmetic as :meth:`_muon_step`
        on every element this rank owns. ``p.grad`` is already averaged over ranks and clipped by
        ZeRO with the global norm, as the single-process loop clips before ``step``."""
        layout = getattr(self, "_zero_layouts", {}).get(id(p))
        if layout is None:
            raise RuntimeError(
                "Muon got a flat ZeRO partition it has no layout for: call "
                "fastgpt.train.optim.shard_muon_for_zero(engine.optimizer) after deepspeed.initialize"
            )
        if p.grad is None:
            return
        update = layout.orthogonalize(self._momentum(group, p), self.ns_dtype)
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-group["lr"])

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


def muon_update_of(update: torch.Tensor, ns_dtype: torch.dtype) -> torch.Tensor:
    """The orthogonalised update of one whole matrix, scaled by ``sqrt(max(1, rows/cols))`` so a tall
    matrix's update does not shrink per element with its aspect ratio."""
    scale = max(1.0, update.shape[0] / update.shape[1]) ** 0.5
    return newton_schulz_orthogonalize(update, dtype=ns_dtype) * scale


def _gather(flat: torch.Tensor, group: Any, world: int) -> torch.Tensor:
    """``(world, numel)``: every rank's equally long ``flat``, in rank order."""
    out = torch.empty(world * flat.numel(), dtype=flat.dtype, device=flat.device)
    if world == 1:
        out.copy_(flat)
    else:
        gather = getattr(torch_dist, "all_gather_single", None) or torch_dist.all_gather_into_tensor
        gather(out, flat.contiguous(), group=group)
    return out.view(world, flat.numel())


@dataclass
class _Matrix:
    shape: tuple[int, int]
    offset: int  # ZeRO-1/2: start in the group's flat buffer; ZeRO-3: start in each rank's partition
    partition: int = 0  # ZeRO-3: elements of the matrix per rank (the last rank's share is padded)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class ZeroMuonLayout:
    """Where the whole matrices of one Muon group sit in a rank's flat ZeRO partition.

    ``contiguous`` (ZeRO-1/2): the group is one flat buffer of ``world x numel`` elements, matrix ``i``
    at ``[offset, offset + numel)``, rank ``r`` holding ``[r x numel, (r+1) x numel)``; every rank
    orthogonalises the matrices that overlap its range (boundary matrices on both neighbours), and
    nothing more is exchanged. Otherwise (ZeRO-3) every rank holds a ``partition``-element slice of
    every matrix, at ``offset`` in its flat buffer: the matrices are dealt out to ranks (largest first,
    to the least loaded), each rank orthogonalises its own, and a second all-gather returns the
    results, of which each rank keeps its slices."""

    matrices: list[_Matrix]
    numel: int  # elements of this rank's partition
    rank: int
    world: int
    group: Any
    contiguous: bool

    def orthogonalize(self, update: torch.Tensor, ns_dtype: torch.dtype) -> torch.Tensor:
        gathered = _gather(update, self.group, self.world)
        out = torch.zeros_like(update)
        if self.contiguous:
            full, lo_rank = gathered.view(-1), self.rank * self.numel
            for m in self.matrices:
                lo, hi = max(m.offset, lo_rank), min(m.offset + m.numel, lo_rank + self.numel)
                if lo >= hi:
                    continue
                whole = full[m.offset : m.offset + m.numel].view(m.shape)
                ortho = muon_update_of(whole, ns_dtype).reshape(-1)
                out[lo - lo_rank : hi - lo_rank] = ortho[lo - m.offset : hi - m.offset]
            return out
        load = [0] * self.world
        owners = [0] * len(self.matrices)
        for i in sorted(range(len(self.matrices)), key=lambda i: -self.matrices[i].numel):
            r = min(range(self.world), key=lambda k: (load[k], k))
            owners[i], load[r] = r, load[r] + self.matrices[i].numel
        slots, filled = [0] * len(self.matrices), [0] * self.world
        for i, m in enumerate(self.matrices):
            slots[i], filled[owners[i]] = filled[owners[i]], filled[owners[i]] + m.numel
        send = torch.zeros(max(load), dtype=update.dtype, device=update.device)
        for i, m in enumerate(self.matrices):
            if owners[i] != self.rank:
                continue
            whole = gathered[:, m.offset : m.offset + m.partition].reshape(-1)[: m.numel].view(m.shape)
            send[slots[i] : slots[i] + m.numel] = muon_update_of(whole, ns_dtype).reshape(-1)
        results = _gather(send, self.group, self.world)
        for i, m in enumerate(self.matrices):
            start = self.rank * m.partition
            n = min(m.partition, m.numel - start)
            if n > 0:
                src = results[owners[i], slots[i] + start : slots[i] + start + n]
                out[m.offset : m.offset + n] = src
        return out


def shard_muon_for_zero(zero_optimizer: Any) -> bool:
    """Teach the :class:`Muon` inside a DeepSpeed ZeRO optimizer (stage 1, 2 or 3) where the whole
    matrices of its flat partitions are (:class:`ZeroMuonLayout`). Returns False when the wrapped
    optimizer is not Muon or ZeRO is not in use (stage 0 hands Muon whole matrices). Reads DeepSpeed's
    partition bookkeeping (``round_robin_bit16_offsets``/``partition_size`` for stages 1-2,
    ``fp16_groups``/``fp32_partitioned_groups_flat`` for stage 3) and checks it against the
    partition sizes, so a DeepSpeed that lays partitions out differently fails here, not silently."""
    muon = getattr(zero_optimizer, "optimizer", None)
    if not isinstance(muon, Muon):
        return False
    layouts: dict[int, ZeroMuonLayout] = {}
    if hasattr(zero_optimizer, "round_robin_bit16_offsets"):  # ZeRO-1/2
        if getattr(zero_optimizer, "cpu_offload", False):
            raise UserError("Muon under ZeRO does not support --offload=true")
        for i, group in enumerate(muon.param_groups):
            if not group["use_muon"]:
                continue
            flat = zero_optimizer.single_partition_of_fp32_groups[i]
            pg = zero_optimizer.real_dp_process_group[i]
            world, rank = torch_dist.get_world_size(pg), torch_dist.get_rank(pg)
            metas = zero_optimizer.round_robin_bit16_meta[i]
            offsets = zero_optimizer.round_robin_bit16_offsets[i]
            size = int(zero_optimizer.partition_size[i])
            if flat.numel() != size or offsets[-1] + metas[-1].numel() > size * world:
                raise RuntimeError("Muon under ZeRO-1/2: unexpected DeepSpeed partition layout")
            matrices = [_Matrix(tuple(m.shape), int(o)) for m, o in zip(metas, offsets)]
            layouts[id(flat)] = ZeroMuonLayout(matrices, size, rank, world, pg, contiguous=True)
    elif hasattr(zero_optimizer, "fp32_partitioned_groups_flat"):  # ZeRO-3
        z = zero_optimizer
        if getattr(z, "offload_optimizer", False) or getattr(z, "offload_param", False):
            raise UserError("Muon under ZeRO does not support --offload=true")
        for sid, params in enumerate(zero_optimizer.fp16_groups):
            if not muon.param_groups[zero_optimizer.sub_group_to_group_id[sid]]["use_muon"]:
                continue
            flat = zero_optimizer.fp32_partitioned_groups_flat[sid]
            pg = zero_optimizer.sub_group_process_groups[sid]
            world, rank = torch_dist.get_world_size(pg), torch_dist.get_rank(pg)
            matrices, offset = [], 0
            for q in params:
                part = int(q.partition_numel())
                if part * world < q.ds_numel or len(q.ds_shape) != 2:
                    raise RuntimeError("Muon under ZeRO-3: unexpected DeepSpeed partition layout")
                matrices.append(_Matrix(tuple(q.ds_shape), offset, part))
                offset += part
            if offset != flat.numel():
                raise RuntimeError("Muon under ZeRO-3: unexpected DeepSpeed partition layout")
            layouts[id(flat)] = ZeroMuonLayout(matrices, offset, rank, world, pg, contiguous=False)
    else:
        return False
    muon._zero_layouts = layouts
    return True


def build_optimizer(
    model: torch.nn.Module, cfg: LoopConfig, *, ns_dtype: torch.dtype = torch.float32
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
    if cfg.resolved_optimizer() == "adamw":
        for g in groups:
            g["base_lr"] = cfg.lr
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused, **adam)
    for g in groups:
        if g["kind"] == "matrix":
            g.update(use_muon=True, lr=cfg.muon_lr, base_lr=cfg.muon_lr, momentum=cfg.muon_momentum)
        else:
            g.update(use_muon=False, lr=cfg.lr, base_lr=cfg.lr, **adam)
    return Muon(groups, ns_dtype=ns_dtype, fused=fused)


def lr_multiplier(cfg: LoopConfig, step: int, progress: float) -> float:
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
