"""Pack MediaWiki XML as a Wikimedia-style multistream dump: ``X.xml.bz2`` + ``X-index.txt.bz2``.

Layout (as dumps.wikimedia.org publishes it): one bz2 stream with the ``<mediawiki>`` header
and ``<siteinfo>``, then one stream per `pages_per_stream` pages, then one with the closing
tag; the index has a line ``offset:page_id:title`` per page, offset being its stream's first byte.

Benchmarks and tests use it to make multistream dumps of any size from the real samples:

    write_multistream(bz2.decompress(sample.read_bytes()), out / "enwiki-x.xml.bz2", repeat=20)
"""

from __future__ import annotations

import bz2
import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

_PAGE = re.compile(rb"<page>.*?</page>", re.S)
_ID = re.compile(rb"(<page>.*?<id>)(\d+)(</id>)", re.S)
_TITLE = re.compile(rb"<title>(.*?)</title>", re.S)


def write_multistream(
    xml: bytes, dump: Path, *, pages_per_stream: int = 100, repeat: int = 1, compresslevel: int = 1
) -> Path:
    """Write `xml`'s pages (`repeat` times, ids and titles made unique) as a multistream dump; returns the index path.

    Repeats get page id ``id + k * 10**9`` and title ``"<title> (k)"``, so they read as distinct
    pages (their texts stay equal: dedup will drop them unless the caller edits them).
    """
    pages = list(_PAGE.finditer(xml))
    if not pages:
        raise ValueError("no <page> elements in the XML")
    header, footer = xml[: pages[0].start()], xml[pages[-1].end() :]
    index_path = dump.with_name(dump.name.removesuffix(".xml.bz2") + "-index.txt.bz2")
    index: list[str] = []
    with open(dump, "wb") as out:
        offset = out.write(bz2.compress(header, compresslevel))
        batch: list[bytes] = []
        for page in _pages(xml, pages, repeat):
            batch.append(page)
            if len(batch) == pages_per_stream:
                offset += _write_stream(out, batch, offset, index, compresslevel)
                batch = []
        if batch:
            offset += _write_stream(out, batch, offset, index, compresslevel)
        out.write(bz2.compress(footer, compresslevel))
    index_path.write_bytes(bz2.compress("".join(index).encode("utf-8")))
    return index_path


def _pages(xml: bytes, pages: list[re.Match[bytes]], repeat: int) -> Iterator[bytes]:
    for k in range(repeat):
        for m in pages:
            yield _renumber(m.group(), k) if k else m.group()


def _renumber(page: bytes, k: int) -> bytes:
    page = _ID.sub(lambda i: i.group(1) + str(int(i.group(2)) + k * 10**9).encode() + i.group(3), page, count=1)
    return _TITLE.sub(lambda t: b"<title>" + t.group(1) + f" ({k})".encode() + b"</title>", page, count=1)


def _write_stream(out: BinaryIO, batch: list[bytes], offset: int, index: list[str], level: int) -> int:
    for page in batch:
        page_id = _ID.search(page)
        title = _TITLE.search(page)
        assert page_id is not None and title is not None, "a <page> without <id> or <title>"
        index.append(f"{offset}:{page_id.group(2).decode()}:{html.unescape(title.group(1).decode())}\n")
    data = bz2.compress(b"\n".join(batch) + b"\n", level)
    out.write(data)
    return len(data)
