"""The dispatch seam: every hot op of the model goes through here.

Model code calls ``fastgpt.ops.<op>(...)`` and never imports Triton. Each op picks one of:

- ``torch``: the plain-PyTorch reference that lives next to its kernel in ``fastgpt/kernels/<op>.py``;
- ``triton``: the hand-written Triton kernel (on CPU tensors this needs ``TRITON_INTERPRET=1`` set
  before triton is imported; that is how the tests run it).

Choose with the environment variable ``FASTGPT_KERNELS=auto|triton|torch`` or :func:`set_backend`.
``auto`` (the default) uses Triton for CUDA tensors and the reference otherwise.

Under ``torch.compile`` the choice is made while tracing: it reads this module's backend variables
(``FASTGPT_KERNELS`` is read once, at import) and the tensor's device, plain Python that dynamo evaluates
and guards on, so it adds no graph break; each Triton entry point is a ``torch.ops.fastgpt`` custom op
that dynamo keeps as one node (docs/kernels.md, "Custom ops and torch.compile"). Dynamo guards on the
backend variables, so switching backends after compiling recompiles at the next call.

Attention has more implementations worth comparing, chosen with ``FASTGPT_ATTENTION`` or
:func:`set_attention_backend`: ``auto`` (follow the kernel backend), ``triton``, ``sdpa``
(``torch.nn.functional.scaled_dot_product_attention``, which has flash/cuDNN/efficient kernels on GPU),
``flash_attn`` (the ``flash-attn`` package, GPU only, installed with ``pip install fastgpt[gpu]``) and
``naive`` (materialised softmax in fp32; a test baseline) and ``math`` (materialised, GEMMs in the
inputs' dtype). ``auto`` on CPU picks ``math`` for bf16 training steps under ``torch.compile`` with at
most ``MATH_ATTENTION_MAX_KEYS`` keys (faster there than SDPA's CPU flash kernel; see
:func:`use_math_attention`), SDPA otherwise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from fastgpt.errors import UserError
from fastgpt.kernels.activations import gelu_tanh_reference, gelu_tanh_triton, swiglu_reference, swiglu_triton
from fastgpt.kernels.attention import (
    attention_math,
    attention_naive,
    attention_reference,
    attention_triton,
)
from fastgpt.kernels.attention import (
    document_extents as attention_document_extents,
)
from fastgpt.kernels.attention_decode import DECODE_MAX_QUERIES, attention_decode
from fastgpt.kernels.attention_flash_attn import attention_flash_attn
from fastgpt.kernels.cross_entropy import (
    cross_entropy_reference,
    cross_entropy_triton,
    linear_cross_entropy_chunked,
    linear_cross_entropy_triton,
)
from fastgpt.kernels.norms import (
    add_rms_norm_reference,
    add_rms_norm_triton,
    layer_norm_reference,
    layer_norm_triton,
    rms_norm_reference,
    rms_norm_triton,
)
from fastgpt.kernels.rope import rope_reference, rope_triton

BACKENDS = ("auto", "triton", "torch")
ATTENTION_BACKENDS = ("auto", "triton", "sdpa", "flash_attn", "naive", "math")
# Longest key length for which ``auto`` picks the materialised ``math`` attention on CPU (compiled bf16
# training). Measured fwd+bwd per layer, 1 thread, batch x seq = 2048 tokens, 6 heads of 64: at 256 keys
# 41 ms vs 46 ms for SDPA's flash kernel, at 512 57 vs 72, at 1024 116 vs 90 (flash skips masked tiles).
MATH_ATTENTION_MAX_KEYS = 512
# ... and the most score elements (B x Hq x Tq x Tk) per layer: the materialised path keeps them for the
# backward (2-6 bytes each), SDPA's flash kernel does not. 2^24 (~50-100 MB per layer) covers the CPU
# bench config (3.1M) and the tiny preset's main job (4.2M) with room to spare.
MATH_ATTENTION_MAX_SCORES = 2**24


def _check(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UserError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


_backend = _check("FASTGPT_KERNELS", os.environ.get("FASTGPT_KERNELS", "auto"), BACKENDS)
_attention_backend = _check(
    "FASTGPT_ATTENTION", os.environ.get("FASTGPT_ATTENTION", "auto"), ATTENTION_BACKENDS
)


def set_backend(name: str) -> None:
    """Select the kernel backend for all ops: ``auto``, ``triton`` or ``torch``."""
    global _backend
    _backend = _check("kernel backend", name, BACKENDS)


def get_backend() -> str:
    return _backend


def set_attention_backend(name: str) -> None:
    """Select the attention implementation (see the module docstring)."""
    global _attention_backend
    _attention_backend = _check("attention backend", name, ATTENTION_BACKENDS)


def get_attention_backend() -> str:
    return _attention_backend


@contextlib.contextmanager
def use_backend(name: str, attention: str | None = None) -> Iterator[None]:
    """Temporarily switch backends: ``with fastgpt.ops.use_backend("triton"): ...``."""
    saved = (_backend, _attention_backend)
    set_backend(name)
    if attention is not None:
        set_attention_backend(attention)
    try:
        yield
    finally:
        set_backend(saved[0])
        set_attention_backend(saved[1])


def use_triton(x: torch.Tensor) -> bool:
    """Whether an op on tensor ``x`` runs the Triton kernel under the current backend."""
    if _backend == "triton":
        _check_triton_can_run(x)
        return True
    return _backend == "auto" and x.is_cuda


def _check_triton_can_run(x: torch.Tensor) -> None:
    """A forced Triton kernel on a CPU tensor without the interpreter is refused in one line, instead of
    failing deep inside Triton's launcher."""
    if not x.is_cuda and not _triton_interpreter_on():
        raise RuntimeError(
            f"the Triton kernels on a {x.device.type} tensor need the Triton interpreter: start Python with "
            "TRITON_INTERPRET=1 (slow; for tests), or use FASTGPT_KERNELS=auto|torch "
            "(and FASTGPT_ATTENTION=auto|sdpa) off the GPU"
        )


def _triton_interpreter_on() -> bool:
    """Triton reads ``TRITON_INTERPRET`` when a kernel module is first imported; a true value then runs
    the kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------- attention
def use_math_attention(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether ``auto`` runs the materialised attention: a bf16 CPU training step (q needs a gradient)
    being compiled, with at most ``MATH_ATTENTION_MAX_KEYS`` keys and ``MATH_ATTENTION_MAX_SCORES``
    score elements. Inductor then fuses the masked softmax
    and its backward around two batched bf16 GEMMs, which beats the CPU flash kernel at short lengths.
    Eager (unfused softmax), fp32 (flash is faster there), inference (no gradient: the compiled decode
    step keeps SDPA) and long sequences (quadratic scores, and flash skips the masked half) stay on SDPA."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and q.requires_grad
        and k.shape[-2] <= MATH_ATTENTION_MAX_KEYS
        and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= MATH_ATTENTION_MAX_SCORES
        and torch.compiler.is_compiling()
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    doc_ids: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
    doc_extents: torch.Tensor | None = None,
) -> torch.Tensor:
    """q ``(B, Hq, Tq, D)``, k/v ``(B, Hkv, Tk, D)`` -> ``(B, Hq, Tq, D)``.

    Causal alignment is bottom-right (query ``i`` is at key position ``Tk - Tq + i``); ``doc_ids``
    ``(B, Tk)`` keeps packed documents (and padding) from attending to one another; ``window`` is a
    sliding-window size in tokens. ``doc_extents``: :func:`document_extents` of ``doc_ids``, computed
    once per forward and shared by the layers (the Triton kernel reads it; other backends ignore it).
    See ``fastgpt/kernels/attention.py``.
    """
    backend = _attention_backend
    if backend == "auto":
        # the Triton kernel covers fp16/bf16 on GPU with head dims 32/64/96/128; anything else (fp32 on a
        # GPU, an unusual head dim) goes to SDPA rather than failing
        supported = q.shape[-1] in (32, 64, 96, 128) and (not q.is_cuda or q.dtype != torch.float32)
        backend = "triton" if use_triton(q) and supported else "sdpa"
        if backend == "sdpa" and use_math_attention(q, k):
            backend = "math"
    kwargs = dict(causal=causal, doc_ids=doc_ids, window=window, scale=scale)
    if backend == "sdpa":
        return attention_reference(q, k, v, **kwargs)
    if backend == "naive":
        return attention_naive(q, k, v, **kwargs)
    if backend == "math":
        return attention_math(q, k, v, **kwargs)
    if backend == "flash_attn":
        return attention_flash_attn(q, k, v, **kwargs)
    _check_triton_can_run(q)
    if use_decode_attention(q, k, v):
        return attention_decode(q, k, v, **kwargs)
    return attention_triton(q, k, v, **kwargs, doc_extents=doc_extents)


def use_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton backend runs the split-KV decode kernel (``fastgpt.kernels.attention_decode``)
    instead of the training forward: at most ``DECODE_MAX_QUERIES`` queries, no more than the keys, and
    no gradient needed (the decode kernel has no backward). That is every decode step and short prefill
    of generation (chat, the server, RL rollouts): there the forward's 128-row query tiles would hold
    one row each and read each K/V head once per query head."""
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return q.shape[2] <= DECODE_MAX_QUERIES and q.shape[2] <= k.shape[2] and not needs_grad


def document_extents(doc_ids: torch.Tensor) -> torch.Tensor | None:
    """What the Triton attention reads about ``doc_ids`` (``fastgpt.kernels.attention.document_extents``,
    one sort), for a model to compute once per forward and pass to every layer's :func:`attention`;
    None where attention on ``doc_ids``' device cannot run the Triton kernel (no work for the others)."""
    backend = _attention_backend
    if backend == "triton" or (backend == "auto" and use_triton(doc_ids)):
        return attention_document_extents(doc_ids)
    return None


# ------------------------------------------------------------------------------------------------ norms
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim with fp32 statistics."""
    if use_triton(x):
        return rms_norm_triton(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused ``residual + x`` then RMSNorm; returns ``(normed, new_residual)``."""
    if use_triton(x):
        return add_rms_norm_triton(x, residual, weight, eps)
    return add_rms_norm_reference(x, residual, weight, eps)


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """LayerNorm over the last dim with fp32 statistics."""
    if use_triton(x):
        return layer_norm_triton(x, weight, bias, eps)
    return layer_norm_reference(x, weight, bias, eps)


# ------------------------------------------------------------------------------------------------- rope
def rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q ``(B, Hq, T, D)`` and k ``(B, Hkv, T, D)`` by ``cos``/``sin`` ``(B or 1, T, D/2)``."""
    if use_triton(q):
        return rope_triton(q, k, cos, sin)
    return rope_reference(q, k, cos, sin)


# ------------------------------------------------------------------------------------------ activations
def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``."""
    if use_triton(gate):
        return swiglu_triton(gate, up)
    return swiglu_reference(gate, up)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (GPT-2)."""
    if use_triton(x):
        return gelu_tanh_triton(x)
    return gelu_tanh_reference(x)


# ---------------------------------------------------------------------------------------- cross-entropy
def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """logits ``(N, V)``, targets ``(N,)`` -> fp32 loss (see ``fastgpt/kernels/cross_entropy.py``)."""
    kwargs = dict(ignore_index=ignore_index, z_loss=z_loss, softcap=softcap, reduction=reduction)
    if use_triton(logits):
        return cross_entropy_triton(logits, targets, **kwargs)
    return cross_entropy_reference(logits, targets, **kwargs)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    softcap: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """hidden ``(N, C)``, weight ``(V, C)``, targets ``(N,)`` -> loss, without materialising the full
    ``(N, V)`` logits (chunked on the torch path, fused on the Triton path)."""
    kwargs = dict(bias=bias, ignore_index=ignore_index, z_loss=z_loss, softcap=softcap, reduction=reduction)
    if use_triton(hidden):
        return linear_cross_entropy_triton(hidden, weight, targets, **kwargs)
    return linear_cross_entropy_chunked(hidden, weight, targets, **kwargs)
