"""Streaming reader for MediaWiki XML dumps (`pages-articles*.xml[.bz2|.gz]`, multistream).

    for page in iter_pages("zhwiki-latest-pages-articles.xml.bz2"):
        print(page.title, len(page.text))

Memory stays flat: pages are parsed with `xml.etree.ElementTree.XMLPullParser` and every
finished `<page>` is cleared. Tags are matched by local name, so export schemas 0.10,
0.11 and later all read the same. A truncated or corrupt file raises `KilnError` naming
the file and the last good page: a pipeline must never mistake half a dump for a whole.

Multistream dumps (`*-multistream.xml.bz2` + `*-multistream-index.txt.bz2`) are
concatenated bz2 streams of 100 pages each; `read_multistream_index` + `stream_ranges`
give the byte range of each stream, and `iter_pages_in_range` reads one on its own, so
workers can split a dump without decompressing it from the start.
"""

from __future__ import annotations

import bz2
import gzip
import os
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from kiln.errors import KilnError
from tasks.text.sources import check_compression

_CHUNK = 1 << 20  # 1 MiB reads: larger buys nothing, the XML parser is the cost


@dataclass(frozen=True)
class WikiPage:
    """One `<page>` of a dump: its latest revision's wikitext and identity."""

    id: str
    title: str
    ns: int
    text: str
    redirect: str | None
    """Target title of a redirect page, else None."""
    revision_id: str


def iter_pages(
    path: str | os.PathLike,
    *,
    namespaces: tuple[int, ...] | None = (0,),
    skip_redirects: bool = True,
) -> Iterator[WikiPage]:
    """Yield the pages of a `.xml`, `.xml.bz2` or `.xml.gz` dump, in file order.

    `namespaces=None` yields every namespace; the default keeps articles (ns 0).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as probe:
            magic = probe.read(3)
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise KilnError(f"{name}: cannot open dump ({getattr(err, 'strerror', None) or err}): check the path") from err
    if not magic:
        return  # an empty file has no pages (the clean stage fails on an input without documents)
    check_compression(name)  # a .bz2 or .gz name must hold that format, else say so (not "malformed XML")
    # Sniff the compression of other names (a dump saved as .xml may still be compressed).
    if magic == b"BZh":
        opener, kind = bz2.open, "bz2 stream"
    elif magic[:2] == b"\x1f\x8b":
        opener, kind = gzip.open, "gzip stream"
    else:
        opener, kind = open, "file"
    with opener(name, "rb") as fileobj:
        chunks = iter(lambda: fileobj.read(_CHUNK), b"")
        yield from _parse(chunks, name, kind, namespaces, skip_redirects)


def iter_pages_from_stream(
    fileobj: BinaryIO,
    source_name: str,
    *,
    namespaces: tuple[int, ...] | None = (0,),
    skip_redirects: bool = True,
) -> Iterator[WikiPage]:
    """Yield pages from a binary file object holding (decompressed) dump XML."""
    chunks = iter(lambda: fileobj.read(_CHUNK), b"")
    yield from _parse(chunks, source_name, "stream", namespaces, skip_redirects)


def read_multistream_index(index_path: str | os.PathLike) -> list[tuple[int, int, str]]:
    """Parse a multistream index (`offset:page_id:title` lines, bz2 or plain text)."""
    name = os.fspath(index_path)
    opener = bz2.open if name.endswith(".bz2") else open
    entries: list[tuple[int, int, str]] = []
    try:
        with opener(name, "rt", encoding="utf-8") as lines:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                offset, page_id, title = _index_fields(name, lineno, line)
                entries.append((offset, page_id, title))
    except (EOFError, OSError) as err:
        raise KilnError(
            f"{name}: index is truncated or corrupt after {len(entries)} entries ({err}): re-download the file"
        ) from err
    return entries


def _index_fields(name: str, lineno: int, line: str) -> tuple[int, int, str]:
    parts = line.rstrip("\n").split(":", 2)  # titles may contain ':' themselves
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise KilnError(
            f"{name}:{lineno}: expected 'offset:page_id:title', got {line[:80]!r}: is this a multistream index file?"
        )
    return int(parts[0]), int(parts[1]), parts[2]


def stream_ranges(index: Iterable[tuple[int, int, str]], file_size: int) -> list[tuple[int, int]]:
    """Byte ranges `[start, end)` of the page-holding bz2 streams named by an index.

    Streams before the first indexed offset hold only `<siteinfo>`; the last range runs
    to the end of the file, which also covers the stream closing `</mediawiki>`.
    """
    offsets = sorted({offset for offset, _, _ in index})
    if offsets and offsets[-1] >= file_size:
        raise KilnError(
            f"index offset {offsets[-1]} is past the end of the dump ({file_size} bytes): "
            "index and dump are from different dates"
        )
    return list(zip(offsets, offsets[1:] + [file_size], strict=True))


def iter_pages_in_range(
    dump_path: str | os.PathLike,
    start: int,
    end: int,
    *,
    namespaces: tuple[int, ...] | None = (0,),
    skip_redirects: bool = True,
) -> Iterator[WikiPage]:
    """Yield the pages of the bz2 stream(s) stored at bytes `[start, end)` of a dump."""
    name = os.fspath(dump_path)
    where = f"{name} bytes {start}-{end}"
    with open(name, "rb") as fileobj:
        fileobj.seek(start)
        raw = fileobj.read(end - start)
    try:
        xml = _decompress_streams(raw)
    except (EOFError, OSError, ValueError) as err:
        raise KilnError(
            f"{where}: bz2 stream is truncated or corrupt ({err}): check the index matches the dump, or re-download it"
        ) from err
    # A stream holds bare <page> elements; the first/last also carry the root's open or
    # close tag. Strip those and wrap the pages so the XML parses on its own.
    head = xml.find(b"<page")
    body = xml[head:] if head >= 0 else b""
    body = body.replace(b"</mediawiki>", b"")
    chunks = iter((b"<mediawiki>", body, b"</mediawiki>"))
    yield from _parse(chunks, where, "bz2 stream", namespaces, skip_redirects)


def _decompress_streams(raw: bytes) -> bytes:
    # bz2.decompress would also take concatenated streams; doing it stream by stream
    # reports an incomplete one instead of silently returning what came before it.
    out: list[bytes] = []
    while raw:
        decomp = bz2.BZ2Decompressor()
        out.append(decomp.decompress(raw))
        if not decomp.eof:
            raise EOFError("compressed data ended before the end-of-stream marker")
        raw = decomp.unused_data
    return b"".join(out)


# ---------------------------------------------------------------- the parse loop
class _Progress:
    """What was read last, for error messages."""

    def __init__(self) -> None:
        self.pages = 0
        self.title = ""

    def __str__(self) -> str:
        return f"after page {self.pages} ({self.title})" if self.pages else "before the first page"


def _parse(
    chunks: Iterator[bytes],
    source: str,
    kind: str,
    namespaces: tuple[int, ...] | None,
    skip_redirects: bool,
) -> Iterator[WikiPage]:
    parser = ET.XMLPullParser(events=("start", "end"))
    progress = _Progress()
    root: ET.Element | None = None
    wanted = None if namespaces is None else frozenset(namespaces)
    for chunk in _guarded(chunks, source, kind, progress):
        for event, elem in _events(parser, chunk, source, progress):
            if root is None:
                root = elem  # the first event is the root's start
            if event != "end" or _local(elem.tag) != "page":
                continue
            page = _page(elem, source)
            progress.pages += 1
            progress.title = page.title
            elem.clear()
            root.clear()  # drop the finished page from the root too: flat memory
            if (wanted is None or page.ns in wanted) and not (skip_redirects and page.redirect):
                yield page
    try:
        parser.close()  # raises if the document is incomplete
    except ET.ParseError as err:
        raise _xml_error(source, err, progress) from err


def _guarded(chunks: Iterator[bytes], source: str, kind: str, progress: _Progress) -> Iterator[bytes]:
    try:
        yield from chunks
    except (EOFError, OSError, zlib.error) as err:  # what bz2/gzip raise on bad input
        raise KilnError(f"{source}: {kind} is truncated or corrupt {progress} ({err}): re-download the file") from err


def _events(
    parser: ET.XMLPullParser, chunk: bytes, source: str, progress: _Progress
) -> Iterator[tuple[str, ET.Element]]:
    # The pull parser queues a syntax error as an event; events before it still come out.
    try:
        parser.feed(chunk)
        yield from parser.read_events()  # type: ignore[misc]
    except ET.ParseError as err:
        raise _xml_error(source, err, progress) from err


def _xml_error(source: str, err: ET.ParseError, progress: _Progress) -> KilnError:
    line, column = getattr(err, "position", (0, 0))
    reason = str(err).split(":")[0]
    if reason == "no element found":
        reason = "document ends early, truncated file?"
    return KilnError(
        f"{source}:{line}:{column}: malformed dump XML ({reason}) {progress}: re-download or re-export the file"
    )


def _local(tag: str) -> str:
    return tag[tag.rfind("}") + 1 :]  # "{http://www.mediawiki.org/xml/export-0.11/}page"


def _page(elem: ET.Element, source: str) -> WikiPage:
    fields: dict[str, str] = {}
    redirect = None
    revision: ET.Element | None = None
    for child in elem:
        tag = _local(child.tag)
        if tag == "revision":
            revision = child  # full-history dumps: the last revision is the current one
        elif tag == "redirect":
            redirect = child.get("title", "")
        else:
            fields[tag] = child.text or ""
    text = rev_id = ""
    if revision is not None:
        for child in revision:
            tag = _local(child.tag)
            if tag == "text":
                text = child.text or ""
            elif tag == "id":
                rev_id = child.text or ""
    ns = fields.get("ns", "0").strip()
    if not ns.lstrip("-").isdigit():
        raise KilnError(f"{source}: page {fields.get('title')!r} has <ns>{ns}</ns>: not a MediaWiki dump?")
    return WikiPage(
        id=fields.get("id", "").strip(),
        title=fields.get("title", ""),
        ns=int(ns),
        text=text,
        redirect=redirect,
        revision_id=rev_id.strip(),
    )
