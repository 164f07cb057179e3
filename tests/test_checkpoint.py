"""Checkpoints: exact resume (bit for bit, CPU fp32), incomplete and corrupt checkpoints, keep_last,
a settings mismatch, export to the model format, and (slow) a SIGKILL landing inside a save.

"Stopped at step k and resumed" is reproduced by starting a new process-free run in a fresh out_dir
that holds only the step-k checkpoint of an uninterrupted run: everything after step k must then come
from the checkpoint alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
from train_support import (
    one_thread,
    pretrain_args,
    read_metrics,
    start_pretrain,
    step_losses,
)

import fastgpt
from fastgpt.checkpoint import latest_checkpoint, list_checkpoints
from fastgpt.checkpoint import main as export_main
from fastgpt.pretrain import main as pretrain_main

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    """An uninterrupted 6-step run with checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("full") / "run"
    with one_thread():
        assert pretrain_main(pretrain_args(corpus, out, max_steps=6, save_every=3, keep_last=5)) == 0
    return out


def _run_from(corpus, full_run, tmp_path, step: int, **overrides) -> tuple[int, object]:
    out = tmp_path / "resumed"
    name = f"step_{step:07d}"
    shutil.copytree(full_run / "checkpoints" / name, out / "checkpoints" / name)
    code = pretrain_main(
        pretrain_args(corpus, out, **{"max_steps": 6, "save_every": 3, "keep_last": 5, **overrides})
    )
    return code, out


def test_resume_continues_bit_for_bit(corpus, full_run, tmp_path, capsys):
    code, out = _run_from(corpus, full_run, tmp_path, 3)
    assert code == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed and "LR schedule differs" not in printed
    resumed, full = step_losses(out), step_losses(full_run)
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == full[step], (
            f"step {step}: resumed {resumed[step]!r} != uninterrupted {full[step]!r}"
        )
    evals = [r["val_loss"] for r in read_metrics(out) if "val_loss" in r]
    assert evals == [r["val_loss"] for r in read_metrics(full_run) if "val_loss" in r]
    a, b = fastgpt.from_pretrained(out / "model"), fastgpt.from_pretrained(full_run / "model")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_incomplete_checkpoint_is_skipped_by_auto_and_refused_by_path(corpus, full_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(full_run / "checkpoints" / "step_0000003", out / "checkpoints" / "step_0000003")
    partial = out / "checkpoints" / "step_0000006"
    shutil.copytree(full_run / "checkpoints" / "step_0000006", partial)
    (partial / "COMPLETE").unlink()  # e.g. an interrupted copy between machines
    assert [p.name for p in list_checkpoints(out)] == ["step_0000003"]
    code = pretrain_main(pretrain_args(corpus, out, max_steps=6, save_every=3, resume=str(partial)))
    assert code == 2 and "incomplete checkpoint" in capsys.readouterr().err
    assert pretrain_main(pretrain_args(corpus, out, max_steps=6, save_every=3)) == 0
    assert sorted(step_losses(out)) == [4, 5, 6]  # resumed from step 3
    assert step_losses(out) == {k: v for k, v in step_losses(full_run).items() if k > 3}


def test_corrupt_checkpoint_is_skipped_with_a_message_or_named_in_an_error(
    corpus, full_run, tmp_path, capsys
):
    out = tmp_path / "run"
    shutil.copytree(full_run / "checkpoints", out / "checkpoints")
    state = out / "checkpoints" / "step_0000006" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])  # truncated on disk
    code = pretrain_main(pretrain_args(corpus, out, max_steps=6, resume=str(state.parent)))
    assert code == 2
    assert "step_0000006/state.pt: cannot be read" in capsys.readouterr().err
    assert pretrain_main(pretrain_args(corpus, out, max_steps=6, save_every=3, keep_last=5)) == 0
    assert "skipping unusable checkpoint" in capsys.readouterr().out
    assert sorted(step_losses(out)) == [4, 5, 6]


def test_resume_into_a_different_model_is_refused(corpus, full_run, tmp_path, capsys):
    code, _ = _run_from(corpus, full_run, tmp_path, 3, **{"model.n_layer": 3})
    assert code == 2
    assert "saved for a different model (n_layer: checkpoint 2 vs this run 3)" in capsys.readouterr().err


def test_resume_with_a_longer_run_says_how_the_lr_changes(corpus, full_run, tmp_path, capsys):
    """Extending a run (max_steps 6 -> 12) re-stretches the cosine: resumed at step 3 (warmup 2, lr 3e-3,
    min_lr 3e-4) the LR is 3e-4 + 2.7e-3 * (1 + cos(pi/4)) / 2 = 0.0026 instead of the saved run's
    3e-4 + 2.7e-3 * (1 + cos(pi/2)) / 2 = 0.00165. Allowed, but said."""
    code, out = _run_from(corpus, full_run, tmp_path, 3, max_steps=4)
    assert code == 0
    assert "LR schedule differs from the checkpoint's (max_steps 6 -> 4)" in capsys.readouterr().out
    code, out = _run_from(corpus, full_run, tmp_path / "same", 3, wsd_decay_frac=0.5)
    assert code == 0  # a wsd setting does not move a cosine: say so rather than print two equal LRs
    assert (
        "(wsd_decay_frac 0.2 -> 0.5): the LR at step 3 is the same (0.00165); the steps after it follow"
        in capsys.readouterr().out
    )
    code, out = _run_from(corpus, full_run, tmp_path / "b", 3, max_steps=12)
    printed = capsys.readouterr().out
    assert code == 0
    assert (
        "note: the LR schedule differs from the checkpoint's (max_steps 6 -> 12): at step 3 the LR is "
        "0.0026, the saved run's schedule had 0.00165"
    ) in printed


def test_keep_last_and_no_leftovers(corpus, tmp_path):
    out = tmp_path / "run"
    assert pretrain_main(pretrain_args(corpus, out, max_steps=5, save_every=1, keep_last=2)) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000004", "step_0000005"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_export_consolidates_a_checkpoint_into_a_model_dir(full_run, tmp_path, capsys):
    dest = tmp_path / "exported"
    assert export_main(["--ckpt", str(full_run), "--out", str(dest)]) == 0  # a run dir: its newest checkpoint
    assert "step_0000006" in capsys.readouterr().out
    model, ref = fastgpt.from_pretrained(dest), fastgpt.from_pretrained(full_run / "model")
    tok = fastgpt.Tokenizer.load(dest)
    ids = torch.tensor([tok.encode("the queen", add_bos=True)])
    torch.testing.assert_close(model(ids), ref(ids), rtol=0, atol=0)
    assert export_main(["--ckpt", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    assert export_main(["--ckpt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert f"--ckpt {tmp_path / 'nowhere'}: no such directory" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert export_main(["--ckpt", str(full_run), "--out", str(tmp_path / "a_file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {tmp_path / 'a_file'}: not a directory" in err, err


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_usable(corpus, tmp_path):
    """Save every step and SIGKILL the process the moment a ``.step_*.tmp`` dir appears; a kill that
    lands after the save finished does not count (retry). The newest complete checkpoint must then
    resume, and the next save must clear the debris."""
    out = tmp_path / "run"
    root = out / "checkpoints"
    args = pretrain_args(corpus, out, max_steps=10_000, save_every=1, keep_last=2, log_every=1000)
    for _attempt in range(5):
        proc = start_pretrain(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (
                root.is_dir()
                and list_checkpoints(out)
                and any(p.name.endswith(".tmp") for p in root.iterdir())
            ):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        if any(p.name.endswith(".tmp") for p in root.iterdir()):
            break  # the kill landed inside a save
    else:
        pytest.fail("never caught a save in progress")
    newest = latest_checkpoint(out)
    assert newest is not None
    step = int(newest.name.split("_")[1])
    assert fastgpt.from_pretrained(newest / "model") is not None
    code = pretrain_main(pretrain_args(corpus, out, max_steps=step + 2, save_every=1, keep_last=2))
    assert code == 0
    assert sorted(k for k in step_losses(out) if k > step) == [step + 1, step + 2]
    assert latest_checkpoint(out).name == f"step_{step + 2:07d}"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
