"""Test fixtures for the tokenizer and pretokenize stages: a real docs artifact from gensim's enwiki sample.

The wiki cleaner is another stage, so these helpers carry their own tiny regex
extractor: good enough to give real English prose with real punctuation, digits
and Unicode, not a faithful renderer of wikitext.

    store = open_store(tmp_path)
    docs = make_docs_artifact(store, n_shards=3)   # a "clean" artifact with docs/part-0000{0,1,2}.parquet
"""

from __future__ import annotations

import bz2
import functools
import html
import importlib.resources
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from storage.documents import doc_shard_name, write_documents
from storage.store import ArtifactRef, ArtifactStore, Build

ENWIKI_SAMPLE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

_FIELD = {name: re.compile(rf"<{name}>(.*?)</{name}>", re.S) for name in ("title", "ns", "id")}
_TEXT = re.compile(r"<text[^>]*>(.*?)</text>", re.S)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")  # innermost template; applied until none is left
_TABLE = re.compile(r"\{\|.*?\|\}", re.S)
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I)
_LINK = re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]")
_EXT_LINK = re.compile(r"\[https?://\S+ ?([^\]]*)\]")
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>|<!--.*?-->", re.S)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")


def enwiki_path() -> Path:
    """The bz2 MediaWiki dump that ships inside the gensim wheel."""
    return Path(str(importlib.resources.files("gensim") / ENWIKI_SAMPLE))


def strip_wikitext(text: str) -> str:
    """Crude wikitext → plain text (templates, tables, refs, link markup and emphasis removed)."""
    text = html.unescape(text)
    text = _REF.sub("", text)
    while True:
        stripped = _TEMPLATE.sub("", text)
        if stripped == text:
            break
        text = stripped
    text = _TABLE.sub("", text)
    text = _FILE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _TAG.sub("", text).replace("'''", "").replace("''", "")
    lines = [ln.strip() for ln in text.split("\n")]
    keep = [ln for ln in lines if ln and not ln.startswith(("|", "!", "*", ":", ";", "{", "}"))]
    return "\n".join(keep)


def iter_enwiki_pages(limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Stream articles (ns 0, not redirects) from the sample dump as Kiln document records."""
    block: list[str] = []
    count = 0
    with bz2.open(enwiki_path(), "rt", encoding="utf-8") as fh:
        for line in fh:
            if "<page>" in line:
                block = []
            block.append(line)
            if "</page>" not in line:
                continue
            page = "".join(block)
            fields = {k: (m.group(1) if (m := rx.search(page)) else "") for k, rx in _FIELD.items()}
            text_match = _TEXT.search(page)
            if fields["ns"] != "0" or "<redirect" in page or not text_match:
                continue
            title = html.unescape(fields["title"])
            yield {
                "id": f"enwiki-{fields['id']}",
                "source": "enwiki",
                "title": title,
                "text": strip_wikitext(text_match.group(1)),
                "url": f"https://en.wikipedia.org/wiki/{title.replace(' ', '_')}",
                "meta": {"page_id": int(fields["id"])},
            }
            count += 1
            if limit is not None and count >= limit:
                return


@functools.lru_cache(maxsize=1)
def _all_articles() -> tuple[dict[str, Any], ...]:
    """Every non-empty article of the sample, parsed once per process (~3 s)."""
    return tuple(doc for doc in iter_enwiki_pages() if doc["text"])


def load_enwiki_docs(max_chars: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Copies of the first `limit` articles, each cut to `max_chars` (at a line end) to keep tests fast."""
    docs = []
    for doc in _all_articles()[:limit]:
        text = doc["text"]
        if max_chars is not None and len(text) > max_chars:
            cut = text.rfind("\n", 0, max_chars)
            text = text[: cut if cut > 0 else max_chars]
        docs.append({**doc, "text": text})
    return docs


def make_docs_artifact(
    store: ArtifactStore,
    docs: Sequence[dict[str, Any]] | None = None,
    *,
    n_shards: int = 3,
    sources: Sequence[str] = ("enwiki",),
    tag: str = "enwiki",
) -> ArtifactRef:
    """A real "clean"-stage artifact: `docs` split round-robin into shards, sources assigned cyclically."""
    docs = list(load_enwiki_docs() if docs is None else docs)
    docs = [{**d, "source": sources[i % len(sources)]} for i, d in enumerate(docs)]

    def work(build: Build) -> None:
        for s in range(n_shards):
            part = docs[s::n_shards]
            write_documents(build.dir / doc_shard_name(0, s), part)
        build.counts["documents"] = len(docs)

    config = {"tag": tag, "n_shards": n_shards, "sources": list(sources), "n_docs": len(docs)}
    return store.produce("clean", "test", config, [], work)
