"""The near-dedup baseline: datatrove's MinHash and Kiln's dedup steps on real enwiki shards with planted copies.

Both tools run through `measure` (the CLI in a subprocess, as the benchmark runs them); Kiln
also runs in process on one worker, which must give the same kept ids as two.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from benchmarks.baselines.datatrove_minhash import measure, read_kept, run_kiln
from storage.documents import write_documents
from tests.tasks.tokenizer_fixtures import load_enwiki_docs

pytest.importorskip("datatrove")


def near_copy(doc: dict[str, str], rng: random.Random, changed: int = 3) -> dict[str, str]:
    """`doc` with `changed` words replaced: word 5-gram Jaccard ~0.95 for a 500-word text."""
    words = doc["text"].split(" ")
    for j in rng.sample(range(len(words)), changed):
        words[j] = "qqplanted"
    return {**doc, "id": doc["id"] + "-copy", "text": " ".join(words)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    """4 shards of 36 articles; two originals in shard 0, one copied into shard 0 (later), one into shard 3."""
    docs = load_enwiki_docs(max_chars=4000, limit=36)
    parts = [docs[i::4] for i in range(4)]
    long = [d for d in parts[0] if len(d["text"].split()) > 400][:2]
    assert len(long) == 2, "the enwiki sample should have long articles in shard 0"
    rng = random.Random(7)
    parts[0].append(near_copy(long[0], rng))
    parts[3].append(near_copy(long[1], rng))
    root = tmp_path_factory.mktemp("dt-docs")
    files = []
    for i, part in enumerate(parts):
        write_documents(root / f"part-{i:05d}.parquet", part)
        files.append(root / f"part-{i:05d}.parquet")
    return files, [d["id"] for d in long]


@pytest.mark.parametrize("tool", ["datatrove", "kiln"])
def test_both_tools_drop_the_planted_copy_and_keep_the_original(
        tool: str, shards: tuple[list[Path], list[str]], tmp_path: Path) -> None:
    files, originals = shards
    result = measure(tool, files, tmp_path / "work", out=tmp_path / "result.json")
    kept = set(read_kept(result))
    for orig in originals:
        assert orig in kept
        assert f"{orig}-copy" not in kept
    assert result["docs"] == 38
    assert result["kept"] == len(kept) <= 36
    assert result["near_dropped"] >= 2
    assert result["cpu_s"] > 0 and result["peak_rss_gb"] > 0
    first = "signatures" if tool == "datatrove" else "fingerprint"
    assert set(result["stage_wall_s"]) >= {first, "buckets", "cluster"}


def test_kiln_one_worker_keeps_what_two_keep(shards: tuple[list[Path], list[str]], tmp_path: Path) -> None:
    files, _ = shards
    two = measure("kiln", files, tmp_path / "w2", out=tmp_path / "two.json")
    one = run_kiln(files, tmp_path / "w1", workers=1)
    assert one["kept_ids"] == read_kept(two)
    assert (one["exact_dropped"], one["near_dropped"]) == (two["exact_dropped"], two["near_dropped"])
    assert one["config"]["engine"] == "serial" and two["config"]["engine"] == "processes"
