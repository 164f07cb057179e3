"""A compiled single-token decode step over a static-shape KV cache (``Engine(..., compile=True)``).

Why: at batch 1 a decode step of a small model is ~25 small matrix-vector products plus a few hundred
tiny ops; run eagerly, the per-op dispatch and the allocation of every intermediate cost about as much
as the weight reads themselves (the tiny preset: ~1.8 ms of matmuls in a ~4 ms step on one core). One
``torch.compile``d graph removes that overhead, and inductor's *freezing* turns the weights into
constants that it can pre-pack for the CPU's matmul library. The step must therefore have shapes that
never change, or every token would compile a new graph:

- the cache is allocated once at a fixed length (``static_cache_len``: a power of two, so a handful of
  lengths cover every request) and the new key/value is written *in place* at slot ``slot``;
- attention runs over the *whole* cache with a boolean mask: a slot is visible when it is already
  written (``<= slot``), in the row's current document (left padding is document 0) and, with a
  sliding window, within it. Masked slots get probability 0, so this is the same attention as over
  the written prefix;
- the slot and each row's position id are tensors, so advancing them changes no shape and no guard.

So there is one graph per (batch size, cache length, dtype, device). The prefill stays the model's own
eager forward, which fills the same cache.

Frozen weights are *copied into the compiled graph*: the step records the parameters' version counters
and recompiles if the model's weights change in place (an optimizer step, ``load_state_dict``), so an
engine shared with a training loop never decodes with stale weights (it pays a recompile instead, so
RL rollouts should use the eager engine).
"""

from __future__ import annotations

import itertools
import logging
import time
import types

import torch
import torch.nn.functional as F

from fastgpt import ops
from fastgpt.errors import UserError
from fastgpt.model.kv_cache import KVCache

__all__ = ["COMPILE_MODES", "CompiledDecodeStep", "decode_step", "static_cache_len"]

log = logging.getLogger(__name__)

MIN_STATIC_CACHE_LEN = 64

# Inductor settings per compile mode, measured on the tiny preset at batch 1 on one CPU core
# (docs/inference.md): ``freezing`` makes the weights constants that inductor may pre-pack;
# ``cpp_wrapper`` launches the kernels from C++ instead of a Python function (per-step overhead);
# ``max_autotune_gemm`` benchmarks matmul implementations at compile time, including inductor's own
# C++ GEMM templates over pre-packed weights, which on CPU stream a matrix-vector product much faster
# than the MKL call (about 2x the step speed again, for 1.5-3x the compile time).
COMPILE_MODES: dict[str, dict[str, bool]] = {
    "default": {"freezing": True, "cpp_wrapper": True},
    "max-autotune": {"freezing": True, "cpp_wrapper": True, "max_autotune_gemm": True},
    # weights stay graph inputs (read at every call): a model trained between generations (RL rollouts)
    # never recompiles; slower steps than frozen weights, no recompile after an optimizer step
    "live": {"freezing": False, "cpp_wrapper": True},
}


def static_cache_len(needed: int, context_len: int) -> int:
    """The cache length to allocate for ``needed`` slots: the next power of two (at least
    ``MIN_STATIC_CACHE_LEN``), capped at the model's context. Few distinct lengths -> few compiles."""
    length = MIN_STATIC_CACHE_LEN
    while length < needed:
        length *= 2
    return max(needed, min(length, context_len))


def _attend(attn, x, rope, k_cache, v_cache, slot, visible):
    """One layer's attention for one new token per row. x ``(B, 1, C)``; k/v_cache ``(B, Hkv, S, hd)``
    (written in place at ``slot``); visible ``(B, 1, 1, S)`` -> ``(B, 1, C)``."""
    B = x.shape[0]
    H, Hkv, hd = attn.n_head, attn.n_kv_head, attn.head_dim
    q, k, v = attn.qkv(x).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
    q = q.view(B, 1, H, hd).transpose(1, 2)  # (B, H, 1, hd)
    k = k.view(B, 1, Hkv, hd).transpose(1, 2)  # (B, Hkv, 1, hd)
    v = v.view(B, 1, Hkv, hd).transpose(1, 2)
    if rope is not None:
        q, k = ops.rope(q, k, *rope)
    k_cache.index_copy_(2, slot, k.to(k_cache.dtype))
    v_cache.index_copy_(2, slot, v.to(v_cache.dtype))
    y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible, enable_gqa=H != Hkv)
    return attn.proj(y.transpose(1, 2).reshape(B, 1, H * hd))


def decode_step(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    slot: torch.Tensor,
    k: list[torch.Tensor],
    v: list[torch.Tensor],
    doc_ids: torch.Tensor,
) -> torch.Tensor:
    """Feed ``tokens`` ``(B, 1)`` at cache slot ``slot`` ``(1,)``; returns fp32 logits ``(B, V)``.

    ``positions`` ``(B,)`` (each row's position id), ``k``/``v`` (per layer ``(B, Hkv, S, hd)``) and
    ``doc_ids`` ``(B, S)`` are the cache's tensors and are updated in place. Plain torch, so it runs
    eagerly as well (the tests compare both)."""
    window = model.config.window
    # the new token belongs to its row's current document: the one of the previous slot
    doc_ids.index_copy_(1, slot, doc_ids.index_select(1, slot - 1))
    cached = torch.arange(doc_ids.shape[1], device=doc_ids.device)  # (S,)
    visible = (cached <= slot) & (doc_ids == doc_ids.index_select(1, slot))  # (B, S)
    if window is not None:
        visible = visible & (cached > slot - window)
    visible = visible[:, None, None, :]  # (B, 1, 1, S): broadcast over heads and the one query
    pos = positions[:, None]  # (B, 1)
    x = model.wte(tokens)  # (B, 1, C)
    rope = None
    if model.wpe is not None:
        x = x + model.wpe(pos)
    else:
        rope = (model.rope_cos[pos], model.rope_sin[pos])  # (B, 1, hd/2) each
    for i, block in enumerate(model.blocks):
        x = x + _attend(block.attn, block.attn_norm(x), rope, k[i], v[i], slot, visible)
        x = x + block.mlp(block.mlp_norm(x))
    positions.add_(1)
    h = model.final_norm(x)[:, -1]  # (B, C)
    return F.linear(h, model.lm_head_weight.to(h.dtype)).float()


def weights_version(model: torch.nn.Module) -> tuple:
    """Identity and in-place version of every parameter and buffer: changes when the weights do."""
    tensors = list(model.parameters()) + list(model.buffers())
    return tuple((id(t), t._version) for t in tensors)


class CompiledDecodeStep:
    """``decode_step`` under ``torch.compile`` (inductor, weights frozen), fed from a :class:`KVCache`.

    One compiled graph per (batch, cache length, dtype, device), each from its own copy of
    ``decode_step`` so that dynamo's per-function recompile limit never silently drops to eager and a
    graph with frozen weights is never reused after the weights change. The kernel-backend seam is
    pinned to the torch references while tracing and running, so inductor generates its own fused code
    from them (hand-written Triton kernels are for the eager paths). ``compile_seconds`` accumulates the
    wall time of the calls that compiled. Call it under ``torch.inference_mode()`` (the engine does):
    inductor freezes weights only in graphs compiled without autograd."""

    def __init__(self, model: torch.nn.Module, mode: str = "default"):
        if mode not in COMPILE_MODES:
            raise UserError(f"compile mode must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")
        self.model = model
        self.mode = mode
        self.compile_seconds = 0.0
        self._graphs: dict[tuple, object] = {}
        self._version = weights_version(model)

    def drop_stale_graphs(self) -> None:
        """Forget the compiled graphs if the model's weights changed in place since they were compiled
        (their frozen copies are stale). Cheap; the engine calls it once per generation, not per token."""
        if not COMPILE_MODES[self.mode]["freezing"]:
            return  # the graphs read the weights at every call: never stale
        version = weights_version(self.model)
        if version != self._version:
            log.info("model weights changed since the decode step was compiled: recompiling")
            self._graphs.clear()
            self._version = version

    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed ``tokens`` ``(B, 1)`` to the model through ``cache`` (which advances by one); returns fp32
        logits ``(B, V)``. Call :meth:`drop_stale_graphs` first if the weights may have changed."""
        if cache.pos + 1 > cache.max_len:
            raise ValueError(f"KVCache is full: {cache.pos} cached + 1 new > max_len={cache.max_len}")
        k, v, doc_ids = cache.static_tensors()
        slot = torch.tensor([cache.pos], device=tokens.device)
        args = (self.model, tokens, cache.next_pos, slot, k, v, doc_ids)
        key = (
            tuple(tokens.shape),
            tuple(k[0].shape),
            k[0].dtype,
            tokens.device,
            torch.is_inference_mode_enabled(),  # freezing applies to inference graphs only
        )
        with ops.use_backend("torch", attention="sdpa"):
            graph = self._graphs.get(key)
            if graph is not None:
                # Each graph is the only entry of its own function, and what its guards would check
                # (shapes, dtype, device, grad mode, the model, its weights) is this dict's key and
                # drop_stale_graphs, so dynamo's per-call guard evaluation (~0.1 ms) is skipped.
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    logits = graph(*args)
            else:
                logits = self._compile(key, args)
        cache.advance(1)
        return logits

    def _compile(self, key: tuple, args: tuple) -> torch.Tensor:
        """Compile the graph for ``key`` by running it once, with the mode's inductor settings patched
        around this call only (inductor reads ``freezing`` from its global config;
        ``torch.compile(options=...)`` does not reach it)."""
        start = time.perf_counter()
        graph = torch.compile(_fresh_copy(decode_step), fullgraph=True, dynamic=False)
        with torch._inductor.config.patch(COMPILE_MODES[self.mode]):
            logits = graph(*args)
        self._graphs[key] = graph
        self.compile_seconds += time.perf_counter() - start
        return logits


def _fresh_copy(fn):
    """A new function object with its own code object: torch.compile keeps its graphs (and their
    guards and recompile count) on the code object."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{next(_copies)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


_copies = itertools.count()
