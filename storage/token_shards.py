"""Token shards: flat little-endian token files with a document index, memory-mapped to read.

One shard is a directory holding
- ``tokens.bin``: every document's ids followed by EOS (BOS first if asked), back to
  back; uint16 when the vocab fits in 65535 ids, else uint32 (half the disk and
  page cache for most vocabularies);
- ``index.npy``: int64 start offset of each document, length ``n_docs + 1`` (the
  last entry is the total token count), so document i is ``tokens[index[i]:index[i+1]]``;
- ``manifest.json``: dtype, counts, special ids, tokens per source — written last,
  so a shard without it is incomplete.

Readers memory-map ``tokens.bin``: the OS pages data in on demand and shares the
pages between data-loader workers and ranks, so memory does not grow with them.

Counts and offsets are Python ints or int64 everywhere (a shard or a split may hold more
than 2**32 tokens); `TokenShard.open` refuses an index of any other dtype rather than
read positions that wrapped.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError
from storage.atomic import atomic_path, atomic_write_text

TOKENS_FILE = "tokens.bin"
INDEX_FILE = "index.npy"
SHARD_MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest little-endian unsigned dtype that holds every id of the vocab."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


class TokenShardWriter:
    """Append documents to a new shard; `close()` makes it visible atomically.

    Tokens stream to a temporary file, so a shard may be larger than memory.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        vocab_size: int,
        eos_id: int,
        bos_id: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.dtype = token_dtype(vocab_size)
        self.vocab_size, self.eos_id, self.bos_id = vocab_size, eos_id, bos_id
        self.meta = dict(meta or {})
        self.offsets = array("q", [0])  # int64, 8 bytes a document (a list of ints costs ~36)
        self.source_tokens: dict[str, int] = {}
        self._ctx = atomic_path(self.dir / TOKENS_FILE)
        self._tmp = self._ctx.__enter__()
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 -- closed in close()/abort()

    def add(self, ids: Sequence[int] | np.ndarray, source: str = "") -> None:
        """Append one document (EOS added here, BOS too if configured)."""
        arr = np.asarray(ids, dtype=np.int64)
        parts = ([np.array([self.bos_id])] if self.bos_id is not None else []) + [arr, np.array([self.eos_id])]
        doc = np.concatenate(parts)
        if doc.size and (doc.min() < 0 or doc.max() >= self.vocab_size):
            raise KilnError(f"{self.dir}: token id out of range [0, {self.vocab_size}); tokenizer and vocab disagree")
        self._fh.write(doc.astype(self.dtype).tobytes())
        self.offsets.append(self.offsets[-1] + int(doc.size))
        self.source_tokens[source] = self.source_tokens.get(source, 0) + int(doc.size)

    def close(self) -> dict[str, Any]:
        """Finish the shard: tokens, then index, then manifest (the completion marker)."""
        self._fh.close()
        self._ctx.__exit__(None, None, None)
        with atomic_path(self.dir / INDEX_FILE) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.frombuffer(self.offsets, dtype=np.int64))
        manifest = {
            "dtype": self.dtype.str,
            "n_docs": len(self.offsets) - 1,
            "n_tokens": self.offsets[-1],
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "bos_id": self.bos_id,
            "tokens_per_source": dict(sorted(self.source_tokens.items())),
            **self.meta,
        }
        atomic_write_text(self.dir / SHARD_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        return manifest

    def abort(self) -> None:
        """Drop the partial shard (used when an error interrupts writing)."""
        self._fh.close()
        self._ctx.__exit__(KilnError, KilnError("aborted"), None)


def write_token_shard(directory: str | Path, docs: Iterable[Sequence[int]], **kwargs: Any) -> dict[str, Any]:
    """Write a whole shard from an iterable of token-id lists; returns its manifest."""
    writer = TokenShardWriter(directory, **kwargs)
    try:
        for ids in docs:
            writer.add(ids)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


@dataclass
class TokenShard:
    """A read-only, memory-mapped view of one shard."""

    dir: Path
    tokens: np.ndarray
    index: np.ndarray
    manifest: dict[str, Any]

    @classmethod
    def open(cls, directory: str | Path) -> TokenShard:
        d = Path(directory)
        try:
            manifest = json.loads((d / SHARD_MANIFEST).read_text())
            index = np.load(d / INDEX_FILE, mmap_mode="r")
            n = manifest["n_tokens"]
            if type(n) is not int or n < 0:  # a float count loses exactness past 2**53
                raise ValueError(f"n_tokens {n!r} is not a token count")
            tokens = (
                np.memmap(d / TOKENS_FILE, dtype=np.dtype(manifest["dtype"]), mode="r", shape=(n,))
                if n
                else np.zeros(0, dtype=np.dtype(manifest["dtype"]))
            )
            size = (d / TOKENS_FILE).stat().st_size if n else 0
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise KilnError(f"{d}: incomplete or corrupt token shard ({exc}); rerun pretokenize") from None
        if index.dtype != np.int64:  # an int32/uint32 index wraps past 2**31/2**32 tokens
            raise KilnError(f"{d}: {INDEX_FILE} holds {index.dtype} offsets, not int64; rerun pretokenize")
        if size != n * tokens.itemsize:
            raise KilnError(f"{d}: {TOKENS_FILE} has {size} bytes, the manifest's {n} tokens need "
                            f"{n * tokens.itemsize}; rerun pretokenize")
        if not len(index) or len(index) != manifest["n_docs"] + 1 or int(index[0]) != 0 or int(index[-1]) != n:
            raise KilnError(f"{d}: index does not match tokens.bin; rerun pretokenize")
        return cls(d, tokens, index, manifest)

    def __len__(self) -> int:
        return len(self.index) - 1

    def document(self, i: int) -> np.ndarray:
        """Token ids of document i, including its EOS (and BOS if written)."""
        return self.tokens[int(self.index[i]) : int(self.index[i + 1])]


def list_shards(split_dir: str | Path) -> list[Path]:
    """Complete shard directories under a split directory, in name order."""
    d = Path(split_dir)
    if not d.is_dir():
        raise KilnError(f"{d}: no token shards here; run pretokenize first or fix the data path")
    return sorted(p.parent for p in d.glob(f"*/{SHARD_MANIFEST}") if not p.parent.name.startswith("."))
