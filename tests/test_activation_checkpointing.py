"""Per-block activation checkpointing (``--activation_checkpointing=true``): the gradients of a
checkpointed step equal the plain step's (fp32), the peak memory of a training step falls when
activations dominate (measured by torch's own tensor memory tracker on CPU), and only training
forwards are checkpointed. Under ZeRO-3 on 2 ranks: tests/test_deepspeed.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fastgpt.model import GPT, GPTConfig
from fastgpt.model.gpt import set_activation_checkpointing
from fastgpt.train.config import TrainConfig
from fastgpt.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=128, n_layer=3, n_embd=64, n_head=4, n_kv_head=2, max_seq_len=64)
    return GPT(GPTConfig.from_preset("tiny", **{**cfg, **kw}))


def _grads(model: GPT, x: torch.Tensor, doc_ids: torch.Tensor | None) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = model(x, x, doc_ids=doc_ids) if doc_ids is not None else model(x, x)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_checkpointed_gradients_equal_the_plain_step(packed, family):
    model = _model(family=family, n_kv_head=4 if family == "gpt2" else 2)
    x = torch.randint(0, 128, (2, 48))
    doc_ids = (torch.arange(48) >= 20).long().expand(2, -1).contiguous() if packed else None
    loss_plain, plain = _grads(model, x, doc_ids)
    assert set_activation_checkpointing(model) == 1
    loss_ckpt, ckpt = _grads(model, x, doc_ids)
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-7)
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, rtol=1e-6, atol=1e-8, msg=name)


def _peak_mib(model: GPT, x: torch.Tensor) -> float:
    """Peak MiB of CPU tensors alive during one forward + backward (parameters included), measured by
    the benchmark's own ``peak_mib`` (benchmarks/activation_checkpointing.py), so the two agree."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "activation_checkpointing.py"
    spec = importlib.util.spec_from_file_location("bench_activation_checkpointing", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.peak_mib(model, x)


def test_checkpointing_lowers_the_peak_memory_of_a_training_step():
    """8 narrow layers over 16 x 256 tokens (activations dominate): the peak falls to less than half
    (measured: see docs/pretraining.md)."""
    model = _model(n_layer=8, max_seq_len=256)
    x = torch.randint(0, 128, (16, 256))
    plain = _peak_mib(model, x)
    set_activation_checkpointing(model)
    ckpt = _peak_mib(model, x)
    set_activation_checkpointing(model, False)
    again = _peak_mib(model, x)
    assert again == plain  # the measure is deterministic: the drop is not noise
    assert ckpt < 0.5 * plain, f"checkpointed {ckpt:.1f} MiB vs plain {plain:.1f} MiB"


def test_only_training_forwards_are_checkpointed():
    """Evaluation (no grad) and cached decoding run the blocks directly: same outputs, no recompute."""
    model = _model()
    set_activation_checkpointing(model)
    calls = []
    mlp = model.blocks[0].mlp
    forward = mlp.forward
    mlp.forward = lambda h: calls.append(1) or forward(h)
    x = torch.randint(0, 128, (1, 16))
    model.train()
    model(x, x).backward()
    assert len(calls) == 2  # forward + recomputation in the backward
    calls.clear()
    with torch.no_grad():
        model(x, x)
    model.eval()
    model(x, x)
    assert len(calls) == 2


def test_the_flag_reaches_the_model_through_the_trainer(tmp_path):
    cfg = TrainConfig(
        activation_checkpointing=True, max_steps=1, out_dir=str(tmp_path), dtype="fp32", progress=False
    )
    model = _model()
    trainer = Trainer(cfg, model)
    assert model.activation_checkpointing
    trainer.close()
    with pytest.raises(ValueError, match="--activation_checkpointing=true"):
        Trainer(cfg, torch.nn.Linear(4, 4))
