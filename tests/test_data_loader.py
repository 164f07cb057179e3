"""ShardLoader: windows, epochs, world-size independence, exact resume, doc ids, evaluation slice.

The shards hold ``arange(N)`` (uint32) so every token names its own position: a window's content shows
exactly where it was cut from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastgpt.data.errors import DataError
from fastgpt.data.loader import FeistelPermutation, ShardLoader
from fastgpt.data.shards import write_shard

T = 16


def make_data_dir(path, splits: dict[str, list[np.ndarray]], bos_id: int = 10**9, dtype: str = "uint32"):
    """A prepared dir in the documented layout (manifest.json + shards), written by hand."""
    path.mkdir(parents=True, exist_ok=True)
    manifest_splits = {}
    for split, arrays in splits.items():
        shards = []
        for i, tokens in enumerate(arrays):
            name = f"{split}_{i:05d}.bin"
            write_shard(path / name, tokens, dtype)
            shards.append({"file": name, "tokens": int(len(tokens))})
        total = sum(s["tokens"] for s in shards)
        manifest_splits[split] = {"tokens": total, "documents": 0, "shards": shards}
    manifest = {
        "format": "fastgpt-shards",
        "version": 1,
        "dtype": dtype,
        "tokenizer": {
            "hash": "test",
            "name": "test",
            "vocab_size": 2**32,
            "bos_id": bos_id,
            "dir": "tokenizer",
        },
        "splits": manifest_splits,
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture
def data(tmp_path):
    stream = np.arange(2000, dtype=np.int64)
    train = [stream[:700], stream[700:701], stream[701:1500], stream[1500:]]  # uneven, one 1-token shard
    val = [np.arange(10_000, 10_300)]
    return make_data_dir(tmp_path / "d", {"train": train, "val": val})


def _batches(loader, n):
    return [loader.next_batch() for _ in range(n)]


def test_rows_are_contiguous_windows(data):
    loader = ShardLoader(data, batch_size=4, seq_len=T, seed=3)
    for inputs, targets, doc_ids in _batches(loader, 20):
        assert inputs.shape == targets.shape == doc_ids.shape == (4, T)
        assert inputs.dtype == targets.dtype == torch.int64 and doc_ids.dtype == torch.int32
        starts = inputs[:, :1]
        assert torch.equal(inputs, starts + torch.arange(T))  # crosses shard edges seamlessly
        assert torch.equal(targets, inputs + 1)


def test_each_epoch_visits_every_window_once(data):
    loader = ShardLoader(data, batch_size=5, seq_len=T, seed=0)
    W = loader.num_windows
    assert W == 2000 // T - 1
    starts = torch.cat([b[0][:, 0] for b in _batches(loader, 2 * W // 5 + 1)]).tolist()
    for epoch in (starts[:W], starts[W : 2 * W]):
        shift = epoch[0] % T
        assert sorted(epoch) == [shift + w * T for w in range(W)]
    assert starts[:W] != starts[W : 2 * W]  # a new order (and offset) every epoch


def test_global_batch_does_not_depend_on_world_size(data):
    single = ShardLoader(data, batch_size=8, seq_len=T, seed=7)
    ranks = [ShardLoader(data, batch_size=4, seq_len=T, seed=7, rank=r, world_size=2) for r in range(2)]
    for _ in range(30):  # > 1 epoch
        whole = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        for i in range(3):
            assert torch.equal(whole[i], torch.cat([parts[0][i], parts[1][i]]))
        assert not set(parts[0][0][:, 0].tolist()) & set(parts[1][0][:, 0].tolist())  # disjoint rows


def test_seed_decides_the_order(data):
    a = _batches(ShardLoader(data, batch_size=4, seq_len=T, seed=1), 5)
    b = _batches(ShardLoader(data, batch_size=4, seq_len=T, seed=1), 5)
    c = _batches(ShardLoader(data, batch_size=4, seq_len=T, seed=2), 5)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_continues_at_the_next_batch(data, world_size):
    def loaders():
        return [
            ShardLoader(data, batch_size=8 // world_size, seq_len=T, seed=5, rank=r, world_size=world_size)
            for r in range(world_size)
        ]

    uninterrupted = loaders()
    expected = [[r.next_batch() for r in uninterrupted] for _ in range(40)]
    first = loaders()
    for _ in range(17):
        [r.next_batch() for r in first]
    states = [json.loads(json.dumps(r.state_dict())) for r in first]  # survives a JSON checkpoint
    assert all(s == states[0] for s in states)
    resumed = loaders()
    for r, s in zip(resumed, states):
        r.load_state_dict(s)
    for step in range(17, 40):
        got = [r.next_batch() for r in resumed]
        for rank in range(world_size):
            for i in range(3):
                assert torch.equal(got[rank][i], expected[step][rank][i])


def test_resume_on_another_world_size(data):
    two = [ShardLoader(data, batch_size=4, seq_len=T, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(9):
        [r.next_batch() for r in two]
    one = ShardLoader(data, batch_size=8, seq_len=T, seed=5)
    one.load_state_dict(two[0].state_dict())
    for _ in range(5):
        halves = [r.next_batch()[0] for r in two]
        assert torch.equal(one.next_batch()[0], torch.cat(halves))


def test_doc_ids_count_bos_tokens(tmp_path):
    rng = np.random.default_rng(0)
    bos = 7
    stream = rng.integers(0, 50, size=3000)
    stream[rng.random(3000) < 0.05] = bos
    path = make_data_dir(tmp_path / "d", {"train": [stream]}, bos_id=bos, dtype="uint16")
    loader = ShardLoader(path, batch_size=6, seq_len=T)
    for inputs, _, doc_ids in _batches(loader, 10):
        for row, ids in zip(inputs.tolist(), doc_ids.tolist()):
            reference, current = [], 0
            for token in row:
                current += token == bos
                reference.append(current)
            assert ids == reference


def test_eval_batches_are_a_fixed_ordered_slice(data):
    loader = ShardLoader(data, batch_size=3, seq_len=T, seed=1)
    first = list(loader.eval_batches(max_tokens=200))
    loader.next_batch()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, loader.eval_batches(max_tokens=200)))
    rows = torch.cat([b[0] for b in first])
    assert rows.shape == (200 // T, T)
    assert torch.equal(rows, 10_000 + torch.arange(200 // T)[:, None] * T + torch.arange(T))
    # two ranks split the same rows (rounded to a multiple of the world size) evenly
    ranks = [ShardLoader(data, batch_size=3, seq_len=T, rank=r, world_size=2) for r in range(2)]
    parts = [torch.cat([b[0] for b in r.eval_batches(200)]) for r in ranks]
    assert parts[0].shape == parts[1].shape == (6, T)
    assert torch.equal(torch.cat(parts), rows[:12])
    with pytest.raises(DataError, match="the 'val' split \\(300 tokens\\) holds no full window"):
        next(ShardLoader(data, batch_size=3, seq_len=T).eval_batches(max_tokens=10))
    empty_val = make_data_dir(data.parent / "no_val", {"train": [np.arange(100)], "val": []})
    with pytest.raises(DataError, match="the 'val' split \\(0 tokens\\) holds no full window"):
        next(ShardLoader(empty_val, batch_size=3, seq_len=T).eval_batches(max_tokens=1000))


def test_feistel_is_a_bijection():
    for n in (1, 2, 3, 5, 16, 17, 1000, 4097):
        perm = FeistelPermutation(n, key=n)(np.arange(n))
        assert sorted(perm.tolist()) == list(range(n))
    assert FeistelPermutation(1000, 1)(np.arange(1000)).tolist() != list(range(1000))


def test_bad_data_dirs(data, tmp_path):
    with pytest.raises(DataError, match="no manifest"):
        ShardLoader(tmp_path, batch_size=1, seq_len=T)
    with pytest.raises(DataError, match="no 'test' split"):
        ShardLoader(data, "test", batch_size=1, seq_len=T)
    with pytest.raises(DataError, match="too few for one window of seq_len=1500"):
        ShardLoader(data, batch_size=1, seq_len=1500)
    loader = ShardLoader(data, batch_size=2, seq_len=T, seed=1)
    with pytest.raises(DataError, match="seed=1.*this loader has 2"):
        ShardLoader(data, batch_size=2, seq_len=T, seed=2).load_state_dict(loader.state_dict())
    shard = data / "train_00002.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="train_00002.bin: truncated"):
        ShardLoader(data, batch_size=1, seq_len=T)
