"""Phase 1 of the clean stage: one unit of input → cleaned, filtered documents plus dedup fingerprints.

`run_unit(unit, settings, out_dir)` takes only picklable values and touches only
`out_dir`, so it runs the same in-process or on a Dask worker (with a remote cluster,
`out_dir` must be on a filesystem the workers share). It streams: one page or record at
a time, plus one chunk of kept documents, so a worker's memory does not grow with the
input. Each chunk becomes ``chunk-<n>.parquet`` with the document columns and, per
document, its exact-dedup hash, MinHash signature and bottom-k sketch, characters and UTF-8 bytes; phase 2
(`tasks.text.assemble`) reads those small columns without the text.

Per document: MediaWiki pages are rendered to plain text (`clean_wikitext`; for ``zh*``
wikis `chinese.simplify_page` resolves variant markup and page conversion rules first and
converts the result to Simplified), other formats keep their text with outer whitespace
stripped; then the quality filters run, every drop counted with its reason per source.
The first `FilterConfig.keep_dropped` documents each rule drops (in document order) go to
``dropped.parquet``, with their reason; `assemble.write_dropped` merges the units' samples
into the artifact's ``dropped/``.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import quote

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import atomic_path
from storage.documents import DOC_FIELDS, DOC_SCHEMA, normalize_doc
from tasks.text.dedup import MinHasher, exact_hash
from tasks.text.filters import FilterConfig, FilterStats, SourceCounts, apply_filters
from tasks.text.mediawiki import WikiPage, iter_pages, iter_pages_from_stream, iter_pages_in_range
from tasks.text.sources import OnError, doc_id, iter_jsonl, iter_pile, iter_wudao
from tasks.text.units import Unit, is_local, local_path
from tasks.text.wikitext import WikitextOptions, clean_wikitext

# A chunk is cut at whichever comes first. Chunking never shows in the final shards
# (phase 3 re-chunks), so these only bound a worker's memory.
CHUNK_DOCS = 4096
CHUNK_BYTES = 32 << 20
FINGERPRINT_COLUMNS = ("exact", "minhash", "sketch", "chars", "nbytes")
CHUNK_SCHEMA = pa.schema([*DOC_SCHEMA, ("exact", pa.binary()), ("minhash", pa.binary()), ("sketch", pa.binary()),
                          ("chars", pa.int64()), ("nbytes", pa.int64())])
DROPPED_FILE = "dropped.parquet"
DROPPED_SCHEMA = pa.schema([*DOC_SCHEMA, ("reason", pa.string())])


@dataclass(frozen=True)
class UnitSettings:
    """What a phase-1 worker needs from the stage config (small, picklable, no Prefect)."""

    filters: FilterConfig = field(default_factory=FilterConfig)
    wikitext: WikitextOptions = field(default_factory=WikitextOptions)
    pile_sets: tuple[str, ...] = ()
    """Pile subsets to keep (``pile_set_name``); empty keeps all."""
    text_key: str = "text"
    """Field holding the text in generic JSON lines."""
    on_error: OnError = "raise"
    exact_hash: bool = True
    num_perm: int = 128
    """MinHash permutations; 0 skips signatures (near-duplicate removal off)."""
    sketch_size: int = 512
    """Shingle hashes in each document's bottom-k sketch (verifies near-duplicate candidates)."""


def chunk_name(n: int) -> str:
    return f"chunk-{n:05d}.parquet"


def run_unit(unit: Unit, settings: UnitSettings, out_dir: str) -> dict[str, Any]:
    """Clean and filter one unit into ``out_dir/chunk-*.parquet``; returns its counts (JSON-able)."""
    started, cpu = time.perf_counter(), time.thread_time()
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)  # what a killed attempt of this unit left
    out.mkdir(parents=True)
    source = unit.input.source
    stats = FilterStats({source: SourceCounts()})  # a source whose documents all fail still shows
    reader: Counter[str] = Counter()
    writer = ChunkWriter(out, settings)
    dropped = DropSampler(settings.filters.keep_dropped)
    for doc in read_unit(unit, settings, reader):
        text = doc["text"]
        keep, reason = apply_filters(text, settings.filters)
        stats.add(doc["source"], len(text), reason)
        if keep:
            writer.add(doc)
        elif reason is not None:
            dropped.add(reason, doc)
    writer.close()
    dropped.write(out / DROPPED_FILE)
    return {
        "filters": stats.to_dict(),
        "reader": {source: dict(sorted(reader.items()))},
        "docs": writer.docs,
        "chunks": writer.chunks,
        "dropped_samples": dict(sorted(dropped.per_reason.items())),
        # This thread's CPU, not the process's: a Dask worker's event loop runs beside it.
        "seconds": {"wall": time.perf_counter() - started, "cpu": time.thread_time() - cpu,
                    "fingerprint_cpu": writer.fingerprint_cpu},
    }


def read_unit(unit: Unit, settings: UnitSettings, counts: Counter[str]) -> Iterator[dict[str, Any]]:
    """The unit's documents before filtering; reader skips are counted in `counts`."""
    f = unit.input
    if f.fmt == "mediawiki":
        yield from _wiki_docs(unit, settings.wikitext, counts)
        return
    if f.fmt == "wudao":
        docs = iter_wudao(f.path, label=f.label, on_error=settings.on_error, stats=counts)
    elif f.fmt == "pile":
        docs = iter_pile(f.path, sets=settings.pile_sets or None, label=f.label, on_error=settings.on_error,
                         stats=counts)
    else:
        docs = iter_jsonl(f.path, settings.text_key, source=f.source, label=f.label, on_error=settings.on_error,
                          stats=counts)
    for doc in docs:
        doc["text"] = doc["text"].strip()
        yield doc


def _wiki_docs(unit: Unit, options: WikitextOptions, counts: Counter[str]) -> Iterator[dict[str, Any]]:
    f = unit.input
    zh = f.language.startswith("zh")
    for page in _pages(unit):
        counts["wikitext_chars"] += len(page.text)
        text, title = _render(page, options, zh)
        yield {
            # Page ids are unique within one wiki only: two dumps of it (dates, or a wiki whose
            # language the file name does not say) must not share ids, so the file's label qualifies them.
            "id": doc_id(f.source, f.label, page.id),
            "source": f.source,
            "title": title,
            "text": text,
            "url": f"https://{f.language}.wikipedia.org/wiki/{quote(page.title.replace(' ', '_'))}",
            "meta": {"page_id": page.id, "revision_id": page.revision_id, "file": f.name},
        }


def _render(page: WikiPage, options: WikitextOptions, zh: bool) -> tuple[str, str]:
    """Plain text and title of a page; Chinese wikis: variant markup resolved, then Simplified."""
    if not zh:
        return clean_wikitext(page.text, options), page.title
    from tasks.text.chinese import simplify_page  # OpenCC: an optional extra

    # NoteTA rules are read and variant markup resolved before clean_wikitext drops templates.
    return simplify_page(page.text, page.title, lambda text: clean_wikitext(text, options))


def _pages(unit: Unit) -> Iterator[WikiPage]:
    f = unit.input
    if unit.ranges:  # one bz2 stream (100 pages) in memory at a time, whatever the unit's size
        path = local_path(f.path)
        for start, end in unit.ranges:
            yield from iter_pages_in_range(path, start, end)
        return
    if is_local(f.path):
        yield from iter_pages(local_path(f.path))
        return
    with fsspec.open(f.path, "rb", compression="infer") as fh:  # a remote dump, decompressed as it streams
        yield from iter_pages_from_stream(cast(BinaryIO, fh), f.path)


class ChunkWriter:
    """Buffers kept documents with their fingerprints and writes them as numbered Parquet chunks."""

    def __init__(self, out: Path, settings: UnitSettings) -> None:
        self.out = out
        self.hasher = MinHasher(settings.num_perm) if settings.num_perm else None
        self.exact = settings.exact_hash
        self.sketch_size = settings.sketch_size
        self.columns: dict[str, list[Any]] = {name: [] for name in CHUNK_SCHEMA.names}
        self.bytes = self.docs = self.chunks = 0
        self.fingerprint_cpu = 0.0
        """CPU seconds spent on exact hashes and signatures (the dedup's share of phase 1)."""

    def add(self, doc: dict[str, Any]) -> None:
        row: dict[str, Any] = _doc_row(doc)
        text = row["text"]
        nbytes = len(text.encode("utf-8"))
        cpu = time.thread_time()
        row["exact"] = exact_hash(text) if self.exact else b""
        row["minhash"] = row["sketch"] = b""
        if self.hasher:
            sig, sketch = self.hasher.fingerprint(text, self.sketch_size)
            row["minhash"], row["sketch"] = sig.astype("<u4").tobytes(), sketch.astype("<u4").tobytes()
        self.fingerprint_cpu += time.thread_time() - cpu
        row["chars"], row["nbytes"] = len(text), nbytes
        for name, values in self.columns.items():
            values.append(row[name])
        self.bytes += nbytes
        self.docs += 1
        if len(self.columns["text"]) >= CHUNK_DOCS or self.bytes >= CHUNK_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.columns["text"]:
            return
        table = pa.table(self.columns, schema=CHUNK_SCHEMA)
        with atomic_path(self.out / chunk_name(self.chunks)) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        self.chunks += 1
        self.bytes = 0
        self.columns = {name: [] for name in CHUNK_SCHEMA.names}

    def close(self) -> None:
        self.flush()


class DropSampler:
    """The first `limit` dropped documents per reason, in the order they came."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: list[dict[str, str]] = []
        self.per_reason: Counter[str] = Counter()

    def add(self, reason: str, doc: dict[str, Any]) -> None:
        if self.per_reason[reason] < self.limit:
            self.per_reason[reason] += 1
            self.rows.append({**_doc_row(doc), "reason": reason})

    def write(self, path: Path) -> None:
        """The samples as one Parquet file (none when nothing was kept)."""
        if self.rows:
            with atomic_path(path) as tmp:
                pq.write_table(pa.Table.from_pylist(self.rows, schema=DROPPED_SCHEMA), tmp, compression="zstd")


def _doc_row(doc: dict[str, Any]) -> dict[str, str]:
    """The document's schema fields as strings Parquet can store."""
    return {k: _utf8_safe(v) for k, v in normalize_doc(doc).items()}


def _utf8_safe(value: str) -> str:
    """`value`, with lone surrogates (legal in JSON, not in UTF-8) replaced so Parquet can store it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", errors="replace").decode("utf-8")
    return value


def read_chunk(path: str | Path, columns: tuple[str, ...] = DOC_FIELDS) -> pa.Table:
    """Some columns of one phase-1 chunk."""
    return pq.read_table(path, columns=list(columns))
