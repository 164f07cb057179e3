"""Multi-node for real on one machine: two ``torchrun --nnodes=2 --node_rank=0|1`` launchers that meet at
a loopback rendezvous train one model together (ZeRO-2, gloo) and reproduce the single-node losses."""

from __future__ import annotations

import subprocess

import pytest
from train_support import (
    REPO,
    free_port,
    make_corpus,
    pretrain_args,
    run_pretrain,
    step_losses,
    subprocess_env,
    torchrun,
)


@pytest.mark.slow
@pytest.mark.multiproc
def test_two_nodes_on_loopback_match_one_node(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    single, two = tmp_path / "single", tmp_path / "two"
    run_pretrain(pretrain_args(corpus, single, max_steps=5, batch_size=8))
    port = free_port()
    launchers = []
    for node_rank in (0, 1):
        rdzv = [
            "--nnodes=2",
            f"--node_rank={node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
        ]
        cmd = torchrun(
            "-m",
            "fastgpt.pretrain",
            *pretrain_args(corpus, two, max_steps=5, batch_size=4, zero=2),
            nproc=1,
            rdzv=rdzv,
        )
        launchers.append(
            subprocess.Popen(
                cmd,
                cwd=REPO,
                env=subprocess_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate(timeout=900)[0] for p in launchers]
    assert all(p.returncode == 0 for p in launchers), "\n".join(log[-3000:] for log in logs)
    assert "2 rank(s)" in logs[0] or "2 rank(s)" in logs[1]
    ref, got = step_losses(single), step_losses(two)
    assert sorted(got) == [1, 2, 3, 4, 5]
    for step in range(1, 6):
        assert abs(ref[step] - got[step]) <= 1e-5, f"step {step}: {got[step]} vs {ref[step]}"
