"""The one training loop: a tiny end-to-end run (outputs, metrics schema, model dir), gradient
accumulation normalised over the global target count (against a direct full-batch computation), NaN/inf
steps skipped then stopped, and the time budget.

Runs call ``fastgpt.pretrain.main`` in-process on a 320-token BPE corpus with a 2-layer, 64-wide model.
"""

from __future__ import annotations

import json

import pytest
import torch
from train_support import pretrain_args, read_metrics, step_losses

import fastgpt
from fastgpt.model import GPT, GPTConfig
from fastgpt.pretrain import main as pretrain_main
from fastgpt.train.config import TrainConfig
from fastgpt.train.trainer import NonFiniteLossError, Trainer

METRIC_KEYS = ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "elapsed_s")


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def test_smoke_run_writes_config_metrics_model_and_samples(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain_main(pretrain_args(corpus, out, max_steps=4, eval_every=2, sample_every=2)) == 0
    printed = capsys.readouterr().out
    rows = read_metrics(out)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert set(METRIC_KEYS) <= set(r), r
        assert r["tokens"] == r["step"] * 4 * 32 and r["tokens_per_sec"] > 0 and 0 < r["mfu"]
    evals = [r for r in rows if "val_bpb" in r]
    assert [r["step"] for r in evals] == [2, 4]  # every eval_every steps and at the end
    assert all(0 < r["val_bpb"] < 10 and r["val_loss"] > 0 for r in evals)
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_steps"] == 4 and saved["model"]["n_layer"] == 2 and saved["stage"] == "pretrain"
    # out_dir/model is the one model format: fastgpt and the tokenizer load it, and it computes the
    # same logits as the trained weights in the final checkpoint
    model = fastgpt.from_pretrained(out / "model")
    tok = fastgpt.Tokenizer.load(out / "model")
    assert model.config.n_layer == 2 and model.config.vocab_size == tok.vocab_size
    exported = fastgpt.from_pretrained(out / "checkpoints" / "step_0000004" / "model")
    ids = torch.tensor([tok.encode("the king and the queen", add_bos=True)])
    torch.testing.assert_close(model(ids), exported(ids), rtol=0, atol=0)
    # the user's own corpus is sampled without Shakespeare's prompts
    assert printed.count("--- sample (no prompt) ---") == 3 and "ROMEO" not in printed
    assert len((out / "samples.jsonl").read_text().splitlines()) == 1  # step 2 (not repeated at the end)


def test_sample_prompts_follow_the_data():
    from fastgpt.pretrain import PretrainConfig, sample_prompts

    assert sample_prompts(PretrainConfig()) == ["ROMEO:", "To be, or not to be", "The king"]
    assert sample_prompts(PretrainConfig(data="my/corpus/*.jsonl")) == ["", "", ""]
    assert sample_prompts(PretrainConfig(data="x.txt", sample_prompts="Once upon|The")) == [
        "Once upon",
        "The",
    ]


class UnevenTargets:
    """Micro-batches whose number of trained targets differs (the rest are -100)."""

    def __init__(self, vocab: int, keep: list[int]):
        g = torch.Generator().manual_seed(0)
        self.batches = []
        for k in keep:
            inputs = torch.randint(0, vocab, (2, 12), generator=g)
            targets = torch.randint(0, vocab, (2, 12), generator=g)
            targets.view(-1)[k:] = -100
            self.batches.append((inputs, targets))

    def loss(self, model, batch):
        return model(batch[0], batch[1], loss_reduction="sum")


def _tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        GPTConfig.from_preset(
            "tiny", vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_kv_head=1, max_seq_len=16
        )
    )


def test_accumulation_weighs_every_target_equally(tmp_path):
    """Loss and gradient norm of one step over micro-batches with 3, 20 and 9 targets equal the mean
    cross-entropy over those 32 targets computed in one go (the per-micro-batch mean would not)."""
    stage = UnevenTargets(64, keep=[3, 20, 9])
    model = _tiny_model()
    reference = _tiny_model()
    inputs = torch.cat([b[0] for b in stage.batches])
    targets = torch.cat([b[1] for b in stage.batches])
    expected = reference(inputs, targets)  # mean over the 32 non-ignored targets
    expected.backward()
    expected_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in reference.parameters()))
    naive = sum(reference(b[0], b[1]) for b in stage.batches) / 3
    assert abs(naive.item() - expected.item()) > 1e-3  # the test can tell the two apart

    cfg = TrainConfig(
        out_dir=str(tmp_path), max_steps=1, grad_accum=3, dtype="fp32", grad_clip=0.0, progress=False
    )
    trainer = Trainer(cfg, model)
    m = trainer.train_step(stage, stage.batches)
    assert m["loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert m["grad_norm"] == pytest.approx(expected_norm.item(), rel=1e-5)


def test_grad_accumulation_matches_the_bigger_batch(corpus, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert pretrain_main(pretrain_args(corpus, a, max_steps=3, batch_size=8, grad_accum=1)) == 0
    assert pretrain_main(pretrain_args(corpus, b, max_steps=3, batch_size=4, grad_accum=2)) == 0
    la, lb = step_losses(a), step_losses(b)
    for step in (1, 2, 3):
        assert la[step] == pytest.approx(lb[step], abs=1e-5)
    # total_batch_tokens derives grad_accum: 256 tokens = 4 rows x 32 tokens x 2 micro-batches
    c = tmp_path / "c"
    assert pretrain_main(pretrain_args(corpus, c, max_steps=3, batch_size=4, total_batch_tokens=256)) == 0
    assert json.loads((c / "config.json").read_text())["grad_accum_resolved"] == 2
    assert step_losses(c) == lb


class NaNAt:
    def __init__(self, bad_calls: set[int]):
        self.calls, self.bad = 0, bad_calls

    def next_batch(self):
        x = torch.randint(0, 64, (2, 8))
        return x, x

    def loss(self, model, batch):
        self.calls += 1
        loss = model(batch[0], batch[1], loss_reduction="sum")
        return loss * float("nan") if self.calls in self.bad else loss


def test_nonfinite_steps_are_skipped_then_the_run_stops(tmp_path):
    model = _tiny_model()
    cfg = TrainConfig(
        max_steps=10, out_dir=str(tmp_path), progress=False, max_nonfinite_steps=3, dtype="fp32"
    )
    trainer = Trainer(cfg, model)
    stage = NaNAt({1, 3, 4, 5})
    before = [p.detach().clone() for p in model.parameters()]
    m = trainer.train_step(stage, [stage.next_batch()])
    assert m["skipped"] == 1 and all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert trainer.optimizer.state == {} or all(not s for s in trainer.optimizer.state.values())
    assert trainer.train_step(stage, [stage.next_batch()])["skipped"] == 0
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    trainer.train_step(stage, [stage.next_batch()])
    trainer.train_step(stage, [stage.next_batch()])
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        trainer.train_step(stage, [stage.next_batch()])
    assert trainer.nonfinite_total == 4


def test_time_budget_stops_the_run(corpus, tmp_path):
    """Also the pretraining default optimizer: ``auto`` = Muon without ZeRO."""
    out = tmp_path / "budget"
    budget = 2.0
    args = pretrain_args(corpus, out, max_steps=0, time_budget_s=budget, schedule="wsd", optimizer="auto")
    assert pretrain_main(args) == 0
    assert json.loads((out / "config.json").read_text())["optimizer"] == "muon"
    steps = [r for r in read_metrics(out) if "loss" in r]
    assert len(steps) >= 4
    assert steps[-1]["elapsed_s"] >= budget > steps[-2]["elapsed_s"]  # stopped at the first step past it
    assert steps[-1]["lr"] < steps[1]["lr"]  # the wsd schedule follows the clock: decayed by the end
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_fp16_trains_with_a_loss_scaler(corpus, tmp_path):
    out = tmp_path / "fp16"
    assert pretrain_main(pretrain_args(corpus, out, max_steps=3, dtype="fp16")) == 0
    fp32 = tmp_path / "fp32"
    assert pretrain_main(pretrain_args(corpus, fp32, max_steps=3)) == 0
    half, full = step_losses(out), step_losses(fp32)
    assert sorted(half) == [1, 2, 3]
    for step in (1, 2, 3):  # the same training up to fp16 rounding
        assert half[step] == pytest.approx(full[step], rel=1e-2)
