"""Training with every Triton kernel (interpreter) follows the torch path step by step.

Two copies of a shrunken ``tiny`` model (same init) train on the same batches with AdamW, one under
``fastgpt.ops.use_backend("triton")`` (norms, RoPE, SwiGLU/GELU, fused linear cross-entropy and flash
attention all run as Triton kernels), one under ``"torch"`` (the references, SDPA attention).

Tolerance: in fp32 each kernel matches its reference to ~1e-7..1e-6 relative (summation order, the
``exp``-based tanh of GELU). Adam's first steps are close to ``lr * sign(grad)``, so an element whose
gradient is ~0 can flip and the difference grows slowly: measured worst relative loss difference over 20
steps 2e-7 (llama) and 2.6e-5 (gpt2). ``LOSS_RTOL = 1e-4`` leaves room for BLAS/thread differences, while
a wrong gradient anywhere (a missing factor, a mask error) moves the loss by more than 1e-2 within a few
steps. Losses must also fall, so the comparison is made on a model that is really learning.

The default run trains 8 steps per family (~10 s each under the interpreter); the slow run trains 20.
"""

import copy

import pytest
import torch

import fastgpt.ops as ops
from fastgpt.model import GPT, GPTConfig

LOSS_RTOL = 1e-4
LR = 3e-3


def shrunken_tiny(family: str) -> GPTConfig:
    """The ``tiny`` preset made small enough for the interpreter (head dim 32: the smallest the Triton
    attention supports)."""
    return GPTConfig.from_preset(
        "tiny", family=family, vocab_size=96, n_layer=2, n_embd=64, n_head=2,
        n_kv_head=1 if family == "llama" else 2, max_seq_len=32,
    )  # fmt: skip


def arithmetic_batches(steps: int, batch: int, seq_len: int, vocab: int, seed: int = 0):
    """Rows ``start, start+stride, start+2*stride, ... (mod vocab)``: learnable from two tokens of context,
    so the loss falls quickly from ln(vocab)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        stride = torch.randint(1, 4, (batch, 1), generator=g)
        tokens = (start + stride * torch.arange(seq_len + 1)) % vocab
        yield tokens[:, :-1], tokens[:, 1:]


def train(model: GPT, backend: str, batches) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    losses = []
    with ops.use_backend(backend, attention="auto"):  # auto: attention follows the kernel backend
        for inputs, targets in batches:
            loss = model(inputs, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def compare(family: str, steps: int) -> None:
    config = shrunken_tiny(family)
    torch.manual_seed(0)
    model = GPT(config)
    twin = copy.deepcopy(model)
    data = dict(steps=steps, batch=2, seq_len=24, vocab=config.vocab_size)
    triton_losses = train(model, "triton", arithmetic_batches(**data))
    torch_losses = train(twin, "torch", arithmetic_batches(**data))
    for step, (a, b) in enumerate(zip(triton_losses, torch_losses)):
        assert abs(a - b) <= LOSS_RTOL * abs(b), f"step {step}: triton {a:.7f} vs torch {b:.7f}"
    assert triton_losses[-1] < triton_losses[0] - 0.05, f"not learning: {triton_losses}"


def test_triton_attention_is_available():
    """The convergence runs below include attention only if the attention kernel exists."""
    from fastgpt.kernels import attention

    assert hasattr(attention, "attention_triton")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_losses_match_torch_for_a_few_steps(family):
    compare(family, steps=8)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_losses_match_torch_for_twenty_steps(family):
    compare(family, steps=20)
