"""Clean stage on real and test-written data: wiki samples, zh conversion, WuDao/Pile inputs, dedup, errors, report.

WuDao and Pile files are written here in their exact schemas (DESIGN.md); the wiki data is the
real enwiki/bgwiki samples from the gensim wheel. Everything runs in process (inputs are far
below `serial_below_mb`); tests/tasks/test_clean_parallel.py covers Dask, resume and splitting.
"""

from __future__ import annotations

import bz2
import gzip
import json
import random
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard

import tasks.clean as clean_module
from kiln.errors import KilnError
from storage.documents import DOC_FIELDS, doc_shards, iter_documents
from storage.store import ArtifactRef, ArtifactStore, open_store
from tasks.clean import CleanConfig, clean, clean_task, key_config
from tasks.download import DownloadConfig, SourceSpec, download
from tasks.pipeline_config import load_pipeline_config
from tasks.text.filters import FilterConfig
from tests.conftest import REPO_ROOT

KEEP_ALL = {"filters": FilterConfig.disabled(), "dedup": False, "near_dedup": False}


def raw_artifact(store: ArtifactStore, path: Path, name: str = "dump.xml.bz2") -> ArtifactRef:
    return download(DownloadConfig(sources=[SourceSpec(name=name, url=str(path))]), store)


def count_articles(path: Path) -> int:
    """Main-namespace pages without a redirect, counted independently of the reader (regex over XML)."""
    raw = bz2.decompress(path.read_bytes())
    xml = raw.decode("utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8")  # bgwiki's sample is UTF-16
    pages = re.findall(r"<page>(.*?)</page>", xml, flags=re.S)
    return sum(1 for p in pages if "<ns>0</ns>" in p and "<redirect" not in p)


def docs_of(ref: ArtifactRef) -> list[dict[str, str]]:
    return list(iter_documents(doc_shards(ref.path)))


def write_wudao(path: Path, records: list[Any]) -> Path:
    """A WuDao file: one JSON array of ``{"id", "dataType", "title", "content"}``."""
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def write_pile(path: Path, records: list[Any], raw_lines: dict[int, str] | None = None) -> Path:
    """A Pile file: zstd JSON lines ``{"text", "meta": {"pile_set_name"}}``; `raw_lines` replaces lines verbatim."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    for i, line in (raw_lines or {}).items():
        lines[i] = line
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(data))
    return path


def pile_record(text: str, set_name: str = "Pile-CC") -> dict[str, Any]:
    return {"text": text, "meta": {"pile_set_name": set_name}}


SYLLABLES = ("ka", "lo", "mi", "ter", "san", "dra", "pol", "wen", "ix", "ur", "bel", "tho", "nic", "re", "vu")
HANZI = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"


def prose(seed: int, words: int = 200) -> str:
    """Made-up English-like prose: passes the quality filters, shares no 5-grams with other seeds."""
    rng = random.Random(seed)
    out = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(words)]
    return " ".join(w + ("." if i % 12 == 11 else "") for i, w in enumerate(out))


def hanzi_prose(seed: int, chars: int = 300) -> str:
    """Made-up Chinese text (random common characters, a full stop every 20)."""
    rng = random.Random(seed)
    return "".join(c + ("。" if i % 20 == 19 else "") for i, c in enumerate(rng.choices(HANZI, k=chars)))


@pytest.fixture
def tiny_raw(store: ArtifactStore, tmp_path: Path) -> ArtifactRef:
    """A download artifact with a one-page dump: for tests about the other inputs."""
    dump = tmp_path / "enwiki-tiny.xml"
    dump.write_text("<mediawiki><page><title>T</title><ns>0</ns><id>1</id><revision><id>2</id>"
                    f"<text>{prose(99)}</text></revision></page></mediawiki>", encoding="utf-8")
    return raw_artifact(store, dump, dump.name)


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory, enwiki_sample: Path) -> tuple[ArtifactStore, ArtifactRef]:
    store = open_store(tmp_path_factory.mktemp("clean") / "store")
    raw = raw_artifact(store, enwiki_sample)
    return store, clean(raw, CleanConfig(min_chars=0, docs_per_shard=50, **KEEP_ALL), store)


@pytest.fixture(scope="module")
def articles(cleaned) -> dict[str, dict[str, str]]:
    """The cleaned enwiki sample by title."""
    return {d["title"]: d for d in docs_of(cleaned[1])}


def test_keeps_every_article_and_no_markup(cleaned, enwiki_sample: Path) -> None:
    store, ref = cleaned
    docs = docs_of(ref)
    assert len(docs) == count_articles(enwiki_sample) == store.manifest(ref)["counts"]["docs_in"]
    assert len(doc_shards(ref.path)) == -(-len(docs) // 50)
    titles = {d["title"] for d in docs}
    assert {"Anarchism", "Autism"} <= titles
    for d in docs:
        assert set(d) == set(DOC_FIELDS) and d["source"] == "wiki-en"
        for residue in ("{{", "}}", "[[", "]]", "<ref", "{|"):
            assert residue not in d["text"], (d["title"], residue)
    anarchism = next(d for d in docs if d["title"] == "Anarchism")
    assert "political philosophy" in anarchism["text"] and anarchism["url"].endswith("/wiki/Anarchism")
    leftovers = [p.name for p in ref.path.glob(".*") if p.name != ".verified.json"]  # the store's stat record
    assert not leftovers, "intermediates and markers are gone from the artifact"


def test_filters_count_their_reasons(cleaned, enwiki_sample: Path) -> None:
    store, _ = cleaned
    raw = raw_artifact(store, enwiki_sample)
    ref = clean(raw, CleanConfig(min_chars=2000), store)
    counts = store.manifest(ref)["counts"]
    docs = docs_of(ref)
    assert all(len(d["text"]) >= 2000 for d in docs)
    assert counts["documents"] == len(docs)
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
    assert counts["documents"] + dropped == counts["docs_in"] == count_articles(enwiki_sample)
    assert counts["dropped_too_short"] > 0


def test_dropped_samples_are_the_first_drops_and_not_in_the_output(cleaned, enwiki_sample: Path) -> None:
    store, every = cleaned
    ref = clean(raw_artifact(store, enwiki_sample), CleanConfig(min_chars=2000, filters=FilterConfig(keep_dropped=3)),
                store)
    path = ref.path / "dropped" / "too_short.parquet"
    sample = list(iter_documents([path]))
    assert [d["id"] for d in sample] == [d["id"] for d in docs_of(every) if len(d["text"]) < 2000][:3]
    assert all(set(d) == set(DOC_FIELDS) and d["source"] == "wiki-en" and d["text"] for d in sample)
    assert not {d["id"] for d in sample} & {d["id"] for d in docs_of(ref)}
    assert store.manifest(ref)["counts"]["dropped_too_short"] > 3
    assert "dropped/too_short.parquet" in store.manifest(ref)["files"]
    assert json.loads((ref.path / "report.json").read_text())["dropped_samples"] == {"too_short": 3}
    assert "| too_short | `dropped/too_short.parquet` | 3 |" in (ref.path / "report.md").read_text()


def test_keep_dropped_zero_writes_no_samples(store: ArtifactStore, tiny_raw: ArtifactRef, tmp_path: Path) -> None:
    pile = write_pile(tmp_path / "p.jsonl.zst", [pile_record("too short"), pile_record(prose(1))])
    for keep, expected in ((0, []), (5, ["too_short.parquet"])):
        ref = clean(tiny_raw, CleanConfig(inputs=(str(pile),), filters=FilterConfig(keep_dropped=keep)), store)
        assert sorted(p.name for p in (ref.path / "dropped").glob("*")) == expected
    assert [d["text"] for d in iter_documents([ref.path / "dropped" / "too_short.parquet"])] == ["too short"]


def test_bulgarian_sample(store: ArtifactStore, bgwiki_sample: Path) -> None:
    ref = clean(raw_artifact(store, bgwiki_sample), CleanConfig(language="bg", min_chars=0, **KEEP_ALL), store)
    docs = docs_of(ref)
    assert len(docs) == count_articles(bgwiki_sample)
    assert any(re.search("[а-яА-Я]{5}", d["text"]) for d in docs)
    assert all(d["url"].startswith("https://bg.wikipedia.org/wiki/") and d["source"] == "wiki-bg" for d in docs)


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


@pytest.mark.parametrize(("name", "fmt"), [("enwiki-x.xml.bz2", "bzip2"), ("wiki.xml.gz", "gzip"),
                                          ("00.jsonl.zst", "zstd"), ("part.json.gz", "gzip")])
def test_a_compressed_name_on_other_bytes_is_named(store: ArtifactStore, tmp_path: Path, name: str, fmt: str) -> None:
    plain = tmp_path / "plain"
    plain.write_text("<mediawiki><page><title>T</title></page></mediawiki>")  # e.g. saved decompressed, not renamed
    raw = raw_artifact(store, plain, name)
    with pytest.raises(KilnError, match=rf"files/{re.escape(name)}: not a {fmt} file \(starts with b'<mediawi'\); "
                                        "re-download it or rename it") as info:
        clean(raw, CleanConfig(), store)
    assert "\n" not in str(info.value)


def test_a_bz2_dump_that_is_gzip_is_named(store: ArtifactStore, tmp_path: Path) -> None:
    gz = tmp_path / "gz"
    gz.write_bytes(gzip.compress(b"<mediawiki></mediawiki>", mtime=0))
    with pytest.raises(KilnError, match=r"dump\.xml\.bz2: not a bzip2 file \(starts with b'\\x1f\\x8b"):
        clean(raw_artifact(store, gz), CleanConfig(), store)


def test_unsupported_input_is_named(store: ArtifactStore, tmp_path: Path) -> None:
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(KilnError, match="data.csv: unknown input format"):
        clean(raw_artifact(store, other, name="data.csv"), CleanConfig(), store)


def test_bad_clean_config() -> None:
    with pytest.raises(KilnError, match="clean.docs_per_shard"):
        CleanConfig(docs_per_shard=0)
    with pytest.raises(KilnError, match="near_dedup_threshold"):
        CleanConfig(near_dedup_threshold=1.5)
    assert CleanConfig(min_chars=500).filters.min_chars == 500  # the demo's shorthand reaches the filters


ZH_PAGE = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" xml:lang="zh">
<page><title>電腦</title><ns>0</ns><id>42</id><revision><id>7</id><text xml:space="preserve">\
'''-{zh-hans:计算机; zh-hant:電腦;}-'''是一種利用[[數位電子]]技術的機器。-{H|zh-hans:软件; zh-hant:軟體;}-
== 歷史 ==
第一台-{zh-cn:计算机; zh-tw:電腦}-於1946年誕生。{{cite web|title=歷史}}
</text></revision></page>
</mediawiki>
"""


def test_chinese_page_is_simplified_without_variant_markup(store: ArtifactStore, tmp_path: Path) -> None:
    dump = tmp_path / "zhwiki-20240101-pages-articles.xml"
    dump.write_text(ZH_PAGE, encoding="utf-8")
    ref = clean(raw_artifact(store, dump, dump.name), CleanConfig(language="en", **KEEP_ALL), store)
    (doc,) = docs_of(ref)
    assert doc["source"] == "wiki-zh" and doc["title"] == "电脑"  # the language comes from the dump's name
    assert doc["url"].startswith("https://zh.wikipedia.org/wiki/")
    assert doc["text"] == "计算机是一种利用数位电子技术的机器。\n\n历史\n第一台计算机于1946年诞生。"


def test_wudao_and_pile_inputs_with_pile_set_filter(store: ArtifactStore, enwiki_sample: Path, tmp_path: Path) -> None:
    (tmp_path / "wudao").mkdir()
    wudao = write_wudao(tmp_path / "wudao" / "part-0.json", [
        {"id": 7, "dataType": "百科", "title": "标题", "content": "中文内容。" * 60},
        {"id": 8, "dataType": "新闻", "title": "短", "content": "太短"},
    ])
    pile = write_pile(tmp_path / "00.jsonl.zst", [
        pile_record("A pile web page about gardening and soil. " * 10, "Pile-CC"),
        pile_record("def f():\n    return 1\n" * 30, "Github"),
        pile_record("An arXiv abstract on lattice models and phase transitions. " * 8, "ArXiv"),
    ])
    cfg = CleanConfig(inputs=(str(tmp_path / "wudao" / "*.json"), str(pile)), pile_sets=("Pile-CC", "ArXiv"),
                      filters=FilterConfig.disabled(min_chars=100))
    ref = clean(raw_artifact(store, enwiki_sample), cfg, store)
    docs = docs_of(ref)
    by_source = {s: [d for d in docs if d["source"] == s] for s in ("wiki-en", "wudao", "pile")}
    assert [d["id"] for d in by_source["wudao"]] == ["wudao/part-0/7"] and by_source["wudao"][0]["title"] == "标题"
    assert json.loads(by_source["wudao"][0]["meta"]) == {"dataType": "百科", "file": wudao.name}
    assert [json.loads(d["meta"])["pile_set_name"] for d in by_source["pile"]] == ["Pile-CC", "ArXiv"]
    report = json.loads((ref.path / "report.json").read_text())
    assert report["sources"]["pile"]["reader"] == {"filtered_pile_set": 1}
    assert report["sources"]["wudao"]["dropped"] == {"too_short": 1}
    assert [r["file"] for r in report["inputs"]] == ["dump.xml.bz2", "part-0.json", "00.jsonl.zst"]
    assert [p.name for p in doc_shards(ref.path)][-2:] == ["part-0001-00000.parquet", "part-0002-00000.parquet"]


def write_same_names_in_two_folders(root: Path, enwiki_sample: Path) -> None:
    """Folders ``a`` and ``b``, each with a Pile, a WuDao, a JSON-lines file and a wiki dump of the same
    names, whose records have the same ids and line numbers: only the folder tells them apart."""
    for n, folder in enumerate(("a", "b")):
        (root / folder).mkdir()
        write_pile(root / folder / "00.jsonl.zst", [pile_record(prose(10 * n + i)) for i in range(3)])
        write_wudao(root / folder / "part-0.json", [
            {"id": i, "dataType": "百科", "title": "t", "content": hanzi_prose(10 * n + i)} for i in range(2)])
        lines = [{"id": "x/1", "text": prose(100 + n)}, {"text": prose(200 + n)}]
        (root / folder / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
        (root / folder / ENWIKI_DUMP).write_bytes(enwiki_sample.read_bytes())


ENWIKI_DUMP = "enwiki-sample.xml.bz2"


def test_same_file_names_in_two_folders_keep_distinct_ids_on_any_rerun(tmp_path: Path, enwiki_sample: Path) -> None:
    write_same_names_in_two_folders(tmp_path, enwiki_sample)
    cfg = CleanConfig(inputs=(str(tmp_path / "a"), str(tmp_path / "b")), **KEEP_ALL)
    first = open_store(tmp_path / "s1")
    docs = docs_of(clean(download(DownloadConfig(), first), cfg, first))
    ids = [d["id"] for d in docs]
    wiki = sum(d["source"] == "wiki-en" for d in docs)
    assert wiki > 100 and len(docs) == 2 * (3 + 2 + 2) + wiki and len(set(ids)) == len(ids)
    for folder in ("a", "b"):
        assert {f"pile/{folder}/00/1", f"wudao/{folder}/part-0/0", f"notes/{folder}/notes/x%2F1",
                f"notes/{folder}/notes/2", f"wiki-en/{folder}/enwiki-sample/12"} <= set(ids)
    # A fresh store (so nothing comes from a cache), on Dask with two workers: the same ids in the same order.
    second = open_store(tmp_path / "s2")
    again = clean(download(DownloadConfig(), second), replace(cfg, engine="dask", workers=2), second)
    assert [d["id"] for d in docs_of(again)] == ids


def test_a_lone_file_keeps_its_short_id(store: ArtifactStore, tmp_path: Path) -> None:
    pile = write_pile(tmp_path / "07.jsonl.zst", [pile_record(prose(1)), pile_record(prose(2))])
    ref = clean(download(DownloadConfig(), store), CleanConfig(inputs=(str(pile),), **KEEP_ALL), store)
    assert [d["id"] for d in docs_of(ref)] == ["pile/07/1", "pile/07/2"]


def edited(text: str, every: int = 400) -> str:
    """`text` with every `every`-th word changed: a near duplicate (Jaccard ~0.99 on 5-grams)."""
    words = text.split(" ")
    return " ".join(w + "x" if i % every == 0 else w for i, w in enumerate(words))


def test_cross_source_exact_and_near_duplicates(store: ArtifactStore, enwiki_sample: Path, articles, tmp_path) -> None:
    anarchism, autism = articles["Anarchism"]["text"], articles["Autism"]["text"]
    # Same text up to case, punctuation and spacing: an exact duplicate after normalization.
    shouted = "  ".join(anarchism.upper().replace(",", " ").split(" "))
    write_wudao(tmp_path / "wd.json", [{"id": 1, "dataType": "百科", "title": "A", "content": shouted}])
    write_pile(tmp_path / "p.jsonl.zst", [pile_record(edited(autism), "Wikipedia (en)"), pile_record(anarchism)])
    cfg = CleanConfig(inputs=(str(tmp_path / "wd.json"), str(tmp_path / "p.jsonl.zst")))
    ref = clean(raw_artifact(store, enwiki_sample), cfg, store)
    report = json.loads((ref.path / "report.json").read_text())
    assert report["sources"]["wudao"]["dropped"] == {"duplicate": 1}
    assert report["sources"]["pile"]["dropped"] == {"duplicate": 1, "near_duplicate": 1}
    assert report["sources"]["pile"]["docs_out"] == 0 and report["sources"]["wiki-en"].get("dropped", {}) == {}
    counts = store.manifest(ref)["counts"]
    assert counts["dropped_duplicate"] == 2 and counts["dropped_near_duplicate"] == 1
    assert {d["source"] for d in docs_of(ref)} == {"wiki-en"}  # the first copy, in input order, is kept
    assert "| pile | 2 | 0 |" in (ref.path / "report.md").read_text()
    duplicates = list(iter_documents([ref.path / "dropped" / "duplicate.parquet"]))
    assert [(d["source"], d["text"]) for d in duplicates] == [("wudao", shouted), ("pile", anarchism)]
    (near,) = iter_documents([ref.path / "dropped" / "near_duplicate.parquet"])
    assert (near["source"], near["text"]) == ("pile", edited(autism))


def bad_pile(tmp_path: Path) -> Path:
    good = [pile_record(f"record number {i} with enough words to pass " * 3) for i in range(4)]
    return write_pile(tmp_path / "bad.jsonl.zst", good, {1: '{"text": "unterminated', 2: '{"meta": {}}'})


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("json", r"bad\.jsonl\.zst:2: malformed JSON line"),
        ("record", r"missing\.jsonl\.zst:3: record has no string 'text'"),
        ("wudao", r"wd\.json: malformed JSON at byte \d+ \(record 1\)"),
        ("zst", r"cut\.jsonl\.zst: line \d+: compressed stream ends mid-frame"),
    ],
)
def test_bad_input_raises_naming_file_and_position(store, tiny_raw, tmp_path, kind: str, message: str) -> None:
    if kind == "json":
        path = bad_pile(tmp_path)
    elif kind == "record":
        path = write_pile(tmp_path / "missing.jsonl.zst", [pile_record("x"), pile_record("y"), {"meta": {}}])
    elif kind == "wudao":
        path = tmp_path / "wd.json"
        path.write_text('[{"id": 1, "content": "ok"}, {"id": 2, "content": oops}]', encoding="utf-8")
    else:
        full = write_pile(tmp_path / "full.jsonl.zst", [pile_record("text " * 2000 + str(i)) for i in range(20)])
        path = tmp_path / "cut.jsonl.zst"
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(KilnError, match=message):
        clean(tiny_raw, CleanConfig(inputs=(str(path),)), store)
    assert not [p for p in (store.root / "clean").glob("*") if not p.name.startswith(".")]


def test_bad_records_skipped_and_counted(store: ArtifactStore, tiny_raw: ArtifactRef, tmp_path: Path) -> None:
    cfg = CleanConfig(inputs=(str(bad_pile(tmp_path)),), on_error="skip", filters=FilterConfig.disabled())
    ref = clean(tiny_raw, cfg, store)
    counts = store.manifest(ref)["counts"]
    assert counts["skipped_bad_json"] == 1 and counts["skipped_bad_record"] == 1
    assert sum(d["source"] == "pile" for d in docs_of(ref)) == 2
    assert "skipped_bad_json" in (ref.path / "report.md").read_text()


def test_wudao_skip_drops_only_the_malformed_record(store: ArtifactStore, tiny_raw: ArtifactRef,
                                                    tmp_path: Path) -> None:
    records = [{"id": i, "dataType": "百科", "title": f"t{i}", "content": hanzi_prose(i)} for i in range(12)]
    parts = [json.dumps(r, ensure_ascii=False) for r in records]
    parts[4] = parts[4].replace('"content": "', '"content": "\\x', 1)  # an invalid escape: malformed JSON
    path = tmp_path / "wd.json"
    path.write_text("[" + ", ".join(parts) + "]", encoding="utf-8")
    cfg = CleanConfig(inputs=(str(path),), on_error="skip", **KEEP_ALL)
    ref = clean(tiny_raw, cfg, store)
    assert [d["id"] for d in docs_of(ref) if d["source"] == "wudao"] == [f"wudao/wd/{i}" for i in range(12) if i != 4]
    assert store.manifest(ref)["counts"]["skipped_bad_json"] == 1


def test_an_input_without_documents_fails_naming_it(store: ArtifactStore, tiny_raw: ArtifactRef,
                                                    tmp_path: Path) -> None:
    good = write_pile(tmp_path / "good.jsonl.zst", [pile_record(prose(i)) for i in range(3)])
    (tmp_path / "empty.json").write_bytes(b"")  # a WuDao file that came down empty
    write_wudao(tmp_path / "none.json", [])  # a WuDao file with an empty array
    bad = write_pile(tmp_path / "bad.jsonl.zst", [pile_record("x")] * 2, {0: "{oops", 1: "{oops"})
    cases = [(tmp_path / "empty.json", "'wudao' yields no documents (the file is empty)"),
             (tmp_path / "none.json", "'wudao' yields no documents (it holds no documents)"),
             (bad, "'pile' yields no documents (every record was malformed and skipped (2))")]
    for path, why in cases:  # among non-empty inputs: the dump in tiny_raw and good.jsonl.zst
        cfg = CleanConfig(inputs=(str(good), str(path)), on_error="skip", **KEEP_ALL)
        with pytest.raises(KilnError, match=rf"^{re.escape(f'{path}: source {why}; ')}.*allow_empty_sources") as info:
            clean(tiny_raw, cfg, store)
        assert "\n" not in str(info.value)
        ref = clean(tiny_raw, replace(cfg, allow_empty_sources=True), store)  # resumes the failed build
        assert sum(d["source"] == "pile" for d in docs_of(ref)) == 3
    assert not list((store.root / "clean").glob(".partial-*"))


def test_an_empty_download_fails_the_clean_stage(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "empty.xml.bz2").write_bytes(b"")
    raw = raw_artifact(store, tmp_path / "empty.xml.bz2", "enwiki-empty.xml.bz2")
    with pytest.raises(KilnError, match=r"files/enwiki-empty\.xml\.bz2: source 'wiki-en' yields no documents"):
        clean(raw, CleanConfig(), store)
    ref = clean(raw, CleanConfig(allow_empty_sources=True), store)
    assert store.manifest(ref)["counts"]["documents"] == 0


def test_report_files_and_prefect_markdown_artifact(store, enwiki_sample, monkeypatch) -> None:
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(clean_module, "create_markdown_artifact", lambda **kw: published.append(kw))
    raw = raw_artifact(store, enwiki_sample)
    ref = clean_task.fn(raw, CleanConfig(min_chars=2000), str(store.root))
    report = json.loads((ref.path / "report.json").read_text())
    counts = store.manifest(ref)["counts"]
    wiki = report["sources"]["wiki-en"]
    assert (wiki["docs_in"], wiki["docs_out"]) == (counts["docs_in"], counts["documents"])
    assert wiki["dropped"]["too_short"] == counts["dropped_too_short"] and wiki["reader"]["wikitext_chars"] > 0
    assert report["output"]["shards"] == counts["shards"] == len(doc_shards(ref.path))
    (artifact,) = published
    assert artifact["key"] == "kiln-clean-sources" and artifact["markdown"] == (ref.path / "report.md").read_text()
    assert "| wiki-en | 106 |" in artifact["markdown"]


def test_inputs_are_part_of_the_key(tmp_path: Path) -> None:
    path = write_pile(tmp_path / "a.jsonl.zst", [pile_record("one")])
    cfg = CleanConfig(inputs=(str(tmp_path / "*.jsonl.zst"),))
    before = key_config(cfg)
    write_pile(tmp_path / "a.jsonl.zst", [pile_record("one"), pile_record("two")])
    assert key_config(cfg) != before and before["input_fingerprints"][0][0] == str(path)
    assert key_config(CleanConfig(workers=7, engine="dask")) == key_config(CleanConfig())  # runtime-only


def test_jsonl_zst_fastparquet_and_shard_size(store: ArtifactStore, enwiki_sample: Path) -> None:
    raw = raw_artifact(store, enwiki_sample)
    cfg = CleanConfig(shard_mb=0.5, jsonl_zst=True, jsonl_lines=16, parquet_engine="fastparquet")
    ref = clean(raw, cfg, store)
    docs = docs_of(ref)
    shards = doc_shards(ref.path)
    assert len(shards) > 3 and all(len(list(iter_documents([s]))) < 100 for s in shards)
    lines = [json.loads(line) for f in sorted((ref.path / "jsonl").glob("*.jsonl.zst"))
             for line in _zst_lines(f)]
    assert [(d["id"], d["text"]) for d in lines] == [(d["id"], d["text"]) for d in docs]
    assert all(len(list(_zst_lines(f))) <= 16 for f in (ref.path / "jsonl").glob("*.jsonl.zst"))
    pyarrow_ref = clean(raw, CleanConfig(shard_mb=0.5), store)
    assert docs == docs_of(pyarrow_ref)


def _zst_lines(path: Path) -> Iterator[str]:
    yield from zstandard.ZstdDecompressor().decompress(path.read_bytes()).decode("utf-8").splitlines()


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs" / "data").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_data_configs_parse(path: Path) -> None:
    cfg = load_pipeline_config(path)
    assert cfg.clean.filters.min_chars is not None


def test_a_corpus_whose_every_document_is_dropped_fails_naming_the_reasons(store: ArtifactStore,
                                                                           tiny_raw: ArtifactRef) -> None:
    """Not a 0-document artifact that the tokenizer later refuses with "run the clean stage first"."""
    cfg = CleanConfig(filters=replace(FilterConfig(), min_chars=10**6, max_chars=None))
    with pytest.raises(KilnError, match=r"report\.json: clean kept 0 of 1 documents \(dropped: too_short 1\); "
                                        r"loosen clean\.filters") as info:
        clean(tiny_raw, cfg, store)
    assert "\n" not in str(info.value)
    assert not [p for p in (store.root / "clean").iterdir() if not p.name.startswith(".")]  # no artifact
    ref = clean(tiny_raw, replace(cfg, allow_empty_sources=True), store)  # an empty corpus, on purpose
    assert store.manifest(ref)["counts"]["documents"] == 0
