"""Inference engine: batched generation with a KV cache, sampling, stop tokens and calculator tool calls.

Generation is two phases. **Prefill** runs the prompt through the model once and fills the KV cache;
**decode** then feeds one token per row per step, reusing the cached keys/values, so a step costs one
token's worth of compute instead of the whole sequence.

- Several prompts are batched by left padding: pad tokens get document id 0 and real tokens id 1, so the
  attention's document mask (``doc_ids``) keeps real tokens from ever seeing the padding, and position
  ids count from each prompt's own first token. Left (not right) padding keeps every row's next token at
  the same cache position, so a decode step is one batched forward.
- ``n`` samples of one prompt share one prefill: the batch-1 cache is copied ``n`` times
  (``KVCache.repeat``) before the first sampled token.
- Tool use: when a row writes ``<|tool_call_start|> EXPR <|tool_call_end|>`` the engine evaluates EXPR with
  the safe calculator (:mod:`fastgpt.tools`) and *forces* ``<|tool_output_start|> RESULT
  <|tool_output_end|>`` into that row, one token per step alongside the other rows' sampled tokens;
  then the model continues its turn. Forced tokens count toward ``max_tokens``.
- Sampling: ``temperature`` (0 = greedy), ``top_k``, ``top_p``, a ``seed`` for a private generator (the
  same seed gives the same samples). ``logprobs`` are the model's own log-probabilities of the chosen
  tokens (temperature 1, no top-k/top-p: the policy's probability, as RL needs it).
- A prompt that leaves no room in the model's context is an error; otherwise ``max_tokens`` is capped
  at the room left (``finish_reason="length"`` when it is reached).
- ``compile=True`` (opt-in): decode steps run a ``torch.compile``d single-token forward over a
  static-shape cache (:mod:`fastgpt.decode_step`); the prefill and everything above stay the same.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from fastgpt.model.sampling import sample_next_token
from fastgpt.tools import calculate

__all__ = ["Completion", "Engine"]


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


@dataclass
class _Row:
    """Per-row decoding state."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)  # tool-output tokens waiting to be fed
    call: list[int] | None = None  # tokens of a tool call being written
    finish_reason: str | None = None


class Engine:
    """Generation for a :class:`fastgpt.GPT` (see the module docstring). The model is used as is
    (device and dtype); call under no particular mode, the engine switches to inference mode itself."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        chat_format: Any = None,
        compile: bool | str = False,
    ):
        """``compile`` (a :class:`fastgpt.GPT` only): ``True`` or ``"default"`` decodes through a
        ``torch.compile``d single-token step over a static-shape cache (:mod:`fastgpt.decode_step`),
        ``"max-autotune"`` also autotunes its matmuls (fastest steps, longest compile). Same greedy
        tokens as eager; but each new (batch size, cache length bucket, dtype) first compiles for
        seconds to a minute (``compile_seconds`` adds them up) and an in-place weight change (training)
        triggers a recompile, so it is off by default."""
        self.model = model
        self.tokenizer = tokenizer
        self._chat_format = chat_format
        self._compiled_step = None
        if compile is not False and compile is not None:
            from fastgpt.decode_step import CompiledDecodeStep

            self._compiled_step = CompiledDecodeStep(model, "default" if compile is True else compile)

    @property
    def compile_seconds(self) -> float:
        """Wall seconds spent compiling decode steps so far (0 without ``compile=True``)."""
        return self._compiled_step.compile_seconds if self._compiled_step is not None else 0.0

    @property
    def chat_format(self):
        if self._chat_format is None:
            from fastgpt.conversation import ChatFormat

            self._chat_format = ChatFormat.for_model(self.tokenizer)
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
        n: int = 1,
        stop_ids: set[int] | None = None,
        tools: bool = False,
        logprobs: bool = False,
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt (a list of token-id lists); see the module docstring."""
        sampling = (temperature, top_k, top_p, seed)
        steps = self._decode(prompts, max_tokens, sampling, n, stop_ids, tools, logprobs)
        rows, _ = deque(steps, maxlen=1)[0]  # run to the end; the last step holds the final rows
        out = [self._completion(r, logprobs) for r in rows]
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
            for k, d in (("temperature", 1.0), ("top_k", None), ("top_p", None), ("seed", None))
        )
        stop_ids, tools = kwargs.pop("stop_ids", None), kwargs.pop("tools", False)
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        for _, new in self._decode([prompt], max_tokens, sampling, 1, stop_ids, tools, False):
            if new[0] is not None:
                yield new[0]

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
        tools: bool = False,
    ) -> Iterator[tuple[list[int | None], list[str | None]]]:
        """Batched streaming (for servers): after every decode step, the token each row produced
        (``None`` for a row already finished) and each row's finish reason (``None`` while it runs).
        Rows are prompt-major: prompt ``i``'s samples are rows ``i*n .. i*n+n-1``."""
        sampling = (temperature, top_k, top_p, seed)
        for rows, new in self._decode(prompts, max_tokens, sampling, n, stop_ids, tools, False):
            yield new, [row.finish_reason for row in rows]

    def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Completion:
        """The assistant's reply to ``messages``, rendered with the chat format (tools run when
        ``tools=True``)."""
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

    def _stops_and_tools(
        self, stop_ids: set[int] | None, tools: bool
    ) -> tuple[set[int], tuple[int, int] | None]:
        """Stop ids (given, else the chat format's) and the (call start, call end) ids to watch."""
        fmt = self._format_or_none()
        if stop_ids is None:
            stop_ids = fmt.stop_ids if fmt is not None else set()
        if fmt is None or not fmt.supports_tools:
            if tools:
                raise ValueError("tools=True but the chat format has no tool-call tokens")
            return set(stop_ids), None
        return set(stop_ids), (fmt.tool_call_start_id, fmt.tool_call_end_id)

    @torch.inference_mode()
    def _decode(self, prompts, max_tokens, sampling, n, stop_ids, tools, want_logprobs):
        """Yields ``(rows, new_tokens)`` after every step; ``new_tokens[r]`` is None for a finished row."""
        from fastgpt.model import KVCache

        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1 (got n={n}, max_tokens={max_tokens})")
        vocab = int(self.model.config.vocab_size)
        bad = next((t for p in prompts for t in p if not 0 <= t < vocab), None)
        if bad is not None:  # e.g. a chat token a tokenizer appended above an imported model's vocabulary
            raise ValueError(f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})")
        lengths = [len(p) for p in prompts]
        longest = max(lengths)
        room = self.context_len - longest
        if room <= 0:
            raise ValueError(
                f"a prompt of {longest} tokens leaves no room in the model's context of {self.context_len} tokens"
            )
        max_tokens = min(max_tokens, room)
        stops, tool_ids = self._stops_and_tools(stop_ids, tools)
        temperature, top_k, top_p, seed = sampling

        model = self.model
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))

        # ---- prefill: prompts left-padded to the longest, each prompt once (n samples share it)
        B = len(prompts)
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
            from fastgpt.decode_step import static_cache_len

            cache_len = static_cache_len(cache_len, self.context_len)
            step.drop_stale_graphs()
        cache = KVCache(model.config, B, cache_len, dtype=dtype, device=device)
        logits = model(idx, position_ids=position_ids, doc_ids=doc_ids, kv_cache=cache, logits_to_keep=1)[
            :, -1
        ]
        if n > 1:  # rows b*n .. b*n+n-1 continue prompt b
            cache = cache.repeat(n)
            logits = logits.repeat_interleave(n, dim=0)  # (B*n, V)
        R = B * n
        rows = [_Row() for _ in range(R)]

        for _step in range(max_tokens):
            chosen = sample_next_token(logits, temperature, top_k, top_p, generator)
            chosen_list = chosen.tolist()
            lp = torch.log_softmax(logits.float(), dim=-1) if want_logprobs else None
            new: list[int | None] = [None] * R
            feed = chosen_list[:]
            for r, row in enumerate(rows):
                if row.finish_reason is not None:
                    feed[r] = 0
                    continue
                if row.forced:
                    tok, is_sampled, logprob = row.forced.pop(0), 0, 0.0
                else:
                    tok, is_sampled = chosen_list[r], 1
                    logprob = float(lp[r, tok]) if lp is not None else 0.0
                feed[r] = tok
                new[r] = tok
                row.tokens.append(tok)
                row.sampled.append(is_sampled)
                row.logprobs.append(logprob)
                if is_sampled:
                    self._after_sampled(row, tok, stops, tool_ids, tools)
                if row.finish_reason is None and len(row.tokens) >= max_tokens:
                    row.finish_reason = "length"
            yield rows, new
            if all(row.finish_reason is not None for row in rows):
                break
            x = torch.tensor(feed, device=device).unsqueeze(1)  # (R, 1)
            # the cache continues each row's positions and document; finished rows are fed a dummy
            if step is not None:
                logits = step(x, cache)  # (R, V)
            else:
                logits = model(x, kv_cache=cache, logits_to_keep=1)[:, -1]  # (R, V)
        for row in rows:
            row.finish_reason = row.finish_reason or "length"

    def _after_sampled(self, row: _Row, tok: int, stops: set[int], tool_ids, tools: bool) -> None:
        """Stop, start/extend/finish a tool call, after the model chose ``tok``."""
        if tool_ids is not None:
            start, end = tool_ids
            if tok == start:
                row.call = []
                return
            if row.call is not None:
                if tok != end:
                    row.call.append(tok)
                    return
                expression, row.call = self.tokenizer.decode(row.call), None
                if not tools:
                    row.finish_reason = "tool_calls"  # the caller runs the tool
                    return
                row.forced = list(self.chat_format.tool_output_ids(calculate(expression)))
                return
        if tok in stops:
            row.finish_reason = "stop"

    def _completion(self, row: _Row, logprobs: bool) -> Completion:
        text_tokens = row.tokens[:-1] if row.finish_reason == "stop" else row.tokens
        return Completion(
            tokens=list(row.tokens),
            text=self.tokenizer.decode(text_tokens) if self.tokenizer is not None else "",
            finish_reason=row.finish_reason or "length",
            logprobs=list(row.logprobs) if logprobs else None,
            sampled=list(row.sampled),
        )
