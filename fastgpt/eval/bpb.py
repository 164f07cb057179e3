"""Bits per byte on held-out text: the tokenizer-independent measure of how well a model predicts text.

Cross-entropy per *token* cannot be compared across tokenizers (a bigger vocabulary packs more text into a
token, so its per-token loss is higher for the same model quality). Dividing the summed loss by the
number of UTF-8 bytes those tokens stand for, and converting nats to bits, gives a number that only
depends on the text::

    bpb = sum(loss over scored tokens) / ln(2) / sum(bytes of scored tokens)

Special tokens (BOS between documents) stand for no bytes; they are left out of both sums, as the
pretraining loop's ``val_bpb`` does, so the two numbers agree on the same slice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from fastgpt.data import ShardLoader, resolve_pretrain_data
from fastgpt.errors import UserError

__all__ = ["bits_per_byte", "evaluate_bpb"]


@torch.inference_mode()
def bits_per_byte(
    model: Any, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], token_bytes: np.ndarray
) -> dict[str, float]:
    """``{"bpb", "loss", "tokens", "bytes"}`` over ``(inputs, targets, doc_ids)`` batches.

    ``loss`` is the mean per-token cross-entropy (nats) of the scored tokens; ``token_bytes`` is
    ``Tokenizer.token_byte_lengths()``.
    """
    device = next(model.parameters()).device
    lengths = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    total_loss, total_tokens, total_bytes = 0.0, 0, 0
    for inputs, targets, doc_ids in batches:
        inputs, targets, doc_ids = inputs.to(device), targets.to(device), doc_ids.to(device)
        nbytes = lengths[targets]  # (B, T)
        scored = targets.masked_fill(nbytes == 0, -100)
        loss = model(inputs, scored, doc_ids=doc_ids, loss_reduction="sum")
        total_loss += float(loss)
        total_tokens += int((nbytes > 0).sum())
        total_bytes += int(nbytes.sum())
    if total_bytes == 0:
        raise UserError("no bytes to score: the evaluation slice is empty or holds only special tokens")
    return {
        "bpb": total_loss / math.log(2) / total_bytes,
        "loss": total_loss / max(total_tokens, 1),
        "tokens": total_tokens,
        "bytes": total_bytes,
    }


def evaluate_bpb(
    model: Any,
    tokenizer: Any,
    data: str,
    *,
    max_tokens: int = 262_144,
    seq_len: int | None = None,
    batch_size: int = 8,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Bits per byte on the validation split of ``data`` (a built-in corpus name, a prepared data dir or
    text files; see :func:`fastgpt.data.resolve_pretrain_data`), tokenized with the model's tokenizer.
    Windows are ``seq_len`` tokens (default: the model's context, or ``max_tokens`` when that is fewer,
    so a small budget still scores something on a long-context model)."""
    data_dir, _ = resolve_pretrain_data(data, tokenizer, cache_dir=cache_dir, progress=False)
    seq_len = seq_len or min(int(model.config.max_seq_len), max_tokens)
    loader = ShardLoader(data_dir, "val", batch_size=batch_size, seq_len=seq_len)
    result = bits_per_byte(model, loader.eval_batches(max_tokens), tokenizer.token_byte_lengths())
    return {**result, "data": str(data), "seq_len": seq_len}
