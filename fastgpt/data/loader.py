"""ShardLoader: (B, T) training batches from memory-mapped token shards, reproducible across world sizes.

Sampling scheme (shuffled epochs of non-overlapping windows):

- The split's shards are one virtual token stream of N tokens. An epoch cuts it into
  ``W = N // T - 1`` windows of ``T + 1`` tokens (inputs plus the shifted targets), starting at
  ``shift + w * T``; each epoch draws a new ``shift`` in ``[0, T)`` so window edges move between
  epochs, and visits the windows in a new pseudo-random order.
- The order is a keyed Feistel permutation of ``[0, W)`` (cycle-walking to the exact range): a
  bijection computed per index, so it needs no O(W) array even for 10^11-token corpora.
- Global row ``j`` is window ``perm_e(j mod W)`` of epoch ``e = j // W``. Global batch ``g`` is rows
  ``[g * B * R, (g + 1) * B * R)`` for ``R`` ranks of ``B`` rows; rank ``r`` takes the ``r``-th block
  of ``B``. Rows depend only on (data, seed, T), never on the world size, so 1 rank x 8 rows sees
  exactly what 2 ranks x 4 rows see; ranks read disjoint rows.
- The whole position is one integer, the number of global rows consumed: ``state_dict()`` saves it,
  ``load_state_dict()`` restores it, and the next batch is exactly the one an uninterrupted run would
  have produced. (Resuming with a different global batch continues at the first unseen row.)

``doc_ids`` count the BOS tokens seen so far in each row: a row starts at document 0 (usually the tail
of a document cut by the window) and every BOS opens the next document, which is what packed-document
attention masking needs.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastgpt.data.errors import DataError
from fastgpt.data.manifest import read_manifest
from fastgpt.data.shards import open_shard, read_header

__all__ = ["FeistelPermutation", "ShardLoader"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class FeistelPermutation:
    """A seeded pseudo-random bijection of ``[0, n)`` evaluated elementwise on arrays.

    A 4-round balanced Feistel network permutes ``[0, 4^k)`` (the smallest power of four >= n); indices
    that land outside ``[0, n)`` are mapped again until they land inside (cycle walking), which keeps
    it a bijection of ``[0, n)``. Expected rounds of walking are below 4.
    """

    def __init__(self, n: int, key: int):
        self.n = int(n)
        half_bits = max(1, ((max(self.n - 1, 1)).bit_length() + 1) // 2)
        self._half = np.uint64(half_bits)
        self._mask = np.uint64((1 << half_bits) - 1)
        rng = np.random.default_rng(key)
        self._keys = rng.integers(0, 2**63, size=4, dtype=np.uint64)

    def _round(self, x: np.ndarray, key: np.uint64) -> np.ndarray:
        x = (x ^ key) * np.uint64(0x9E3779B97F4A7C15)  # wraps mod 2^64 (splitmix-style mixing)
        x ^= x >> np.uint64(29)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(32)
        return x & self._mask

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self._half, x & self._mask
        for key in self._keys:
            left, right = right, left ^ self._round(right, key)
        return (left << self._half) | right

    def __call__(self, index: np.ndarray) -> np.ndarray:
        x = np.asarray(index, dtype=np.uint64)
        if self.n <= 1:
            return x.astype(np.int64)
        with np.errstate(over="ignore"):
            x = self._feistel(x)
            outside = x >= np.uint64(self.n)
            while outside.any():
                x[outside] = self._feistel(x[outside])
                outside = x >= np.uint64(self.n)
        return x.astype(np.int64)


class _TokenStream:
    """The shards of one split as one virtual array; shards are memory-mapped lazily (a bounded
    number stay open, so corpora with thousands of shards do not exhaust file descriptors)."""

    def __init__(self, data_dir: Path, shards: list[dict[str, Any]], open_limit: int = 64):
        self.paths = [data_dir / s["file"] for s in shards]
        counts = []
        for path, shard in zip(self.paths, shards):
            _, count = read_header(path)  # validates magic, version and size up front
            if count != shard["tokens"]:
                raise DataError(f"{path}: holds {count:,} tokens, the manifest says {shard['tokens']:,}")
            counts.append(count)
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.size = int(self.offsets[-1])
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        self._open_limit = open_limit

    def _shard(self, i: int) -> np.ndarray:
        if i in self._open:
            self._open.move_to_end(i)
        else:
            self._open[i] = open_shard(self.paths[i])
            if len(self._open) > self._open_limit:
                self._open.popitem(last=False)
        return self._open[i]

    def read(self, start: int, length: int, out: np.ndarray) -> None:
        """Copy tokens ``[start, start + length)`` into ``out`` (a window may span shards)."""
        pos, filled = start, 0
        i = int(np.searchsorted(self.offsets, pos, side="right")) - 1
        while filled < length:
            shard = self._shard(i)
            local = pos - int(self.offsets[i])
            take = min(length - filled, shard.shape[0] - local)
            out[filled : filled + take] = shard[local : local + take]
            filled, pos, i = filled + take, pos + take, i + 1

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        out = np.empty((len(starts), length), dtype=np.int64)
        for row, start in enumerate(starts):
            self.read(int(start), length, out[row])
        return out


class ShardLoader:
    """Training batches for one rank of a ``torchrun`` job (see the module docstring for the scheme).

    ``batch_size`` is this rank's rows per batch; the global batch is ``batch_size * world_size``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        *,
        batch_size: int,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        self.split, self.batch_size, self.seq_len = split, batch_size, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.bos_id = int(self.manifest["tokenizer"]["bos_id"])
        self._stream = self._open_split(split)
        self.num_windows = self._stream.size // seq_len - 1
        if self.num_windows < 1:
            raise DataError(
                f"{self.data_dir}: the {split!r} split has {self._stream.size:,} tokens, too few for one "
                f"window of seq_len={seq_len} (needs at least {2 * seq_len:,})"
            )
        self.rows_consumed = 0  # global rows handed out so far, all ranks together
        self._epochs: dict[int, tuple[FeistelPermutation, int]] = {}
        self._val_stream: _TokenStream | None = None

    def _open_split(self, split: str) -> _TokenStream:
        splits = self.manifest["splits"]
        if split not in splits:
            raise DataError(f"{self.data_dir}: no {split!r} split (has {', '.join(splits)})")
        return _TokenStream(self.data_dir, splits[split]["shards"])

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def epoch(self) -> float:
        """Passes over the split so far (fractional)."""
        return self.rows_consumed / self.num_windows

    # ---------------------------------------------------------------- sampling
    def _epoch(self, e: int) -> tuple[FeistelPermutation, int]:
        if e not in self._epochs:
            rng = np.random.default_rng([self.seed, e])
            shift = int(rng.integers(0, self.seq_len))
            perm_key = int(rng.integers(0, 2**63))
            self._epochs = {e: (FeistelPermutation(self.num_windows, perm_key), shift)}  # keep one
        return self._epochs[e]

    def _window_starts(self, rows: np.ndarray) -> np.ndarray:
        starts = np.empty(len(rows), dtype=np.int64)
        epochs = rows // self.num_windows
        for e in np.unique(epochs):
            sel = epochs == e
            perm, shift = self._epoch(int(e))
            starts[sel] = shift + perm(rows[sel] % self.num_windows) * self.seq_len
        return starts

    def _to_batch(self, windows: np.ndarray) -> Batch:
        inputs, targets = windows[:, :-1], windows[:, 1:]  # (B, T) each
        doc_ids = np.cumsum(inputs == self.bos_id, axis=1, dtype=np.int32)
        return torch.from_numpy(inputs.copy()), torch.from_numpy(targets.copy()), torch.from_numpy(doc_ids)

    def next_batch(self) -> Batch:
        """``(inputs (B, T) int64, targets (B, T) int64, doc_ids (B, T) int32)`` for this rank."""
        first = self.rows_consumed + self.rank * self.batch_size
        rows = np.arange(first, first + self.batch_size, dtype=np.int64)
        windows = self._stream.windows(self._window_starts(rows), self.seq_len + 1)  # (B, T + 1)
        self.rows_consumed += self.global_batch_size
        return self._to_batch(windows)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """The loader position (identical on every rank), to save with a checkpoint."""
        return {
            "rows_consumed": self.rows_consumed,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "split": self.split,
            "split_tokens": self._stream.size,
            "tokenizer_hash": self.manifest["tokenizer"]["hash"],
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the next row after ``state`` (from :meth:`state_dict`, any world size)."""
        mine = self.state_dict()
        for key in ("seed", "seq_len", "split", "split_tokens", "tokenizer_hash"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"{self.data_dir}: cannot resume: the saved loader state has {key}={state.get(key)!r}, "
                    f"this loader has {mine[key]!r} (different data or settings)"
                )
        self.rows_consumed = int(state["rows_consumed"])

    # ---------------------------------------------------------------- evaluation
    def eval_batches(self, max_tokens: int, batch_size: int | None = None) -> Iterator[Batch]:
        """Batches over a fixed slice of the ``val`` split: its first ``max_tokens`` tokens cut into
        consecutive ``seq_len`` windows, in order, no shuffling, the same every call.

        The rows are rounded down to a multiple of ``world_size`` and split into equal contiguous
        blocks, so every rank yields the same number of batches (the last one may be smaller).
        """
        if self._val_stream is None:
            self._val_stream = self._open_split("val") if self.split != "val" else self._stream
        stream, T = self._val_stream, self.seq_len
        n_rows = max(0, min(max_tokens, stream.size - 1) // T)
        n_rows -= n_rows % self.world_size
        if n_rows == 0:
            raise DataError(
                f"{self.data_dir}: the 'val' split ({stream.size:,} tokens) holds no full window of "
                f"seq_len={T} for {self.world_size} rank(s) within max_tokens={max_tokens:,}"
            )
        per_rank = n_rows // self.world_size
        first = self.rank * per_rank
        step = batch_size or self.batch_size
        for lo in range(first, first + per_rank, step):
            rows = np.arange(lo, min(lo + step, first + per_rank), dtype=np.int64)
            yield self._to_batch(stream.windows(rows * T, T + 1))
