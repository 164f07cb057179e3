"""DeepSpeed ZeRO on CPU ranks (gloo): 2 ranks x ZeRO 0-3 give the losses of one process with the same
global batch (<= 1e-5 over 10 steps, fp32, with gradient accumulation), ZeRO-2 resumes bit for bit on
2 ranks, a ZeRO-3 checkpoint exports to the model dir it trained, and a missing DeepSpeed is one error.

The multi-process tests launch ``python -m fastgpt.pretrain`` under torchrun (slow, multiproc)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from train_support import (
    REPO,
    one_thread,
    pretrain_args,
    run_pretrain,
    step_losses,
    subprocess_env,
    torchrun,
)

import fastgpt
from fastgpt.checkpoint import main as export_main
from fastgpt.pretrain import main as pretrain_main

STEPS = 10


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    """The reference: one process, 8 rows per step, no DeepSpeed."""
    out = tmp_path_factory.mktemp("single") / "run"
    run_pretrain(pretrain_args(corpus, out, max_steps=STEPS, batch_size=8, eval_every=5))
    return out


def test_zero3_without_deepspeed_is_one_clear_error(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    with one_thread():
        code = pretrain_main(pretrain_args(corpus, tmp_path / "run", max_steps=1, zero=3))
    assert code == 2
    assert "need DeepSpeed" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize(
    "zero, offload", [(0, False), (1, False), (2, False), (3, False), (2, True), (3, True)]
)
def test_two_ranks_match_one_process(corpus, single, tmp_path, zero, offload):
    """2 ranks x 2 rows x 2 micro-batches = the reference's 8 rows per step, same rows in the same steps
    (``offload``: the launch/deepspeed/zero{2,3}_offload.json configs, optimizer state on the CPU)."""
    out = tmp_path / f"zero{zero}"
    args = dict(max_steps=STEPS, batch_size=2, grad_accum=2, zero=zero, offload=offload, eval_every=5)
    run_pretrain(pretrain_args(corpus, out, **args), nproc=2)
    ref, got = step_losses(single), step_losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert abs(ref[step] - got[step]) <= 1e-5, f"zero={zero} step {step}: {got[step]} vs {ref[step]}"
    if (
        zero == 3 and not offload
    ):  # ZeRO-3 shards the weights: export must gather them into the model dir it wrote
        dest = tmp_path / "exported"
        assert export_main(["--ckpt", str(out), "--out", str(dest)]) == 0
        a, b = fastgpt.from_pretrained(dest), fastgpt.from_pretrained(out / "model")
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name


ZERO3_COUNTS = """
import json, sys
from fastgpt.pretrain import PretrainConfig, build
from fastgpt.train.config import parse_args
cfg = parse_args(PretrainConfig, sys.argv[1:])
trainer, _ = build(cfg)
print(json.dumps({"n": trainer.model.num_params(), "flops": trainer.flops_per_token}))
"""


@pytest.mark.slow
def test_zero3_counts_the_whole_model_not_its_partitions(corpus, tmp_path):
    """Under ZeRO-3 each parameter is an empty placeholder between forwards: the parameter count and
    the MFU's FLOPs must come from the full shapes (``ds_shape``), not the local partitions (which count
    0.00M parameters and only the attention FLOPs)."""
    args = pretrain_args(corpus, tmp_path / "run", max_steps=1, zero=3)
    proc = subprocess.run(
        [sys.executable, "-c", ZERO3_COUNTS, *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["model_config"]
    plain = fastgpt.GPT(fastgpt.GPTConfig(**cfg))
    assert got == {"n": plain.num_params(), "flops": plain.flops_per_token(32)}


@pytest.mark.slow
@pytest.mark.multiproc
def test_a_rank0_data_error_on_two_ranks_is_its_one_line_without_peer_tracebacks(corpus, tmp_path):
    """Rank 0 prepares the data while rank 1 waits: a bad --data was rank 0's one error line followed
    by rank 1's 25-line 'Connection closed by peer' traceback from the barrier it waited in."""
    args = pretrain_args(corpus, tmp_path / "run", max_steps=1, zero=2)
    args = [a for a in args if not a.startswith("--data=")] + [f"--data={tmp_path / 'nope.jsonl'}"]
    proc = run_pretrain(args, nproc=2, check=False)
    assert proc.returncode != 0
    err = proc.stderr
    assert err.count("fastgpt pretrain: error: ") == 1, err[-3000:]
    assert f"{tmp_path / 'nope.jsonl'}: no such file or directory" in err
    assert "[rank1]" not in err and "Connection closed by peer" not in err, err[-3000:]


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("zero, optimizer", [(2, "adamw"), (2, "muon"), (3, "muon")])
def test_two_ranks_resume_bit_for_bit(corpus, tmp_path, zero, optimizer):
    """Also Muon's sharded momentum: saved with DeepSpeed's partitions, loaded into the same layout."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    args = dict(max_steps=6, batch_size=4, save_every=3, keep_last=5, zero=zero, optimizer=optimizer)
    run_pretrain(pretrain_args(corpus, full, **args), nproc=2)
    shutil.copytree(full / "checkpoints" / "step_0000003", resumed / "checkpoints" / "step_0000003")
    proc = run_pretrain(pretrain_args(corpus, resumed, **args), nproc=2)
    assert "resumed from" in proc.stdout
    lf, lr = step_losses(full), step_losses(resumed)
    assert sorted(lr) == [4, 5, 6]
    for step in (4, 5, 6):
        assert lr[step] == lf[step], f"step {step}: resumed {lr[step]!r} != uninterrupted {lf[step]!r}"


@pytest.mark.slow
@pytest.mark.multiproc
def test_resume_on_another_world_size_through_a_universal_checkpoint(corpus, tmp_path):
    """ZeRO-2 on 2 ranks, resumed on 1 rank: refused as it is; after DeepSpeed's ds_to_universal and with
    ``"checkpoint": {"load_universal": true}``, the same losses as the uninterrupted 2-rank run."""
    full = tmp_path / "full"
    args = dict(max_steps=6, save_every=3, keep_last=5, zero=2)
    run_pretrain(pretrain_args(corpus, full, batch_size=4, **args), nproc=2)
    ckpt = tmp_path / "one" / "checkpoints" / "step_0000003"
    shutil.copytree(full / "checkpoints" / "step_0000003", ckpt)
    one_rank = pretrain_args(corpus, tmp_path / "one", batch_size=8, **args)  # same global batch
    proc = run_pretrain(one_rank, check=False)
    assert proc.returncode == 2 and "sharded for 2 ranks, this run has 1" in proc.stderr

    convert = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        str(ckpt / "deepspeed" / "state"),
        "--output_folder",
        str(ckpt / "deepspeed" / "universal"),
    ]
    subprocess.run(convert, check=True, capture_output=True, env=subprocess_env(), timeout=600)
    config = json.loads((REPO / "launch" / "deepspeed" / "zero2.json").read_text())
    config["checkpoint"] = {"load_universal": True}
    (tmp_path / "universal.json").write_text(json.dumps(config))
    proc = run_pretrain(one_rank + [f"--deepspeed_config={tmp_path / 'universal.json'}"])
    assert "resumed from" in proc.stdout
    ref, got = step_losses(full), step_losses(tmp_path / "one")
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        assert abs(ref[step] - got[step]) <= 1e-5, f"step {step}: {got[step]} vs {ref[step]}"


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("zero", [0, 2, 3])
def test_a_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path, zero):
    out = tmp_path / "result.json"
    cmd = torchrun(str(REPO / "tests" / "train_support.py"), "nan_skip", str(out), str(zero))
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result == {"skipped": [0, 1, 0], "unchanged": True, "moved_after": True, "finite": True}


@pytest.fixture(scope="module")
def single_muon(corpus, tmp_path_factory):
    """The Muon reference: one process, no DeepSpeed, 8 rows per step."""
    out = tmp_path_factory.mktemp("single_muon") / "run"
    run_pretrain(pretrain_args(corpus, out, max_steps=MUON_STEPS, batch_size=8, optimizer="muon"))
    return out


MUON_STEPS = 8


@pytest.mark.slow
@pytest.mark.multiproc
@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_muon_two_ranks_match_one_process(corpus, single_muon, tmp_path, zero):
    """Muon at every ZeRO stage: 2 ranks x 2 rows x 2 micro-batches give the losses of the
    single-process Muon run (<= 1e-4 over 8 fp32 steps). Under ZeRO 1-3 each rank holds flat slices of
    the matrices, so this checks the sharded step (gather, orthogonalise the owned matrices, keep the
    own slice) against the plain one; ``--optimizer=auto`` must pick Muon there too."""
    out = tmp_path / f"zero{zero}"
    args = dict(max_steps=MUON_STEPS, batch_size=2, grad_accum=2, zero=zero, optimizer="auto")
    run_pretrain(pretrain_args(corpus, out, **args), nproc=2)
    assert json.loads((out / "config.json").read_text())["optimizer"] == "muon"
    ref, got = step_losses(single_muon), step_losses(out)
    assert sorted(got) == list(range(1, MUON_STEPS + 1))
    worst = max(abs(ref[s] - got[s]) for s in ref)
    assert worst <= 1e-4, f"zero={zero}: max |loss - single| = {worst:.2e}: {got} vs {ref}"
    assert ref[MUON_STEPS] < ref[1] - 0.1  # it trained: the comparison is not between two flat lines


@pytest.mark.slow
@pytest.mark.multiproc
def test_activation_checkpointing_under_zero3_on_two_ranks(corpus, single, tmp_path):
    """Each block recomputed in the backward while ZeRO-3 gathers its parameters again: the same
    losses as the plain single-process run (<= 1e-5 over 10 steps)."""
    out = tmp_path / "ckpt"
    args = dict(max_steps=STEPS, batch_size=2, grad_accum=2, zero=3, activation_checkpointing=True)
    run_pretrain(pretrain_args(corpus, out, eval_every=5, **args), nproc=2)
    ref, got = step_losses(single), step_losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert abs(ref[step] - got[step]) <= 1e-5, f"step {step}: {got[step]} vs {ref[step]}"
