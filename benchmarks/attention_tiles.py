"""Masked-tile census of the Triton attention on packed pretraining batches.

For real batches of the pretraining loader (``doc_ids`` as ``fastgpt pretrain`` passes them: each BOS
opens a document), counts the tiles each attention kernel visits and how many of them take the masked
path: *before* (with documents every visited tile was masked), *after* (the per-tile decision of
``_tile_range``: masked only where a tile straddles a document edge, the causal diagonal or the ragged
end), and *causal only* (the same batch without documents: the floor). The decision is the kernels' own:
``tile_ranges`` runs ``_tile_range`` (under the Triton interpreter on CPU) with the GPU tile tables of
``tile_configs`` for the model's head dim. Nothing is timed; no GPU is needed.

    TRITON_INTERPRET=1 python benchmarks/attention_tiles.py                     # default preset
    TRITON_INTERPRET=1 python benchmarks/attention_tiles.py --data c4-demo --seq_len 2048

Defaults are the default preset's: the built-in Shakespeare corpus, ``--seq_len 256 --batch_size 16``,
the tiny model's head dim 64.
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (the census runs on CPU)

import torch
from fastgpt.kernels._attention_tiles import tile_ranges
from fastgpt.kernels.attention import tile_configs

from fastgpt.data import ShardLoader, resolve_pretrain_data

WALKS = (("fwd", True), ("bwd_dkdv", False), ("bwd_dq", True))  # kernel role, key walk (query tiles)


def census(doc_ids: torch.Tensor, head_dim: int, arch: str) -> dict[str, dict[str, int]]:
    """Per kernel role: ``visited`` tiles (query tile x key tile, summed over the batch rows; every head
    of a row decides the same), ``masked`` after the per-tile decision, ``masked_causal`` of the same
    batch without documents (and its ``visited_causal``)."""
    t = doc_ids.shape[1]
    out = {}
    for role, key_walk in WALKS:
        tiles = tile_configs(head_dim, arch)[role]
        other = tiles.block_n if key_walk else tiles.block_m
        counts = {}
        for name, docs in (("", doc_ids), ("_causal", None)):
            r = tile_ranges(docs, t, t, tiles, key_walk=key_walk).long()
            visited = ((r[..., 3] - r[..., 0]) // other).sum().item()
            full = ((r[..., 2] - r[..., 1]) // other).sum().item()
            rows = 1 if docs is None else doc_ids.shape[0]
            scale = doc_ids.shape[0] // rows  # the causal-only census is one row, the same for all
            counts[f"visited{name}"] = visited * scale
            counts[f"masked{name}"] = (visited - full) * scale
        out[role] = counts
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="shakespeare", help="corpus name or prepared dir (as pretrain's)")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4, help="batches counted (the loader's first ones)")
    parser.add_argument("--head_dim", type=int, default=64, help="the model's head dim (tiny preset: 64)")
    parser.add_argument("--archs", default="sm80,sm90")
    args = parser.parse_args(argv)

    data_dir, _ = resolve_pretrain_data(args.data, None, 4096, progress=False)
    loader = ShardLoader(data_dir, "train", batch_size=args.batch_size, seq_len=args.seq_len)
    batches = [loader.next_batch()[2] for _ in range(args.batches)]
    docs_per_row = torch.cat([d[:, -1] - d[:, 0] + 1 for d in batches]).float()
    print(
        f"data {args.data} ({data_dir}), seq_len {args.seq_len}, {args.batches} batches of "
        f"{args.batch_size} rows: documents per row mean {docs_per_row.mean():.2f}, "
        f"max {int(docs_per_row.max())}; rows with a document edge "
        f"{(docs_per_row > 1).float().mean():.0%}"
    )
    print("\n| tiles | kernel | visited | masked before | masked after | causal only (no documents) |")
    print("|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        totals: dict[str, dict[str, int]] = {}
        for doc_ids in batches:
            for role, counts in census(doc_ids, args.head_dim, arch).items():
                for key, value in counts.items():
                    totals.setdefault(role, {}).setdefault(key, 0)
                    totals[role][key] += value
        for role, c in totals.items():
            cfg = tile_configs(args.head_dim, arch)[role]
            print(
                f"| {arch} d{args.head_dim} {cfg.block_m}x{cfg.block_n} | {role} | {c['visited']} | "
                f"{c['visited']} (100%) | {c['masked']} ({c['masked'] / c['visited']:.1%}) | "
                f"{c['masked_causal']} of {c['visited_causal']} "
                f"({c['masked_causal'] / c['visited_causal']:.1%}) |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
