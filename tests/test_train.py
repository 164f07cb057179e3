"""The training loop: config parsing, accumulation, exact resume, NaN handling, DeepSpeed parity.

Runs go through ``python -m fastgpt.pretrain`` on a tiny self-made corpus (a 300-token BPE, a 2-layer
32-wide model, fp32) so they compare bit for bit. Multi-process DeepSpeed runs (gloo) are slow-marked.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastgpt.train.config import TrainConfig, parse_args

SMALL = [
    "--model.n_layer=2",
    "--model.n_embd=32",
    "--model.n_head=2",
    "--model.n_kv_head=1",
    "--seq_len=32",
    "--dtype=fp32",
    "--eval_every=0",
    "--log_every=1",
    "--progress=false",
    "--warmup_steps=2",
    "--eval_tokens=2048",
    "--sample_tokens=8",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared shard dir (with its tokenizer) from a small random-words corpus."""
    from fastgpt.data import resolve_pretrain_data

    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = "the king queen lord sword crown castle night day love war peace river stone".split()
    text = "\n\n".join(" ".join(rng.choice(words) for _ in range(30)) + "." for _ in range(400))
    (root / "corpus.txt").write_text(text)
    data_dir, _ = resolve_pretrain_data(
        [str(root / "corpus.txt")], None, 300, cache_dir=root / "cache", progress=False
    )
    return data_dir


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    e.pop("TRITON_INTERPRET", None)
    return e


def run_pretrain(args: list[str], data: Path, out: Path, *, nproc: int = 1, extra_env=None, timeout=600):
    cmd = [sys.executable, "-m", "fastgpt.pretrain"]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}",
            "-m",
            "fastgpt.pretrain",
        ]
    cmd += [f"--data={data}", f"--tokenizer={data / 'tokenizer'}", f"--out_dir={out}", *SMALL, *args]
    proc = subprocess.run(
        cmd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- config
def test_parse_args_types_and_model_overrides():
    cfg = parse_args(
        TrainConfig, ["--lr=1e-3", "--compile=true", "--max_steps=5", "--model.n_layer=3", "--zero=2"]
    )
    assert cfg.lr == 1e-3 and cfg.compile is True and cfg.max_steps == 5 and cfg.zero == 2
    assert cfg.model == {"n_layer": 3}
    assert cfg.model_config(vocab_size=123).n_layer == 3


def test_parse_args_errors_are_clear():
    with pytest.raises(ValueError, match="did you mean --max_steps"):
        parse_args(TrainConfig, ["--max_step=3"])
    with pytest.raises(ValueError, match="--compile: expected true or false"):
        parse_args(TrainConfig, ["--compile=maybe"])
    with pytest.raises(ValueError, match="--lr: expected float"):
        parse_args(TrainConfig, ["--lr=fast"])
    cfg = parse_args(TrainConfig, ["--preset=gpt5", "--max_steps=1"])
    with pytest.raises(ValueError, match="--preset: expected one of"):
        cfg.validate()


def test_lr_schedule_shapes():
    from fastgpt.train.optim import lr_multiplier

    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=100)
    assert lr_multiplier(cfg, 0, 0.0) == pytest.approx(0.1)  # warmup starts at 1/10
    assert lr_multiplier(cfg, 9, 0.09) == pytest.approx(1.0)
    assert lr_multiplier(cfg, 50, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)  # cosine midpoint
    assert lr_multiplier(cfg, 100, 1.0) == pytest.approx(0.1)
    cfg.schedule = "wsd"
    assert lr_multiplier(cfg, 50, 0.5) == 1.0 and lr_multiplier(cfg, 100, 1.0) == pytest.approx(0.1)


def test_muon_update_is_orthogonal():
    from fastgpt.train.optim import newton_schulz_orthogonalize

    g = torch.randn(64, 32)
    o = newton_schulz_orthogonalize(g, steps=10)
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.6 and s.max() < 1.3  # singular values pushed to ~1, whatever g's spectrum


# --------------------------------------------------------------------------------------- the loop
def test_pretrain_smoke_writes_outputs(tiny_data, tmp_path):
    import fastgpt

    out = tmp_path / "run"
    proc = run_pretrain(["--max_steps=4", "--batch_size=4", "--eval_every=2"], tiny_data, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in step_rows] == [1, 2, 3, 4]
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "elapsed_s"):
        assert key in step_rows[-1]
    assert step_rows[-1]["tokens"] == 4 * 4 * 32
    evals = [r for r in rows if "val_bpb" in r]
    assert evals and all(0 < r["val_bpb"] < 20 for r in evals)
    assert json.loads((out / "config.json").read_text())["stage"] == "pretrain"
    model = fastgpt.from_pretrained(out / "model")
    tok = fastgpt.Tokenizer.load(out / "model")
    assert model.config.n_layer == 2 and tok.vocab_size <= model.config.vocab_size
    assert "--- sample" in proc.stdout


def test_grad_accumulation_matches_bigger_batch(tiny_data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_pretrain(["--max_steps=3", "--batch_size=8", "--grad_accum=1"], tiny_data, a)
    run_pretrain(["--max_steps=3", "--batch_size=4", "--grad_accum=2"], tiny_data, b)
    la, lb = losses(a), losses(b)
    for step in (1, 2, 3):
        assert la[step] == pytest.approx(lb[step], abs=1e-5)


def test_resume_is_exact(tiny_data, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["--max_steps=6", "--batch_size=4", "--save_every=3", "--keep_last=5"]
    run_pretrain(args, tiny_data, full)
    # the "interrupted" run: same config, stopped after the step-3 checkpoint
    run_pretrain(args, tiny_data, cut, extra_env={"FASTGPT_STOP_AFTER_STEP": "3"})
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_0000003"]
    run_pretrain(args, tiny_data, cut)
    lf, lc = losses(full), losses(cut)
    for step in (4, 5, 6):
        assert lc[step] == lf[step], f"step {step}: resumed {lc[step]} != uninterrupted {lf[step]}"


def test_resume_rejects_incomplete_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "run"
    run_pretrain(["--max_steps=2", "--batch_size=4"], tiny_data, out)
    ckpt = out / "checkpoints" / "step_0000002"
    (ckpt / "COMPLETE").unlink()
    with pytest.raises(AssertionError, match="incomplete checkpoint"):
        run_pretrain(["--max_steps=3", "--batch_size=4", f"--resume={ckpt}"], tiny_data, out)


def test_nonfinite_loss_is_skipped_then_stops(tmp_path):
    from fastgpt.model import GPT, GPTConfig
    from fastgpt.train.trainer import NonFiniteLossError, Trainer

    class NaNStage:
        def __init__(self):
            self.calls = 0

        def next_batch(self):
            x = torch.randint(0, 50, (2, 8))
            return x, x

        def loss(self, model, batch):
            self.calls += 1
            loss = model(batch[0], batch[1], loss_reduction="sum")
            return loss * float("nan") if self.calls in (1, 3, 4, 5) else loss

    model = GPT(GPTConfig(vocab_size=50, n_layer=1, n_embd=16, n_head=2, max_seq_len=8))
    cfg = TrainConfig(
        max_steps=10, out_dir=str(tmp_path), progress=False, max_nonfinite_steps=3, dtype="fp32"
    )
    trainer = Trainer(cfg, model)
    stage = NaNStage()
    before = [p.detach().clone() for p in model.parameters()]
    m = trainer.train_step(stage, [stage.next_batch()])
    assert m["skipped"] == 1 and all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert trainer.train_step(stage, [stage.next_batch()])["skipped"] == 0
    trainer.train_step(stage, [stage.next_batch()])
    trainer.train_step(stage, [stage.next_batch()])
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        trainer.train_step(stage, [stage.next_batch()])


# ------------------------------------------------------------------------------ multi-process (slow)
@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("zero", [1, 2, 3])
def test_deepspeed_two_ranks_match_single_process(tiny_data, tmp_path, zero):
    single, multi = tmp_path / "single", tmp_path / f"zero{zero}"
    run_pretrain(["--max_steps=10", "--batch_size=8"], tiny_data, single)
    run_pretrain(["--max_steps=10", "--batch_size=4", f"--zero={zero}"], tiny_data, multi, nproc=2)
    ls, lm = losses(single), losses(multi)
    for step in range(1, 11):
        assert abs(ls[step] - lm[step]) <= 1e-5, f"step {step}: {ls[step]} vs {lm[step]} (zero={zero})"


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_node_loopback_matches_single_node(tiny_data, tmp_path):
    single, two = tmp_path / "single", tmp_path / "two"
    run_pretrain(["--max_steps=5", "--batch_size=8"], tiny_data, single)
    port = free_port()
    procs = []
    for node_rank in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node_rank={node_rank}",
            "--nproc_per_node=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            "-m",
            "fastgpt.pretrain",
            f"--data={tiny_data}",
            f"--tokenizer={tiny_data / 'tokenizer'}",
            f"--out_dir={two}",
            *SMALL,
            "--max_steps=5",
            "--batch_size=4",
            "--zero=2",
        ]
        procs.append(
            subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
    ls, lt = losses(single), losses(two)
    for step in range(1, 6):
        assert abs(ls[step] - lt[step]) <= 1e-5


@pytest.mark.slow
@pytest.mark.multiproc
def test_zero2_two_ranks_resume_is_exact(tiny_data, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["--max_steps=6", "--batch_size=4", "--save_every=3", "--keep_last=5", "--zero=2"]
    run_pretrain(args, tiny_data, full, nproc=2)
    run_pretrain(args, tiny_data, cut, nproc=2, extra_env={"FASTGPT_STOP_AFTER_STEP": "3"})
    run_pretrain(args, tiny_data, cut, nproc=2)
    lf, lc = losses(full), losses(cut)
    for step in (4, 5, 6):
        assert lc[step] == lf[step]


@pytest.mark.slow
def test_sigkill_during_save_keeps_previous_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "run"
    run_pretrain(["--max_steps=2", "--batch_size=4"], tiny_data, out)
    cmd = [
        sys.executable,
        "-m",
        "fastgpt.pretrain",
        f"--data={tiny_data}",
        f"--tokenizer={tiny_data / 'tokenizer'}",
        f"--out_dir={out}",
        *SMALL,
        "--max_steps=4",
        "--batch_size=4",
    ]
    # FASTGPT_SLOW_SAVE_S makes the save pause half-way (after the state, before COMPLETE) so the kill lands in it
    proc = subprocess.Popen(
        cmd,
        env={**env(), "FASTGPT_SLOW_SAVE_S": "30"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    root = out / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not any(
        p.name.endswith(".tmp") and (p / "state.pt").exists() for p in root.iterdir()
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from fastgpt.checkpoint import latest_checkpoint

    assert latest_checkpoint(out).name == "step_0000002"
    run_pretrain(["--max_steps=3", "--batch_size=4"], tiny_data, out)  # resumes from step 2 and finishes
    assert latest_checkpoint(out).name == "step_0000003"
