"""Clean stage on the real enwiki/bgwiki samples: counts, markup residue, bad input."""

from __future__ import annotations

import bz2
import re
from pathlib import Path

import pytest

from kiln.errors import KilnError
from storage.documents import DOC_FIELDS, doc_shards, iter_documents
from storage.store import ArtifactRef, ArtifactStore
from tasks.clean import CleanConfig, clean
from tasks.download import DownloadConfig, SourceSpec, download


def raw_artifact(store: ArtifactStore, path: Path, name: str = "dump.xml.bz2") -> ArtifactRef:
    return download(DownloadConfig(sources=[SourceSpec(name=name, url=str(path))]), store)


def count_articles(path: Path) -> int:
    """Main-namespace pages without a redirect, counted independently of the reader (regex over XML)."""
    raw = bz2.decompress(path.read_bytes())
    xml = raw.decode("utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8")  # bgwiki's sample is UTF-16
    pages = re.findall(r"<page>(.*?)</page>", xml, flags=re.S)
    return sum(1 for p in pages if "<ns>0</ns>" in p and "<redirect" not in p)


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory, enwiki_sample: Path) -> tuple[ArtifactStore, ArtifactRef]:
    store = ArtifactStore(tmp_path_factory.mktemp("clean") / "store")
    raw = raw_artifact(store, enwiki_sample)
    return store, clean(raw, CleanConfig(min_chars=0, dedup=False, docs_per_shard=50), store)


def test_keeps_every_article_and_no_markup(cleaned, enwiki_sample: Path) -> None:
    store, ref = cleaned
    docs = list(iter_documents(doc_shards(ref.path)))
    assert len(docs) == count_articles(enwiki_sample) == store.manifest(ref)["counts"]["articles"]
    assert len(doc_shards(ref.path)) == -(-len(docs) // 50)
    titles = {d["title"] for d in docs}
    assert {"Anarchism", "Autism"} <= titles
    for d in docs:
        assert set(d) == set(DOC_FIELDS) and d["source"] == "wiki-en"
        for residue in ("{{", "}}", "[[", "]]", "<ref", "{|"):
            assert residue not in d["text"], (d["title"], residue)
    anarchism = next(d for d in docs if d["title"] == "Anarchism")
    assert "political philosophy" in anarchism["text"] and anarchism["url"].endswith("/wiki/Anarchism")


def test_filters_count_their_reasons(cleaned, enwiki_sample: Path) -> None:
    store, _ = cleaned
    raw = raw_artifact(store, enwiki_sample)
    ref = clean(raw, CleanConfig(min_chars=2000), store)
    counts = store.manifest(ref)["counts"]
    docs = list(iter_documents(doc_shards(ref.path)))
    assert all(len(d["text"]) >= 2000 for d in docs)
    assert counts["documents"] == len(docs)
    assert counts["documents"] + counts["dropped_too_short"] + counts.get("dropped_duplicate", 0) == counts["articles"]
    assert counts["dropped_too_short"] > 0


def test_bulgarian_sample(store: ArtifactStore, bgwiki_sample: Path) -> None:
    ref = clean(raw_artifact(store, bgwiki_sample), CleanConfig(language="bg", min_chars=0, dedup=False), store)
    docs = list(iter_documents(doc_shards(ref.path)))
    assert len(docs) == count_articles(bgwiki_sample)
    assert any(re.search("[а-яА-Я]{5}", d["text"]) for d in docs)
    assert all(d["url"].startswith("https://bg.wikipedia.org/wiki/") for d in docs)


def test_truncated_bz2_fails_clearly_without_artifact(
    store: ArtifactStore, enwiki_sample: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.xml.bz2"
    data = enwiki_sample.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    raw = raw_artifact(store, broken)
    with pytest.raises(KilnError, match="files/dump.xml.bz2: bz2 stream is truncated or corrupt after page") as info:
        clean(raw, CleanConfig(), store)
    assert "\n" not in str(info.value)
    assert not [p for p in (store.root / "clean").glob("*") if not p.name.startswith(".")]


def test_unsupported_input_is_named(store: ArtifactStore, tmp_path: Path) -> None:
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(KilnError, match="data.csv: unsupported input format"):
        clean(raw_artifact(store, other, name="data.csv"), CleanConfig(), store)


def test_bad_clean_config() -> None:
    with pytest.raises(KilnError, match="clean.docs_per_shard"):
        CleanConfig(docs_per_shard=0)
