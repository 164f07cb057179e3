"""Rendered conversations -> training batches, padded or packed, with the assistant-only loss.

Each conversation becomes one :class:`Example`: ``inputs = ids[:-1]`` and ``targets = ids[1:]`` with
``-100`` (ignored by the loss) wherever the next token is not the assistant's (loss mask 0). Shifting
*before* batching means a target never reaches across two conversations.

Batches are either

- **padded**: one conversation per row, right-padded to the longest row of the batch; or
- **packed**: conversations laid end to end in rows of ``seq_len`` (a conversation never split;
  first come, first placed), each with its own document id (attention never crosses conversations) and
  position ids restarting at 0 (so a packed conversation is computed exactly as it would be alone).

Both give the same per-token losses on the same conversations (tested); packing wastes less compute on
padding. The order of conversations is a seeded shuffle per epoch; the iterator state is two integers
(epoch, position), so a resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from fastgpt.conversation import ChatFormat, ConversationError, ConversationTooLong, Message
from fastgpt.errors import UserError

__all__ = ["Example", "RenderStats", "SFTBatches", "collate", "eval_batches", "render_examples"]

IGNORE = -100


@dataclass
class Example:
    inputs: list[int]
    targets: list[int]  # IGNORE where the token is not trained on

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class RenderStats:
    conversations: int = 0
    kept: int = 0
    truncated: int = 0  # kept, with trailing turns dropped to fit
    dropped_too_long: int = 0
    dropped_unrenderable: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    reasons: list[str] = field(default_factory=list)  # why the first unrenderable conversations failed

    def summary(self) -> str:
        return (
            f"rendered {self.kept}/{self.conversations} conversations ({self.tokens} tokens, "
            f"{self.trained_tokens} trained); truncated {self.truncated}, dropped {self.dropped_too_long} too long"
            + (f", {self.dropped_unrenderable} unrenderable" if self.dropped_unrenderable else "")
            + (f" (first reasons: {'; '.join(self.reasons)})" if self.reasons else "")
        )


def _describe(messages: list[Message]) -> str:
    """A conversation named by its first user message, for messages about it."""
    first = next((m.get("content") for m in messages if m.get("role") == "user"), None) or ""
    first = " ".join(str(first).split())
    return f"the conversation starting {first[:40] + ('...' if len(first) > 40 else '')!r}"


def render_examples(
    conversations: Iterable[list[Message]],
    chat_format: ChatFormat,
    seq_len: int,
    stats: RenderStats | None = None,
    *,
    strict: bool = False,
) -> list[Example]:
    """Render and shift conversations for sequences of ``seq_len`` tokens (``seq_len + 1`` rendered
    tokens, by the truncation rule of :class:`ChatFormat`); too-long ones are dropped and counted, and
    so are those the chat format cannot render (e.g. a tool other than the calculator in fastgpt's
    format), with the first reasons kept; ``strict`` makes an unrenderable one an error."""
    stats = stats if stats is not None else RenderStats()
    out = []
    for messages in conversations:
        stats.conversations += 1
        try:
            r = chat_format.render_truncated(messages, seq_len + 1)
        except ConversationTooLong:
            stats.dropped_too_long += 1
            continue
        except ConversationError as e:
            reason = f"{_describe(messages)}: {e}"
            if strict:
                raise ConversationError(
                    f"{reason} (the chat format of this model cannot render it)"
                ) from None
            stats.dropped_unrenderable += 1
            if len(stats.reasons) < 3:
                stats.reasons.append(reason)
            continue
        targets = [t if m else IGNORE for t, m in zip(r.ids[1:], r.loss_mask[1:])]
        stats.kept += 1
        stats.truncated += r.dropped_turns > 0
        stats.tokens += len(r.ids) - 1
        stats.trained_tokens += sum(t != IGNORE for t in targets)
        out.append(Example(r.ids[:-1], targets))
    return out


def collate(rows: list[list[Example]], pad_id: int = 0, width: int | None = None) -> dict[str, torch.Tensor]:
    """Rows of examples (one example per row when padded, several when packed) -> tensors ``(B, T)``:
    ``inputs``, ``targets``, ``position_ids`` (restart per example) and ``doc_ids`` (1, 2, ... per
    example in a row; 0 on padding)."""
    T = width or max(sum(len(e) for e in row) for row in rows)
    B = len(rows)
    inputs = torch.full((B, T), pad_id, dtype=torch.long)
    targets = torch.full((B, T), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    doc_ids = torch.zeros((B, T), dtype=torch.int32)
    for b, row in enumerate(rows):
        at = 0
        for d, ex in enumerate(row, 1):
            n = len(ex)
            if at + n > T:
                raise ValueError(f"row {b} holds {at + n} tokens, more than the batch width {T}")
            inputs[b, at : at + n] = torch.tensor(ex.inputs)
            targets[b, at : at + n] = torch.tensor(ex.targets)
            position_ids[b, at : at + n] = torch.arange(n)
            doc_ids[b, at : at + n] = d
            at += n
    return {"inputs": inputs, "targets": targets, "position_ids": position_ids, "doc_ids": doc_ids}


class SFTBatches:
    """An endless, resumable stream of batches over examples (see the module docstring).

    The global batch has ``batch_size * world_size`` rows and is the same whatever the world size;
    rank ``r`` gets rows ``r, r + world_size, ...``.
    """

    def __init__(
        self,
        examples: list[Example],
        *,
        batch_size: int,
        seq_len: int,
        pack: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = 0,
    ):
        if not examples:
            raise UserError("no training examples")
        if any(len(e) > seq_len for e in examples):
            raise ValueError(f"an example is longer than seq_len={seq_len}; render with the same seq_len")
        self.examples, self.batch_size, self.seq_len, self.pack = examples, batch_size, seq_len, pack
        self.seed, self.rank, self.world_size, self.pad_id = seed, rank, world_size, pad_id
        self.epoch, self.position = 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def _take(self) -> Example:
        if self.position == len(self._order):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._shuffled(self.epoch)
        ex = self.examples[self._order[self.position]]
        self.position += 1
        return ex

    def _peek(self) -> Example:
        if self.position == len(self._order):
            return self.examples[self._shuffled(self.epoch + 1)[0]]
        return self.examples[self._order[self.position]]

    def next_global_rows(self) -> list[list[Example]]:
        n_rows = self.batch_size * self.world_size
        if not self.pack:
            return [[self._take()] for _ in range(n_rows)]
        rows: list[list[Example]] = []
        for _ in range(n_rows):
            row = [self._take()]
            used = len(row[0])
            while used + len(self._peek()) <= self.seq_len:
                row.append(self._take())
                used += len(row[-1])
            rows.append(row)
        return rows

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = self.next_global_rows()
        width = self.seq_len if self.pack else max(len(r[0]) for r in rows)
        return collate(rows[self.rank :: self.world_size], self.pad_id, width)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._shuffled(self.epoch)


def eval_batches(
    examples: list[Example], *, batch_size: int, seq_len: int, pad_id: int = 0
) -> Callable[[], Iterable[dict[str, torch.Tensor]]]:
    """A function yielding the fixed validation batches (padded, in order) each time it is called."""

    def batches():
        for i in range(0, len(examples), batch_size):
            rows = [[e] for e in examples[i : i + batch_size]]
            yield collate(rows, pad_id)

    return batches
