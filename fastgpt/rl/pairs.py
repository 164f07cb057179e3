"""Preference pairs as token batches for the reward model and DPO.

A pair is rendered in the model's chat format into ``prompt ids`` plus the chosen and the rejected
response ids (:func:`fastgpt.rl.sequences.render_response`); a batch of ``b`` pairs is one
:class:`~fastgpt.rl.sequences.ResponseBatch` of ``2b`` rows, the chosen rows first, then the rejected
rows in the same order, so ``scores[:b]`` and ``scores[b:]`` line up pair by pair.

Order: a seeded permutation per epoch over all pairs; each step takes the next ``batch_size * ranks``
pairs and rank ``r`` keeps its contiguous slice, so the global batch does not depend on the number of
ranks, and ``state_dict`` resumes at exactly the next batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fastgpt import dist
from fastgpt.errors import UserError
from fastgpt.rl.sequences import ResponseBatch, collate_responses, render_response
from fastgpt.tasks.preferences import PreferencePair

__all__ = [
    "PairOrder",
    "PairStage",
    "RenderStats",
    "RenderedPair",
    "as_response_batch",
    "batch_dict",
    "collate_pairs",
    "heldout_means",
    "render_pairs",
]


@dataclass(frozen=True)
class RenderedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


@dataclass
class RenderStats:
    kept: int = 0
    too_long: int = 0
    identical: int = 0  # different text, same tokens
    unrenderable: int = 0
    reasons: list[str] = field(default_factory=list)

    def summary(self, name: str) -> str:
        text = f"{name}: {self.kept} pairs"
        skipped = self.too_long + self.identical + self.unrenderable
        if skipped:
            text += (
                f" (skipped {self.too_long} longer than max_len, {self.identical} identical once tokenized, "
                f"{self.unrenderable} the chat format could not split)"
            )
        if self.reasons:
            text += f"; first reasons: {'; '.join(self.reasons)}"
        return text


def render_pairs(
    pairs: Sequence[PreferencePair], chat_format: Any, *, max_len: int, stats: RenderStats | None = None
) -> list[RenderedPair]:
    """Token ids of every pair that fits ``max_len`` (prompt + the longer response); the rest are
    skipped and counted in ``stats``."""
    stats = stats if stats is not None else RenderStats()
    out = []
    for pair in pairs:
        try:
            prompt, chosen = render_response(chat_format, pair.prompt, pair.chosen)
            prompt_r, rejected = render_response(chat_format, pair.prompt, pair.rejected)
        except ValueError as e:
            stats.unrenderable += 1
            if len(stats.reasons) < 5:
                stats.reasons.append(str(e))
            continue
        if prompt_r != prompt:
            stats.unrenderable += 1
            continue
        if chosen == rejected:
            stats.identical += 1
            continue
        if len(prompt) + max(len(chosen), len(rejected)) > max_len:
            stats.too_long += 1
            continue
        stats.kept += 1
        out.append(RenderedPair(prompt, chosen, rejected))
    return out


def collate_pairs(pairs: Sequence[RenderedPair], *, pad_id: int = 0) -> ResponseBatch:
    """``2b`` rows: the chosen responses of the ``b`` pairs, then their rejected responses."""
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return collate_responses(prompts, responses, pad_id=pad_id)


class PairOrder:
    """Which pairs each rank trains on at each step (see the module docstring)."""

    def __init__(self, n: int, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if n < batch_size * world_size:
            raise UserError(
                f"{n} training pairs cannot fill a global batch of {batch_size} x {world_size} ranks"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next_indices(self) -> list[int]:
        span = self.batch_size * self.world_size
        if self.position + span > self.n:  # drop the ragged tail: every step sees a full batch
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        batch = self._order[self.position : self.position + span]
        self.position += span
        return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


def heldout_means(
    pairs: Sequence[RenderedPair],
    names: Sequence[str],
    measure: Callable[[dict[str, torch.Tensor], list[int]], dict[str, float]],
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The held-out evaluation of the pair stages (reward model, DPO): per-pair means over all ranks.

    This rank scores the pairs ``rank::world_size`` in batches of ``batch_size`` (a :func:`batch_dict`
    on ``device``); ``measure(batch, index)`` returns, for each name in ``names``, the *sum* over the
    batch's pairs (``index``: their positions in ``pairs``). The sums are added over batches and ranks
    and divided by the number of pairs: ``{"heldout_<name>": mean, ..., "heldout_pairs": n}``, in the
    order of ``names``. With no held-out pairs at all the result is ``{}`` (nothing measured, not a 0).
    Every rank must call it (a collective), with or without pairs of its own.
    """
    sums = torch.zeros(len(names) + 1, dtype=torch.float64)
    mine = list(range(rank, len(pairs), world_size))
    for start in range(0, len(mine), batch_size):
        index = mine[start : start + batch_size]
        batch = batch_dict(collate_pairs([pairs[i] for i in index], pad_id=pad_id).to(device))
        values = measure(batch, index)
        sums += torch.tensor([*(float(values[k]) for k in names), len(index)], dtype=torch.float64)
    totals = dist.all_reduce_sum(sums).tolist()
    n = totals[-1]
    if n == 0:
        return {}
    return {**{f"heldout_{k}": v / n for k, v in zip(names, totals)}, "heldout_pairs": n}


class PairStage:
    """What the pair stages (reward model, DPO) give the training loop alike: this rank's share of each
    step's pairs in a seeded order (:class:`PairOrder`, its position saved in checkpoints), the number
    of pairs as the loop's target count, and the held-out walk (:meth:`heldout_means`)."""

    def __init__(
        self,
        train: list[RenderedPair],
        heldout: list[RenderedPair],
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = 0,
    ):
        self.train, self.heldout, self.batch_size, self.pad_id = train, heldout, batch_size, pad_id
        self.rank, self.world_size = rank, world_size
        self.order = PairOrder(len(train), batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)

    def next_pairs(self) -> tuple[list[int], dict[str, torch.Tensor]]:
        """This rank's next micro-batch: the pairs' indices in ``train`` and their batch (``n_pairs``)."""
        index = self.order.next_indices()
        pairs = collate_pairs([self.train[i] for i in index], pad_id=self.pad_id)
        return index, batch_dict(pairs, n_pairs=torch.tensor(len(index)))

    def next_batch(self) -> dict[str, torch.Tensor]:
        return self.next_pairs()[1]

    @staticmethod
    def count_targets(batch: dict[str, torch.Tensor]) -> int:
        return int(batch["n_pairs"])

    def heldout_means(
        self,
        model: torch.nn.Module,
        names: Sequence[str],
        measure: Callable[[dict[str, torch.Tensor], list[int]], dict[str, float]],
    ) -> dict[str, float]:
        """:func:`heldout_means` over this stage's held-out pairs, on ``model``'s device."""
        return heldout_means(
            self.heldout,
            names,
            measure,
            batch_size=self.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            pad_id=self.pad_id,
            device=next(model.parameters()).device,
        )

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


def batch_dict(batch: ResponseBatch, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    """A :class:`ResponseBatch` as the dict of tensors the training loop moves between devices."""
    return {
        "inputs": batch.inputs,  # what the loop counts as tokens
        "ids": batch.ids,
        "response_mask": batch.response_mask,
        "last": batch.last,
        "prompt_lens": batch.prompt_lens,
        **extra,
    }


def as_response_batch(batch: dict[str, torch.Tensor]) -> ResponseBatch:
    return ResponseBatch(batch["ids"], batch["response_mask"], batch["last"], batch["prompt_lens"])
