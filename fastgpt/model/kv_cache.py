"""Key/value cache for incremental decoding.

Holds, per layer, keys and values ``(B, Hkv, max_len, head_dim)`` (one tensor each) (GQA keeps only the K/V heads), the
document id of every cached token (left padding in batched prompts is its own document, so real tokens
never attend to it) and each row's next position id (so padded rows continue at the right position
without the caller tracking it).
"""

from __future__ import annotations

import torch

from fastgpt.model.config import GPTConfig


class KVCache:
    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_len: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        self.config = config
        self.batch_size, self.max_len = batch_size, max_len
        self.dtype, self.device = dtype, device
        # one (B, Hkv, max_len, hd) tensor per layer, allocated on first update; separate tensors (not
        # views of one) so that a compiled decode step can write each of them in place
        self.k_layers: list[torch.Tensor] | None = None
        self.v_layers: list[torch.Tensor] | None = None
        self.doc_ids: torch.Tensor | None = None  # (B, max_len) once any doc ids were given
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        self.pos = 0  # tokens cached so far (same for every row)
        self._pending_doc_ids: torch.Tensor | None = None

    def _allocate(self, like: torch.Tensor) -> None:
        c = self.config
        shape = (self.batch_size, c.n_kv_head, self.max_len, c.head_dim)
        dtype = self.dtype or like.dtype
        self.k_layers = [torch.zeros(shape, dtype=dtype, device=like.device) for _ in range(c.n_layer)]
        self.v_layers = [torch.zeros(shape, dtype=dtype, device=like.device) for _ in range(c.n_layer)]

    @property
    def k(self) -> torch.Tensor | None:
        """All cached keys ``(L, B, Hkv, max_len, hd)``: a stacked copy, for inspection."""
        return None if self.k_layers is None else torch.stack(self.k_layers)

    @property
    def v(self) -> torch.Tensor | None:
        """All cached values ``(L, B, Hkv, max_len, hd)``: a stacked copy, for inspection."""
        return None if self.v_layers is None else torch.stack(self.v_layers)

    def prepare(
        self, idx: torch.Tensor, position_ids: torch.Tensor | None, doc_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Called once per forward before the layers: checks room, fills default position ids and
        records the new tokens' doc ids. Returns ``(position_ids (B, T), doc_ids or None)``."""
        B, T = idx.shape
        if B != self.batch_size:
            raise ValueError(f"KVCache holds batch {self.batch_size}, got input batch {B}")
        if self.pos + T > self.max_len:
            raise ValueError(f"KVCache is full: {self.pos} cached + {T} new > max_len={self.max_len}")
        if self.next_pos.device != idx.device:
            self.next_pos = self.next_pos.to(idx.device)
        if position_ids is None:
            position_ids = self.next_pos[:, None] + torch.arange(T, device=idx.device)  # (B, T)
        position_ids = position_ids.expand(B, T)
        self.next_pos = position_ids[:, -1] + 1
        if doc_ids is not None or self.doc_ids is not None:
            if self.doc_ids is None:  # first doc ids: everything cached so far was one document (0)
                self.doc_ids = torch.zeros(B, self.max_len, dtype=torch.int32, device=idx.device)
            if doc_ids is None:  # continuing: new tokens belong to each row's current document
                last = self.doc_ids[:, self.pos - 1 : self.pos] if self.pos else self.doc_ids[:, :1]
                doc_ids = last.expand(B, T)
            self.doc_ids[:, self.pos : self.pos + T] = doc_ids
            return position_ids, self.doc_ids[:, : self.pos + T]
        return position_ids, None

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append ``k``/``v`` ``(B, Hkv, T, hd)`` for ``layer``; return all cached keys/values of the
        layer ``(B, Hkv, pos + T, hd)`` and the doc ids ``(B, pos + T)`` (or None)."""
        if self.k_layers is None:
            self._allocate(k)
        T = k.shape[2]
        end = self.pos + T
        k_cache, v_cache = self.k_layers[layer], self.v_layers[layer]
        k_cache[:, :, self.pos : end] = k
        v_cache[:, :, self.pos : end] = v
        doc = None if self.doc_ids is None else self.doc_ids[:, :end]
        return k_cache[:, :, :end], v_cache[:, :, :end], doc

    def static_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """``(k_layers, v_layers, doc_ids)`` at their full length ``max_len``, for a decode step whose
        shapes never change (:mod:`fastgpt.decode_step`), which writes into them in place. A cache that
        was given no doc ids gets them now: every token so far is document 0."""
        if self.k_layers is None:
            raise ValueError("KVCache is empty: prefill before a static decode step")
        if self.doc_ids is None:
            device = self.k_layers[0].device
            self.doc_ids = torch.zeros(self.batch_size, self.max_len, dtype=torch.int32, device=device)
        return self.k_layers, self.v_layers, self.doc_ids

    def advance(self, n: int) -> None:
        self.pos += n

    def repeat(self, n: int) -> KVCache:
        """A new cache of batch ``B * n`` where rows ``b*n .. b*n+n-1`` copy row ``b``: prefill a prompt
        once, then sample ``n`` continuations."""
        new = KVCache(self.config, self.batch_size * n, self.max_len, dtype=self.dtype, device=self.device)
        if self.k_layers is not None:
            new.k_layers = [k.repeat_interleave(n, dim=0) for k in self.k_layers]
            new.v_layers = [v.repeat_interleave(n, dim=0) for v in self.v_layers]
        if self.doc_ids is not None:
            new.doc_ids = self.doc_ids.repeat_interleave(n, dim=0)
        new.next_pos = self.next_pos.repeat_interleave(n, dim=0)
        new.pos = self.pos
        return new
