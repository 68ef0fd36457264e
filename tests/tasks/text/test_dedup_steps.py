"""The on-disk dedup steps: clusters (chains too) keep one survivor, and nothing depends on partitions or units."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from tasks.text.dedup import EMPTY, MinHasher, bottom_k, estimated_jaccard, sketch_jaccard
from tasks.text.dedup_steps import (
    EDGE,
    EXACT_DROPS,
    NEAR_DROPS,
    DedupSettings,
    FingerprintWriter,
    SketchReader,
    bucket_partition,
    cluster_duplicates,
    component_drops,
    find_duplicates,
    fingerprint_texts,
    partitions_for,
    ranks,
    row_of,
    unit_of,
)
from tests.tasks.text.test_filters import plain_text_cleaner, wiki_pages

HASHER = MinHasher()


@pytest.fixture(scope="module")
def articles(enwiki_sample: Path) -> list[str]:
    clean = plain_text_cleaner()
    pages = [p for p in wiki_pages(enwiki_sample) if p["ns"] == "0" and not p["redirect"]]
    return [t for t in (clean(p["text"]) for p in pages) if len(t.split()) > 400]


def edit(text: str, rate: float, seed: int) -> str:
    """`text` with a share `rate` of its words replaced (each replacement breaks up to 5 shingles)."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), int(len(words) * rate)):
        words[i] = f"w{rng.randrange(10**9)}"
    return " ".join(words)


def test_a_chain_of_near_copies_collapses_to_its_earliest_document(articles: list[str], tmp_path: Path) -> None:
    a = articles[0]
    b = edit(a, 0.012, 1)
    c = edit(b, 0.012, 2)
    d = edit(c, 0.012, 3)
    sa, sb, sc, sd = (HASHER.signature(t) for t in (a, b, c, d))
    assert estimated_jaccard(sa, sb) >= 0.8 and estimated_jaccard(sb, sc) >= 0.8 and estimated_jaccard(sc, sd) >= 0.8
    assert estimated_jaccard(sa, sd) < 0.8, "the chain's ends are not near copies of each other"
    # Input order: the chain's far end first, unrelated documents between its links.
    texts = [d, articles[1], b, articles[2], a, c, articles[3]]
    _, near = find_duplicates(texts, tmp_path, DedupSettings())
    assert near.tolist() == [2, 4, 5]  # b, a and c go; d, the earliest of the four, stays


def test_a_cluster_of_five_copies_keeps_one(articles: list[str], tmp_path: Path) -> None:
    original = articles[4]
    copies = [edit(original, 0.01, seed) for seed in range(4)]
    texts = [articles[5], *copies, articles[6], original]
    _, near = find_duplicates(texts, tmp_path, DedupSettings())
    assert near.tolist() == [2, 3, 4, 6]


def test_controls_below_the_threshold_are_not_merged(articles: list[str], tmp_path: Path) -> None:
    texts, expected = [], []
    for i, text in enumerate(articles[:12]):
        texts += [text, edit(text, 0.01 if i % 2 else 0.06, i)]  # J ~0.95 (a copy) or ~0.75 (a control)
        if i % 2:
            expected.append(len(texts) - 1)
    _, near = find_duplicates(texts, tmp_path, DedupSettings())
    assert near.tolist() == expected


def drops(texts: list[str], work: Path, partitions: int, units: int) -> tuple[list[int], list[int]]:
    """Exact and near drops, as positions in `texts`, with the texts split into `units` consecutive units."""
    s = DedupSettings(partitions=partitions)
    bounds = np.linspace(0, len(texts), units + 1).astype(int)
    dirs = []
    for k in range(units):
        part = texts[bounds[k] : bounds[k + 1]]
        writer = FingerprintWriter(k, work / "fp" / str(k), s)
        writer.add(*fingerprint_texts(part, s))
        writer.close()
        dirs.append(str(work / "fp" / str(k)))
    for p in range(partitions):
        bucket_partition(p, dirs, str(work), s)
    cluster_duplicates(str(work), partitions, s)

    def positions(name: str) -> list[int]:
        docs = np.load(work / name)["doc"]
        return sorted((bounds[unit_of(docs)] + row_of(docs)).tolist())

    return positions(EXACT_DROPS), positions(NEAR_DROPS)


def test_the_same_drops_whatever_the_partitions_and_units(articles: list[str], tmp_path: Path) -> None:
    rng = random.Random(7)
    texts = list(articles[:40])
    texts += [edit(articles[i], 0.01, i) for i in range(0, 40, 3)]  # near copies
    texts += [articles[i] for i in range(1, 40, 5)]  # exact copies
    rng.shuffle(texts)
    reference = drops(texts, tmp_path / "ref", partitions=1, units=1)
    assert reference[0] and reference[1]
    for partitions, units in ((3, 1), (1, 4), (7, 5)):
        assert drops(texts, tmp_path / f"p{partitions}-u{units}", partitions, units) == reference


def test_a_step_run_again_writes_the_same_bytes(articles: list[str], tmp_path: Path) -> None:
    """What resuming after a kill -9 relies on: a leftover ``.partial`` is discarded, outputs are rewritten equal."""
    s = DedupSettings(partitions=2)
    texts = articles[:10] + [edit(articles[0], 0.01, 0)]
    prints = fingerprint_texts(texts, s)
    out = tmp_path / "fp" / "0"
    (tmp_path / "fp" / "0.partial").mkdir(parents=True)
    (tmp_path / "fp" / "0.partial" / "band-00000.bin").write_bytes(b"half written")
    digests: list[dict[str, str]] = []
    for _ in range(2):
        writer = FingerprintWriter(0, out, s)
        writer.add(*prints)
        writer.close()
        for p in range(2):
            bucket_partition(p, [str(out)], str(tmp_path), s)
        cluster_duplicates(str(tmp_path), 2, s)
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                        for f in sorted(tmp_path.rglob("*")) if f.is_file()})
    assert digests[0] == digests[1]
    assert not (tmp_path / "fp" / "0.partial").exists()
    assert np.load(tmp_path / NEAR_DROPS)["doc"].tolist() == [10]


def test_components_of_a_long_chain_and_a_star() -> None:
    n = 5000
    chain = np.empty(n - 1, dtype=EDGE)
    chain["a"], chain["b"] = np.arange(n - 1, dtype=np.uint64) * 3 + 100, np.arange(1, n, dtype=np.uint64) * 3 + 100
    star = np.empty(50, dtype=EDGE)
    star["a"], star["b"] = 7, np.arange(10**6, 10**6 + 50, dtype=np.uint64)
    pairs, clusters, largest = component_drops(np.concatenate([chain[::-1], star]))
    assert clusters == 2 and largest == n
    assert pairs["doc"].tolist() == sorted(pairs["doc"].tolist())
    keep = dict(zip(pairs["doc"].tolist(), pairs["keep"].tolist(), strict=True))
    assert keep[100 + 3 * (n - 1)] == 100 and keep[10**6 + 49] == 7 and 100 not in keep and 7 not in keep


def test_partitions_grow_with_documents_and_signatures_are_read_by_rank(tmp_path: Path) -> None:
    s = DedupSettings()
    assert partitions_for(1000, s) == 1
    assert partitions_for(210_000_000, s) > partitions_for(3_000_000, s) > 1
    sigs = np.arange(3 * 128, dtype=np.uint32).reshape(3, 128)
    sketches = np.arange(3 * 512, dtype=np.uint32).reshape(3, 512)
    writer = FingerprintWriter(0, tmp_path / "u", DedupSettings(exact=False))
    writer.add(None, sigs, sketches)
    writer.close()
    with SketchReader([str(tmp_path / "u")], 512) as reader:
        assert np.array_equal(reader.read(ranks(0, 0, 3)[::-1]), sketches[::-1])
        with pytest.raises(OSError, match="short read at row 5"):
            reader.read(ranks(0, 5, 1))


def true_jaccard(a: str, b: str) -> float:
    x, y = set(HASHER.shingle_hashes(a).tolist()), set(HASHER.shingle_hashes(b).tolist())
    return len(x & y) / len(x | y)


def test_sketches_estimate_jaccard_closer_than_signatures(articles: list[str]) -> None:
    long = [t for t in articles if len(t.split()) > 2000][:6]
    assert len(long) == 6
    errors_sketch, errors_sig = [], []
    for i, text in enumerate(long):
        for rate in (0.01, 0.02, 0.04):
            other = edit(text, rate, i)
            (sa, ka), (sb, kb) = HASHER.fingerprint(text, 512), HASHER.fingerprint(other, 512)
            true = true_jaccard(text, other)
            errors_sketch.append(abs(float(sketch_jaccard(ka[None], kb[None])[0]) - true))
            errors_sig.append(abs(estimated_jaccard(sa, sb) - true))
    assert max(errors_sketch) < 0.06 and np.mean(errors_sketch) < 0.6 * np.mean(errors_sig)


def test_a_sketch_is_exact_for_short_texts_and_matches_a_plain_reference(articles: list[str]) -> None:
    short = " ".join(articles[0].split()[:200])
    other = edit(short, 0.05, 1)
    ka, kb = bottom_k(HASHER.shingle_hashes(short), 512), bottom_k(HASHER.shingle_hashes(other), 512)
    assert int((ka != EMPTY).sum()) == len(set(HASHER.shingle_hashes(short).tolist()))
    assert abs(float(sketch_jaccard(ka[None], kb[None])[0]) - true_jaccard(short, other)) < 1e-3  # 32-bit values
    rng = np.random.default_rng(0)
    for _ in range(20):  # the vectorized estimator against the definition, on random sets larger than k
        pool = rng.choice(2**32 - 1, 3000, replace=False).astype(np.uint32)
        a, b = set(pool[:2000].tolist()), set(pool[rng.integers(500, 1000):][:2000].tolist())
        k = 256
        sa, sb = sorted(a)[:k], sorted(b)[:k]
        union_k = sorted(set(sa) | set(sb))[:k]
        expected = sum(v in a and v in b for v in union_k) / k
        got = sketch_jaccard(np.array([sa], dtype=np.uint32), np.array([sb], dtype=np.uint32))[0]
        assert got == expected


def test_verification_in_batches_keeps_the_same_edges(articles: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.text import dedup_steps

    texts = list(articles[:30]) + [edit(articles[i], 0.01 if i % 2 else 0.05, i) for i in range(30)]
    whole = find_duplicates(texts, tmp_path / "whole", DedupSettings())
    monkeypatch.setattr(dedup_steps, "VERIFY_BATCH", 3)
    batched = find_duplicates(texts, tmp_path / "batched", DedupSettings())
    assert [a.tolist() for a in batched] == [a.tolist() for a in whole] and len(whole[1]) >= 15
