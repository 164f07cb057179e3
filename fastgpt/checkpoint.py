"""Checkpoints: atomic save, exact resume, and export to the one model format.

Layout of ``out_dir/checkpoints/step_0000100/``::

    trainer.json        step, tokens, elapsed time, skipped steps, world size, ZeRO stage, model config
    stage.json          the stage's data position (loader state)
    rng_rank{r}.pt      python / numpy / torch (and CUDA) RNG states of every rank
    state.pt            model + optimizer (+ fp16 loss scaler) state (one process without DeepSpeed)
    deepspeed/          DeepSpeed's checkpoint (any ZeRO stage; optimizer state sharded per rank)
    model/              the model in HF layout with tokenizer files (ready for from_pretrained)
    COMPLETE            written last: only checkpoints that have it are resumed from

Why it survives a crash at any instant (SIGKILL, power loss): a checkpoint is written into
``.step_0000100.tmp``, its files are fsynced, ``COMPLETE`` is written, and only then is the directory
renamed into place (one atomic ``rename``). Old checkpoints beyond ``keep_last`` are first renamed to a
hidden ``.trash`` name, then deleted, so a half-deleted directory never looks like a checkpoint.
``out_dir/model/`` is refreshed with every checkpoint by renaming a complete copy into place.

Resume is exact (same losses, bit for bit on CPU fp32) when the world size and ZeRO stage are those of
the run that saved; the data position also carries over to other world sizes (the loader's global
batches do not depend on it), and DeepSpeed's universal checkpoints handle the optimizer state there
(see docs/pretraining.md). ``fastgpt export --ckpt DIR --out DIR`` consolidates a checkpoint from any
ZeRO stage into a model dir.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgpt import cli, dist
from fastgpt.errors import UserError, report_user_error
from fastgpt.model import GPT, GPTConfig
from fastgpt.train.optim import lr_multiplier

__all__ = [
    "CheckpointError",
    "export_checkpoint",
    "export_model",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "main",
    "maybe_resume",
    "save_checkpoint",
]

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be resumed from or exported (the message says which file and why)."""


def checkpoints_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (directories cut off while saving are not listed)."""
    root = checkpoints_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


# --------------------------------------------------------------------------------------------- RNG
def _rng_state() -> dict[str, Any]:
    """Every RNG a step may draw from, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------- file plumbing
def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk, then the directories: the rename that publishes a
    checkpoint must never reach the disk before its contents do."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_dir(path: Path) -> None:
    """Rename to a hidden name first (atomic), then delete: a kill mid-delete leaves only trash."""
    trash = path.with_name(f".{path.name}.trash")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _publish_model_dir(src: Path, out_dir: Path) -> None:
    """Make ``out_dir/model`` a complete copy of ``src`` (copy aside, then swap by renames)."""
    staged, current = out_dir / ".model.tmp", out_dir / "model"
    if staged.exists():
        shutil.rmtree(staged)
    shutil.copytree(src, staged)
    _fsync_tree(staged)
    if current.exists():
        _remove_dir(current)
    os.replace(staged, current)
    _fsync_dir(out_dir)


# -------------------------------------------------------------------------------------------- save
def export_model(trainer: Any, path: Path) -> Path:
    """The trainer's model in HF layout + tokenizer at ``path`` (collective under ZeRO-3: every rank
    must call it, rank 0 writes)."""
    model = trainer.model
    gathered: contextlib.AbstractContextManager = contextlib.nullcontext()
    if trainer.engine is not None and trainer.cfg.zero == 3:
        import deepspeed  # heavy, optional: deepspeed (multi-process and ZeRO runs only)

        gathered = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    with gathered:
        if trainer.dist.is_main:
            path.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(path)
            if trainer.tokenizer is not None:
                trainer.tokenizer.save(path)
    dist.barrier()
    return path


def _trainer_meta(trainer: Any) -> dict[str, Any]:
    return {
        "step": trainer.step,
        "tokens": trainer.tokens,
        "elapsed_s": trainer.elapsed,
        "nonfinite_total": trainer.nonfinite_total,
        "world_size": trainer.dist.world_size,
        "zero": trainer.cfg.zero if trainer.engine is not None else None,
        "model_config": trainer.model.config.to_dict(),
        "schedule": {k: getattr(trainer.cfg, k) for k in SCHEDULE_KEYS},
    }


# The config keys that shape the learning-rate schedule: resuming with other values is allowed (to extend
# a run, say) but changes the LR from the resumed step on, so the resume says so.
SCHEDULE_KEYS = ("max_steps", "time_budget_s", "schedule", "lr", "min_lr", "warmup_steps", "wsd_decay_frac")


def schedule_change_note(trainer: Any, saved: dict[str, Any]) -> str | None:
    """One line describing how this run's LR schedule differs from the checkpoint's at the resumed step
    (None when it does not): a longer ``max_steps`` re-stretches a cosine, so the LR jumps back up."""
    changed = {
        k: (saved[k], getattr(trainer.cfg, k))
        for k in SCHEDULE_KEYS
        if k in saved and saved[k] != getattr(trainer.cfg, k)
    }
    if not changed:
        return None

    def lr_at(cfg: Any) -> float:
        progress = (
            trainer.step / cfg.max_steps
            if cfg.max_steps > 0
            else trainer.elapsed / max(cfg.time_budget(), 1e-9)
        )
        return cfg.lr * lr_multiplier(cfg, trainer.step, progress)

    saved_cfg = replace(trainer.cfg, **{k: saved[k] for k in changed})
    what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
    now, before = lr_at(trainer.cfg), lr_at(saved_cfg)
    if math.isclose(now, before, rel_tol=1e-6):  # e.g. resumed inside the warmup
        effect = f"the LR at step {trainer.step} is the same ({now:.3g}); the steps after it follow the new schedule"
    else:
        effect = f"at step {trainer.step} the LR is {now:.3g}, the saved run's schedule had {before:.3g}"
    return f"note: the LR schedule differs from the checkpoint's ({what}): {effect}"


def save_checkpoint(trainer: Any, stage: Any) -> Path:
    """Write a complete checkpoint for ``trainer.step`` and refresh ``out_dir/model`` (all ranks call
    this). A step that already has a complete checkpoint is not written again."""
    info = trainer.dist
    root = checkpoints_root(trainer.out_dir)
    name = f"step_{trainer.step:07d}"
    final, tmp = root / name, root / f".{name}.tmp"
    if dist.broadcast_object((final / COMPLETE).exists()):
        return final
    if info.is_main:
        if tmp.exists():  # left by a run killed while saving this step
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    torch.save(_rng_state(), tmp / f"rng_rank{info.rank}.pt")
    if trainer.engine is not None:
        # the marker DeepSpeed's ds_to_universal wants before it converts a checkpoint to another world size
        universal = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.4}}
        trainer.engine.save_checkpoint(
            str(tmp / "deepspeed"), tag="state", save_latest=False, client_state=universal
        )
    elif info.is_main:
        state = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
        if getattr(trainer, "scaler", None) is not None:
            state["scaler"] = trainer.scaler.state_dict()
        torch.save(state, tmp / "state.pt")
    export_model(trainer, tmp / "model")
    if info.is_main:
        _write_json(tmp / "stage.json", stage.state_dict() if hasattr(stage, "state_dict") else {})
        _write_json(tmp / "trainer.json", _trainer_meta(trainer))
        _fsync_tree(tmp)
        (tmp / COMPLETE).write_text("ok\n")
        _fsync_tree(tmp)
        if final.exists():  # an incomplete dir of that name (never made by a crash here: copied or tampered)
            _remove_dir(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(trainer.out_dir)[: -max(trainer.cfg.keep_last, 1)]:
            _remove_dir(old)
        _publish_model_dir(final / "model", Path(trainer.out_dir))
    dist.barrier()
    return final


# ------------------------------------------------------------------------------------------ resume
def _read_meta(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``trainer.json`` and ``stage.json`` of a checkpoint, or a CheckpointError naming the problem."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not (path / COMPLETE).exists():
        raise CheckpointError(
            f"{path}: incomplete checkpoint (no {COMPLETE} marker): it was cut off while saving"
        )
    out = []
    for name in ("trainer.json", "stage.json"):
        try:
            out.append(json.loads((path / name).read_text()))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: corrupt checkpoint: {name} is missing") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}/{name}: corrupt checkpoint metadata ({e})") from None
    return out[0], out[1]


def _check_compatible(trainer: Any, path: Path, meta: dict[str, Any]) -> None:
    saved = meta.get("model_config", {})
    current = trainer.model.config.to_dict()
    diff = {k: (saved.get(k), v) for k, v in current.items() if k in saved and saved[k] != v}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(f"{path}: saved for a different model ({detail})")
    zero = trainer.cfg.zero if trainer.engine is not None else None
    if (meta.get("zero") is None) != (zero is None) or (zero is not None and meta["zero"] != zero):
        raise CheckpointError(
            f"{path}: saved by a run with {_describe(meta.get('zero'), meta.get('world_size'))}, this run has "
            f"{_describe(zero, trainer.dist.world_size)}; resume with the same settings, or `fastgpt export` "
            "it and start a new run from the model with --init_from (see docs/pretraining.md)"
        )
    if (
        zero is not None
        and meta.get("world_size") != trainer.dist.world_size
        and not _loads_universal(trainer)
    ):
        raise CheckpointError(
            f"{path}: DeepSpeed state sharded for {meta.get('world_size')} ranks, this run has "
            f"{trainer.dist.world_size}; convert it to a universal checkpoint first (docs/pretraining.md, "
            "'Resuming on a different world size')"
        )


def _loads_universal(trainer: Any) -> bool:
    """The DeepSpeed config asks for universal checkpoints (``"checkpoint": {"load_universal": true}``)."""
    return trainer.engine is not None and bool(trainer.engine.load_universal_checkpoint())


UNIVERSAL_TAG = "universal"  # ds_to_universal's output folder inside deepspeed/


def _describe(zero: int | None, world_size: int | None) -> str:
    return (
        f"{world_size} rank(s) without DeepSpeed" if zero is None else f"{world_size} rank(s), --zero={zero}"
    )


def load_checkpoint(trainer: Any, stage: Any, path: Path) -> None:
    """Restore model, optimizer, schedule position, data position and RNG from ``path``. Everything
    is checked and read before anything is changed, so a failure leaves the trainer as it was."""
    path = Path(path)
    meta, stage_state = _read_meta(path)
    _check_compatible(trainer, path, meta)
    state = None
    if trainer.engine is None:
        try:
            state = torch.load(path / "state.pt", map_location=trainer.device, weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: corrupt checkpoint: state.pt is missing") from None
        except Exception as e:  # truncated or foreign file
            raise CheckpointError(f"{path}/state.pt: cannot be read ({type(e).__name__}: {e})") from None
    elif _loads_universal(trainer):
        if not (path / "deepspeed" / UNIVERSAL_TAG).is_dir():
            raise CheckpointError(
                f"{path}: the DeepSpeed config loads universal checkpoints but deepspeed/{UNIVERSAL_TAG} is missing; "
                f"convert first: python -m deepspeed.checkpoint.ds_to_universal --input_folder {path}/deepspeed/state "
                f"--output_folder {path}/deepspeed/{UNIVERSAL_TAG}"
            )
    elif not (path / "deepspeed" / "state").is_dir():
        raise CheckpointError(f"{path}: corrupt checkpoint: deepspeed/state is missing")
    rng_file = path / f"rng_rank{trainer.dist.rank}.pt"
    rng = torch.load(rng_file, weights_only=True) if rng_file.exists() else None

    if state is not None:
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        if getattr(trainer, "scaler", None) is not None and "scaler" in state:
            trainer.scaler.load_state_dict(state["scaler"])
    else:
        try:
            tag = UNIVERSAL_TAG if _loads_universal(trainer) else "state"
            load_path, _ = trainer.engine.load_checkpoint(str(path / "deepspeed"), tag=tag)
        except Exception as e:
            raise CheckpointError(
                f"{path}/deepspeed: DeepSpeed could not load it ({type(e).__name__}: {e})"
            ) from e
        if load_path is None:
            raise CheckpointError(f"{path}/deepspeed: DeepSpeed could not load this checkpoint")
    if hasattr(stage, "load_state_dict"):
        stage.load_state_dict(stage_state)
    if rng is not None:
        _set_rng_state(rng)
    trainer.step = int(meta["step"])
    trainer.tokens = int(meta["tokens"])
    trainer.elapsed = float(meta["elapsed_s"])
    trainer.nonfinite_total = int(meta.get("nonfinite_total", 0))
    note = schedule_change_note(trainer, meta.get("schedule", {}))
    if note:
        trainer.print(note)


def maybe_resume(trainer: Any, stage: Any) -> Path | None:
    """Apply ``--resume``: ``never`` starts fresh; a path must load; ``auto`` resumes from the newest
    complete checkpoint in out_dir that loads, skipping (with a message) any that are corrupt."""
    how = trainer.cfg.resume
    if how == "never":
        return None
    if how != "auto":
        load_checkpoint(trainer, stage, Path(how))
        trainer.print(f"resumed from {how} at step {trainer.step}")
        return Path(how)
    for path in reversed(list_checkpoints(trainer.out_dir)):
        try:
            load_checkpoint(trainer, stage, path)
        except CheckpointError as e:
            if "different model" in str(e) or "saved by a run with" in str(e) or "sharded for" in str(e):
                raise  # a settings mismatch: an older checkpoint would not fit either
            trainer.print(f"skipping unusable checkpoint: {e}")
            continue
        trainer.print(f"resumed from {path} at step {trainer.step}")
        return path
    return None


# ------------------------------------------------------------------------------------------ export
def _deepspeed_state_dict(ds_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 weights from a DeepSpeed checkpoint of any stage: ZeRO shards are merged by DeepSpeed's
    zero_to_fp32; stage 0 keeps the whole module in ``mp_rank_00_model_states.pt``."""
    tag_dir = ds_dir / "state"
    if any(tag_dir.glob("*optim_states.pt")):
        # heavy, optional: deepspeed (multi-process and ZeRO runs only)
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag="state")
    module_file = tag_dir / "mp_rank_00_model_states.pt"
    if not module_file.exists():
        raise CheckpointError(f"{tag_dir}: no DeepSpeed model states found")
    return torch.load(module_file, map_location="cpu", weights_only=False)["module"]


def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Consolidate a checkpoint (any ZeRO stage, any world size) into an HF-layout model dir with its
    tokenizer files, ready for ``fastgpt.from_pretrained`` and transformers."""
    ckpt, out = Path(ckpt), Path(out)
    meta, _ = _read_meta(ckpt)
    model = GPT(GPTConfig.from_dict(meta["model_config"]))
    if (ckpt / "state.pt").exists():
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)["model"]
    elif (ckpt / "deepspeed").exists():
        state = _deepspeed_state_dict(ckpt / "deepspeed")
    else:
        raise CheckpointError(f"{ckpt}: neither state.pt nor deepspeed/ found")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt}: weights do not fit the saved model config "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.save_pretrained(out)
    for f in (ckpt / "model").glob("*"):  # tokenizer files
        if f.is_file() and f.name not in ("config.json", "model.safetensors"):
            shutil.copy2(f, out / f.name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="fastgpt export", description=export_checkpoint.__doc__)
    p.add_argument(
        "--ckpt", required=True, help="a checkpoint dir (out_dir/checkpoints/step_N) or a run's out_dir"
    )
    p.add_argument("--out", required=True, help="where to write the model dir")
    args = p.parse_args(argv)
    ckpt = Path(args.ckpt)
    for bad, problem in (
        (not ckpt.is_dir(), f"--ckpt {ckpt}: no such directory"),
        (Path(args.out).exists() and not Path(args.out).is_dir(), f"--out {args.out}: not a directory"),
    ):
        if bad:
            print(f"fastgpt export: error: {problem}", file=sys.stderr)
            return 2
    if not _STEP_DIR.match(ckpt.name):  # a run dir: its newest complete checkpoint
        newest = latest_checkpoint(ckpt)
        if newest is None:
            print(
                f"fastgpt export: error: {ckpt}: no complete checkpoint in {checkpoints_root(ckpt)}",
                file=sys.stderr,
            )
            return 2
        ckpt = newest
    try:
        path = export_checkpoint(ckpt, args.out)
    except CheckpointError as e:
        return report_user_error("export", e)
    print(f"exported {ckpt} -> {path}")
    return 0
