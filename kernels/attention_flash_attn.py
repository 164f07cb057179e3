"""The ``flash-attn`` package (FlashAttention-2, Tri Dao) behind fastgpt's attention signature: one more
backend ``fastgpt.ops.attention`` can pick (``FASTGPT_ATTENTION=flash_attn``), and the external baseline
of the GPU benchmarks. Not a fastgpt kernel: it only translates layouts and document ids.

Installed with ``pip install 'fastgpt[gpu]'``; imported lazily, so this module loads without it.
"""

from __future__ import annotations

import torch


def doc_ids_to_cu_seqlens(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Packed rows ``(B, T)`` -> flash-attn varlen boundaries over the ``B * T`` flattened tokens.

    Each maximal run of equal ids in a row is one sequence. Returns ``cu_seqlens`` (int32, ``(n + 1,)``)
    and the longest run. A document id that reappears later in its row cannot be expressed this way
    (the runs would not see each other, unlike in :func:`attention_reference`): that is an error.
    """
    B, T = doc_ids.shape
    run_start = torch.ones(B, T, dtype=torch.bool, device=doc_ids.device)
    run_start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    sorted_ids = doc_ids.sort(dim=1).values
    distinct = (sorted_ids[:, 1:] != sorted_ids[:, :-1]).sum(1) + 1
    if not torch.equal(run_start.sum(1), distinct):
        raise ValueError(
            "attention_flash_attn: doc_ids must mark each document as one contiguous run per row "
            "(an id reappears after another document); use attention_triton or attention_reference"
        )
    starts = run_start.flatten().nonzero().flatten()
    cu_seqlens = torch.cat([starts, starts.new_tensor([B * T])]).to(torch.int32)
    return cu_seqlens, int(cu_seqlens.diff().max())


def attention_flash_attn(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = True, doc_ids: torch.Tensor | None = None, window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:  # fmt: skip
    """The ``flash-attn`` package (``pip install 'fastgpt[gpu]'``) behind the same signature, for
    benchmarks. CUDA and fp16/bf16 only; flash-attn has the same bottom-right causal alignment and GQA.
    Documents go through its varlen entry point (``Tq == Tk``, each document one contiguous run).
    Untested here: the development machines have no GPU (see docs/attention.md)."""
    try:  # flash-attn is optional (GPU only): imported when this backend is first used
        from flash_attn import flash_attn_func, flash_attn_varlen_func
    except ImportError as err:
        raise ImportError(
            "attention_flash_attn needs the flash-attn package on a CUDA machine: pip install 'fastgpt[gpu]'"
        ) from err
    if not q.is_cuda:
        raise RuntimeError("attention_flash_attn runs on CUDA tensors only")
    # ours: key k is visible from position p when p - window < k (<= p if causal); flash-attn: (left, right)
    window_size = (-1, -1) if window is None else (window - 1, 0 if causal else -1)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, T, H, D): flash-attn's layout
    if doc_ids is None:
        out = flash_attn_func(qt, kt, vt, softmax_scale=scale, causal=causal, window_size=window_size)
        return out.transpose(1, 2)
    B, Tq = q.shape[0], q.shape[2]
    if Tq != k.shape[2]:
        raise NotImplementedError(
            "attention_flash_attn: doc_ids with Tq != Tk (KV-cache decode) is not supported"
        )
    cu_seqlens, max_len = doc_ids_to_cu_seqlens(doc_ids)
    out = flash_attn_varlen_func(
        qt.reshape(B * Tq, *qt.shape[2:]), kt.reshape(B * Tq, *kt.shape[2:]), vt.reshape(B * Tq, *vt.shape[2:]),
        cu_seqlens, cu_seqlens, max_len, max_len,
        softmax_scale=scale, causal=causal, window_size=window_size,
    )  # fmt: skip
    return out.view(B, Tq, *out.shape[1:]).transpose(1, 2)
