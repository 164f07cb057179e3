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

from fastgpt.errors import UserError
from fastgpt.model import GPT, KVCache

__all__ = [
    "IGNORE",
    "ResponseBatch",
    "collate_responses",
    "render_response",
    "response_logprobs",
    "shared_prompt_logprobs",
]

IGNORE = -100


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


def shared_prompt_logprobs(model: torch.nn.Module, batch: ResponseBatch) -> torch.Tensor | None:
    """:func:`response_logprobs` computed with each run of consecutive rows that share a prompt
    forwarding that prompt once: the prompts (without their last token) go through the model once
    into a :class:`fastgpt.model.KVCache` (left-padded, as the inference engine prefills), the cache
    rows are repeated for the rows that continue them, and each row's last prompt token plus its
    response tokens run on top, attending to the shared keys/values. Gradients flow through the
    cache, so the prompts' activations receive the summed gradient of all their rows: the same
    log-probabilities and gradients as the full forward up to float rounding (tested), for the cost
    of ``prompts x prompt length + rows x response length`` tokens instead of ``rows x (prompt +
    response)``; the output head also runs only over the response positions.

    Returns None where it does not apply: ``model`` is not a plain :class:`fastgpt.GPT` (wrapped
    models keep their own forward), activation checkpointing is on (the cached path keeps every
    block's activations), a prompt has a single token, or no two consecutive rows share a prompt."""
    if type(model) is not GPT or model.activation_checkpointing:
        return None
    ids, device = batch.ids, batch.ids.device
    B, T = ids.shape
    plen = batch.prompt_lens.tolist()
    if min(plen) < 2 or T < 2:
        return None
    starts, group = [0], [0]
    for r in range(1, B):
        same = plen[r] == plen[r - 1] and torch.equal(ids[r, : plen[r]], ids[r - 1, : plen[r]])
        if not same:
            starts.append(r)
        group.append(len(starts) - 1)
    if len(starts) == B:
        return None
    # ---- the distinct prompts minus their last token, left-padded, into a cache
    pre = [plen[r] - 1 for r in starts]
    longest = max(pre)
    width = T - min(plen)  # response positions: row r predicts from input p_r - 1 to T - 2
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
    rows = KVCache(model.config, B, cache.max_len, device=device)
    index = torch.tensor(group, device=device)
    rows.k_layers = [k.index_select(0, index) for k in cache.k_layers]
    rows.v_layers = [v.index_select(0, index) for v in cache.v_layers]
    rows.doc_ids = None if cache.doc_ids is None else cache.doc_ids.index_select(0, index)
    rows.next_pos, rows.pos = cache.next_pos.index_select(0, index), cache.pos
    # ---- each row's last prompt token and response, on top of its prompt's keys/values
    at = batch.prompt_lens.to(device)[:, None] - 1 + torch.arange(width, device=device)[None, :]
    inside = at < T - 1
    at = at.clamp(max=T - 2)
    inputs = batch.inputs.gather(1, at).masked_fill(~inside, 0)
    targets = batch.targets.gather(1, at).masked_fill(~inside, IGNORE)
    nll = model(inputs, targets, kv_cache=rows, ignore_index=IGNORE, loss_reduction="none")  # (B, width)
    out = torch.zeros(B, T - 1 + width, dtype=nll.dtype, device=device)
    out = out.scatter(1, torch.where(inside, at, T - 1 + torch.arange(width, device=device)), -nll)
    return out[:, : T - 1]
