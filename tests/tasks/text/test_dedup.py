"""Exact and MinHash near-duplicate detection on inline texts and the real gensim enwiki sample."""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import KilnError
from tasks.text.dedup import EMPTY, MinHasher, estimated_jaccard, exact_hash, lsh_params, normalize_for_dedup
from tasks.text.dedup_steps import BAND, DedupSettings, band_keys, candidate_pairs, find_duplicates, ranks
from tests.tasks.text.test_filters import PROSE, ZH, plain_text_cleaner, wiki_pages

# Found by looking at every colliding pair of the 206 pages: four redirects that say the same as
# another redirect up to case and spacing ("#REDIRECT [[Atlas Shrugged]]  {{R from CamelCase}}").
SAMPLE_DUPLICATES = {"AtlasShruggedCompanies", "AnarchoCapitalists", "Astronomy and Astrophysics/History",
                     "Albania/Foreign relations"}
ZH_OTHER = (
    "黄河是中国第二长河，发源于青海省巴颜喀拉山脉，流经九个省区，最后在山东省注入渤海。黄河中游流经黄土高原，"
    "携带大量泥沙，因此河水呈黄色。历史上黄河多次改道，给下游地区带来严重的洪涝灾害，也塑造了广阔的华北平原。"
)


def near_duplicate_clusters(items: Iterable[tuple[str, str]], partitions: int = 2) -> set[str]:
    """Keys of texts the on-disk steps drop as near copies (all but the first of each cluster), run in this process."""
    keys, texts = zip(*items, strict=True)
    with tempfile.TemporaryDirectory() as work:
        _, near = find_duplicates(texts, Path(work), DedupSettings(exact=False, partitions=partitions))
    return {keys[i] for i in near.tolist()}


def exact_duplicates(items: Iterable[tuple[str, str]]) -> set[str]:
    keys, texts = zip(*items, strict=True)
    with tempfile.TemporaryDirectory() as work:
        exact, _ = find_duplicates(texts, Path(work), DedupSettings(near=False, partitions=3))
    return {keys[i] for i in exact.tolist()}


@pytest.fixture(scope="module")
def pages(enwiki_sample: Path) -> list[dict[str, str]]:
    return wiki_pages(enwiki_sample)


@pytest.fixture(scope="module")
def hasher() -> MinHasher:
    return MinHasher(num_perm=128, shingle=5, seed=1)


def test_normalize_and_exact_hash() -> None:
    messy = "  Hello,   WORLD!\n It's «ﬁne» — ＡＢＣ 中文，测试。"
    assert normalize_for_dedup(messy) == "hello world it s fine abc 中文 测试"
    assert normalize_for_dedup("हिन्दी भाषा") == "हिन्दी भाषा"  # combining vowel signs are kept, not split off
    digest = exact_hash("Hello, world!")
    assert len(digest) == 16 and digest == exact_hash("hello world") == exact_hash("HELLO   WORLD.")
    assert digest != exact_hash("hello word")


def test_exact_duplicates_keep_the_first() -> None:
    items = [("a", "Same text."), ("b", "other"), ("c", "same  TEXT")]
    assert exact_duplicates(items) == {"c"}
    assert exact_duplicates(reversed(items)) == {"a"}


def test_signatures_are_deterministic_values(hasher: MinHasher) -> None:
    sig = hasher.signature(PROSE)
    assert sig.dtype == np.uint32 and sig.shape == (128,)
    assert np.array_equal(sig, MinHasher(num_perm=128, shingle=5, seed=1).signature(PROSE))
    assert np.array_equal(sig, pickle.loads(pickle.dumps(hasher)).signature(PROSE))
    assert not np.array_equal(sig, MinHasher(seed=2).signature(PROSE))
    # Golden values: the same in every process (no salted `hash`) and every release, or cached
    # dedup results would silently stop matching a rerun.
    assert hasher.signature("The quick brown fox jumps over the lazy dog")[:4].tolist() == [
        868638919, 104823590, 618733255, 213459604]
    assert hasher.signature("敏捷的棕色狐狸跳过了懒狗")[:4].tolist() == [20618984, 114958582, 561344426, 234259254]
    assert np.all(hasher.signature(" ,. ") == EMPTY)


def test_estimate_tracks_true_jaccard(hasher: MinHasher, pages: list[dict[str, str]]) -> None:
    text = _article(pages, "Anarchism")
    words = text.split()
    edited = " ".join(words[: len(words) // 2] + words[len(words) // 2 + 1200 :])  # drop 1200 words
    a, b = set(hasher.shingle_hashes(text).tolist()), set(hasher.shingle_hashes(edited).tolist())
    true = len(a & b) / len(a | b)
    assert 0.8 < true < 0.95
    assert abs(estimated_jaccard(hasher.signature(text), hasher.signature(edited)) - true) < 0.08


def test_real_article_near_duplicates_are_found(hasher: MinHasher, pages: list[dict[str, str]]) -> None:
    text = _article(pages, "Anarchism")
    words = text.split()
    for i in (50, 400, 900, 1500, 2200):  # a few words changed
        words[i] = "changed"
    variants = {
        "original": text,
        "edited": " ".join(words),
        "appended": text + "\nThis sentence was appended by a mirror site that copied the article.",
        "unrelated": _article(pages, "Autism"),
    }
    sigs = {k: hasher.signature(v) for k, v in variants.items()}
    assert estimated_jaccard(sigs["original"], sigs["edited"]) >= 0.9
    assert near_duplicate_clusters(variants.items()) == {"edited", "appended"}


def test_no_false_positives_among_the_real_sample(hasher: MinHasher, pages: list[dict[str, str]]) -> None:
    assert len(pages) == 206
    assert near_duplicate_clusters((p["title"], p["text"]) for p in pages) == SAMPLE_DUPLICATES
    assert exact_duplicates((p["title"], p["text"]) for p in pages) == SAMPLE_DUPLICATES
    clean = plain_text_cleaner()
    articles = [p for p in pages if p["ns"] == "0" and not p["redirect"]]
    assert near_duplicate_clusters((p["title"], clean(p["text"])) for p in articles) == set()


def test_chinese_near_duplicates(hasher: MinHasher) -> None:
    edited = ZH.replace("六千三百", "六千四百").replace("重要的农业区", "重要的粮食产区")
    texts = {"zh": ZH, "zh-edited": edited, "zh-reformatted": ZH.replace("，", ", ") + "\n", "zh-other": ZH_OTHER}
    sigs = {k: hasher.signature(v) for k, v in texts.items()}
    assert estimated_jaccard(sigs["zh"], sigs["zh-edited"]) >= 0.8
    assert near_duplicate_clusters(texts.items()) == {"zh-edited", "zh-reformatted"}
    assert estimated_jaccard(sigs["zh"], sigs["zh-other"]) < 0.1


def test_same_drops_whatever_the_chunking(hasher: MinHasher, pages: list[dict[str, str]]) -> None:
    texts = [p["text"] for p in pages]
    whole = hasher.signatures(texts)
    for size in (1, 7, 50):
        chunked = np.concatenate([hasher.signatures(texts[i : i + size]) for i in range(0, len(texts), size)])
        assert np.array_equal(whole, chunked)
    titles = [p["title"] for p in pages]
    for partitions in (1, 5):  # how the records are spread over partitions never shows
        assert near_duplicate_clusters(zip(titles, texts, strict=True), partitions) == SAMPLE_DUPLICATES


def test_the_first_in_order_is_kept(hasher: MinHasher) -> None:
    items = [("b", PROSE), ("a", PROSE + " Indeed."), ("c", ZH)]
    assert near_duplicate_clusters(items) == {"a"}
    assert near_duplicate_clusters(reversed(items)) == {"b"}


def test_empty_texts_match_nothing(hasher: MinHasher) -> None:
    assert np.all(hasher.signature("") == EMPTY)
    assert near_duplicate_clusters([("e1", ""), ("e2", " ,. "), ("p", PROSE)]) == set()


def test_lsh_banding() -> None:
    assert lsh_params(128, 0.8) == (21, 6) and lsh_params(128, 0.7) == (32, 4)
    with pytest.raises(KilnError, match="raise num_perm"):
        lsh_params(4, 0.3)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32, 128, dtype=np.uint64).astype(np.uint32)
    b = a.copy()
    b[8:] = rng.integers(0, 2**32, 120, dtype=np.uint64).astype(np.uint32)  # shares only band 0
    keys = band_keys(np.stack([a, b, a]), 16, 8)
    assert keys.shape == (3, 16) and keys.dtype == np.uint64
    assert (keys[0] == keys[1]).tolist() == [True] + [False] * 15 and np.array_equal(keys[0], keys[2])
    assert len(set(keys[0].tolist())) == 16  # the same values in two bands are different buckets
    recs = np.empty(48, dtype=BAND)
    recs["key"], recs["rank"] = keys.ravel(), np.repeat(ranks(0, 0, 3), 16)
    pairs = candidate_pairs(recs)
    assert [(int(p["a"]), int(p["b"])) for p in pairs] == [(0, 1), (0, 2), (1, 2)]  # distinct, a < b


def _article(pages: list[dict[str, str]], title: str) -> str:
    return plain_text_cleaner()(next(p["text"] for p in pages if p["title"] == title))

