"""Clean stage units: multistream splitting, kill-and-resume and Dask workers all give byte-identical shards.

The corpus is the real enwiki sample repacked as a Wikimedia multistream dump (20 pages per
bz2 stream), plus a Pile and a WuDao file written here; with 3 streams per unit that is 6
phase-1 units and 6 output shards, small enough to run in seconds. A tight non-alpha limit
drops 9 number-heavy articles from several units, so every byte-identity check here also
covers the ``dropped/`` samples.
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import KilnError
from storage.documents import iter_documents
from storage.store import ArtifactRef, ArtifactStore, open_store
from tasks.clean import CleanConfig, clean
from tasks.download import DownloadConfig, SourceSpec, download
from tasks.runner import choose_engine, local_cluster
from tasks.text import assemble, pipeline
from tasks.text.filters import FilterConfig
from tasks.text.multistream import write_multistream
from tasks.text.units import discover_inputs, stream_offsets
from tests.tasks.test_clean import docs_of, hanzi_prose, pile_record, prose, write_pile, write_wudao

DUMP = "enwiki-sample.xml.bz2"
FILTERS = FilterConfig(max_non_alpha_ratio=0.08, keep_dropped=4)  # drops 9 wiki articles, no Pile or WuDao text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, enwiki_sample: Path) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_multistream(bz2.decompress(enwiki_sample.read_bytes()), folder / DUMP, pages_per_stream=20)
    write_pile(folder / "pile.jsonl.zst", [pile_record(prose(i)) for i in range(5)])
    write_wudao(folder / "wudao.json", [{"id": i, "dataType": "百科", "title": str(i), "content": hanzi_prose(i)}
                                       for i in range(3)])
    return folder


def cfg_for(corpus: Path, **changes: Any) -> CleanConfig:
    inputs = (str(corpus / "pile.jsonl.zst"), str(corpus / "wudao.json"))
    base = CleanConfig(streams_per_unit=3, docs_per_shard=30, inputs=inputs, engine="serial", filters=FILTERS)
    return dataclasses.replace(base, **changes)


def split_raw(store: ArtifactStore, corpus: Path) -> ArtifactRef:
    index = DUMP.removesuffix(".xml.bz2") + "-index.txt.bz2"
    specs = [SourceSpec(name=n, url=str(corpus / n)) for n in (DUMP, index)]
    return download(DownloadConfig(sources=specs), store)


def data_files(ref: ArtifactRef) -> dict[str, str]:
    """sha256 of every file of the artifact but the manifest (which holds timings)."""
    return {str(p.relative_to(ref.path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(ref.path.rglob("*")) if p.is_file() and p.name not in ("manifest.json", ".verified.json")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> tuple[ArtifactStore, ArtifactRef]:
    store = open_store(tmp_path_factory.mktemp("reference"))
    return store, clean(split_raw(store, corpus), cfg_for(corpus), store)


def test_multistream_split_reads_the_same_documents_as_the_whole_file(
    uninterrupted, store: ArtifactStore, enwiki_sample: Path
) -> None:
    ref_store, split = uninterrupted
    assert ref_store.manifest(split)["counts"]["units"] == 6  # 11 streams / 3 + Pile + WuDao
    whole_raw = download(DownloadConfig(sources=[SourceSpec(name=DUMP, url=str(enwiki_sample))]), store)
    whole = clean(whole_raw, CleanConfig(docs_per_shard=30, filters=FILTERS), store)
    assert store.manifest(whole)["counts"]["units"] == 1
    wiki_shards = {k: v for k, v in data_files(split).items() if k.startswith("docs/part-0000-")}
    assert wiki_shards == {k: v for k, v in data_files(whole).items() if k.startswith("docs/")}
    assert len(wiki_shards) == 4
    samples = {k: v for k, v in data_files(split).items() if k.startswith("dropped/")}
    assert samples == {k: v for k, v in data_files(whole).items() if k.startswith("dropped/")} != {}
    assert ref_store.manifest(split)["counts"]["shards"] == 6  # + one each for Pile and WuDao


def test_kill_in_phase_1_then_resume_redoes_only_missing_units(
    uninterrupted, corpus: Path, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, expected = uninterrupted
    real, calls = pipeline.run_unit, []

    def killed_at_third(unit: Any, *args: Any) -> Any:
        calls.append(unit.name)
        if len(calls) == 3:
            raise KilnError("worker killed")
        return real(unit, *args)

    raw = split_raw(store, corpus)
    monkeypatch.setattr(pipeline, "run_unit", killed_at_third)
    with pytest.raises(KilnError, match="worker killed"):
        clean(raw, cfg_for(corpus), store)
    assert not list((store.root / "clean").glob("[!.]*")), "no artifact from a killed run"
    first_two = calls[:2]
    calls.clear()
    monkeypatch.setattr(pipeline, "run_unit", lambda unit, *a: calls.append(unit.name) or real(unit, *a))
    ref = clean(raw, cfg_for(corpus), store)
    assert len(calls) == 4 and not set(first_two) & set(calls)
    assert data_files(ref) == data_files(expected)


def test_kill_in_phase_3_after_a_write_then_resume(
    uninterrupted, corpus: Path, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, expected = uninterrupted
    real, calls = assemble.write_shard, []

    def dies_after_writing_the_second(*args: Any) -> Any:
        out = real(*args)
        calls.append(args[2:4])
        if len(calls) == 2:
            raise KilnError("killed after the write, before the marker")
        return out

    raw = split_raw(store, corpus)
    monkeypatch.setattr(assemble, "write_shard", dies_after_writing_the_second)
    with pytest.raises(KilnError, match="killed after the write"):
        clean(raw, cfg_for(corpus), store)
    partial = next((store.root / "clean").glob(".partial-*"))
    (partial / "docs" / ".part-0000-00009.parquet.x1.tmp").write_bytes(b"half a file")  # a hard kill leaves these
    monkeypatch.setattr(pipeline, "run_unit", lambda *a: pytest.fail("phase 1 must not run again"))
    monkeypatch.setattr(assemble, "write_shard", lambda *a: calls.append(a[2:4]) or real(*a))
    ref = clean(raw, cfg_for(corpus), store)
    assert calls[2] == calls[1] and len(calls) == 7  # the unmarked shard is rewritten, the first is not
    assert data_files(ref) == data_files(expected)


def test_two_local_dask_workers_write_what_serial_writes(uninterrupted, corpus: Path, store: ArtifactStore) -> None:
    _, expected = uninterrupted
    environ = dict(os.environ)
    ref = clean(split_raw(store, corpus), cfg_for(corpus, engine="dask", workers=2), store)
    assert store.manifest(ref)["run"] == {**store.manifest(ref)["run"], "engine": "dask", "workers": 2}
    assert data_files(ref) == data_files(expected)
    assert dict(os.environ) == environ, "Dask's nannies must not leak OMP_NUM_THREADS etc. into later stages"


def test_an_existing_cluster_by_address(uninterrupted, corpus: Path, store: ArtifactStore) -> None:
    """One worker on a cluster started elsewhere: with the test above, 1 and 2 workers match serial."""
    _, expected = uninterrupted
    with local_cluster(1) as cluster:
        cfg = cfg_for(corpus, engine="auto", dask_address=cluster.scheduler_address)
        ref = clean(split_raw(store, corpus), cfg, store)
    assert store.manifest(ref)["run"] == {**store.manifest(ref)["run"], "engine": "dask", "workers": 1}
    assert data_files(ref) == data_files(expected)


def test_intermediate_chunking_never_shows_in_the_output(
    uninterrupted, corpus: Path, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, expected = uninterrupted
    monkeypatch.setattr(pipeline, "CHUNK_DOCS", 7)  # a worker's memory bound: many small chunks per unit
    ref = clean(split_raw(store, corpus), cfg_for(corpus), store)
    assert data_files(ref) == data_files(expected)


def test_near_duplicate_across_units_keeps_the_first(uninterrupted, corpus: Path, store: ArtifactStore) -> None:
    _, expected = uninterrupted
    article = next(d["text"] for d in docs_of(expected) if d["title"] == "Autism")
    pile = write_pile(store.root.parent / "dup.jsonl.zst", [pile_record(article.replace(" the ", " a ", 3))])
    cfg = cfg_for(corpus, inputs=(*cfg_for(corpus).inputs, str(pile)))
    ref = clean(split_raw(store, corpus), cfg, store)
    assert store.manifest(ref)["counts"]["dropped_near_duplicate"] == 1
    assert [d["source"] for d in docs_of(ref) if d["title"] == "Autism"] == ["wiki-en"]


def test_dropped_samples_are_the_first_drops_in_input_order(uninterrupted) -> None:
    store, ref = uninterrupted
    report = json.loads((ref.path / "report.json").read_text())
    assert report["total"]["dropped"] == {"non_alpha_ratio": 9}
    assert sorted(p.name for p in (ref.path / "dropped").iterdir()) == ["non_alpha_ratio.parquet"]
    sample = list(iter_documents([ref.path / "dropped" / "non_alpha_ratio.parquet"]))
    # The 9 drops, in dump order, lie in its second and third units: the first 4 are kept, the rest are past the cap.
    assert [d["title"] for d in sample] == ["Alain Connes", "Allan Dwan", "Alien", "Afroasiatic languages"]
    assert not {d["id"] for d in sample} & {d["id"] for d in docs_of(ref)}
    assert "dropped/non_alpha_ratio.parquet" in store.manifest(ref)["files"]
    assert report["dropped_samples"] == {"non_alpha_ratio": 4}


def test_engine_choice() -> None:
    assert choose_engine("auto", "", 1 << 20, 16 << 20, 10) == "serial"  # the demo: no cluster start-up
    assert choose_engine("auto", "", 1 << 30, 16 << 20, 10) == "dask"
    assert choose_engine("auto", "", 1 << 30, 16 << 20, 1) == "serial"  # one unit cannot be split
    assert choose_engine("auto", "tcp://sched:8786", 0, 16 << 20, 1) == "dask"
    assert choose_engine("serial", "tcp://sched:8786", 1 << 30, 0, 10) == "serial"


def test_multistream_index_problems_are_named(tmp_path: Path) -> None:
    orphan = tmp_path / "x-index.txt.bz2"
    orphan.write_bytes(bz2.compress(b"10:1:A\n"))
    with pytest.raises(KilnError, match=r"x-index\.txt\.bz2: multistream index without its dump x\.xml\.bz2"):
        discover_inputs([orphan], [], "en")
    bad = tmp_path / "y-index.txt"
    bad.write_text("597:10:AccessibleComputing\nnot an index line\n")
    with pytest.raises(KilnError, match=r"y-index\.txt:2: expected 'offset:page_id:title'"):
        stream_offsets(str(bad))
