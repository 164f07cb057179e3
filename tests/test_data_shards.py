"""Token shard files: round trip, dtype choice, and every way a shard can be bad."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fastgpt.data.shards import (
    HEADER_BYTES,
    MAGIC,
    ShardError,
    dtype_for_vocab,
    open_shard,
    read_header,
    write_shard,
)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_roundtrip(tmp_path, dtype):
    tokens = np.random.default_rng(0).integers(0, 65536, size=1001)
    path = tmp_path / "s.bin"
    assert write_shard(path, tokens, dtype) == 1001
    got = open_shard(path)
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, tokens)
    # the header is the documented little-endian layout
    raw = path.read_bytes()
    assert raw[:8] == MAGIC and struct.unpack_from("<IIQ", raw, 8) == (1, np.dtype(dtype).itemsize, 1001)
    assert len(raw) == HEADER_BYTES + 1001 * np.dtype(dtype).itemsize


def test_dtype_for_vocab():
    assert dtype_for_vocab(65536) == np.uint16 and dtype_for_vocab(65537) == np.uint32


def test_ids_too_large_for_uint16(tmp_path):
    with pytest.raises(ShardError, match="70000 does not fit in uint16.*needs uint32"):
        write_shard(tmp_path / "s.bin", np.array([1, 70000]), "uint16")
    assert not (tmp_path / "s.bin").exists()


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", np.zeros(0, dtype=np.int64), "uint16")
    assert open_shard(tmp_path / "e.bin").shape == (0,)


def _write(tmp_path, data: bytes):
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    return path


def test_bad_shards_name_file_and_problem(tmp_path):
    good = tmp_path / "good.bin"
    write_shard(good, np.arange(10), "uint16")
    raw = good.read_bytes()
    cases = {
        "wrong magic": (b"NOTATOK\0" + raw[8:], "not a fastgpt token shard"),
        "wrong version": (raw[:8] + struct.pack("<I", 7) + raw[12:], "version 7"),
        "bad dtype": (raw[:12] + struct.pack("<I", 3) + raw[16:], "3 bytes per token"),
        "truncated body": (
            raw[:-4],
            r"truncated or corrupt: header says 10 tokens \(84 bytes\) but the file has 80",
        ),
        "short header": (raw[:20], "shorter than the 64-byte shard header"),
    }
    for name, (data, message) in cases.items():
        path = _write(tmp_path, data)
        with pytest.raises(ShardError, match=message) as info:
            open_shard(path)
        assert str(path) in str(info.value), name
    with pytest.raises(ShardError, match="cannot read shard"):
        read_header(tmp_path / "missing.bin")
