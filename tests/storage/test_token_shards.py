"""Token shards past 2**32 tokens: exact documents beyond 2**31, 2**32 and 2**33, wrapped counts refused.

The shards are sparse (`tests.storage.sparse_shards`): gigabytes apparent, kilobytes on disk.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kiln.errors import KilnError
from storage.token_shards import INDEX_FILE, SHARD_MANIFEST, TokenShard, TokenShardWriter
from tests.storage.sparse_shards import EOS, LAYOUTS, G, disk_bytes, write_sparse_shard


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_documents_beyond_2_32_read_exactly(sparse_dir, layout):
    vocab, base, bounds, dense = LAYOUTS[layout]
    spec = write_sparse_shard(sparse_dir / "s", bounds, dense, vocab_size=vocab, base=base)
    assert disk_bytes(spec.dir) < 2**20  # ~no disk: nothing wrote the holes
    shard = TokenShard.open(spec.dir)
    assert shard.tokens.dtype == np.dtype(f"<u{2 if layout == 'uint16' else 4}")
    assert len(shard.tokens) == shard.manifest["n_tokens"] == bounds[-1] > G
    assert len(shard) == len(bounds) - 1
    assert shard.index.tolist() == list(bounds)
    for i in range(len(shard)):
        doc = shard.document(i)
        start, stop = bounds[i], bounds[i + 1]
        assert isinstance(doc, np.memmap) and len(doc) == stop - start  # a view: nothing copied
        if stop - start <= 50_000:  # the dense documents, compared whole
            want = spec.expected(start, stop)
            assert (want >= base).sum() > (stop - start) // 2  # real values, not a hole's zeros
            assert np.array_equal(doc, want)
        else:  # a hole of gigabytes: its two ends only
            assert np.array_equal(doc[:100], spec.expected(start, start + 100))
            assert np.array_equal(doc[-100:], spec.expected(stop - 100, stop)) and doc[-1] == EOS
    assert disk_bytes(spec.dir) < 2**20  # reading holes did not fill them in


def test_counts_that_wrapped_at_2_32_are_refused(sparse_dir):
    """A writer that counted in 32 bits leaves a manifest and an index that agree with each other
    (every offset mod 2**32) but not with tokens.bin: only the file's size shows it."""
    vocab, base, bounds, dense = LAYOUTS["uint32"]
    spec = write_sparse_shard(sparse_dir / "s", bounds, dense, vocab_size=vocab, base=base)
    manifest = json.loads((spec.dir / SHARD_MANIFEST).read_text())
    wrapped = [b % G for b in bounds]
    np.save(spec.dir / INDEX_FILE, np.array(wrapped, dtype=np.int64))
    (spec.dir / SHARD_MANIFEST).write_text(json.dumps({**manifest, "n_tokens": wrapped[-1]}))
    with pytest.raises(KilnError, match=rf"tokens\.bin has {4 * bounds[-1]} bytes.* need {4 * wrapped[-1]}"):
        TokenShard.open(spec.dir)

    # An index of 32-bit offsets is refused whatever it holds: past 2**31 its positions wrap.
    np.save(spec.dir / INDEX_FILE, np.array(bounds, dtype=np.int64).astype(np.int32))
    (spec.dir / SHARD_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(KilnError, match=r"index\.npy holds int32 offsets, not int64"):
        TokenShard.open(spec.dir)

    # A float count (a manifest rewritten by a tool that parsed JSON numbers as doubles) is refused too.
    np.save(spec.dir / INDEX_FILE, np.array(bounds, dtype=np.int64))
    (spec.dir / SHARD_MANIFEST).write_text(json.dumps({**manifest, "n_tokens": float(bounds[-1])}))
    with pytest.raises(KilnError, match="not a token count"):
        TokenShard.open(spec.dir)
    (spec.dir / SHARD_MANIFEST).write_text(json.dumps(manifest))
    assert np.array_equal(TokenShard.open(spec.dir).document(3), spec.expected(G + 9, bounds[-1]))


def test_writer_index_is_int64_and_matches_the_manifest(tmp_path):
    writer = TokenShardWriter(tmp_path / "s", vocab_size=100_000, eos_id=0)
    for n in (3, 0, 70_000):
        writer.add(np.arange(1, n + 1) % 100_000, source="web")
    manifest = writer.close()
    shard = TokenShard.open(tmp_path / "s")
    assert shard.index.dtype == np.int64 and shard.index.tolist() == [0, 4, 5, 70_006]
    assert manifest["n_tokens"] == 70_006 and manifest["tokens_per_source"] == {"web": 70_006}
    assert shard.document(2)[-2:].tolist() == [70_000, 0]
