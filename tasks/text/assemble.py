"""Phases 2 and 3 of the clean stage: dedup across all sources, then the final shards.

Phase 2 (`plan_dedup`, one process; cheap next to cleaning) reads the fingerprint columns of
every unit's chunks in unit order, then document order, and drops:

- exact duplicates: the normalized-text hash of an earlier document (`dedup.exact_duplicates`);
- near duplicates: among the rest, every member of a MinHash LSH cluster but the earliest
  (`dedup.near_duplicate_clusters`).

So the copy kept is always the first in input order, whichever worker cleaned it. It then
cuts each input file's kept documents into shards of at most `docs_per_shard` documents and
about `shard_bytes` of UTF-8 text, and saves the global keep mask and that plan under
``dedup/``. Memory is that of `near_duplicate_clusters` (~2.2 KB per document at 128
permutations): fine to ~10 M documents in one process.

Phase 3 (`write_shard`, any worker) writes one final shard from the kept rows of the chunks
it spans, with `storage.documents.write_documents` (fixed writer settings: same documents,
same bytes), plus optional Open-Llama-style ``.jsonl.zst`` files of at most `jsonl_lines` lines.

`write_dropped` (after phase 3, in this process) writes ``dropped/<reason>.parquet``: the first
`keep_dropped` documents each filter rule and each dedup step dropped, in input order (units in
unit order, each unit's own first ones in document order), so the samples depend neither on
the number of workers nor on a resume.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import zstandard

from storage.atomic import atomic_path, atomic_write_text
from storage.documents import DOC_FIELDS, Engine, doc_shard_name, write_documents
from tasks.text.dedup import exact_duplicates, near_duplicate_clusters
from tasks.text.filters import REASONS
from tasks.text.pipeline import DROPPED_FILE, chunk_name, read_chunk
from tasks.text.units import Unit

DROPPED_DIR = "dropped"
JSONL_DIR = "jsonl"
KEEP_FILE = "keep.npy"
PLAN_FILE = "plan.json"
DROP_REASONS = ("duplicate", "near_duplicate")  # reason codes 1 and 2 of `plan_dedup`


@dataclass(frozen=True)
class AssembleSettings:
    """Dedup and output settings from the stage config."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    docs_per_shard: int = 100_000
    shard_bytes: int = 64 << 20
    engine: Engine = "pyarrow"
    jsonl_lines: int = 0
    """Lines per ``.jsonl.zst`` file; 0 writes none."""
    keep_dropped: int = 0
    """Sample documents kept per drop reason in ``dropped/``; 0 writes none."""


@dataclass
class Fingerprints:
    """Per-document columns of all units, in global order (unit order, then document order)."""

    chunks: list[tuple[str, int, int, int]]
    """``(unit, chunk, first document, rows)`` of every chunk."""
    inputs: np.ndarray
    sources: list[str]
    """Source name per document (one object per unit, shared)."""
    chars: np.ndarray
    nbytes: np.ndarray
    exact: list[bytes]
    sigs: np.ndarray | None


def unit_dir(work: Path, unit: str) -> Path:
    return work / "units" / unit


def load_fingerprints(units: Sequence[Unit], n_chunks: Mapping[str, int], work: Path) -> Fingerprints:
    """Read the fingerprint columns of every chunk, in order."""
    chunks, inputs, sources, chars, nbytes, exact, sigs = [], [], [], [], [], [], []
    first = 0
    for unit in units:
        for c in range(n_chunks[unit.name]):
            t = read_chunk(unit_dir(work, unit.name) / chunk_name(c), ("exact", "minhash", "chars", "nbytes"))
            rows = t.num_rows
            chunks.append((unit.name, c, first, rows))
            first += rows
            inputs.append(np.full(rows, unit.input.index, dtype=np.int32))
            sources.extend([unit.input.source] * rows)
            chars.append(t.column("chars").to_numpy())
            nbytes.append(t.column("nbytes").to_numpy())
            exact.extend(t.column("exact").to_pylist())
            sigs.append(b"".join(t.column("minhash").to_pylist()))
    raw = b"".join(sigs)
    sig_array = np.frombuffer(raw, dtype="<u4").reshape(first, -1) if raw and first else None
    return Fingerprints(
        chunks, _cat(inputs, np.int32), sources, _cat(chars, np.int64), _cat(nbytes, np.int64), exact, sig_array
    )


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def plan_dedup(units: Sequence[Unit], n_chunks: Mapping[str, int], work: Path, s: AssembleSettings) -> dict[str, Any]:
    """Phase 2: decide the drops, save keep mask and shard plan; returns counts (dropped per source and reason)."""
    fp = load_fingerprints(units, n_chunks, work)
    reason = np.zeros(len(fp.chars), dtype=np.int8)  # 0 keep, else 1 + index in DROP_REASONS
    if s.exact:
        reason[sorted(exact_duplicates(enumerate(fp.exact)))] = 1
    if s.near and fp.sigs is not None:
        sigs = fp.sigs
        candidates = ((i, sigs[i]) for i in np.flatnonzero(reason == 0).tolist())
        reason[sorted(near_duplicate_clusters(candidates, threshold=s.threshold))] = 2
    keep = reason == 0
    shards = plan_shards(fp, keep, s)
    out = work / "dedup"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / KEEP_FILE) as tmp, open(tmp, "wb") as fh:
        np.save(fh, keep)
    samples = {name: np.flatnonzero(reason == code)[: s.keep_dropped].tolist()
               for code, name in enumerate(DROP_REASONS, 1)}
    atomic_write_text(out / PLAN_FILE, json.dumps({"chunks": fp.chunks, "shards": shards, "dropped": samples}))
    return {
        "dropped": _drop_counts(fp, reason),
        "documents": int(keep.sum()),
        "chars": int(fp.chars[keep].sum()),
        "shards": len(shards),
    }


def _drop_counts(fp: Fingerprints, reason: np.ndarray) -> dict[str, dict[str, list[int]]]:
    """``{source: {reason: [documents, characters]}}`` for the dedup drops."""
    out: dict[str, dict[str, list[int]]] = {}
    for i in np.flatnonzero(reason).tolist():
        entry = out.setdefault(fp.sources[i], {}).setdefault(DROP_REASONS[reason[i] - 1], [0, 0])
        entry[0] += 1
        entry[1] += int(fp.chars[i])
    return {src: dict(sorted(r.items())) for src, r in sorted(out.items())}


def plan_shards(fp: Fingerprints, keep: np.ndarray, s: AssembleSettings) -> list[list[int]]:
    """``[input, k, start, end, docs]`` per final shard: its kept documents lie in global ``[start, end)``.

    Shards never mix input files, so ``part-<input>-<k>`` says where documents came from.
    """
    shards: list[list[int]] = []
    inputs, nbytes = fp.inputs.tolist(), fp.nbytes.tolist()
    next_k: dict[int, int] = {}
    shard: list[int] | None = None
    size = 0
    for i in np.flatnonzero(keep).tolist():
        if shard is not None and shard[0] != inputs[i]:
            shards.append(shard)
            shard = None
        if shard is None:
            k = next_k[inputs[i]] = next_k.get(inputs[i], -1) + 1
            shard, size = [inputs[i], k, i, i + 1, 0], 0
        shard[3], shard[4], size = i + 1, shard[4] + 1, size + nbytes[i]
        if shard[4] >= s.docs_per_shard or size >= s.shard_bytes:
            shards.append(shard)
            shard = None
    if shard is not None:
        shards.append(shard)
    return shards


def shard_name(input_index: int, k: int) -> str:
    return f"{input_index:04d}-{k:05d}"


def planned_shards(work: Path) -> list[list[int]]:
    """The shard plan phase 2 saved: ``[input, k, start, end, docs]`` per shard."""
    return json.loads((work / "dedup" / PLAN_FILE).read_text())["shards"]


def shard_jobs(work: Path, out_dir: Path, s: AssembleSettings) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """``(name, write_shard arguments)`` per planned shard, in order."""
    plan = json.loads((work / "dedup" / PLAN_FILE).read_text())
    keep = np.load(work / "dedup" / KEEP_FILE)
    chunks = plan["chunks"]
    firsts = np.array([c[2] for c in chunks], dtype=np.int64)
    for inp, k, start, end, _ in plan["shards"]:
        pieces = []
        ci = int(np.searchsorted(firsts, start, side="right")) - 1
        while ci < len(chunks) and chunks[ci][2] < end:
            unit, c, first, rows = chunks[ci]
            lo, hi = max(start, first), min(end, first + rows)
            rows_kept = np.flatnonzero(keep[lo:hi]) + (lo - first)
            if len(rows_kept):
                pieces.append((str(unit_dir(work, unit) / chunk_name(c)), rows_kept))
            ci += 1
        yield shard_name(inp, k), (pieces, str(out_dir), inp, k, s.engine, s.jsonl_lines)


def write_shard(
    pieces: Sequence[tuple[str, np.ndarray]], out_dir: str, input_index: int, k: int, engine: Engine, jsonl_lines: int
) -> dict[str, int]:
    """Phase 3: one final Parquet shard (and its ``.jsonl.zst`` files) from kept chunk rows."""
    table = pa.concat_tables([read_chunk(path).take(pa.array(rows)) for path, rows in pieces])
    docs = table.to_pylist()
    write_documents(Path(out_dir) / doc_shard_name(input_index, k), docs, engine)
    n_jsonl = 0
    if jsonl_lines:
        for n_jsonl, lo in enumerate(range(0, len(docs), jsonl_lines), 1):
            path = Path(out_dir) / JSONL_DIR / f"part-{input_index:04d}-{k:05d}-{n_jsonl - 1:03d}.jsonl.zst"
            write_jsonl_zst(path, docs[lo : lo + jsonl_lines])
    return {"docs": len(docs), "chars": sum(len(d["text"]) for d in docs), "jsonl": n_jsonl}


def write_dropped(
    units: Sequence[str], unit_samples: Mapping[str, Mapping[str, int]], work: Path, out_dir: Path, s: AssembleSettings
) -> dict[str, int]:
    """``dropped/<reason>.parquet`` from the units' filter samples and phase 2's dedup drops; documents per file."""
    if not s.keep_dropped:
        return {}
    docs: dict[str, list[dict[str, str]]] = {}
    for unit in units:  # unit order, then each unit's document order: the first drops in input order
        wanted = [r for r in unit_samples[unit] if len(docs.get(r, ())) < s.keep_dropped]
        if not wanted:
            continue
        rows = read_chunk(unit_dir(work, unit) / DROPPED_FILE, (*DOC_FIELDS, "reason")).to_pylist()
        for row in rows:
            kept = docs.setdefault(row.pop("reason"), [])
            if len(kept) < s.keep_dropped:
                kept.append(row)
    plan = json.loads((work / "dedup" / PLAN_FILE).read_text())
    for reason, indexes in plan.get("dropped", {}).items():
        if indexes:
            docs[reason] = _chunk_rows(work, plan["chunks"], indexes)
    order = {r: i for i, r in enumerate((*REASONS, *DROP_REASONS))}
    written = {}
    for reason in sorted(docs, key=lambda r: (order.get(r, len(order)), r)):
        written[reason] = write_documents(out_dir / DROPPED_DIR / f"{reason}.parquet", docs[reason], s.engine)
    return written


def _chunk_rows(work: Path, chunks: list[list[Any]], indexes: list[int]) -> list[dict[str, str]]:
    """The documents at global positions `indexes` (ascending), read from the chunks that hold them."""
    firsts = np.array([c[2] for c in chunks], dtype=np.int64)
    where = np.searchsorted(firsts, indexes, side="right") - 1
    out: list[dict[str, str]] = []
    for ci in dict.fromkeys(where.tolist()):
        unit, c, first, _ = chunks[ci]
        rows = [i - first for i, w in zip(indexes, where.tolist(), strict=True) if w == ci]
        out += read_chunk(unit_dir(work, unit) / chunk_name(c)).take(pa.array(rows)).to_pylist()
    return out


def write_jsonl_zst(path: Path, docs: Sequence[dict[str, str]]) -> None:
    """Documents as zstd-compressed JSON lines (meta as an object), atomically; deterministic bytes."""
    lines = "".join(json.dumps({**d, "meta": json.loads(d["meta"] or "{}")}, ensure_ascii=False) + "\n" for d in docs)
    # One frame at a fixed level, no threads: the output bytes depend only on the input.
    data = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(lines.encode("utf-8"))
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
