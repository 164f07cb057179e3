"""The one training loop. Pretraining, SFT, the reward model and DPO differ in batches and loss only
and run :meth:`Trainer.fit`; GRPO and PPO write their own ``for`` loop (rollout -> reward -> advantages)
and hand each update to the same :meth:`Trainer.update`, so there is one optimizer step, one log, one
schedule, one eval/checkpoint cadence for all six stages::

    trainer.begin(stage)                       # resume, progress bar
    while not trainer.done():
        batches = ...                          # fit: grad_accum x stage.next_batch(); RL: from a rollout
        trainer.update(stage, batches, metrics=..., timings=...)
    last = trainer.end(stage)                  # final eval, final checkpoint

A *stage* is any object with:

- ``next_batch() -> batch`` — this rank's next micro-batch (a tuple or dict of tensors; only
  :meth:`Trainer.fit` calls it);
- ``loss(model, batch) -> Tensor | (Tensor, dict)`` — the SUM of per-target losses of the batch (the
  loop divides by the global number of targets of the whole step, so micro-batches and ranks with
  different token counts weigh each target equally), optionally with metrics as ``(sum, count)`` pairs:
  the loop adds up sums and counts over the step's micro-batches and all ranks, then divides (a plain
  number ``v`` counts as ``(v, 1)``: its mean over micro-batches and ranks);
- ``count_targets(batch) -> int`` (optional; default: ``targets != -100`` in ``batch["targets"]`` or
  ``batch[1]``);
- ``state_dict()`` / ``load_state_dict()`` — the data position, saved with checkpoints;
- ``evaluate(model) -> dict`` and ``samples(model) -> list`` (optional) — run every ``eval_every`` /
  ``sample_every`` steps and at the end, on every rank (ZeRO-3 forwards are collective).

The loop owns: the optimizer (AdamW or Muon+AdamW), the LR schedule, gradient accumulation, clipping,
autocast, ``torch.compile``, DeepSpeed (ZeRO 0–3, used whenever there are several processes or
``zero >= 1``), NaN/inf step skipping, checkpoints and resume, ``metrics.jsonl``/wandb and the
progress bar.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from fastgpt import checkpoint, dist
from fastgpt.errors import UserError
from fastgpt.model.gpt import set_activation_checkpointing
from fastgpt.train.config import LoopConfig
from fastgpt.train.metrics import MetricsLogger, peak_flops
from fastgpt.train.optim import Muon, build_optimizer, lr_multiplier, shard_muon_for_zero


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX on x86, BF16 on Arm). Without it
    oneDNN emulates bf16 and autocast only adds casts, so ``auto`` stays in fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:  # not Linux: no cheap, reliable probe; fp32 is the safe choice
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``--dtype``; ``auto``: bf16 on GPUs that have it (else fp16) and on CPUs
    with native bf16 matmuls, fp32 otherwise. Master weights and optimizer state stay fp32 either way."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32


def _targets(batch: Any) -> torch.Tensor:
    return batch["targets"] if isinstance(batch, dict) else batch[1]


def _inputs(batch: Any) -> torch.Tensor:
    return batch["inputs"] if isinstance(batch, dict) else batch[0]


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def default_deepspeed_config(zero: int, offload: bool) -> Path | None:
    """``launch/deepspeed/zero{N}[_offload].json`` of a source checkout, if present (``--zero`` and
    ``--offload`` select it; ``--deepspeed_config`` overrides)."""
    if zero == 0:
        return None
    path = (
        Path(__file__).resolve().parents[2]
        / "launch"
        / "deepspeed"
        / f"zero{zero}{'_offload' if offload else ''}.json"
    )
    return path if path.exists() else None


class NonFiniteLossError(RuntimeError):
    """``max_nonfinite_steps`` steps in a row had a NaN/inf loss or gradient: training cannot go on."""


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` (nothing for fp32). Stages that run forwards outside the
    loop's step (rollouts, reference log-probabilities) use it with the loop's dtype
    (:func:`resolve_dtype`)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    """Owns the model's optimisation state for one run (see the module docstring).

    ``micro_batch_size``, ``grad_accum`` and ``seq_len`` are the step's shape when the stage derives it
    (GRPO/PPO: rows of a rollout; DPO/reward: ``--max_len``; SFT: capped at the model's context); by
    default they come from ``cfg`` (``grad_accum`` from ``--total_batch_tokens`` when that is set). The
    resolved values are ``self.batch_size``, ``self.grad_accum``, ``self.seq_len`` (and in
    ``config.json``); ``cfg`` is never written.
    """

    def __init__(
        self,
        cfg: LoopConfig,
        model: torch.nn.Module,
        *,
        tokenizer: Any = None,
        stage_name: str = "pretrain",
        run_info: dict[str, Any] | None = None,
        micro_batch_size: int | None = None,
        grad_accum: int | None = None,
        seq_len: int | None = None,
    ):
        cfg.validate()
        self.cfg, self.tokenizer, self.stage_name = cfg, tokenizer, stage_name
        self.dist = dist.init_distributed(cfg.device)
        self.device = self.dist.device
        self.out_dir = Path(cfg.out_dir)
        self.autocast_dtype = resolve_dtype(cfg.dtype, self.device)
        torch.manual_seed(cfg.seed)

        # a config without a group's keys (FitConfig, TokenRowsConfig) gets the values from its stage
        self.batch_size = micro_batch_size or cfg.batch_size
        self.seq_len = seq_len or getattr(cfg, "seq_len", 0)
        self.grad_accum = grad_accum or getattr(cfg, "grad_accum", 1)
        per_step = self.batch_size * self.seq_len * self.dist.world_size
        total_batch_tokens = getattr(cfg, "total_batch_tokens", 0)
        if grad_accum is None and total_batch_tokens > 0:
            if total_batch_tokens % per_step != 0:
                raise UserError(
                    f"--total_batch_tokens={total_batch_tokens} is not a multiple of batch_size*seq_len*ranks"
                    f" = {per_step}"
                )
            self.grad_accum = total_batch_tokens // per_step

        self.use_deepspeed = cfg.zero >= 1 or self.dist.world_size > 1
        # fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not
        self.scaler = None
        if self.autocast_dtype == torch.float16:
            if self.use_deepspeed:
                raise UserError(
                    "--dtype=fp16 is not supported with DeepSpeed here; use --dtype=bf16 (or fp32)"
                )
            self.scaler = torch.amp.GradScaler(self.device.type)

        self.model = model.to(self.device)
        if cfg.activation_checkpointing and not set_activation_checkpointing(self.model):
            raise UserError("--activation_checkpointing=true: the model has no fastgpt GPT to checkpoint")
        self.optimizer = build_optimizer(self.model, cfg, ns_dtype=self.autocast_dtype)
        self.engine = None
        if self.use_deepspeed:
            self._init_deepspeed()
            if cfg.compile:
                self.engine.compile()
            self.forward_model: torch.nn.Module = self.engine
        else:
            self.forward_model = torch.compile(self.model) if cfg.compile else self.model

        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.flops_per_token = self.model.flops_per_token(self.seq_len)
        self.peak = peak_flops(self.device, self.autocast_dtype)

        def write_run_dir() -> None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(
                self.out_dir / "config.json",
                stage=stage_name,
                world_size=self.dist.world_size,
                grad_accum_resolved=self.grad_accum,
                batch_size_resolved=self.batch_size,
                seq_len_resolved=self.seq_len,
                model_config=self.model.config.to_dict(),
                **(run_info or {}),
            )

        dist.main_first(write_run_dir)
        self.metrics = MetricsLogger(
            self.out_dir,
            enabled=self.dist.is_main,
            wandb=cfg.wandb,
            project=cfg.wandb_project,
            run_config=cfg.to_dict(),
        )

    # --------------------------------------------------------------------------------------- setup
    def _init_deepspeed(self) -> None:
        ds = dist.require_deepspeed()
        cfg = self.cfg
        if cfg.zero == 3 and getattr(self.model, "lm_head", None) is None and hasattr(self.model, "wte"):
            # the tied output head reads wte.weight outside wte's own forward: tell ZeRO-3 to gather it
            ds.zero.register_external_parameter(self.model, self.model.wte.weight)
        ds_config = dist.deepspeed_config(
            cfg.zero,
            micro_batch_size=self.batch_size,
            grad_accum=self.grad_accum,
            world_size=self.dist.world_size,
            grad_clip=cfg.grad_clip,
            offload=cfg.offload,
            base_config=cfg.deepspeed_config or default_deepspeed_config(cfg.zero, cfg.offload),
            muon=isinstance(self.optimizer, Muon),
        )
        if not torch.distributed.is_initialized():  # one process with --zero>=1, started without torchrun
            dist.init_single_process_group(self.device)
        self.engine, self.optimizer, _, _ = ds.initialize(
            model=self.model, optimizer=self.optimizer, config=ds_config, dist_init_required=False
        )
        shard_muon_for_zero(self.optimizer)  # Muon under ZeRO 1-3: where its matrices' slices are

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_context(self.device, self.autocast_dtype)

    # ----------------------------------------------------------------------------------- one step
    def progress(self) -> float:
        """Fraction of the run done, for the LR schedule: by steps, or by time when only a budget is set."""
        if self.cfg.max_steps > 0:
            return self.step / self.cfg.max_steps
        return self.elapsed / self.cfg.time_budget()

    def _set_lr(self) -> float:
        mult = lr_multiplier(self.cfg, self.step, self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("base_lr", self.cfg.lr) * mult
        return mult * self.cfg.lr

    def train_step(self, stage: Any, batches: list[Any]) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches ``batches`` (``grad_accum`` of them), without
        the run's bookkeeping (:meth:`update` adds that). Returns the step's metrics: the loss averaged
        over every target of every rank, and the stage's ``(sum, count)`` metrics reduced over the
        micro-batches and ranks (see the module docstring).

        Normalisation: each micro-batch loss is a SUM over its targets; dividing by the number of targets
        of the whole step on all ranks (``n_global``) makes the gradient that of the mean over every
        target, however unevenly targets fall between micro-batches and ranks. The data-parallel
        all-reduce averages over ranks, hence the extra factor ``world_size``."""
        if len(batches) != self.grad_accum and self.engine is not None:
            raise ValueError(
                f"DeepSpeed expects {self.grad_accum} micro-batches per step, got {len(batches)}"
            )
        batches = [to_device(b, self.device) for b in batches]
        count = getattr(stage, "count_targets", None) or (lambda b: int((_targets(b) != -100).sum()))
        local = torch.tensor(
            [float(sum(int(count(b)) for b in batches)), float(sum(_inputs(b).numel() for b in batches))],
            dtype=torch.float64,
            device=self.device,
        )
        n_global, tokens_global = dist.all_reduce_sum(local).tolist()
        scale = self.dist.world_size / max(n_global, 1.0)
        lr = self._set_lr()

        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        pairs: dict[str, list[float]] = {}  # metric -> [sum, count] over this rank's micro-batches
        for i, batch in enumerate(batches):
            with self.autocast():
                out = stage.loss(self.forward_model, batch)
            loss, metrics = out if isinstance(out, tuple) else (out, {})
            for k, v in metrics.items():
                total, count = v if isinstance(v, tuple) else (v, 1.0)
                acc = pairs.setdefault(k, [0.0, 0.0])
                acc[0] += float(total)
                acc[1] += float(count)
            loss_sum += loss.detach().double()
            if self.engine is None:
                scaled = loss * scale
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                continue
            self.engine.backward(loss * (scale * self.grad_accum))  # DeepSpeed divides by grad_accum
            if i < len(batches) - 1:
                self.engine.step()  # a micro-step: DeepSpeed counts it and updates only at the boundary
        step_loss = float(dist.all_reduce_sum(loss_sum)) / max(n_global, 1.0)
        finite = math.isfinite(step_loss)

        if self.engine is not None:
            if not finite and self.cfg.zero == 0:
                # ZeRO 1-3 skip a step whose gradient norm is NaN/inf themselves; stage 0 hands the
                # gradients straight to the optimizer: zero them and the learning rate, so the weights
                # stay put (AdamW's moments only decay, as after a zero gradient).
                for p in self.model.parameters():
                    if p.grad is not None:
                        p.grad.zero_()
                for group in self.optimizer.param_groups:
                    group["lr"] = 0.0
            self.engine.step()
            applied = self.engine.was_step_applied()
            if finite and not applied:  # a finite loss whose gradient overflowed
                finite = False
            grad_norm = self.engine.get_global_grad_norm()
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        else:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
            if (
                self.scaler is not None
            ):  # an overflowing fp16 gradient is the scaler's to skip, not a bad step
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                finite = finite and math.isfinite(grad_norm)
                if finite:
                    self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        # the fused AdamW kernel (and DeepSpeed's gather of updated partitions into its flat buffers)
        # writes the weights without bumping their version counters; bump them, so what caches weights
        # by version (the engine's prepacked head and compute-dtype copy, which RL rollouts sample
        # from) sees every step, whichever path made it
        torch.autograd.graph.increment_version(list(self.model.parameters()))
        extra = self._reduce_pairs(pairs)

        if finite:
            self.nonfinite_in_row = 0
        else:
            self.nonfinite_in_row += 1
            self.nonfinite_total += 1
            self.print(f"step {self.step + 1}: non-finite loss or gradient ({step_loss}); update skipped")
            if self.nonfinite_in_row >= self.cfg.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"step {self.step + 1}: loss was NaN/inf for {self.nonfinite_in_row} steps in a row; stopping "
                    "(lower --lr, check the data, or use --dtype=fp32)"
                )
        self.step += 1
        self.tokens += int(tokens_global)
        return {
            "loss": step_loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "step_tokens": int(tokens_global),
            "skipped": int(not finite),
            **extra,
        }

    def _reduce_pairs(self, pairs: dict[str, list[float]]) -> dict[str, float]:
        """``{name: [sum, count]}`` of this rank -> ``{name: sum over ranks / count over ranks}`` (every
        rank reports the same keys; a metric with no count anywhere is 0)."""
        if not pairs:
            return {}
        keys = sorted(pairs)
        values = torch.tensor([pairs[k] for k in keys], dtype=torch.float64, device=self.device)
        if self.dist.distributed:
            values = dist.all_reduce_sum(values)
        return {k: (s / c if c else 0.0) for k, (s, c) in zip(keys, values.tolist())}

    # ---------------------------------------------------------------------------------- the loop
    def done(self) -> bool:
        if self.cfg.max_steps > 0 and self.step >= self.cfg.max_steps:
            return True
        return self.cfg.time_budget() > 0 and self.elapsed >= self.cfg.time_budget()

    def evaluate(self, stage: Any) -> dict[str, float]:
        if not hasattr(stage, "evaluate"):
            return {}
        self.model.eval()
        with torch.no_grad(), self.autocast():
            result = stage.evaluate(self.forward_model if self.engine is None else self.model)
        self.model.train()
        return result

    def samples(self, stage: Any) -> list[Any]:
        if not hasattr(stage, "samples"):
            return []
        self.model.eval()
        with torch.no_grad(), self.autocast():
            out = stage.samples(self.model)
        self.model.train()
        return out

    def begin(self, stage: Any) -> None:
        """Start (or resume) the run: restore the latest checkpoint (weights, optimizer, schedule position,
        the stage's ``state_dict``) and open the progress bar. Call once, before the first :meth:`update`."""
        cfg = self.cfg
        checkpoint.maybe_resume(self, stage)
        self._bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm  # deferred: tqdm, only with a progress bar

            total = cfg.max_steps if cfg.max_steps > 0 else int(cfg.time_budget())
            self._bar = tqdm(
                total=total,
                initial=self.step if cfg.max_steps > 0 else int(self.elapsed),
                unit="step" if cfg.max_steps > 0 else "s",
                dynamic_ncols=True,
                desc=self.stage_name,
            )
        self._last: dict[str, float] = {}
        self._window_tokens, self._window_time = 0, 0.0
        self._clock = time.perf_counter()

    def update(
        self,
        stage: Any,
        batches: list[Any],
        *,
        metrics: dict[str, float] | None = None,
        timings: dict[str, float] | None = None,
    ) -> dict[str, float]:
        """One step of the run: :meth:`train_step` on ``batches``, then the bookkeeping every stage shares —
        the run's clock, ``metrics.jsonl``/wandb every ``log_every`` steps, the progress bar, and the
        periodic evaluation, samples and checkpoint.

        ``metrics``: values already reduced over ranks that describe the data of this step (RL: the
        rollout's reward_mean, accuracy, ...), logged as given. ``timings``: wall seconds of the phases
        that produced ``batches`` (RL: ``time_rollout_s``, ``time_reward_s``, ``time_logprobs_s``, ...),
        logged beside ``time_update_s`` (this optimizer step) and shown in the progress bar.

        The clock (``elapsed_s``, the time budget, tokens/s) counts everything since the previous step
        ended -- data loading, a rollout -- but not evaluations, samples or checkpoint writes.
        """
        cfg = self.cfg
        t_update = time.perf_counter()
        m = self.train_step(stage, batches)
        now = time.perf_counter()
        dt = now - self._clock
        self.elapsed += dt
        self._window_tokens += m["step_tokens"]
        self._window_time += dt
        tok_s = self._window_tokens / max(self._window_time, 1e-9)
        # per device: this process's share of the tokens against this device's peak
        mfu = self.flops_per_token * tok_s / self.dist.world_size / self.peak
        split = {**(timings or {}), "time_update_s": now - t_update}
        last = {**m, **(metrics or {}), **split, "tokens_per_sec": tok_s, "mfu": mfu}
        self._last = last
        bar = self._bar
        if bar is not None:
            bar.update(1 if cfg.max_steps > 0 else int(self.elapsed) - bar.n)
            postfix = {"loss": f"{m['loss']:.3f}", "tok_s": f"{tok_s:,.0f}", "mfu": f"{100 * mfu:.1f}%"}
            if timings:  # where the step's time went: rollout, reward, logprobs, ..., update
                postfix.update({k[len("time_") : -len("_s")]: f"{v:.1f}s" for k, v in split.items()})
            bar.set_postfix(postfix)
        if self.step % cfg.log_every == 0 or self.step == 1 or self.done():
            self.metrics.log(
                {
                    "step": self.step,
                    "tokens": self.tokens,
                    **{k: v for k, v in last.items() if k != "step_tokens"},
                    "elapsed_s": self.elapsed,
                }
            )
            self._window_tokens, self._window_time = 0, 0.0
        if not self.done():
            if cfg.eval_every > 0 and self.step % cfg.eval_every == 0:
                self._log_eval(stage, bar)
            if getattr(cfg, "sample_every", 0) > 0 and self.step % cfg.sample_every == 0:
                self._log_samples(stage, bar)
            if cfg.save_every > 0 and self.step % cfg.save_every == 0:
                checkpoint.save_checkpoint(self, stage)
        self._clock = time.perf_counter()
        return last

    def end(self, stage: Any) -> dict[str, float]:
        """Finish the run: close the progress bar, evaluate, write the final checkpoint, close the logs.
        Returns the last step's metrics with the final evaluation."""
        if self._bar is not None:
            self._bar.close()
        last = dict(self._last)
        last.update(self._log_eval(stage, None))
        checkpoint.save_checkpoint(self, stage)
        self.metrics.close()
        return last

    def fit(self, stage: Any) -> dict[str, float]:
        """The supervised loop (pretraining, SFT, reward model, DPO): ``grad_accum`` x
        ``stage.next_batch()`` per step until ``max_steps`` / ``time_budget_s``. Returns the last metrics
        (with the final evaluation)."""
        self.begin(stage)
        while not self.done():
            self.update(stage, [stage.next_batch() for _ in range(self.grad_accum)])
        return self.end(stage)

    def _log_eval(self, stage: Any, bar: Any) -> dict[str, float]:
        result = self.evaluate(stage)
        if result:
            self.metrics.log({"step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed, **result})
            self.print(
                " ".join(f"{k}={v:.4f}" for k, v in result.items()), bar=bar, prefix=f"step {self.step}: "
            )
        return result

    def _log_samples(self, stage: Any, bar: Any) -> list[Any]:
        samples = self.samples(stage)
        if samples and self.dist.is_main:
            with open(self.out_dir / "samples.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, "samples": samples}) + "\n")
            for s in samples:
                self.print(str(s), bar=bar)
        return samples

    def print(self, text: str, *, bar: Any = None, prefix: str = "") -> None:
        if not self.dist.is_main:
            return
        if bar is not None:
            bar.write(prefix + text)
        else:
            print(prefix + text, flush=True)

    def close(self) -> None:
        """Release DeepSpeed's engine (ZeRO-3 hooks, optimizer buffers) before the process group goes:
        its teardown at interpreter exit, after the process group is gone, can abort the process."""
        if self.engine is not None:
            self.engine.destroy()
            self.engine = None

    # -------------------------------------------------------------------------------- model output
    def save_model(self, path: str | Path | None = None) -> Path:
        """Write the model in the one model format (HF layout + tokenizer files). Collective under ZeRO-3."""
        return checkpoint.export_model(self, Path(path) if path else self.out_dir / "model")
