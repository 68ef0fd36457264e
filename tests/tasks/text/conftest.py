"""Fixtures for the text library tests: the real gensim dump samples, parsed and cleaned once.

Files are located through importlib.resources (gensim ships them in its wheel); the
session-scoped fixtures keep the whole folder at a few seconds.
"""

from __future__ import annotations

import bz2
import importlib.resources
from pathlib import Path

import pytest

from tasks.text.mediawiki import WikiPage, iter_pages
from tasks.text.wikitext import clean_wikitext

TEST_DATA = "test/test_data"


def gensim_sample(name: str) -> Path:
    path = Path(str(importlib.resources.files("gensim") / TEST_DATA / name))
    if not path.is_file():
        pytest.fail(f"{path} missing: install the test extra (pip install -e '.[test]')")
    return path


@pytest.fixture(scope="session")
def enwiki_path() -> Path:
    return gensim_sample("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")


@pytest.fixture(scope="session")
def bgwiki_path() -> Path:
    return gensim_sample("bgwiki-latest-pages-articles-shortened.xml.bz2")


@pytest.fixture(scope="session")
def tables_path() -> Path:
    return gensim_sample("enwiki-table-markup.xml.bz2")


@pytest.fixture(scope="session")
def enwiki_xml(enwiki_path: Path) -> bytes:
    """The enwiki sample decompressed (6 MB), for tests that need the raw XML."""
    return bz2.decompress(enwiki_path.read_bytes())


@pytest.fixture(scope="session")
def enwiki_xml_path(enwiki_xml: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The enwiki sample as a plain .xml file: reads without paying for bz2 again."""
    path = tmp_path_factory.mktemp("enwiki") / "enwiki.xml"
    path.write_bytes(enwiki_xml)
    return path


@pytest.fixture(scope="session")
def enwiki_articles(enwiki_path: Path) -> dict[str, WikiPage]:
    """The enwiki sample's articles (ns 0, no redirects) by title."""
    return {page.title: page for page in iter_pages(enwiki_path)}


@pytest.fixture(scope="session")
def enwiki_clean(enwiki_articles: dict[str, WikiPage]) -> dict[str, str]:
    """Every enwiki article cleaned with the default options, by title."""
    return {title: clean_wikitext(page.text) for title, page in enwiki_articles.items()}
