"""Checkpoints: atomic save, exact resume, and export to the one model format.

Layout of ``out_dir/checkpoints/step_0000100/``::

    trainer.json        step, tokens, elapsed time, skipped steps, world size, zero stage
    stage.json          the stage's data position (loader state)
    rng_rank{r}.pt      python / numpy / torch (and CUDA) RNG states of every rank
    state.pt            model + optimizer state (single process without DeepSpeed)
    deepspeed/          DeepSpeed's checkpoint (any ZeRO stage; sharded per rank)
    model/              the model in HF layout with tokenizer files (ready for from_pretrained)
    COMPLETE            written last: only checkpoints that have it are resumed from

A checkpoint is written into ``.step_0000100.tmp`` and renamed into place, so a process killed during
a save leaves the previous checkpoints intact; ``keep_last`` bounds how many are kept.
``out_dir/model/`` is refreshed with every checkpoint.

``fastgpt export --ckpt DIR --out DIR`` consolidates a checkpoint from any ZeRO stage into a model dir.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgpt import dist

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    pass


def checkpoints_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------- save
def export_model(trainer: Any, path: Path) -> Path:
    """The trainer's model in HF layout + tokenizer at ``path`` (collective under ZeRO-3)."""
    model = trainer.model
    gathered: contextlib.AbstractContextManager = contextlib.nullcontext()
    if trainer.engine is not None and trainer.cfg.zero == 3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    with gathered:
        if trainer.dist.is_main:
            path.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(path)
            if trainer.tokenizer is not None:
                trainer.tokenizer.save(path)
    dist.barrier()
    return path


def save_checkpoint(trainer: Any, stage: Any) -> Path:
    """Write a complete checkpoint for ``trainer.step`` (all ranks call this)."""
    info = trainer.dist
    root = checkpoints_root(trainer.out_dir)
    name = f"step_{trainer.step:07d}"
    final, tmp = root / name, root / f".{name}.tmp"
    if info.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    torch.save(_rng_state(), tmp / f"rng_rank{info.rank}.pt")
    if trainer.engine is not None:
        trainer.engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False)
    elif info.is_main:
        torch.save(
            {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()},
            tmp / "state.pt",
        )
    export_model(trainer, tmp / "model")
    if os.environ.get("FASTGPT_SLOW_SAVE_S"):  # fault injection for the kill-during-save test
        time.sleep(float(os.environ["FASTGPT_SLOW_SAVE_S"]))
    if info.is_main:
        _atomic_json(tmp / "stage.json", stage.state_dict() if hasattr(stage, "state_dict") else {})
        _atomic_json(
            tmp / "trainer.json",
            {
                "step": trainer.step,
                "tokens": trainer.tokens,
                "elapsed_s": trainer.elapsed,
                "nonfinite_total": trainer.nonfinite_total,
                "world_size": info.world_size,
                "zero": trainer.cfg.zero if trainer.engine is not None else None,
                "model_config": trainer.model.config.to_dict(),
            },
        )
        (tmp / COMPLETE).write_text("ok\n")
        if final.exists():  # re-saving the same step (e.g. the end of a resumed run)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(trainer.out_dir)[: -max(trainer.cfg.keep_last, 1)]:
            shutil.rmtree(old, ignore_errors=True)
        # refresh out_dir/model: copy file by file, each replaced atomically
        model_dir = trainer.out_dir / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        for f in (final / "model").iterdir():
            shutil.copy2(f, model_dir / f".{f.name}.tmp")
            os.replace(model_dir / f".{f.name}.tmp", model_dir / f.name)
    dist.barrier()
    return final


# ------------------------------------------------------------------------------------------ resume
def _check_complete(path: Path) -> None:
    if not (path / COMPLETE).exists():
        raise CheckpointError(
            f"{path}: incomplete checkpoint (no {COMPLETE} marker); it was cut off while saving"
        )
    for needed in ("trainer.json", "stage.json"):
        if not (path / needed).exists():
            raise CheckpointError(f"{path}: corrupt checkpoint: {needed} is missing")


def load_checkpoint(trainer: Any, stage: Any, path: Path) -> None:
    """Restore model, optimizer, schedule position, data position and RNG from ``path``."""
    _check_complete(path)
    try:
        meta = json.loads((path / "trainer.json").read_text())
        stage_state = json.loads((path / "stage.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({e})") from e
    if trainer.engine is not None:
        if not (path / "deepspeed").exists():
            raise CheckpointError(f"{path}: saved without DeepSpeed; resume it with --zero=0 on one process")
        load_path, _ = trainer.engine.load_checkpoint(str(path / "deepspeed"), tag="state")
        if load_path is None:
            raise CheckpointError(f"{path}/deepspeed: DeepSpeed could not load this checkpoint")
    else:
        if not (path / "state.pt").exists():
            raise CheckpointError(
                f"{path}: saved by a DeepSpeed run (zero={meta.get('zero')}, {meta.get('world_size')} ranks); "
                "resume with the same --zero, or export it with `fastgpt export` and start from the model"
            )
        try:
            state = torch.load(path / "state.pt", map_location=trainer.device, weights_only=True)
        except Exception as e:  # a truncated or foreign file
            raise CheckpointError(f"{path}/state.pt: cannot be read ({e})") from e
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    rng_file = path / f"rng_rank{trainer.dist.rank}.pt"
    if rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    if hasattr(stage, "load_state_dict"):
        stage.load_state_dict(stage_state)
    trainer.step = int(meta["step"])
    trainer.tokens = int(meta["tokens"])
    trainer.elapsed = float(meta["elapsed_s"])
    trainer.nonfinite_total = int(meta.get("nonfinite_total", 0))


def maybe_resume(trainer: Any, stage: Any) -> Path | None:
    """Apply ``--resume``: ``auto`` resumes from the latest complete checkpoint in out_dir if any,
    ``never`` starts fresh, anything else is a checkpoint dir that must load."""
    how = trainer.cfg.resume
    if how == "never":
        return None
    path = latest_checkpoint(trainer.out_dir) if how == "auto" else Path(how)
    if path is None:
        return None
    if how != "auto" and not path.exists():
        raise CheckpointError(f"--resume={how}: no such checkpoint directory")
    load_checkpoint(trainer, stage, path)
    trainer.print(f"resumed from {path} at step {trainer.step}")
    return path


# ------------------------------------------------------------------------------------------ export
def export_checkpoint(ckpt: str | Path, out: str | Path) -> Path:
    """Consolidate a checkpoint (any ZeRO stage) into an HF-layout model dir with its tokenizer."""
    ckpt, out = Path(ckpt), Path(out)
    _check_complete(ckpt)
    meta = json.loads((ckpt / "trainer.json").read_text())
    from fastgpt.model import GPT, GPTConfig

    model = GPT(GPTConfig.from_dict(meta["model_config"]))
    if (ckpt / "state.pt").exists():
        model.load_state_dict(torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)["model"])
    elif (ckpt / "deepspeed").exists():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "deepspeed"), tag="state")
        model.load_state_dict(state, strict=False)
        missing = set(model.state_dict()) - set(state) - {"rope_cos", "rope_sin"}
        if missing:
            raise CheckpointError(f"{ckpt}: DeepSpeed checkpoint lacks tensors {sorted(missing)[:5]}")
    else:
        raise CheckpointError(f"{ckpt}: neither state.pt nor deepspeed/ found")
    model.save_pretrained(out)
    tok_src = ckpt / "model"
    for f in tok_src.glob("*"):
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy2(f, out / f.name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fastgpt export", description=export_checkpoint.__doc__)
    p.add_argument(
        "--ckpt", required=True, help="a checkpoint dir (out_dir/checkpoints/step_N) or a run out_dir"
    )
    p.add_argument("--out", required=True, help="where to write the model dir")
    args = p.parse_args(argv)
    ckpt = Path(args.ckpt)
    if not (ckpt / COMPLETE).exists() and latest_checkpoint(ckpt) is not None:
        ckpt = latest_checkpoint(ckpt)
    path = export_checkpoint(ckpt, args.out)
    print(f"exported {ckpt} -> {path}")
    return 0
