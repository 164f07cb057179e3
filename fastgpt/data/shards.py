"""Token shard files: a 64-byte header, then the token ids as a flat little-endian array.

Header layout (little-endian)::

    offset  size  field
         0     8  magic  b"FGPTTOK\\0"
         8     4  version (uint32, currently 1)
        12     4  bytes per token (uint32: 2 = uint16, 4 = uint32)
        16     8  token count (uint64)
        24    40  zero padding (room for future fields; keeps the body 64-byte aligned)

The body is read with ``np.memmap``, so a loader touches only the pages it samples. A file whose size
does not equal ``64 + count * bytes_per_token`` is truncated (or padded) and refused: a shard that
was being written when a job died must never be read as data.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from fastgpt.data.errors import DataError

__all__ = [
    "HEADER_BYTES",
    "MAGIC",
    "VERSION",
    "ShardError",
    "dtype_for_vocab",
    "open_shard",
    "read_header",
    "write_shard",
]

MAGIC = b"FGPTTOK\0"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQ")
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


class ShardError(DataError):
    """A shard file that is not a valid fastgpt token shard; the message names the file."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65,536), else uint32."""
    return _DTYPES[2] if vocab_size <= 1 << 16 else _DTYPES[4]


def write_shard(path: str | os.PathLike, tokens: np.ndarray, dtype: np.dtype | str) -> int:
    """Write ``tokens`` (1-D ints) as a shard of ``dtype`` (uint16/uint32) atomically; returns the count."""
    path, dtype = Path(path), np.dtype(dtype).newbyteorder("<")
    if dtype.itemsize not in _DTYPES or dtype.kind != "u":
        raise ShardError(f"{path}: shard dtype must be uint16 or uint32, got {dtype}")
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ShardError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(dtype).max):
        raise ShardError(
            f"{path}: token id {int(tokens.max() if tokens.max() > 0 else tokens.min())} does not fit in "
            f"{dtype.name}; a vocabulary over 65,536 tokens needs uint32 shards"
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, dtype.itemsize, tokens.size).ljust(HEADER_BYTES, b"\0"))
        f.write(tokens.astype(dtype, copy=False).tobytes())
    os.replace(tmp, path)
    return int(tokens.size)


def read_header(path: str | os.PathLike) -> tuple[np.dtype, int]:
    """``(dtype, token count)`` of a shard, after checking magic, version and file size."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as e:
        raise ShardError(f"{path}: cannot read shard ({e.strerror})") from None
    if len(head) < HEADER_BYTES:
        raise ShardError(f"{path}: {len(head)} bytes, shorter than the {HEADER_BYTES}-byte shard header")
    magic, version, itemsize, count = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ShardError(f"{path}: not a fastgpt token shard (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ShardError(f"{path}: shard format version {version}, this fastgpt reads version {VERSION}")
    if itemsize not in _DTYPES:
        raise ShardError(f"{path}: {itemsize} bytes per token in the header, expected 2 or 4")
    expected = HEADER_BYTES + count * itemsize
    if size != expected:
        raise ShardError(
            f"{path}: truncated or corrupt: header says {count:,} tokens ({expected:,} bytes) "
            f"but the file has {size:,} bytes"
        )
    return _DTYPES[itemsize], int(count)


def open_shard(path: str | os.PathLike) -> np.ndarray:
    """The shard's tokens as a read-only memory map (validated by :func:`read_header`)."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))
