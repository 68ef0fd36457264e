"""Exact and near dedup on disk, in steps that spread over workers: memory bounded whatever the corpus size.

The reference design is datatrove's four-stage MinHash (signatures → buckets → cluster →
filter); NeMo Curator runs the same shuffle on GPUs. Here, for the clean stage's units:

1. `fingerprint_unit` (one job per unit, any worker): the unit's exact hashes and MinHash
   signatures (computed in phase 1, in its chunks) become
   - ``exact-<p>.bin``: ``(hash, rank)`` records, partition ``p = hash mod P``;
   - ``band-<p>.bin``: one ``(band key, rank)`` record per LSH band, partition ``key mod P``;
   - ``sketches.bin``: the bottom-k sketches, back to back, to verify candidates by row
     (``pread``, no index).
   A document's *rank* is ``unit ordinal << 32 | row in unit``: its place in input order,
   known without any global count. Memory: one chunk (≤ 4096 documents).
2. `bucket_partition` (one job per partition): sorts its records from every unit. Equal
   exact hashes: all but the lowest rank are dropped (``(doc, survivor)`` pairs). Equal band
   keys: each member is paired with up to `PAIR_FANOUT` earlier members of the bucket, and
   every candidate pair is verified by its Jaccard similarity estimated from the two bottom-k
   sketches (`dedup.sketch_jaccard`, read from ``sketches.bin`` a batch of pairs at a time)
   before it becomes an edge. Memory: one partition,
   ``~(16 x bands + 24) x documents / P`` bytes; `partitions_for` picks P for ~64 MiB.
3. `cluster_duplicates` (one job): connected components of all verified edges; every member
   of a component but its lowest rank is dropped. Its memory grows with the *duplicate*
   documents only (~50 bytes per edge), not with the corpus: what datatrove's cluster step
   and NeMo Curator's connected components hold too.

So the survivor of every cluster of exact or near copies (chains included: A≈B≈C with
A≉C is one cluster) is its earliest document in input order, whatever the number of
workers and however the work was split or resumed. Every step writes its outputs
atomically and is a pure function of its inputs, so a step killed at any point is simply
run again. The filter pass is `tasks.text.assemble.plan_dedup`, one unit at a time.

Why verify at all: LSH bands only say "probably similar". With the 21 bands of 6 rows that catch
99.8 % of pairs at 0.8, a pair at 0.6 collides in some band 63 % of the time; without a check
those pairs would be merged (datatrove does not check: its 14 x 8 bands trade recall at the
threshold for fewer such merges).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from storage.atomic import atomic_path
from tasks.text.dedup import EMPTY, MinHasher, exact_hash, lsh_params, sketch_jaccard
from tasks.text.features import mix64

ROW_BITS = 32
ROW_MASK = np.uint64((1 << ROW_BITS) - 1)
EXACT = np.dtype([("h", "<u8"), ("l", "<u8"), ("rank", "<u8")])
"""An exact-hash record: the 16-byte digest as two words, and the document's rank."""
BAND = np.dtype([("key", "<u8"), ("rank", "<u8")])
"""An LSH band record: a hash of (band index, that band's signature values), and the rank."""
PAIR = np.dtype([("doc", "<u8"), ("keep", "<u8")])
"""A dropped document and the survivor of its cluster."""
EDGE = np.dtype([("a", "<u8"), ("b", "<u8")])
"""A verified near-duplicate pair, ``a < b``."""
PAIR_FANOUT = 8
"""Candidates per bucket member: the bucket's first 8 members (all pairs in buckets of up to 9)."""
PARTITION_BYTES = 64 << 20
MAX_PARTITIONS = 4096
SKETCHES = "sketches.bin"
EXACT_DROPS = "exact-drops.npy"
NEAR_DROPS = "near-drops.npy"
_BAND_SEED = np.uint64(0x6A09E667F3BCC909)
_BAND_MULT = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class DedupSettings:
    """What the steps need: which dedups, the LSH shape, and the partition count (fixed per build)."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    num_perm: int = 128
    sketch_size: int = 512
    partitions: int = 1

    @property
    def bands_rows(self) -> tuple[int, int]:
        return lsh_params(self.num_perm, self.threshold)


def partitions_for(documents: int, s: DedupSettings) -> int:
    """Partitions so that one holds ~`PARTITION_BYTES` of records: the memory of a `bucket_partition` job."""
    per_doc = (EXACT.itemsize if s.exact else 0) + (s.bands_rows[0] * BAND.itemsize if s.near else 0)
    return int(min(MAX_PARTITIONS, max(1, -(-documents * per_doc // PARTITION_BYTES))))


def ranks(ordinal: int, first_row: int, n: int) -> np.ndarray:
    """Ranks of rows ``first_row .. first_row + n`` of unit number `ordinal`."""
    if n and first_row + n > 1 << ROW_BITS:
        raise ValueError(f"a unit holds more than 2**{ROW_BITS} documents")
    return (np.uint64(ordinal) << np.uint64(ROW_BITS)) + np.arange(first_row, first_row + n, dtype=np.uint64)


def unit_of(rank: np.ndarray) -> np.ndarray:
    return (rank >> np.uint64(ROW_BITS)).astype(np.int64)


def row_of(rank: np.ndarray) -> np.ndarray:
    return (rank & ROW_MASK).astype(np.int64)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(n, bands)`` uint64 keys: equal iff (almost surely) the band's `rows` values are equal."""
    values = sigs.astype(np.uint64)
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    for b in range(bands):
        h = np.full(len(sigs), mix64(np.array([_BAND_SEED + np.uint64(b)], dtype=np.uint64))[0])
        for j in range(b * rows, (b + 1) * rows):
            h = mix64(h * _BAND_MULT + values[:, j])
        keys[:, b] = h
    return keys


class FingerprintWriter:
    """Step 1 for one unit: takes its documents' fingerprints in row order, writes partitioned records.

    Everything goes to ``<out>.partial/`` and is renamed to `out` by `close`, so a killed job
    leaves nothing a later step could read.
    """

    def __init__(self, ordinal: int, out: Path, s: DedupSettings) -> None:
        self.ordinal, self.out, self.s = ordinal, out, s
        self.partial = out.with_name(out.name + ".partial")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self.rows = 0
        self.bands, self.band_rows = s.bands_rows
        self._sketches = open(self.partial / SKETCHES, "wb") if s.near else None  # noqa: SIM115 - closed in close()

    def add(self, exact: Sequence[bytes] | None, sigs: np.ndarray | None, sketches: np.ndarray | None) -> None:
        """The next rows: 16-byte exact digests, and/or ``(n, num_perm)`` signatures and ``(n, sketch_size)``
        sketches."""
        n = len(exact) if exact is not None else len(sigs) if sigs is not None else 0
        rank = ranks(self.ordinal, self.rows, n)
        self.rows += n
        if not n:
            return
        if self.s.exact and exact is not None:
            digests = np.frombuffer(b"".join(exact), dtype="<u8").reshape(n, 2)
            recs = np.empty(n, dtype=EXACT)
            recs["h"], recs["l"], recs["rank"] = digests[:, 0], digests[:, 1], rank
            self._append("exact", recs, recs["h"])
        if self.s.near and sigs is not None and sketches is not None:
            sigs = np.ascontiguousarray(sigs, dtype="<u4")
            assert self._sketches is not None and sketches.shape == (n, self.s.sketch_size)
            self._sketches.write(np.ascontiguousarray(sketches, dtype="<u4").tobytes())
            real = np.flatnonzero(~np.all(sigs == EMPTY, axis=1))  # a text without words matches nothing
            keys = band_keys(sigs[real], self.bands, self.band_rows)
            recs = np.empty(keys.size, dtype=BAND)
            recs["key"] = keys.ravel()
            recs["rank"] = np.repeat(rank[real], self.bands)
            self._append("band", recs, recs["key"])

    def _append(self, kind: str, recs: np.ndarray, key: np.ndarray) -> None:
        part = (key % np.uint64(self.s.partitions)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        recs, bounds = recs[order], np.searchsorted(part[order], np.arange(self.s.partitions + 1))
        for p in np.flatnonzero(np.diff(bounds)).tolist():
            with open(self.partial / f"{kind}-{p:05d}.bin", "ab") as fh:
                fh.write(recs[bounds[p] : bounds[p + 1]].tobytes())

    def close(self) -> dict[str, Any]:
        if self._sketches is not None:
            self._sketches.close()
        shutil.rmtree(self.out, ignore_errors=True)  # a finished but unrecorded earlier attempt
        os.replace(self.partial, self.out)
        return {"docs": self.rows}


def fingerprint_unit(ordinal: int, chunk_paths: Sequence[str], out: str, s: DedupSettings) -> dict[str, Any]:
    """Step 1 from a unit's phase-1 chunks (their ``exact`` and ``minhash`` columns), one chunk at a time."""
    started, cpu = time.perf_counter(), time.thread_time()
    writer = FingerprintWriter(ordinal, Path(out), s)
    columns = ["exact"] if s.exact else []
    columns += ["minhash", "sketch"] if s.near else []
    for path in chunk_paths:
        table = pq.read_table(path, columns=columns)
        exact = table.column("exact").to_pylist() if s.exact else None
        sigs = sketches = None
        if s.near:
            n = table.num_rows
            sigs = np.frombuffer(b"".join(table.column("minhash").to_pylist()), dtype="<u4").reshape(n, s.num_perm)
            raw = b"".join(table.column("sketch").to_pylist())
            sketches = np.frombuffer(raw, dtype="<u4").reshape(n, s.sketch_size)
        writer.add(exact, sigs, sketches)
    info = writer.close()
    info["seconds"] = {"wall": time.perf_counter() - started, "cpu": time.thread_time() - cpu}
    return info


def _read_records(unit_dirs: Iterable[str], name: str, dtype: np.dtype) -> np.ndarray:
    parts = [np.fromfile(p, dtype=dtype) for d in unit_dirs if (p := Path(d) / name).exists()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def bucket_partition(p: int, unit_dirs: Sequence[str], out: str, s: DedupSettings) -> dict[str, Any]:
    """Step 2 for partition `p` (`unit_dirs` in unit order): exact drop pairs and verified near edges."""
    started, cpu = time.perf_counter(), time.thread_time()
    info: dict[str, Any] = {}
    out_dir = Path(out)
    if s.exact:
        pairs, groups, largest = exact_pairs(_read_records(unit_dirs, f"exact-{p:05d}.bin", EXACT))
        _save(out_dir / f"exact-{p:05d}.npy", pairs)
        info.update(exact_dropped=len(pairs), exact_groups=groups, exact_largest=largest)
    if s.near:
        candidates = candidate_pairs(_read_records(unit_dirs, f"band-{p:05d}.bin", BAND))
        with SketchReader(unit_dirs, s.sketch_size) as sketches:
            edges = verified(candidates, sketches, s.threshold)
        _save(out_dir / f"edges-{p:05d}.npy", edges)
        info.update(candidates=len(candidates), edges=len(edges))
    info["seconds"] = {"wall": time.perf_counter() - started, "cpu": time.thread_time() - cpu}
    return info


def exact_pairs(recs: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(doc, survivor)`` for every record whose digest a lower rank has; also groups and largest group."""
    if not len(recs):
        return np.zeros(0, dtype=PAIR), 0, 0
    recs = recs[np.lexsort((recs["rank"], recs["l"], recs["h"]))]
    new = np.ones(len(recs), dtype=bool)
    new[1:] = (recs["h"][1:] != recs["h"][:-1]) | (recs["l"][1:] != recs["l"][:-1])
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(recs)))
    first = np.repeat(recs["rank"][starts], sizes)
    dup = ~new
    pairs = np.empty(int(dup.sum()), dtype=PAIR)
    pairs["doc"], pairs["keep"] = recs["rank"][dup], first[dup]
    return pairs, int((sizes > 1).sum()), int(sizes.max())


def candidate_pairs(recs: np.ndarray, fanout: int = PAIR_FANOUT) -> np.ndarray:
    """Distinct ``(a, b)`` with ``a < b`` that share a bucket; each member meets the bucket's first `fanout`."""
    if len(recs) < 2:
        return np.zeros(0, dtype=EDGE)
    recs = recs[np.lexsort((recs["rank"], recs["key"]))]
    key, rank = recs["key"], recs["rank"]
    new = np.ones(len(recs), dtype=bool)
    new[1:] = key[1:] != key[:-1]
    starts = np.flatnonzero(new)
    group_start = np.repeat(starts, np.diff(np.append(starts, len(recs))))
    pos = np.arange(len(recs)) - group_start  # position within the bucket
    a_parts, b_parts = [], []
    for j in range(fanout):
        later = np.flatnonzero(pos > j)
        if not len(later):
            break
        a_parts.append(rank[group_start[later] + j])
        b_parts.append(rank[later])
    if not a_parts:
        return np.zeros(0, dtype=EDGE)
    edges = np.empty(sum(len(a) for a in a_parts), dtype=EDGE)
    edges["a"], edges["b"] = np.concatenate(a_parts), np.concatenate(b_parts)
    edges = edges[edges["a"] != edges["b"]]  # one document twice in a bucket cannot happen; be safe
    return unique_edges(edges)


def unique_edges(edges: np.ndarray) -> np.ndarray:
    """Edges sorted by ``(a, b)``, each once."""
    if not len(edges):
        return edges
    edges = edges[np.lexsort((edges["b"], edges["a"]))]
    keep = np.ones(len(edges), dtype=bool)
    keep[1:] = (edges["a"][1:] != edges["a"][:-1]) | (edges["b"][1:] != edges["b"][:-1])
    return edges[keep]


class SketchReader:
    """Sketches by rank from the units' ``sketches.bin``, read with ``pread`` (no memory map grows the RSS)."""

    def __init__(self, unit_dirs: Sequence[str], sketch_size: int) -> None:
        self.unit_dirs, self.width = unit_dirs, sketch_size * 4
        self._fds: dict[int, int] = {}

    def __enter__(self) -> SketchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def read(self, rank: np.ndarray) -> np.ndarray:
        """``(len(rank), sketch_size)`` uint32 sketches, in the order of `rank`."""
        out = bytearray(len(rank) * self.width)
        view = memoryview(out)
        for i, (u, r) in enumerate(zip(unit_of(rank).tolist(), row_of(rank).tolist(), strict=True)):
            fd = self._fds.get(u)
            if fd is None:
                fd = self._fds[u] = os.open(Path(self.unit_dirs[int(u)]) / SKETCHES, os.O_RDONLY)
            got = os.preadv(fd, [view[i * self.width : (i + 1) * self.width]], r * self.width)
            if got != self.width:
                raise OSError(f"{self.unit_dirs[u]}/{SKETCHES}: short read at row {r}")
        return np.frombuffer(out, dtype="<u4").reshape(len(rank), -1)  # the buffer itself: no copy


VERIFY_BATCH = 4096
"""Candidate pairs verified at a time, however many candidates: their sketches (at most 2 x 4096, 16 MiB at
512) and `sketch_jaccard`'s temporaries, ~80 MiB in all (measured: `benchmarks/dedup_memory.py`)."""


def verified(candidates: np.ndarray, sketches: SketchReader, threshold: float) -> np.ndarray:
    """The candidate pairs whose Jaccard similarity, estimated from their sketches, reaches `threshold`.

    In batches, each reading only its own pairs' sketches: the number of candidates grows
    faster than the corpus (unrelated documents sharing a few sentences collide by chance),
    so holding all their sketches at once would not stay bounded.
    """
    keep = np.zeros(len(candidates), dtype=bool)
    for lo in range(0, len(candidates), VERIFY_BATCH):
        batch = candidates[lo : lo + VERIFY_BATCH]
        nodes, inverse = np.unique(np.concatenate([batch["a"], batch["b"]]), return_inverse=True)
        table = sketches.read(nodes)
        similarity = sketch_jaccard(table[inverse[: len(batch)]], table[inverse[len(batch) :]])
        keep[lo : lo + len(batch)] = similarity >= threshold
    return candidates[keep]


def cluster_duplicates(out: str, partitions: int, s: DedupSettings) -> dict[str, Any]:
    """Step 3: gather exact drops; components of the verified edges; writes both sorted by dropped rank."""
    started, cpu = time.perf_counter(), time.thread_time()
    out_dir = Path(out)
    info: dict[str, Any] = {}
    if s.exact:
        pairs = np.concatenate([np.load(out_dir / f"exact-{p:05d}.npy") for p in range(partitions)])
        _save(out_dir / EXACT_DROPS, pairs[np.argsort(pairs["doc"], kind="stable")])
    if s.near:
        edges = unique_edges(np.concatenate([np.load(out_dir / f"edges-{p:05d}.npy") for p in range(partitions)]))
        drops, clusters, largest = component_drops(edges)
        _save(out_dir / NEAR_DROPS, drops)
        info.update(edges=len(edges), near_clusters=clusters, near_largest=largest)
    info["seconds"] = {"wall": time.perf_counter() - started, "cpu": time.thread_time() - cpu}
    return info


def component_drops(edges: np.ndarray) -> tuple[np.ndarray, int, int]:
    """``(doc, root)`` for every node of a component but its lowest rank (sorted by doc); components; largest.

    Min-label propagation with pointer jumping, all in numpy: each round gives every node
    the smallest label among its neighbours, then jumps labels to their labels' labels, so
    chains shorten by half per round.
    """
    if not len(edges):
        return np.zeros(0, dtype=PAIR), 0, 0
    nodes, inverse = np.unique(np.concatenate([edges["a"], edges["b"]]), return_inverse=True)
    ia, ib = inverse[: len(edges)], inverse[len(edges) :]
    label = np.arange(len(nodes))
    while True:
        new = label.copy()
        np.minimum.at(new, ia, label[ib])
        np.minimum.at(new, ib, label[ia])
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            break
        label = new
    dropped = np.flatnonzero(label != np.arange(len(nodes)))
    pairs = np.empty(len(dropped), dtype=PAIR)
    pairs["doc"], pairs["keep"] = nodes[dropped], nodes[label[dropped]]  # nodes are sorted: ascending doc
    sizes = np.bincount(label)
    return pairs, int((sizes > 1).sum()), int(sizes.max())


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def drops_of_unit(drops: np.ndarray, ordinal: int) -> np.ndarray:
    """The slice of a sorted drop table (``PAIR``, memory-mapped is fine) whose documents are in unit `ordinal`."""
    lo, hi = np.searchsorted(drops["doc"], [np.uint64(ordinal) << np.uint64(ROW_BITS),
                                             np.uint64(ordinal + 1) << np.uint64(ROW_BITS)])
    return np.asarray(drops[lo:hi])


def fingerprint_texts(texts: Sequence[str], s: DedupSettings) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """Exact digests, signatures and sketches of texts, as the clean stage's phase 1 computes them per document."""
    hasher = MinHasher(s.num_perm)
    prints = [hasher.fingerprint(t, s.sketch_size) for t in texts]
    sigs = np.stack([p[0] for p in prints]) if prints else np.zeros((0, s.num_perm), dtype=np.uint32)
    sketches = np.stack([p[1] for p in prints]) if prints else np.zeros((0, s.sketch_size), dtype=np.uint32)
    return [exact_hash(t) for t in texts], sigs, sketches


def find_duplicates(texts: Sequence[str], work: Path, s: DedupSettings) -> tuple[np.ndarray, np.ndarray]:
    """All three steps, in this process, for a list of texts: positions dropped as exact and as near copies.

    For small inputs and tests; the clean stage runs the same steps as jobs over its units.
    """
    writer = FingerprintWriter(0, work / "fp" / "0", s)
    writer.add(*fingerprint_texts(texts, s))
    writer.close()
    dirs = [str(work / "fp" / "0")]
    for p in range(s.partitions):
        bucket_partition(p, dirs, str(work), s)
    cluster_duplicates(str(work), s.partitions, s)
    exact_rows = row_of(np.load(work / EXACT_DROPS)["doc"]) if s.exact else np.zeros(0, dtype=np.int64)
    near = row_of(np.load(work / NEAR_DROPS)["doc"]) if s.near else np.zeros(0, dtype=np.int64)
    return exact_rows, np.setdiff1d(near, exact_rows)
