"""Inference engine: batched generation with a KV cache, sampling, stop tokens and calculator tool calls.

Generation is two phases. **Prefill** runs the prompts through the model once and fills the KV cache;
**decode** then feeds one token per row per step, reusing the cached keys/values, so a step costs one
token's worth of compute instead of the whole sequence.

- Several prompts are batched by left padding: pad tokens get document id 0 and real tokens id 1, so the
  attention's document mask (``doc_ids``) keeps real tokens from ever seeing the padding, and position
  ids count from each prompt's own first token. Left (not right) padding keeps every row's next token at
  the same cache position, so a decode step is one batched forward.
- ``n`` samples of one prompt share one prefill: the cache is copied ``n`` times per prompt
  (``KVCache.repeat``) before the first sampled token. Rows are prompt-major: prompt ``i``'s samples
  are rows ``i*n .. i*n+n-1``.
- **Continuous batching**: a row that finishes (stop token, tool call handed to the caller) leaves the
  decode batch once the live rows fit a smaller batch bucket (a power of two), so later steps cost what
  the rows still running cost; compacting only at bucket boundaries bounds the cache copies to a few per
  generation and, for the compiled step, the graphs to a few shapes.
- **Batched per-token work**: sampling, stop detection, the length limit and the detection of a tool
  call's start are tensor operations over the whole batch each step; Python touches only the rows that
  are inside a tool call, and each row's tokens are read back once at the end.
- Tool use: when a row writes ``<|tool_call_start|> CALL <|tool_call_end|>`` the engine reads the tool's
  name from CALL (:func:`fastgpt.conversation.parse_tool_call_text`: ``python\nCODE``, or a bare
  calculator expression), runs it from its registry (:data:`fastgpt.tools.TOOLS`: ``calculator``,
  ``python``) and *forces* ``<|tool_output_start|> RESULT <|tool_output_end|>`` into that row, one
  token per step alongside the other rows' sampled tokens; then the model continues its turn. Forced
  tokens count toward ``max_tokens``. ``tools`` picks which registered tools run (``True``: all,
  ``False``: none, or a set of names); a call of any other tool ends the row with
  ``finish_reason="tool_calls"`` for the caller to run it.
- Sampling: ``temperature`` (0 = greedy), ``top_k``, ``top_p``; each prompt has its own random stream
  (``seeds``, or ``seed + i`` for prompt ``i``) from which its ``n`` rows draw one uniform each per
  step, inverted through the row's CDF (:func:`fastgpt.model.sampling.sample_with_uniforms`).
  So a prompt's samples depend only on its seed and its own tokens, not on which other prompts share the
  batch or when their rows leave it: an RL rollout may batch any problems together and stay reproducible.
  ``logprobs`` are the model's own log-probabilities of the chosen tokens (temperature 1, no
  top-k/top-p: the policy's probability, as RL needs it).
- Compute dtype: the model's own, or, when called under ``torch.autocast`` with a lower-precision dtype
  (the training loop's ``--dtype``), a copy of the weights in that dtype, refreshed only when the
  model's weights changed (an optimizer step): autocast would otherwise cast every weight for every
  token. ``dtype=`` fixes it explicitly.
- A prompt that leaves no room in the model's context is an error; otherwise ``max_tokens`` is capped
  at the room left (``finish_reason="length"`` when it is reached).
- ``compile=...`` (opt-in): decode steps run a ``torch.compile``d single-token forward over a
  static-shape cache (:mod:`fastgpt.decode_step`); the prefill and everything above stay the same.
"""

from __future__ import annotations

import contextlib
import copy
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from fastgpt.chat.template import format_for
from fastgpt.conversation import parse_tool_call_text
from fastgpt.decode_step import CompiledDecodeStep, static_cache_len, weights_version
from fastgpt.errors import UserError
from fastgpt.model.kv_cache import KVCache
from fastgpt.model.sampling import sample_with_uniforms
from fastgpt.tools import TOOLS, Tool, run_tool

__all__ = ["Completion", "Engine", "batch_bucket"]


@dataclass
class Completion:
    """One generated continuation.

    ``tokens`` are everything appended after the prompt, including tool-output tokens the engine
    inserted and the stop token that ended it (if any); ``text`` is their decoded text without the stop
    token; ``sampled[i]`` is 1 where the model chose ``tokens[i]`` and 0 where the engine inserted it (RL
    trains only on sampled tokens); ``logprobs[i]`` is log p(tokens[i]) under the model (0.0 for
    inserted tokens), when requested.
    """

    tokens: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "tool_calls"
    logprobs: list[float] | None = None
    sampled: list[int] = field(default_factory=list)


def batch_bucket(rows: int) -> int:
    """The decode batch size that holds ``rows`` live rows: the next power of two. The batch shrinks
    only when the live rows fit a smaller bucket, so a generation compacts its cache at most
    log2(rows) times and a compiled step sees at most that many batch shapes."""
    size = 1
    while size < rows:
        size *= 2
    return size


class _ToolRow:
    """Python-side state of one row inside a tool call: the call's tokens, then the forced output."""

    __slots__ = ("call", "forced")

    def __init__(self) -> None:
        self.call: list[int] | None = []
        self.forced: list[int] = []


class _DecodeState:
    """Everything a generation tracks, batched. ``slot_rows[j]`` is the row held by batch slot ``j``;
    slots of finished rows stay (and are fed a dummy token) until the batch is compacted."""

    def __init__(self, R: int, max_tokens: int, device: torch.device, want_logprobs: bool):
        self.tokens = torch.zeros(max_tokens, R, dtype=torch.long, device=device)  # step-major
        self.logprobs = torch.zeros(max_tokens, R, device=device) if want_logprobs else None
        self.slot_rows = torch.arange(R, device=device)
        self.live = torch.ones(R, dtype=torch.bool, device=device)  # per slot
        self.lengths = [0] * R
        self.reasons: list[str | None] = [None] * R
        self.forced_at: dict[int, list[int]] = {}  # row -> steps where the engine inserted the token
        self.tools: dict[int, _ToolRow] = {}  # row -> tool-call state (rows inside a call only)
        self.n_live = R


class Engine:
    """Generation for a :class:`fastgpt.GPT` (see the module docstring). Call under no particular mode,
    the engine switches to inference mode itself."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        chat_format: Any = None,
        compile: bool | str = False,
        dtype: torch.dtype | None = None,
        tool_registry: Mapping[str, Tool] | None = None,
    ):
        """``compile`` (a :class:`fastgpt.GPT` only): ``True`` or ``"default"`` decodes through a
        ``torch.compile``d single-token step over a static-shape cache (:mod:`fastgpt.decode_step`),
        ``"max-autotune"`` also autotunes its matmuls (fastest steps, longest compile); both freeze the
        weights into the graph (an in-place weight change recompiles). ``"live"`` compiles without
        freezing: the graph reads the current weights at every call, so a model trained between
        generations (RL rollouts) is compiled once per (batch bucket, cache length) and never again.
        Same greedy tokens as eager; each new shape first compiles for seconds to a minute
        (``compile_seconds`` adds them up), so it is off by default.

        ``dtype``: decode with a copy of the weights in this dtype (refreshed when the model's weights
        change); default: the model's dtype, or the autocast dtype when called under autocast.

        ``tool_registry``: tool name -> callable (:mod:`fastgpt.tools`), the tools a generation's
        ``tools`` may run; default: the built-in ones (:data:`fastgpt.tools.TOOLS`)."""
        self.tool_registry = dict(TOOLS if tool_registry is None else tool_registry)
        self.model = model
        self.tokenizer = tokenizer
        self.dtype = dtype
        self._chat_format = chat_format
        self._compiled_step = None
        self._shadow: torch.nn.Module | None = None
        self._shadow_version: tuple | None = None
        self._head_key: tuple | None = None  # (weight identity, in-place version) of _head_packed
        self._head_packed: torch.Tensor | None = None
        if compile is not False and compile is not None:
            self._compile_mode = "default" if compile is True else compile
            self._compiled_step = CompiledDecodeStep(model, self._compile_mode)

    @property
    def compile_seconds(self) -> float:
        """Wall seconds spent compiling decode steps so far (0 without ``compile``)."""
        return self._compiled_step.compile_seconds if self._compiled_step is not None else 0.0

    @property
    def chat_format(self):
        if self._chat_format is None:
            self._chat_format = format_for(self.tokenizer)
        return self._chat_format

    @property
    def context_len(self) -> int:
        return int(self.model.config.max_seq_len)

    # ------------------------------------------------------------------------------------------ public
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        seeds: list[int] | None = None,
        n: int = 1,
        stop_ids: set[int] | None = None,
        tools: bool | Collection[str] = False,
        logprobs: bool = False,
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt (a list of token-id lists); see the module docstring.
        ``seeds`` (one per prompt) fixes each prompt's samples independently of the rest of the batch;
        ``seed`` alone gives prompt ``i`` the seed ``seed + i``."""
        sampling = (temperature, top_k, top_p, seed, seeds)
        steps = self._decode(prompts, max_tokens, sampling, n, stop_ids, tools, logprobs)
        state = deque(steps, maxlen=1)[0][0]  # run to the end; the state holds every row
        out = self._completions(state, logprobs)
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]

    def stream(self, prompt: list[int], **kwargs: Any) -> Iterator[int]:
        """Token ids of one completion of ``prompt`` as they are produced (sampled or inserted)."""
        if kwargs.get("n", 1) != 1:
            raise ValueError("stream() produces one completion (n=1)")
        kwargs.pop("n", None)
        kwargs.pop("logprobs", None)
        max_tokens = kwargs.pop("max_tokens")
        sampling = tuple(
            kwargs.pop(k, d)
            for k, d in (
                ("temperature", 1.0),
                ("top_k", None),
                ("top_p", None),
                ("seed", None),
                ("seeds", None),
            )
        )
        stop_ids, tools = kwargs.pop("stop_ids", None), kwargs.pop("tools", False)
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        for _, (rows, tokens) in self._decode([prompt], max_tokens, sampling, 1, stop_ids, tools, False):
            if rows.numel():
                yield int(tokens[0])

    def stream_batch(
        self,
        prompts: list[list[int]],
        *,
        max_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        n: int = 1,
        stop_ids: set[int] | None = None,
        tools: bool | Collection[str] = False,
    ) -> Iterator[tuple[list[int | None], list[str | None]]]:
        """Batched streaming (for servers): after every decode step, the token each row produced
        (``None`` for a row already finished) and each row's finish reason (``None`` while it runs).
        Rows are prompt-major: prompt ``i``'s samples are rows ``i*n .. i*n+n-1``."""
        sampling = (temperature, top_k, top_p, seed, None)
        R = len(prompts) * n
        for state, (rows, tokens) in self._decode(prompts, max_tokens, sampling, n, stop_ids, tools, False):
            new: list[int | None] = [None] * R
            for r, tok in zip(rows.tolist(), tokens.tolist()):
                new[r] = tok
            yield new, list(state.reasons)

    def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Completion:
        """The assistant's reply to ``messages``, rendered with the chat format (the tools named by
        ``tools`` run: ``True`` for every registered one)."""
        fmt = self.chat_format
        prompt = fmt.render_prompt(messages)
        kwargs.setdefault("stop_ids", fmt.stop_ids)
        return self.generate([prompt], **kwargs)[0][0]

    # ------------------------------------------------------------------------------------------ decoding
    def _format_or_none(self):
        """The chat format, or None for a tokenizer without chat tokens (plain text generation)."""
        try:
            return self.chat_format
        except (KeyError, ValueError):
            return None

    def _active_tools(self, tools: bool | Collection[str]) -> dict[str, Tool]:
        """The registered tools a generation runs: all (``True``), none (``False``) or those named."""
        if tools is True:
            return dict(self.tool_registry)
        if not tools:
            return {}
        missing = [n for n in tools if n not in self.tool_registry]
        if missing:
            raise UserError(f"tools: {missing[0]!r} is not registered (have {', '.join(self.tool_registry)})")
        return {n: self.tool_registry[n] for n in tools}

    def _stops_and_tools(
        self, stop_ids: set[int] | None, tools: Mapping[str, Tool]
    ) -> tuple[set[int], tuple[int, int] | None]:
        """Stop ids (given, else the chat format's) and the (call start, call end) ids to watch."""
        fmt = self._format_or_none()
        if stop_ids is None:
            stop_ids = fmt.stop_ids if fmt is not None else set()
        if fmt is None or not fmt.supports_tools:
            if tools:
                raise UserError("tools=True but the chat format has no tool-call tokens")
            return set(stop_ids), None
        return set(stop_ids), (fmt.tool_call_start_id, fmt.tool_call_end_id)

    def _decode_model(self) -> tuple[torch.nn.Module, Callable[[], contextlib.AbstractContextManager]]:
        """The module to decode with and the autocast setting to run it under: the model itself, or a
        copy of its weights in the compute dtype (``dtype``, else the active autocast dtype), refreshed
        when the model's parameters changed in place since the last generation."""
        param = next(self.model.parameters())
        dtype = self.dtype
        device_type = param.device.type
        if dtype is None and torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        if dtype is None or dtype == param.dtype:
            return self.model, contextlib.nullcontext

        version = weights_version(self.model)
        if self._shadow is None or next(self._shadow.parameters()).dtype != dtype:
            self._shadow = copy.deepcopy(self.model).eval().requires_grad_(False)
            for p in self._shadow.parameters():  # parameters only: buffers (rope tables) stay fp32
                p.data = p.data.to(dtype)
            self._shadow_version = version
        elif version != self._shadow_version:
            with torch.no_grad():
                for mine, theirs in zip(self._shadow.parameters(), self.model.parameters()):
                    mine.copy_(theirs)
            self._shadow_version = version
        return self._shadow, lambda: torch.autocast(device_type, enabled=False)

    def _packed_head(self, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The output head as a oneDNN GEMM on weights reordered once (per change of the weights) into
        its blocked layout, for an fp32 model on a CPU with oneDNN; None elsewhere (the model's own
        ``F.linear``). At decode batch sizes the head is a short-and-wide GEMM (rows x 576 @ 576 x 49k
        for SmolLM2), a fifth of a step's FLOPs, and the prepacked kernel runs it 1.6x faster than
        ``F.linear`` on the 2-core EPYC of docs/rl.md (Speed). Same logits up to float rounding (the
        summation order differs); the prepacked copy is refreshed whenever the weight changes in place
        (an optimizer step), so a rollout always samples from the current policy."""
        weight = getattr(model, "lm_head_weight", None)
        if (
            weight is None
            or weight.device.type != "cpu"
            or weight.dtype != torch.float32
            or not torch.backends.mkldnn.is_available()
            or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        ):
            return None
        key = (id(weight), weight._version)
        if self._head_key != key:
            with torch.no_grad():
                self._head_packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
            self._head_key = key
        packed = self._head_packed

        def head(hidden: torch.Tensor) -> torch.Tensor:  # (S, C) -> (S, V) fp32
            return torch.ops.mkldnn._linear_pointwise(hidden.contiguous(), packed, None, "none", [], "")

        return head

    def _decode(self, prompts, max_tokens, sampling, n, stop_ids, tools, want_logprobs):
        """Yields ``(state, (rows, tokens))`` after every step: the rows that produced a token this
        step and those tokens (tensors); ``state`` (:class:`_DecodeState`) holds the finish reasons.
        Inference mode (and the compute dtype's autocast setting) hold only while a step runs, not
        in the caller's code between steps."""
        model, precision = self._decode_model()
        steps = self._decode_with(model, prompts, max_tokens, sampling, n, stop_ids, tools, want_logprobs)
        while True:
            with torch.inference_mode(), precision():
                item = next(steps, None)
            if item is None:
                return
            yield item

    def _decode_with(self, model, prompts, max_tokens, sampling, n, stop_ids, tools, want_logprobs):

        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1 (got n={n}, max_tokens={max_tokens})")
        vocab = int(model.config.vocab_size)
        bad = next((t for p in prompts for t in p if not 0 <= t < vocab), None)
        if bad is not None:  # e.g. a chat token a tokenizer appended above an imported model's vocabulary
            raise ValueError(f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})")
        lengths = [len(p) for p in prompts]
        longest = max(lengths)
        room = self.context_len - longest
        if room <= 0:
            raise UserError(
                f"a prompt of {longest} tokens leaves no room in the model's context of {self.context_len} tokens"
            )
        max_tokens = min(max_tokens, room)
        tools = self._active_tools(tools)
        stops, tool_ids = self._stops_and_tools(stop_ids, tools)
        temperature, top_k, top_p, seed, seeds = sampling
        B = len(prompts)
        if seeds is not None and len(seeds) != B:
            raise ValueError(f"seeds: expected one per prompt ({B}), got {len(seeds)}")

        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        generators = []
        if temperature > 0:
            if seeds is None:
                base = seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item())
                seeds = [base + i for i in range(B)]
            for s in seeds:
                generators.append(torch.Generator(device=device).manual_seed(int(s) % 2**63))

        # ---- prefill: prompts left-padded to the longest, each prompt once (n samples share it)
        pad = [longest - n_tok for n_tok in lengths]
        idx = torch.zeros(B, longest, dtype=torch.long, device=device)
        for r, p in enumerate(prompts):
            idx[r, pad[r] :] = torch.tensor(p, device=device)
        position_ids = doc_ids = None  # no padding: plain causal attention, positions from 0
        if any(pad):
            pad_t = torch.tensor(pad, device=device)[:, None]  # (B, 1)
            ar = torch.arange(longest, device=device)[None, :]  # (1, T)
            doc_ids = (ar >= pad_t).to(torch.int32)  # (B, T): 0 on padding, 1 on the prompt
            position_ids = (ar - pad_t).clamp(min=0)  # each prompt counts from its own first token
        cache_len = longest + max_tokens
        step = self._compiled_step
        if step is not None:  # a few fixed lengths, so the compiled step sees a few shapes only
            cache_len = static_cache_len(cache_len, self.context_len)
            step.model = model
            step.drop_stale_graphs()
        cache = KVCache(model.config, B, cache_len, dtype=dtype, device=device)
        head = self._packed_head(model) if step is None else None
        if head is not None:  # the same logits through the prepacked output head
            hidden = model.hidden_states(idx, position_ids=position_ids, doc_ids=doc_ids, kv_cache=cache)
            logits = head(hidden[:, -1])
        else:
            logits = model(idx, position_ids=position_ids, doc_ids=doc_ids, kv_cache=cache, logits_to_keep=1)[
                :, -1
            ]
        if n > 1:  # rows b*n .. b*n+n-1 continue prompt b
            cache = cache.repeat(n)
            logits = logits.repeat_interleave(n, dim=0)  # (B*n, V)
        R = B * n
        st = _DecodeState(R, max_tokens, device, want_logprobs)
        stops_t = torch.tensor(sorted(stops), dtype=torch.long, device=device)

        for t in range(max_tokens):
            # ---- sample every slot (finished slots too: their draw is ignored)
            uniforms = None
            if generators:  # n uniforms per prompt per step, whatever the batch holds
                uniforms = torch.cat(
                    [torch.rand(n, device=device, generator=g) for g in generators]
                ).index_select(0, st.slot_rows)
            chosen = sample_with_uniforms(logits, uniforms, temperature, top_k, top_p)  # (S,)
            sampled = st.live.clone()
            tool_slots = self._tool_slots(st)
            for row, j in tool_slots.items():  # a pending tool-output token replaces the draw
                if st.tools[row].forced:
                    chosen[j] = st.tools[row].forced.pop(0)
                    sampled[j] = False
                    st.forced_at.setdefault(row, []).append(t)
            rows_now = st.slot_rows[st.live]
            st.tokens[t].index_copy_(0, st.slot_rows, chosen)
            if st.logprobs is not None:
                lp = torch.log_softmax(logits.float(), dim=-1).gather(1, chosen[:, None]).squeeze(1)
                st.logprobs[t].index_copy_(0, st.slot_rows, lp * sampled)
            # ---- finish: stop tokens and tool-call starts, batched; Python only for the rows they hit
            finished = self._tool_step(st, chosen, tool_slots, tools) if tool_slots else []
            hit = sampled & torch.isin(chosen, stops_t)
            if tool_ids is not None:
                if tool_slots:  # a row inside a call (or fed its output) does not stop
                    hit[list(tool_slots.values())] = False
                starts = sampled & (chosen == tool_ids[0])
                if tool_slots:
                    starts[list(tool_slots.values())] = False
                if bool(starts.any()):
                    for j in starts.nonzero().flatten().tolist():
                        st.tools[int(st.slot_rows[j])] = _ToolRow()
            if bool(hit.any()):
                finished += [(j, "stop") for j in hit.nonzero().flatten().tolist()]
            for j, reason in finished:
                row = int(st.slot_rows[j])
                st.reasons[row], st.lengths[row] = reason, t + 1
                st.live[j] = False
                st.tools.pop(row, None)
            st.n_live -= len(finished)
            yield st, (rows_now, st.tokens[t].index_select(0, rows_now))
            if st.n_live == 0:
                break
            if t + 1 == max_tokens:
                for row in st.slot_rows[st.live].tolist():
                    st.reasons[row], st.lengths[row] = "length", t + 1
                break
            # ---- continuous batching: drop finished slots once the live ones fit a smaller bucket
            if batch_bucket(st.n_live) < st.live.numel():
                keep = self._compaction(st)
                cache = _keep_rows(cache, keep)
                st.slot_rows, st.live, chosen = st.slot_rows[keep], st.live[keep], chosen[keep]
            x = chosen.unsqueeze(1)  # (S, 1); a finished slot is fed its ignored draw
            if step is not None:
                logits = step(x, cache)  # (S, V)
            elif head is not None:
                logits = head(model.hidden_states(x, kv_cache=cache)[:, -1])  # (S, V)
            else:
                logits = model(x, kv_cache=cache, logits_to_keep=1)[:, -1]  # (S, V)

    def _compaction(self, st: _DecodeState) -> torch.Tensor:
        """Slots to keep: the live ones, padded with finished ones up to the bucket when the decode step
        is compiled (a fixed set of batch shapes); exactly the live ones when eager."""
        live = st.live.nonzero().flatten()
        if self._compiled_step is None:
            return live
        size = batch_bucket(st.n_live)
        dead = (~st.live).nonzero().flatten()[: size - live.numel()]
        return torch.cat([live, dead]).sort().values

    @staticmethod
    def _tool_slots(st: _DecodeState) -> dict[int, int]:
        """``{row: slot}`` of the rows inside a tool call (writing it, or being fed its output)."""
        if not st.tools:
            return {}
        slot_of = {r: j for j, r in enumerate(st.slot_rows.tolist())}
        return {row: slot_of[row] for row in st.tools}

    def _tool_step(
        self, st: _DecodeState, chosen: torch.Tensor, tool_slots: dict[int, int], tools: Mapping[str, Tool]
    ) -> list[tuple[int, str]]:
        """After a step, for the rows that were inside a tool call: extend the call being written; at
        its end run the named tool when it is in ``tools`` and queue its output (otherwise finish the
        row with ``"tool_calls"`` for the caller to run it); a row whose output was fed in full leaves
        the tool state. Returns the ``(slot, reason)`` of rows that finished."""
        fmt = self.chat_format
        finished = []
        for row, j in tool_slots.items():
            tool = st.tools[row]
            if tool.call is None:  # being fed the output: done once nothing is pending
                if not tool.forced:
                    del st.tools[row]
                continue
            tok = int(chosen[j])
            if tok == fmt.tool_call_start_id:  # a new start inside a call restarts it
                tool.call = []
            elif tok != fmt.tool_call_end_id:
                tool.call.append(tok)
            else:
                call = parse_tool_call_text(self.tokenizer.decode(tool.call))
                if call["function"]["name"] not in tools:
                    finished.append((j, "tool_calls"))  # the caller runs the tool
                else:
                    tool.call = None
                    tool.forced = list(fmt.tool_output_ids(run_tool(call, tools)))
        return finished

    def _completions(self, st: _DecodeState, logprobs: bool) -> list[Completion]:
        """One :class:`Completion` per row, read back from the batched state at once."""
        tokens = st.tokens.T.tolist()
        lps = st.logprobs.T.tolist() if logprobs and st.logprobs is not None else None
        out = []
        for r, (row_tokens, n_tok) in enumerate(zip(tokens, st.lengths)):
            toks = row_tokens[:n_tok]
            sampled = [1] * n_tok
            for t in st.forced_at.get(r, ()):
                sampled[t] = 0
            reason = st.reasons[r] or "length"
            text_tokens = toks[:-1] if reason == "stop" else toks
            out.append(
                Completion(
                    tokens=toks,
                    text=self.tokenizer.decode(text_tokens) if self.tokenizer is not None else "",
                    finish_reason=reason,
                    logprobs=lps[r][:n_tok] if lps is not None else None,
                    sampled=sampled,
                )
            )
        return out


def _keep_rows(cache: Any, keep: torch.Tensor) -> Any:
    """A :class:`KVCache` holding only the batch rows ``keep`` of ``cache`` (same length and position)."""
    new = KVCache(cache.config, int(keep.numel()), cache.max_len, dtype=cache.dtype, device=cache.device)
    if cache.k_layers is not None:
        new.k_layers = [k.index_select(0, keep) for k in cache.k_layers]
        new.v_layers = [v.index_select(0, keep) for v in cache.v_layers]
    if cache.doc_ids is not None:
        new.doc_ids = cache.doc_ids.index_select(0, keep)
    new.next_pos = cache.next_pos.index_select(0, keep)
    new.pos = cache.pos
    return new
