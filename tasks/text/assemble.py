"""Phases 2 and 3 of the clean stage: dedup across all sources, then the final shards.

Phase 2 finds the duplicates on disk, in steps spread over workers (`tasks.text.dedup_steps`):
exact copies (same normalized-text hash) and clusters of near copies (MinHash LSH, verified,
connected components), each cluster keeping its earliest document in input order, whichever
worker cleaned it. `plan_dedup` is its filter pass: unit by unit, it turns the drop tables
into a keep mask per unit (``dedup/keep/<unit>.npy``) and cuts each input file's kept documents
into shards of at most `docs_per_shard` documents and about `shard_bytes` of UTF-8 text
(``dedup/plan.json``). It holds one unit's columns at a time.

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
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import zstandard

from storage.atomic import atomic_path, atomic_write_text
from storage.documents import DOC_FIELDS, Engine, doc_shard_name, write_documents
from tasks.text.dedup_steps import EXACT_DROPS, NEAR_DROPS, drops_of_unit, row_of, unit_of
from tasks.text.filters import REASONS
from tasks.text.pipeline import DROPPED_FILE, chunk_name, read_chunk
from tasks.text.units import Unit

DROPPED_DIR = "dropped"
JSONL_DIR = "jsonl"
PLAN_FILE = "plan.json"
DROP_REASONS = ("duplicate", "near_duplicate")  # reason codes 1 and 2 of `plan_dedup`


@dataclass(frozen=True)
class AssembleSettings:
    """Dedup and output settings from the stage config."""

    exact: bool = True
    near: bool = True
    docs_per_shard: int = 100_000
    shard_bytes: int = 64 << 20
    engine: Engine = "pyarrow"
    jsonl_lines: int = 0
    """Lines per ``.jsonl.zst`` file; 0 writes none."""
    keep_dropped: int = 0
    """Sample documents kept per drop reason in ``dropped/``; 0 writes none."""


def unit_dir(work: Path, unit: str) -> Path:
    return work / "units" / unit


def dedup_dir(work: Path) -> Path:
    """Where `tasks.text.dedup_steps` writes: ``fp/<unit>/``, partition outputs and the drop tables."""
    return work / "dedup-steps"


def fingerprint_dir(work: Path, unit: str) -> Path:
    return dedup_dir(work) / "fp" / unit


def keep_path(work: Path, unit: str) -> Path:
    return work / "dedup" / "keep" / f"{unit}.npy"


class ShardPlanner:
    """Cuts the kept documents, streamed unit by unit in input order, into shards.

    A shard holds at most `docs_per_shard` documents and closes once it reaches
    `shard_bytes` of text; it never mixes input files, so ``part-<input>-<k>`` says where its
    documents came from. Vectorized per unit: the loop runs once per shard, not per document.
    """

    def __init__(self, s: AssembleSettings) -> None:
        self.s = s
        self.shards: list[list[int]] = []
        self.next_k: dict[int, int] = {}
        self.shard: list[int] | None = None  # [input, k, start, end, docs]
        self.size = 0

    def add(self, input_index: int, positions: np.ndarray, nbytes: np.ndarray) -> None:
        """Kept documents at global `positions` (ascending) of one unit, with their UTF-8 sizes."""
        if self.shard is not None and self.shard[0] != input_index:
            self._close()
        csum = np.cumsum(nbytes, dtype=np.int64)
        j, n = 0, len(positions)
        while j < n:
            if self.shard is None:
                k = self.next_k[input_index] = self.next_k.get(input_index, -1) + 1
                self.shard, self.size = [input_index, k, int(positions[j]), int(positions[j]) + 1, 0], 0
            before = int(csum[j - 1]) if j else 0
            by_docs = j + self.s.docs_per_shard - self.shard[4] - 1
            by_bytes = int(np.searchsorted(csum, self.s.shard_bytes - self.size + before, side="left"))
            t = min(by_docs, by_bytes, n - 1)
            self.shard[3], self.shard[4] = int(positions[t]) + 1, self.shard[4] + t - j + 1
            self.size += int(csum[t]) - before
            if self.shard[4] >= self.s.docs_per_shard or self.size >= self.s.shard_bytes:
                self._close()
            j = t + 1

    def _close(self) -> None:
        if self.shard is not None:
            self.shards.append(self.shard)
        self.shard = None

    def finish(self) -> list[list[int]]:
        self._close()
        return self.shards


def plan_dedup(units: Sequence[Unit], n_chunks: Mapping[str, int], work: Path, s: AssembleSettings) -> dict[str, Any]:
    """The filter pass: per unit, in order, apply the drop tables of `dedup_steps`; save keep masks and the shard plan.

    Holds one unit's columns at a time (the drop tables are memory-mapped), so the driver's
    memory does not grow with the corpus. Returns the counts for the report: drops per
    source and reason, and drops per (survivor's source, dropped copy's source).
    """
    steps = dedup_dir(work)
    exact = np.load(steps / EXACT_DROPS, mmap_mode="r") if s.exact else None
    near = np.load(steps / NEAR_DROPS, mmap_mode="r") if s.near else None
    sources = [u.input.source for u in units]
    chunks: list[list[Any]] = []
    planner = ShardPlanner(s)
    dropped: dict[str, dict[str, list[int]]] = {}
    pairs: Counter[tuple[str, str, str]] = Counter()
    samples: dict[str, list[int]] = {name: [] for name in DROP_REASONS}
    documents = chars_kept = first = 0
    for ordinal, unit in enumerate(units):
        chars, nbytes = _unit_sizes(work, unit.name, n_chunks[unit.name], chunks, first)
        reason = np.zeros(len(chars), dtype=np.int8)  # 0 keep, else 1 + index in DROP_REASONS
        for code, table in ((1, exact), (2, near)):
            if table is None:
                continue
            hit = drops_of_unit(table, ordinal)
            rows = row_of(hit["doc"])
            fresh = reason[rows] == 0  # an exact copy is also in its near cluster: counted once, as exact
            reason[rows[fresh]] = code
            survivors = unit_of(hit["keep"][fresh])
            for keep_unit, n in zip(*np.unique(survivors, return_counts=True), strict=True):
                pairs[(sources[int(keep_unit)], unit.input.source, DROP_REASONS[code - 1])] += int(n)
        for code, name in enumerate(DROP_REASONS, 1):
            mask = reason == code
            if mask.any():
                entry = dropped.setdefault(unit.input.source, {}).setdefault(name, [0, 0])
                entry[0] += int(mask.sum())
                entry[1] += int(chars[mask].sum())
                room = s.keep_dropped - len(samples[name])
                if room > 0:
                    samples[name] += (np.flatnonzero(mask)[:room] + first).tolist()
        keep = reason == 0
        with atomic_path(keep_path(work, unit.name)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, keep)
        kept = np.flatnonzero(keep)
        planner.add(unit.input.index, kept + first, nbytes[kept])
        documents += len(kept)
        chars_kept += int(chars[kept].sum())
        first += len(chars)
    shards = planner.finish()
    plan = {"chunks": chunks, "shards": shards, "dropped": {k: v for k, v in samples.items() if v}}
    atomic_write_text(work / "dedup" / PLAN_FILE, json.dumps(plan))
    return {
        "dropped": {src: dict(sorted(r.items())) for src, r in sorted(dropped.items())},
        "pairs": [[keep_src, drop_src, reason, n] for (keep_src, drop_src, reason), n in sorted(pairs.items())],
        "documents": documents,
        "chars": chars_kept,
        "shards": len(shards),
    }


def _unit_sizes(work: Path, unit: str, n: int, chunks: list[list[Any]], first: int) -> tuple[np.ndarray, np.ndarray]:
    """Characters and UTF-8 bytes of a unit's documents; appends its chunks to the plan's chunk table."""
    chars, nbytes = [], []
    for c in range(n):
        t = read_chunk(unit_dir(work, unit) / chunk_name(c), ("chars", "nbytes"))
        chunks.append([unit, c, first, t.num_rows])
        first += t.num_rows
        chars.append(t.column("chars").to_numpy())
        nbytes.append(t.column("nbytes").to_numpy())
    return _cat(chars, np.int64), _cat(nbytes, np.int64)


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def shard_name(input_index: int, k: int) -> str:
    return f"{input_index:04d}-{k:05d}"


def planned_shards(work: Path) -> list[list[int]]:
    """The shard plan phase 2 saved: ``[input, k, start, end, docs]`` per shard."""
    return json.loads((work / "dedup" / PLAN_FILE).read_text())["shards"]


def shard_jobs(work: Path, out_dir: Path, s: AssembleSettings) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """``(name, write_shard arguments)`` per planned shard, in order (one unit's keep mask loaded at a time)."""
    plan = json.loads((work / "dedup" / PLAN_FILE).read_text())
    chunks = plan["chunks"]
    firsts = np.array([c[2] for c in chunks], dtype=np.int64)
    unit_first: dict[str, int] = {}
    for unit, _, first, _ in chunks:  # a unit's chunks are consecutive: its first row's global position
        unit_first.setdefault(unit, first)
    loaded: tuple[str, np.ndarray] | None = None  # (unit, its keep mask)
    for inp, k, start, end, _ in plan["shards"]:
        pieces = []
        ci = int(np.searchsorted(firsts, start, side="right")) - 1
        while ci < len(chunks) and chunks[ci][2] < end:
            unit, c, first, rows = chunks[ci]
            if loaded is None or loaded[0] != unit:
                loaded = (unit, np.load(keep_path(work, unit)))
            keep, base = loaded[1], unit_first[unit]
            lo, hi = max(start, first), min(end, first + rows)
            rows_kept = np.flatnonzero(keep[lo - base : hi - base]) + (lo - first)
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
