"""MediaWiki dump reader on the real gensim samples: counts, fields, formats, bad files, multistream."""

from __future__ import annotations

import bz2
import gzip
import html
import re
import tracemalloc
from pathlib import Path

import pytest

from kiln.errors import KilnError
from tasks.text.mediawiki import (
    WikiPage,
    iter_pages,
    iter_pages_in_range,
    read_multistream_index,
    stream_ranges,
)

PAGE_RE = re.compile(rb"<page>.*?</page>", re.S)


def decode(xml: bytes) -> str:
    return xml.decode("utf-16" if xml[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8")


def raw_pages(xml: bytes) -> list[str]:
    """`<page>` elements found by a plain regex (independent of the reader)."""
    return re.findall(r"<page>.*?</page>", decode(xml), flags=re.S)


def key(pages: list[WikiPage]) -> list[tuple[str, str, int, str]]:
    return [(p.id, p.title, p.ns, p.text) for p in pages]


def is_article(page: WikiPage) -> bool:
    return page.ns == 0 and page.redirect is None


@pytest.fixture(scope="module")
def enwiki_all(enwiki_xml_path: Path) -> list[WikiPage]:
    return list(iter_pages(enwiki_xml_path, namespaces=None, skip_redirects=False))


def test_article_count_matches_regex_count(enwiki_xml: bytes, enwiki_articles, enwiki_all) -> None:
    pages = raw_pages(enwiki_xml)
    articles = [p for p in pages if "<ns>0</ns>" in p and "<redirect" not in p]
    assert len(pages) == 206 and len(articles) == 106  # what gensim documents for this sample
    assert len(enwiki_articles) == len(articles)  # iter_pages(bz2) with its defaults
    assert len(enwiki_all) == len(pages)
    assert sum(p.redirect is not None for p in enwiki_all) == sum("<redirect" in p for p in pages) == 100


def test_titles_redirects_and_namespaces(enwiki_articles, enwiki_all, enwiki_xml_path: Path) -> None:
    assert {"Anarchism", "Autism", "Albedo", "Abraham Lincoln", "Aristotle", "Alabama"} <= set(enwiki_articles)
    assert "AccessibleComputing" not in enwiki_articles  # a redirect
    redirects = {p.title: p.redirect for p in enwiki_all if p.redirect}
    assert redirects["AccessibleComputing"] == "Computer accessibility"
    project = list(iter_pages(enwiki_xml_path, namespaces=(4,), skip_redirects=False))
    assert [(p.title, p.ns) for p in project] == [("Wikipedia:Adding Wikipedia articles to Nupedia", 4)]


def test_page_fields_match_the_xml(enwiki_xml: bytes, enwiki_articles) -> None:
    raw = next(p for p in raw_pages(enwiki_xml) if "<title>Anarchism</title>" in p)
    page = enwiki_articles["Anarchism"]
    assert page.id == re.search(r"<id>(\d+)</id>", raw).group(1) == "12"
    assert page.revision_id == re.search(r"<revision>\s*<id>(\d+)</id>", raw).group(1)
    text = re.search(r"<text[^>]*>(.*?)</text>", raw, flags=re.S).group(1)
    assert page.text == html.unescape(text) and page.text.startswith("{{Redirect2|Anarchist")
    assert page.ns == 0 and page.redirect is None


def test_plain_gzip_and_schema_variants_read_the_same(enwiki_xml: bytes, enwiki_all, tmp_path: Path) -> None:
    expected = key([p for p in enwiki_all if is_article(p)])
    (tmp_path / "dump.xml.gz").write_bytes(gzip.compress(enwiki_xml, compresslevel=1))
    (tmp_path / "v11.xml").write_bytes(enwiki_xml.replace(b"export-0.10", b"export-0.11"))
    (tmp_path / "nons.xml").write_bytes(re.sub(rb"<mediawiki [^>]*>", b"<mediawiki>", enwiki_xml, count=1))
    for name in ("dump.xml.gz", "v11.xml", "nons.xml"):
        assert key(list(iter_pages(tmp_path / name))) == expected, name


def test_bulgarian_utf16_sample(bgwiki_path: Path) -> None:
    pages = list(iter_pages(bgwiki_path))
    assert [p.title for p in pages] == ["Григориански календар"]
    assert "'''Григорианският календар'''" in pages[0].text
    raw = raw_pages(bz2.decompress(bgwiki_path.read_bytes()))
    assert len(list(iter_pages(bgwiki_path, namespaces=None))) == len(raw) == 3


def test_truncated_bz2_raises_after_the_pages_it_could_read(
    enwiki_path: Path, enwiki_xml: bytes, tmp_path: Path
) -> None:
    broken = tmp_path / "half.xml.bz2"
    data = enwiki_path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    seen = []
    with pytest.raises(KilnError, match=r"half\.xml\.bz2: bz2 stream is truncated or corrupt after page \d+") as err:
        seen.extend(iter_pages(broken))
    assert seen, "pages before the cut should still come out"
    n, title = re.search(r"after page (\d+) \((.*?)\)", str(err.value)).groups()
    assert f"<title>{title}</title>" in raw_pages(enwiki_xml)[int(n) - 1]  # names the last good page
    assert "re-download" in str(err.value) and "\n" not in str(err.value)


def test_corrupt_bz2_raises(enwiki_path: Path, tmp_path: Path) -> None:
    data = bytearray(enwiki_path.read_bytes())
    data[len(data) // 4 : len(data) // 4 + 64] = bytes(64)
    corrupt = tmp_path / "corrupt.xml.bz2"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(KilnError, match=r"corrupt\.xml\.bz2: bz2 stream is truncated or corrupt"):
        list(iter_pages(corrupt))


def test_malformed_xml_names_line_and_column(tmp_path: Path) -> None:
    lines = [
        "<mediawiki>",
        "<page><title>A</title><ns>0</ns><id>1</id><revision><id>7</id><text>ok</text></revision></page>",
        "<page><title>B</title><ns>0</ns><id>2</id><revision><id>8</id><text>bad</txet></revision></page>",
        "</mediawiki>",
    ]
    bad = tmp_path / "bad.xml"
    bad.write_text("\n".join(lines))
    with pytest.raises(KilnError, match=r"bad\.xml:3:\d+: malformed dump XML \(mismatched tag\)"):
        list(iter_pages(bad))
    cut = tmp_path / "cut.xml"
    cut.write_text("\n".join(lines[:2]))  # no closing root
    with pytest.raises(KilnError, match=r"cut\.xml:2:\d+: .*ends early.* after page 1 \(A\)"):
        list(iter_pages(cut))


# ---------------------------------------------------------------- multistream
@pytest.fixture(scope="module")
def multistream(enwiki_xml: bytes, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sample re-packed the way Wikimedia does: header, 100-page bz2 streams, footer, and the index."""
    pages = list(PAGE_RE.finditer(enwiki_xml))
    header, footer = enwiki_xml[: pages[0].start()], enwiki_xml[pages[-1].end() :]
    streams, index = [bz2.compress(header)], []
    offset = len(streams[0])
    for i in range(0, len(pages), 100):
        group = pages[i : i + 100]
        for m in group:
            page_id = re.search(rb"<id>(\d+)</id>", m.group()).group(1).decode()
            title = html.unescape(re.search(rb"<title>(.*?)</title>", m.group()).group(1).decode())
            index.append(f"{offset}:{page_id}:{title}")
        streams.append(bz2.compress(enwiki_xml[group[0].start() : group[-1].end()], compresslevel=1))
        offset += len(streams[-1])
    streams.append(bz2.compress(footer))
    folder = tmp_path_factory.mktemp("multistream")
    dump, idx = folder / "multi.xml.bz2", folder / "multi-index.txt.bz2"
    dump.write_bytes(b"".join(streams))
    idx.write_bytes(bz2.compress(("\n".join(index) + "\n").encode()))
    return dump, idx


def test_multistream_ranges_yield_the_same_pages(multistream, enwiki_all) -> None:
    dump, idx = multistream
    index = read_multistream_index(idx)
    assert len(index) == 206 and index[0][1:] == (10, "AccessibleComputing")
    ranges = stream_ranges(index, dump.stat().st_size)
    assert len(ranges) == 3  # 100 + 100 + 6 pages
    by_range = [p for s, e in ranges for p in iter_pages_in_range(dump, s, e, namespaces=None, skip_redirects=False)]
    assert key(by_range) == key(enwiki_all)
    last = list(iter_pages_in_range(dump, *ranges[-1]))  # the defaults: articles only
    assert key(last) == key([p for p in enwiki_all[200:] if is_article(p)]) and last
    assert key(list(iter_pages(dump))) == key([p for p in enwiki_all if is_article(p)])  # concatenated streams


def test_multistream_bad_range_and_bad_index(multistream, tmp_path: Path) -> None:
    dump, idx = multistream
    start, end = stream_ranges(read_multistream_index(idx), dump.stat().st_size)[1]
    with pytest.raises(KilnError, match=r"multi\.xml\.bz2 bytes \d+-\d+: bz2 stream is truncated or corrupt"):
        list(iter_pages_in_range(dump, start, end - 100))
    bad_index = tmp_path / "bad-index.txt"
    bad_index.write_text("597:10:AccessibleComputing\nnot an index line\n")
    with pytest.raises(KilnError, match=r"bad-index\.txt:2: expected 'offset:page_id:title'"):
        read_multistream_index(bad_index)
    with pytest.raises(KilnError, match="past the end of the dump"):
        stream_ranges([(10**9, 1, "X")], dump.stat().st_size)


def test_memory_stays_flat_on_a_large_dump(tmp_path: Path) -> None:
    body = "lorem ipsum " * 500
    big = tmp_path / "big.xml"
    with big.open("w") as f:
        f.write('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/">\n')
        for i in range(2000):
            f.write(f"<page><title>T{i}</title><ns>0</ns><id>{i}</id><revision><id>{i}</id>")
            f.write(f"<text>{body}</text></revision></page>\n")
        f.write("</mediawiki>\n")
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_pages(big))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 2000
    # 12 MB of XML; the reader holds one 1 MiB read, the parser's buffers and one page.
    assert peak < big.stat().st_size / 2, peak
