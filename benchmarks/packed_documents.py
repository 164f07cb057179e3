"""Packed-document rows for the attention benchmarks (benchmarks/kernels.py): the document lengths of
two built-in corpora and the rows the pretraining loader would cut from them.

``DOC_LENGTHS`` are the token lengths of the training documents in shard order, as ``fastgpt pretrain``
tokenizes them (the corpus's own bpe4096 tokenizer, BOS included): ``shakespeare`` is the default corpus
(40 training works of 676-52558 tokens, median 36776), ``c4-demo`` 287 web pages (17-10245 tokens, median
333: short documents, where document masking matters). Regenerated from the prepared data (CPU) with

    python benchmarks/packed_documents.py shakespeare c4-demo
"""

from __future__ import annotations

import sys

import torch

DOC_LENGTHS = {
    "shakespeare": (
        38553, 45155, 36773, 25221, 48070, 29389, 52558, 42238, 45418, 46257, 38155, 43117, 40548, 42582, 35091,
        33951, 45543, 4357, 40060, 31202, 36710, 35860, 39147, 30023, 35588, 45006, 2562, 32776, 676, 25655, 37190,
        49572, 41400, 27433, 36779, 30778, 32870, 35623, 46878, 32523,
    ),
    "c4-demo": (
        322, 974, 619, 1922, 323, 146, 179, 200, 323, 238, 4827, 268, 218, 278, 431, 244, 1131, 417, 479, 836, 263,
        2606, 795, 1216, 346, 1543, 72, 378, 319, 189, 81, 611, 115, 570, 453, 120, 369, 578, 721, 129, 1277, 6453,
        139, 300, 1369, 57, 178, 239, 362, 789, 596, 332, 519, 2101, 94, 550, 293, 1965, 357, 656, 686, 782, 170,
        3020, 278, 1676, 1099, 128, 307, 278, 143, 136, 357, 1205, 542, 1665, 625, 762, 165, 1089, 242, 68, 252,
        249, 122, 319, 123, 7208, 87, 134, 133, 36, 509, 598, 2398, 519, 233, 263, 641, 195, 572, 1736, 146, 93,
        184, 163, 151, 105, 258, 593, 148, 484, 120, 266, 84, 359, 333, 412, 137, 3849, 68, 4702, 185, 767, 76, 92,
        175, 751, 2518, 398, 427, 806, 415, 1049, 322, 169, 129, 17, 80, 281, 156, 319, 79, 77, 672, 4596, 305, 205,
        69, 475, 1412, 439, 391, 173, 404, 162, 960, 67, 721, 1372, 258, 79, 264, 296, 593, 149, 1211, 82, 293, 230,
        461, 406, 302, 1608, 1550, 335, 2646, 307, 649, 580, 70, 245, 66, 207, 380, 387, 297, 140, 272, 146, 110,
        1409, 10245, 105, 389, 46, 1781, 1961, 220, 921, 257, 345, 398, 1254, 169, 691, 534, 1234, 620, 142, 112,
        491, 552, 165, 93, 1121, 386, 130, 297, 450, 226, 604, 92, 182, 507, 182, 7173, 875, 949, 239, 510, 69, 660,
        722, 369, 458, 225, 883, 1111, 632, 390, 450, 57, 400, 108, 245, 1956, 1075, 156, 328, 3050, 69, 1738, 458,
        686, 575, 176, 175, 996, 93, 62, 4143, 561, 242, 143, 91, 165, 312, 718, 415, 1511, 631, 2050, 258, 111,
        628, 113, 145, 373, 197, 95, 487, 245, 1726, 262, 501, 48,
    ),
}  # fmt: skip


def corpus_doc_lengths(data: str) -> list[int]:
    """Token lengths of the training documents of a built-in corpus or prepared dir (a BOS opens each),
    read from the shards `fastgpt pretrain` would use (prepared on first use: CPU, minutes)."""
    import numpy as np

    from fastgpt.data import resolve_pretrain_data
    from fastgpt.data.manifest import read_manifest
    from fastgpt.data.shards import open_shard

    data_dir, _ = resolve_pretrain_data(data, None, 4096, progress=False)
    manifest = read_manifest(data_dir)
    files = manifest["splits"]["train"]["shards"]
    tokens = np.concatenate([np.asarray(open_shard(data_dir / f["file"])) for f in files])
    starts = np.flatnonzero(tokens == int(manifest["tokenizer"]["bos_id"]))
    return np.diff(np.append(starts, len(tokens))).tolist()


def packed_doc_ids(lengths: tuple[int, ...], batch: int, seq_len: int, scale: float = 1.0) -> torch.Tensor:
    """``(batch, seq_len)`` int32 document ids of rows cut from the corpus's token stream (documents
    back to back, as the loader streams them, repeated if short): row ``r`` starts at ``r / batch`` of
    the way through the stream, so the rows sample the whole length distribution. ``scale`` shrinks every
    document (at least 1 token), for tiny rows with as many documents per row as long ones would have."""
    if scale != 1.0:
        lengths = tuple(max(1, round(n * scale)) for n in lengths)
    doc_of_token = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    total = doc_of_token.numel()
    rows = [(r * total // batch + torch.arange(seq_len)) % total for r in range(batch)]
    return doc_of_token[torch.stack(rows)].to(torch.int32)


def runs(doc_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(row, start, end)`` of every run of equal ids (a document's piece in a row)."""
    out = []
    for b, row in enumerate(doc_ids.tolist()):
        start = 0
        for t in range(1, len(row) + 1):
            if t == len(row) or row[t] != row[start]:
                out.append((b, start, t))
                start = t
    return out


if __name__ == "__main__":
    for name in sys.argv[1:] or ["shakespeare"]:
        lengths = corpus_doc_lengths(name)
        print(f"{name}: {len(lengths)} documents, {sum(lengths)} tokens, same as DOC_LENGTHS: "
              f"{tuple(lengths) == DOC_LENGTHS.get(name)}\n{tuple(lengths)}")  # fmt: skip
