"""Packed documents in the Triton attention: which tiles the kernels skip, run unmasked or mask.

``_tile_range`` decides, per tile, from the document extents (``document_extents``): skipped (no visible
pair), unmasked (every pair visible: the own tile lies in one document and the other tile inside that
document's run, and the causal/window structure allows all pairs), or masked. These tests run that
decision itself under the Triton interpreter (``tile_ranges``) and check it against the brute-force
visibility matrix, then run the kernels on layouts whose documents span whole tiles (so the unmasked
path really runs with documents) against the fp32 reference, forward and backward.
"""

from __future__ import annotations

import pytest
import torch
import triton
from fastgpt.kernels._attention_tiles import TileConfig, document_extents, tile_ranges
from fastgpt.kernels.attention import attention_mask, attention_reference, attention_triton, tile_configs
from kernel_modes import TEST_DEVICE, target_arch
from test_kernel_attention import TOL, _assert_close, _check, _inputs

from fastgpt import ops

needs_interpreter = pytest.mark.skipif(
    TEST_DEVICE != "cpu", reason="reads the tile decisions on CPU under the Triton interpreter"
)


def _doc_ids(lengths_per_row: list[list[int]]) -> torch.Tensor:
    """Rows of consecutive documents with the given lengths (ids 0, 1, 2, ... per row)."""
    rows = [torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)]) for lengths in lengths_per_row]
    return torch.stack(rows)


def _brute_force(vis: torch.Tensor, own: int, other: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(any, all)`` ``(B, own tiles, other tiles)`` of a visibility matrix ``(B, n_own, n_other)``: a
    tile holds a visible pair / every pair is visible and the other tile is whole."""
    B, n_own, n_other = vis.shape
    n_o, n_t = triton.cdiv(n_own, own), triton.cdiv(n_other, other)
    any_ = torch.zeros(B, n_o, n_t, dtype=torch.bool)
    all_ = torch.zeros(B, n_o, n_t, dtype=torch.bool)
    for t in range(n_o):
        for u in range(n_t):
            block = vis[:, t * own : (t + 1) * own, u * other : (u + 1) * other]
            any_[:, t, u] = block.flatten(1).any(1)
            all_[:, t, u] = block.flatten(1).all(1) & ((u + 1) * other <= n_other)
    return any_, all_


def _decided(ranges: torch.Tensor, n_other_tiles: int, other: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(visited, unmasked)`` ``(B, own tiles, other tiles)`` from ``tile_ranges`` output."""
    u0 = torch.arange(n_other_tiles) * other
    start, full_start, full_end, end = (ranges[..., i, None] for i in range(4))
    assert (start <= full_start).all() and (full_start <= full_end).all() and (full_end <= end).all()
    return (start <= u0) & (u0 < end), (full_start <= u0) & (u0 < full_end)


LAYOUTS = {
    # documents of the default corpus are long: most rows hold one, some a boundary
    "one-doc": lambda t: _doc_ids([[t], [t]]),
    "boundaries": lambda t: _doc_ids([[40, 1, 1, t - 42], [t // 3, t - t // 3]]),
    "short-docs": lambda t: _doc_ids([[7, 1, 20, 33, t - 61], [1] * 5 + [t - 5]]),
    "scattered-ids": lambda t: torch.stack([torch.arange(t) // 9 % 3, torch.zeros(t, dtype=torch.long)]),
}


@needs_interpreter
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("key_walk", [True, False], ids=["key-walk", "query-walk"])
@pytest.mark.parametrize(
    "t_q,t_k,causal,window",
    [
        (128, 128, True, None),
        (101, 101, True, None),
        (64, 128, True, None),
        (96, 96, True, 24),
        (96, 96, False, None),
    ],
)
def test_tile_decisions_are_sound_and_tight(layout, key_walk, t_q, t_k, causal, window):
    """Skipped tiles hold no visible pair and unmasked tiles no hidden one, for both walks; for
    contiguous documents at whole-tile lengths (no window), the decision is exact: every tile with a
    visible pair is visited and every wholly visible tile runs unmasked."""
    doc = LAYOUTS[layout](t_k)
    tiles = TileConfig(32, 16, 4, 1)
    vis = attention_mask(t_q, t_k, causal=causal, doc_ids=doc, window=window, device="cpu")[:, 0]
    vis = vis.expand(doc.shape[0], t_q, t_k)
    own, other = (tiles.block_m, tiles.block_n) if key_walk else (tiles.block_n, tiles.block_m)
    if not key_walk:
        vis = vis.transpose(1, 2)
    any_, all_ = _brute_force(vis, own, other)
    ranges = tile_ranges(doc, t_q, t_k, tiles, key_walk=key_walk, causal=causal, window=window)
    visited, unmasked = _decided(ranges, any_.shape[2], other)
    assert not (any_ & ~visited).any(), "a tile with a visible pair is skipped"
    assert not (unmasked & ~all_).any(), "a tile with a hidden pair runs without the mask"
    exact = layout != "scattered-ids" and window is None and t_q == t_k and t_q % 32 == 0
    if exact:
        assert torch.equal(visited, any_)
        assert torch.equal(unmasked, all_)
    if layout == "one-doc" and causal and window is None:
        assert unmasked.any(), "documents alone must not force the mask"


@needs_interpreter
def test_with_documents_the_masked_tiles_are_those_of_the_boundaries():
    """One document per row: exactly the tiles the causal structure alone masks; before this decision
    every visited tile was masked when doc_ids were given."""
    tiles = TileConfig(32, 16, 4, 1)
    doc = _doc_ids([[256]])
    with_docs = tile_ranges(doc, 256, 256, tiles, key_walk=True)
    without = tile_ranges(None, 256, 256, tiles, key_walk=True)
    assert torch.equal(with_docs, without)


def test_document_extents_planes():
    doc = torch.tensor([[3, 3, 1, 1, 1, 3, 2], [0, 0, 0, 0, 0, 0, 0]])
    ext = document_extents(doc)
    assert ext.dtype == torch.int32 and ext.shape == (2, 4, 7)
    assert ext[0].tolist() == [
        [0, 0, 2, 2, 2, 0, 6],  # first position of the id
        [6, 6, 5, 5, 5, 6, 7],  # one past its last position
        [0, 0, 2, 2, 2, 5, 6],  # first position of the run
        [2, 2, 5, 5, 5, 6, 7],  # one past the run
    ]
    assert ext[1].tolist() == [[0] * 7, [7] * 7, [0] * 7, [7] * 7]


# ------------------------------------------------------------------------------------------- numerics
def _full_tiles_run(doc, t, head_dim):
    """The unmasked path with documents runs in this test (for the launcher's tiles on this target)."""
    if TEST_DEVICE != "cpu":
        return
    tiles = tile_configs(head_dim, target_arch())
    for role, key_walk in (("fwd", True), ("bwd_dkdv", False), ("bwd_dq", True)):
        ranges = tile_ranges(doc, t, t, tiles[role], key_walk=key_walk)
        assert (ranges[..., 2] > ranges[..., 1]).any(), f"{role}: no unmasked tile with documents"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("Hkv", [2, 1])
def test_documents_spanning_tiles(dtype, Hkv):
    """Odd length (157 on the interpreter's tiles); documents over several whole tiles, straddling tile
    edges, of one token, and a one-document row; GQA; forward and dQ/dK/dV against the fp32 reference."""
    edge = max(max(c.block_m, c.block_n) for c in tile_configs(32, target_arch()).values())
    T = max(157, 3 * edge + 29)  # whole tiles inside documents for the launcher's tiles, then a ragged one
    doc = _doc_ids([[70, 1, 1, 45, T - 117], [T]])
    _full_tiles_run(doc, T, 32)
    _check(*_inputs(2, 4, Hkv, T, T, 32, dtype), doc_ids=doc)


def test_documents_spanning_tiles_with_window():
    T = 131
    doc = _doc_ids([[64, 1, 66], [T]])
    _check(*_inputs(2, 2, 1, T, T, 32), doc_ids=doc, window=40)


def test_documents_with_kv_cache_alignment():
    """Tq < Tk with documents: the queries' extents are read at their key positions."""
    doc = _doc_ids([[30, 60], [90]])
    _check(*_inputs(2, 2, 2, 37, 90, 32), doc_ids=doc)


def test_precomputed_extents_are_used_and_checked():
    q, k, v = _inputs(2, 2, 1, 57, 57, 32)
    doc = _doc_ids([[20, 37], [57]])
    want = attention_triton(q, k, v, doc_ids=doc)
    got = attention_triton(q, k, v, doc_ids=doc, doc_extents=document_extents(doc))
    assert torch.equal(got, want)
    with ops.use_backend("triton"):
        via_ops = ops.attention(q, k, v, doc_ids=doc, doc_extents=ops.document_extents(doc))
    _assert_close(via_ops, attention_reference(q, k, v, doc_ids=doc), TOL[q.dtype], "ops.attention")
    with pytest.raises(ValueError, match="doc_extents"):
        attention_triton(q, k, v, doc_ids=doc, doc_extents=document_extents(doc[:, :50]))
