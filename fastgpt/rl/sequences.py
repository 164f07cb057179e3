"""Prompt + response token rows for the RL and preference stages, and their per-token log-probabilities.

Every stage after SFT scores *responses to prompts*: GRPO/PPO score their own samples, DPO and the
reward model score chosen and rejected replies. They share one layout:

- a row is ``prompt ids + response ids``, rows right-padded to the longest (right padding needs no
  document mask: a causal model never looks ahead, so real tokens never see the padding);
- ``response_mask[b, t] = 1`` where token ``t`` of row ``b`` is a trained response token (tokens the
  engine inserted, such as calculator outputs, are context, not actions: mask 0);
- for log-probabilities the row is shifted as in language modelling: ``inputs = ids[:, :-1]`` and
  ``targets = ids[:, 1:]`` with ``-100`` wherever the target is not a trained response token, so
  ``model.token_logprobs(inputs, targets)`` is ``log pi(response token | everything before it)`` and 0
  elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fastgpt import ops
from fastgpt.errors import UserError
from fastgpt.model import GPT, KVCache

__all__ = [
    "IGNORE",
    "ResponseBatch",
    "collate_responses",
    "length_buckets",
    "render_response",
    "response_logprobs",
    "shared_prompt_logprobs",
]

IGNORE = -100
# the cost of one more response pass in length_buckets, in padded tokens (measured on 2 CPU cores:
# docs/rl.md, Speed)
BUCKET_OVERHEAD = 64


@dataclass
class ResponseBatch:
    """Right-padded ``prompt + response`` rows (see the module docstring).

    ``ids`` ``(B, T)``; ``response_mask`` ``(B, T)`` bool; ``last`` ``(B,)`` index of each row's last
    token (where a reward model reads its score); ``prompt_lens`` ``(B,)``.
    """

    ids: torch.Tensor
    response_mask: torch.Tensor
    last: torch.Tensor
    prompt_lens: torch.Tensor

    @property
    def inputs(self) -> torch.Tensor:  # (B, T-1)
        return self.ids[:, :-1]

    @property
    def targets(self) -> torch.Tensor:  # (B, T-1): -100 except on trained response tokens
        return self.ids[:, 1:].masked_fill(~self.response_mask[:, 1:], IGNORE)

    @property
    def target_mask(self) -> torch.Tensor:  # (B, T-1) float: 1 where a log-probability is trained
        return self.response_mask[:, 1:].float()

    def to(self, device: torch.device | str) -> ResponseBatch:
        return ResponseBatch(
            *(t.to(device) for t in (self.ids, self.response_mask, self.last, self.prompt_lens))
        )

    def rows(self, index: torch.Tensor | slice) -> ResponseBatch:
        """A sub-batch of rows, trimmed to its own longest row."""
        sub = ResponseBatch(
            self.ids[index], self.response_mask[index], self.last[index], self.prompt_lens[index]
        )
        width = int(sub.last.max()) + 1 if sub.last.numel() else 1
        return ResponseBatch(sub.ids[:, :width], sub.response_mask[:, :width], sub.last, sub.prompt_lens)


def collate_responses(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    trained: Sequence[Sequence[int]] | None = None,
    pad_id: int = 0,
) -> ResponseBatch:
    """Rows ``prompts[i] + responses[i]``; ``trained[i][j]`` (default all 1) marks which response tokens
    are the model's own (``Completion.sampled``)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    B, T = len(prompts), max(lengths)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        if not p:
            raise ValueError(f"row {b}: empty prompt (a response needs at least one token of context)")
        ids[b, : lengths[b]] = torch.tensor([*p, *r], dtype=torch.long)
        flags = trained[b] if trained is not None else [1] * len(r)
        if len(flags) != len(r):
            raise ValueError(f"row {b}: {len(flags)} trained flags for {len(r)} response tokens")
        mask[b, len(p) : lengths[b]] = torch.tensor([bool(f) for f in flags], dtype=torch.bool)
    last = torch.tensor([n - 1 for n in lengths], dtype=torch.long)
    return ResponseBatch(ids, mask, last, torch.tensor([len(p) for p in prompts], dtype=torch.long))


def render_response(
    chat_format: Any, prompt: Sequence[dict[str, Any]], reply: str
) -> tuple[list[int], list[int]]:
    """``(prompt_ids, response_ids)`` of an assistant ``reply`` to ``prompt`` in the model's chat format.

    The prompt ids are exactly what generation would start from (``render_prompt``), so a reply scored
    here is scored in the same context it would be sampled in; the response ends with the format's
    end-of-turn token. A chat template that renders earlier turns differently once a reply follows
    cannot be split this way and is an error.
    """
    prefix = chat_format.render_prompt(list(prompt))
    full, _ = chat_format.render([*prompt, {"role": "assistant", "content": reply}])
    if full[: len(prefix)] != prefix:
        raise UserError("the chat format renders the prompt differently once a reply follows it")
    return prefix, full[len(prefix) :]


def response_logprobs(
    model: torch.nn.Module, batch: ResponseBatch, *, share_prompts: bool = False
) -> torch.Tensor:
    """``(B, T-1)`` fp32 log-probabilities of the trained response tokens (0 elsewhere).

    ``share_prompts=True`` (GRPO: G samples of each prompt are consecutive rows) runs each distinct
    prompt through the model once instead of once per row, when ``model`` is a plain
    :class:`fastgpt.GPT` and consecutive rows share prompts (:func:`shared_prompt_logprobs`); otherwise,
    and for a wrapped model (DeepSpeed, ``torch.compile``), the one full forward."""
    if share_prompts:
        out = shared_prompt_logprobs(model, batch)
        if out is not None:
            return out
    return model.token_logprobs(batch.inputs, batch.targets, ignore_index=IGNORE)


def shared_prompt_logprobs(
    model: torch.nn.Module, batch: ResponseBatch, *, bucket_overhead: int | None = None
) -> torch.Tensor | None:
    """:func:`response_logprobs` computed with each run of consecutive rows that share a prompt
    forwarding that prompt once: the prompts (without their last token) go through the model once
    into a :class:`fastgpt.model.KVCache` (left-padded, as the inference engine prefills), the cache
    rows are repeated for the rows that continue them, and each row's last prompt token plus its
    response tokens run on top, attending to the shared keys/values. Gradients flow through the
    cache, so the prompts' activations receive the summed gradient of all their rows: the same
    log-probabilities and gradients as the full forward up to float rounding (tested), for the cost
    of ``prompts x prompt length + rows x response length`` tokens instead of ``rows x (prompt +
    response)``.

    The response passes do not pad every row to the longest response: rows are sorted by response
    length and run in a few length buckets (:func:`length_buckets`), each padded only to its own
    longest row, and the output head runs only at the trained tokens (never at padding, prompt or
    engine-inserted positions). Sampled answers vary widely in length (a GRPO group of 8 holds
    5-token and 48-token answers), so this removes most of the padding a single batch would compute.
    ``bucket_overhead``: :func:`length_buckets`' cost of one more pass (default ``BUCKET_OVERHEAD``).

    Returns None where it does not apply: ``model`` is not a plain :class:`fastgpt.GPT` (wrapped
    models keep their own forward), activation checkpointing is on (the cached path keeps every
    block's activations), a prompt has a single token, no two consecutive rows share a prompt, or no
    token is trained (the full forward then keeps the loss attached to the graph)."""
    if type(model) is not GPT or model.activation_checkpointing:
        return None
    ids, device = batch.ids, batch.ids.device
    B, T = ids.shape
    plen = batch.prompt_lens.tolist()
    if min(plen) < 2 or T < 2 or not bool(batch.response_mask[:, 1:].any()):
        return None
    starts, group = [0], [0]
    for r in range(1, B):
        same = plen[r] == plen[r - 1] and torch.equal(ids[r, : plen[r]], ids[r - 1, : plen[r]])
        if not same:
            starts.append(r)
        group.append(len(starts) - 1)
    if len(starts) == B:
        return None
    # each row's response pass: inputs p - 1 .. last - 1 (its last prompt token and the response but
    # its final token), predicting tokens p .. last
    lengths = [max(0, int(e) - p + 1) for e, p in zip(batch.last.tolist(), plen)]
    buckets = length_buckets(lengths, BUCKET_OVERHEAD if bucket_overhead is None else bucket_overhead)
    width = max((max(lengths[r] for r in b) for b in buckets), default=0)
    # ---- the distinct prompts minus their last token, left-padded, into a cache
    pre = [plen[r] - 1 for r in starts]
    longest = max(pre)
    prefix = torch.zeros(len(starts), longest, dtype=torch.long, device=device)
    for u, r in enumerate(starts):
        prefix[u, longest - pre[u] :] = ids[r, : pre[u]]
    position_ids = doc_ids = None
    if min(pre) < longest:
        pad = torch.tensor([longest - n for n in pre], device=device)[:, None]
        ar = torch.arange(longest, device=device)[None, :]
        doc_ids = (ar >= pad).to(torch.int32)  # 0 on padding: never attended to
        position_ids = (ar - pad).clamp(min=0)
    cache = KVCache(model.config, len(starts), longest + width, device=device)
    model.hidden_states(prefix, position_ids=position_ids, doc_ids=doc_ids, kv_cache=cache)
    # ---- each bucket's rows: last prompt token and response, on top of their prompt's keys/values
    inputs_all, targets_all = batch.inputs, batch.targets
    group_t = torch.tensor(group, device=device)
    hidden, targets, where = [], [], []
    for bucket in buckets:
        rows_t = torch.tensor(bucket, device=device)
        w = max(lengths[r] for r in bucket)
        step = torch.arange(w, device=device)[None, :]
        inside = step < torch.tensor([lengths[r] for r in bucket], device=device)[:, None]
        at = torch.where(inside, batch.prompt_lens.to(device)[rows_t, None] - 1 + step, 0)
        inputs = inputs_all[rows_t].gather(1, at).masked_fill(~inside, 0)
        target = targets_all[rows_t].gather(1, at).masked_fill(~inside, IGNORE)
        index = group_t[rows_t]
        kv = KVCache(model.config, len(bucket), cache.max_len, device=device)
        kv.k_layers = [k.index_select(0, index) for k in cache.k_layers]
        kv.v_layers = [v.index_select(0, index) for v in cache.v_layers]
        kv.doc_ids = None if cache.doc_ids is None else cache.doc_ids.index_select(0, index)
        kv.next_pos, kv.pos = cache.next_pos.index_select(0, index), cache.pos
        h = model.hidden_states(inputs, kv_cache=kv)  # (rows, w, C)
        trained = target != IGNORE
        hidden.append(h[trained])
        targets.append(target[trained])
        where.append((rows_t[:, None] * (T - 1) + at)[trained])  # flat index into (B, T-1)
    out = torch.zeros(B * (T - 1), dtype=torch.float32, device=device)
    nll = token_nll(torch.cat(hidden), model.lm_head_weight, torch.cat(targets))  # (trained tokens,)
    return out.index_put((torch.cat(where),), -nll.float()).view(B, T - 1)


def length_buckets(lengths: Sequence[int], overhead: int = BUCKET_OVERHEAD) -> list[list[int]]:
    """Row indices grouped into buckets of similar ``lengths`` (rows of length 0 left out), minimising
    ``sum(rows x longest length)`` over the buckets plus ``overhead`` per bucket: the padded tokens a
    batched pass computes against the fixed cost of one more pass (a bucket's passes through every
    layer, and its copy of the prompt keys/values). Exact, by dynamic programming over the sorted
    lengths (O(rows^2))."""
    order = sorted((r for r in range(len(lengths)) if lengths[r] > 0), key=lambda r: lengths[r])
    n = len(order)
    best = [0] + [0] * n  # best[j]: cheapest split of the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        w = lengths[order[j - 1]]
        best[j], cut[j] = min((best[i] + (j - i) * w + overhead, i) for i in range(j))
    buckets, j = [], n
    while j > 0:
        buckets.append(order[cut[j] : j])
        j = cut[j]
    return buckets[::-1]


# the largest (tokens x vocabulary) gradient token_nll keeps from its forward for the backward, in elements
TOKEN_NLL_MAX_SAVED = 2**28


def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(N,)`` fp32 ``-log softmax(hidden @ weight.T)[n, targets[n]]``, every row a counted token.

    What ``ops.linear_cross_entropy(..., reduction="none")`` computes; on the CPU/torch path that op
    checkpoints each chunk of logits (per-row gradient scales are known only in the backward) and so
    recomputes the output head's GEMM in the backward: four head GEMMs per token where three suffice.
    Here the forward keeps ``d nll / d logits`` (softmax minus one-hot, ``N x V``) and the backward
    scales it by the rows' incoming gradients: the head costs three GEMMs (a fifth of SmolLM2's
    per-token FLOPs are in its head). Used when a gradient is needed, fits ``TOKEN_NLL_MAX_SAVED``
    elements and the Triton path does not apply; otherwise the op itself."""
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    too_big = hidden.shape[0] * weight.shape[0] > TOKEN_NLL_MAX_SAVED
    if not needs_grad or too_big or ops.use_triton(hidden):
        return ops.linear_cross_entropy(hidden, weight, targets, reduction="none")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):  # the head's GEMM in the autocast dtype, as F.linear
        hidden = hidden.to(torch.get_autocast_dtype(device_type))
    with torch.autocast(device_type, enabled=False):
        return _TokenNLL.apply(hidden, weight, targets)


class _TokenNLL(torch.autograd.Function):
    """:func:`token_nll`'s head and log-softmax, chunked over rows, keeping the logit gradients."""

    CHUNK = 256  # rows per chunk: (256, V) fp32 logits, one efficient CPU GEMM each

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = weight.to(hidden.dtype)
        losses, grads = [], []
        for start in range(0, hidden.shape[0], _TokenNLL.CHUNK):
            h, t = hidden[start : start + _TokenNLL.CHUNK], targets[start : start + _TokenNLL.CHUNK]
            logp = torch.log_softmax(h @ w.t(), dim=-1, dtype=torch.float32)  # (n, V)
            losses.append(-logp.gather(1, t[:, None]).squeeze(1))
            grad = logp.exp_()  # softmax - onehot = d nll / d logits
            grad[torch.arange(t.numel(), device=t.device), t] -= 1.0
            grads.append(grad.to(hidden.dtype))
        ctx.save_for_backward(hidden, w, *grads)
        ctx.weight_dtype = weight.dtype
        return torch.cat(losses) if losses else hidden.new_zeros(0, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, w, *grads = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for i, grad in enumerate(grads):
            sl = slice(i * _TokenNLL.CHUNK, (i + 1) * _TokenNLL.CHUNK)
            g = grad * grad_out[sl, None].to(grad.dtype)  # (n, V)
            grad_hidden[sl] = g @ w
            grad_weight.addmm_(g.t().float(), hidden[sl].float())
        return grad_hidden, grad_weight.to(ctx.weight_dtype), None
