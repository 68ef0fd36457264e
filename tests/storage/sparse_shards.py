"""Token shards of more than 2**32 tokens that take almost no disk: sparse ``tokens.bin`` files.

The shard writer would have to write every token, so these shards are laid out by hand in the
documented format (`storage.token_shards`): ``tokens.bin`` is truncated to its full size, which
leaves a hole that reads as zeros, and only a few short dense stretches are written at known
offsets, each document's EOS at its end. Every token's value follows from its offset
(`SparseShard.expected`), so a test checks any slice against arithmetic, not against the reader.
Nothing here reads a whole file: that would page in gigabytes of zeros.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.token_shards import INDEX_FILE, SHARD_MANIFEST, TOKENS_FILE, token_dtype

EOS = 1
G = 2**32

LAYOUTS = {
    # name: (vocab size, token base, document bounds, dense stretches); documents straddle 2**31, 2**32 and
    # 2**33, and the last one runs 20k tokens past the last boundary, so whole windows lie beyond it.
    "uint16": (50_000, 2, (0, G - 1000, G + 2000, 2 * G - 1500, 2 * G + 1500, 2 * G + 20_000),
               ((G - 1000, G + 2000), (2 * G - 1500, 2 * G + 20_000))),
    "uint32": (100_000, 70_000, (0, 2**31 - 50, 2**31 + 150, G + 9, G + 20_000),
               ((2**31 - 50, 2**31 + 150), (G - 100, G + 20_000))),
}


def dense_values(offsets: np.ndarray, base: int) -> np.ndarray:
    """The token at each offset of a dense stretch: both its 2**32-block and its offset mod 997
    show, so a position that wrapped at 2**32 (or 2**31) reads another value (or a hole's 0)."""
    return base + (offsets >> 32) * 1000 + offsets % 997


@dataclass(frozen=True)
class SparseShard:
    dir: Path
    bounds: tuple[int, ...]
    """The index: document start offsets, then the total."""
    dense: tuple[tuple[int, int], ...]
    """The ``[start, stop)`` stretches holding `dense_values`; the rest is a hole (zeros)."""
    base: int
    source: str

    @property
    def n_tokens(self) -> int:
        return self.bounds[-1]

    def expected(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` as written (int64), computed without reading the file."""
        out = np.zeros(stop - start, dtype=np.int64)
        for a, b in self.dense:
            lo, hi = max(a, start), min(b, stop)
            if lo < hi:
                out[lo - start : hi - start] = dense_values(np.arange(lo, hi, dtype=np.int64), self.base)
        for end in self.bounds[1:]:
            if start <= end - 1 < stop:
                out[end - 1 - start] = EOS
        return out


def write_sparse_shard(directory: Path, bounds: Sequence[int], dense: Sequence[tuple[int, int]], *,
                       vocab_size: int, base: int = 2, source: str = "big") -> SparseShard:
    """A complete shard (tokens, int64 index, manifest) of ``bounds[-1]`` tokens, mostly hole."""
    shard = SparseShard(directory, tuple(bounds), tuple(dense), base, source)
    dtype = token_dtype(vocab_size)
    directory.mkdir(parents=True)
    with open(directory / TOKENS_FILE, "wb") as fh:
        fh.truncate(shard.n_tokens * dtype.itemsize)
        for a, b in dense:
            fh.seek(a * dtype.itemsize)
            fh.write(dense_values(np.arange(a, b, dtype=np.int64), base).astype(dtype).tobytes())
        for end in bounds[1:]:
            fh.seek((end - 1) * dtype.itemsize)
            fh.write(np.array([EOS], dtype=dtype).tobytes())
    np.save(directory / INDEX_FILE, np.array(bounds, dtype=np.int64))
    manifest = {"dtype": dtype.str, "n_docs": len(bounds) - 1, "n_tokens": shard.n_tokens, "vocab_size": vocab_size,
                "eos_id": EOS, "bos_id": None, "tokens_per_source": {source: shard.n_tokens}, "split": "train"}
    (directory / SHARD_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return shard


def disk_bytes(directory: Path) -> int:
    """Bytes the files under `directory` really occupy (``du``), not their apparent size."""
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())


def keeps_holes(directory: Path) -> bool:
    """Whether the filesystem of `directory` stores a 1 GiB truncated file in under 1 MiB."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".sparse-probe-")
    try:
        os.ftruncate(fd, 2**30)
        return os.fstat(fd).st_blocks * 512 < 2**20
    finally:
        os.close(fd)
        os.unlink(name)
