"""Clean stage: MediaWiki XML dumps → plain-text articles in Parquet shards.

Streams each dump (bz2 is decompressed on the fly, never to disk, and pages are
parsed one at a time), keeps main-namespace articles, skips redirects, strips
markup (`tasks.text.wikitext`), for Chinese removes language-variant markup and
converts traditional to simplified, drops documents that are too short or
exact duplicates (each drop counted with its reason), and writes shards of
``docs_per_shard`` documents with the schema of `storage.documents`.

Each input file is one unit of work: a killed stage resumes with the files not
yet finished, and shard names follow input order, so the output is the same
whatever interrupted it.
"""

from __future__ import annotations

import hashlib
import logging
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from prefect import task

from kiln.errors import KilnError
from storage.documents import doc_shard_name, write_documents
from storage.store import ArtifactRef, ArtifactStore, Build
from tasks.common import stage_task_options
from tasks.download import FILES_DIR
from tasks.text.mediawiki import iter_pages
from tasks.text.wikitext import WikitextOptions, clean_wikitext

STAGE = "clean"
CODE_VERSION = "1"
WIKI_SUFFIXES = (".xml", ".xml.bz2", ".xml.gz", ".bz2")
log = logging.getLogger("kiln.clean")


@dataclass(frozen=True)
class CleanConfig:
    """How raw dumps become documents."""

    language: str = "en"
    """Wiki language code: names the source (``wiki-<language>``), builds URLs; ``zh`` turns on
    variant-markup removal and traditional→simplified conversion."""
    keep_headings: bool = True
    """Keep section headings as plain lines (they help a model learn document structure)."""
    min_chars: int = 200
    """Documents with fewer characters after cleaning are dropped (stubs, lists of links)."""
    dedup: bool = True
    """Drop documents whose normalized text equals an earlier one's."""
    docs_per_shard: int = 5000
    """Documents per Parquet shard (small shards parallelize, large ones read faster)."""
    parquet_engine: Literal["pyarrow", "fastparquet"] = "pyarrow"
    """Parquet writer; both write the same schema."""

    def __post_init__(self) -> None:
        if self.min_chars < 0:
            raise KilnError(f"clean.min_chars must be >= 0, got {self.min_chars}")
        if self.docs_per_shard < 1:
            raise KilnError(f"clean.docs_per_shard must be >= 1, got {self.docs_per_shard}")
        if not self.language.isascii() or not self.language.replace("-", "").isalnum():
            raise KilnError(f"clean.language {self.language!r}: use a wiki language code such as 'en' or 'zh'")


def clean(raw: ArtifactRef, cfg: CleanConfig, store: ArtifactStore) -> ArtifactRef:
    """Turn the dumps in a download artifact into Parquet document shards."""
    return store.produce(STAGE, CODE_VERSION, cfg, [raw], lambda build: _clean_into(build, raw, cfg))


def input_files(raw: ArtifactRef) -> list[Path]:
    """The dump files of a download artifact, in name order; unknown formats are an error."""
    files = sorted((raw.path / FILES_DIR).glob("*"))
    if not files:
        raise KilnError(f"{raw.path / FILES_DIR}: no input files; check the download stage's sources")
    for f in files:
        if not f.name.endswith(WIKI_SUFFIXES):
            raise KilnError(f"{f}: unsupported input format; the clean stage reads MediaWiki .xml/.xml.bz2 dumps")
    return files


def _clean_into(build: Build, raw: ArtifactRef, cfg: CleanConfig) -> None:
    totals: Counter[str] = Counter()
    started = time.monotonic()
    for i, path in enumerate(input_files(raw)):
        unit = f"file-{i:04d}"
        if not build.unit_done(unit):
            stats = _clean_file(build, i, path, cfg)
            build.mark_done(unit, stats)
        totals.update(build.unit_info(unit))
    build.counts.update(dict(sorted(totals.items())))
    build.extra["report"] = _report(totals, time.monotonic() - started)
    log.info("clean: %d articles in, %d documents out", totals["articles"], totals["documents"])


def _clean_file(build: Build, file_index: int, path: Path, cfg: CleanConfig) -> dict[str, int]:
    """Clean one dump into shards ``part-<file>-<shard>``; returns its counts."""
    stats: Counter[str] = Counter()
    shard: list[dict[str, Any]] = []
    n_shards = 0
    for doc in _documents(path, cfg, stats):
        shard.append(doc)
        if len(shard) == cfg.docs_per_shard:
            write_documents(build.dir / doc_shard_name(file_index, n_shards), shard, cfg.parquet_engine)
            n_shards, shard = n_shards + 1, []
    if shard:
        write_documents(build.dir / doc_shard_name(file_index, n_shards), shard, cfg.parquet_engine)
        n_shards += 1
    stats["shards"] = n_shards
    return dict(stats)


def _documents(path: Path, cfg: CleanConfig, stats: Counter[str]) -> Iterator[dict[str, Any]]:
    """Cleaned, filtered documents of one dump, counting every drop by reason."""
    options = WikitextOptions(keep_headings=cfg.keep_headings)
    seen: set[bytes] = set()
    source = f"wiki-{cfg.language}"
    for page in iter_pages(path):
        stats["articles"] += 1
        stats["chars_in"] += len(page.text)
        text = _to_plain(page.text, cfg, options)
        if len(text) < cfg.min_chars:
            stats["dropped_too_short"] += 1
            continue
        if cfg.dedup:
            digest = hashlib.blake2b(_normalize(text).encode("utf-8"), digest_size=16).digest()
            if digest in seen:
                stats["dropped_duplicate"] += 1
                continue
            seen.add(digest)
        stats["documents"] += 1
        stats["chars_out"] += len(text)
        title = _to_plain_title(page.title, cfg)
        yield {
            "id": f"{source}/{page.id}",
            "source": source,
            "title": title,
            "text": text,
            "url": f"https://{cfg.language}.wikipedia.org/wiki/{quote(page.title.replace(' ', '_'))}",
            "meta": {"page_id": page.id, "revision_id": page.revision_id, "file": path.name},
        }


def _to_plain(wikitext: str, cfg: CleanConfig, options: WikitextOptions) -> str:
    if cfg.language.startswith("zh"):
        from tasks.text.chinese import strip_variant_markup, to_simplified

        return to_simplified(clean_wikitext(strip_variant_markup(wikitext), options))
    return clean_wikitext(wikitext, options)


def _to_plain_title(title: str, cfg: CleanConfig) -> str:
    if cfg.language.startswith("zh"):
        from tasks.text.chinese import to_simplified

        return to_simplified(title)
    return title


def _normalize(text: str) -> str:
    """Text as compared for exact dedup: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _report(totals: Counter[str], elapsed: float) -> str:
    """A markdown table of what went in and out (shown in the manifest and as a Prefect artifact)."""
    rows = [(k, totals[k]) for k in ("articles", "documents", "dropped_too_short", "dropped_duplicate",
                                      "chars_in", "chars_out", "shards")]
    lines = ["| count | value |", "|---|---:|", *[f"| {k} | {v:,} |" for k, v in rows]]
    lines.append(f"| seconds | {elapsed:.1f} |")
    return "\n".join(lines)


@task(**stage_task_options(STAGE, CODE_VERSION, inputs=["raw"]))
def clean_task(raw: ArtifactRef, cfg: CleanConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key."""
    return clean(raw, cfg, ArtifactStore(store_root))
