"""A scale corpus that looks real: Wikipedia multistream dumps, WuDao JSON and Pile ``.jsonl.zst`` of any size.

    python -m benchmarks.scale_corpus --out /work/scale/gen-1 --gb 1.0 [--workers 2] [--seed 0]

`--gb` is text, not disk: UTF-8 bytes of article wikitext (ns 0, no redirects) plus WuDao
``content`` plus Pile ``text``, a third each (10**9 bytes a GB), within a few per cent.
Layout under ``--out``::

    wiki/enwiki-20260101-pages-articles-multistream[K-pApB].xml.bz2  + ...-index.txt.bz2 beside it
    wiki/bgwiki-20260101-pages-articles-multistream[...].xml.bz2     (a small Bulgarian share)
    wudao/part-NNNN.json        JSON arrays of {"id", "dataType", "title", "content"}
    pile/NN.jsonl.zst           lines {"text", "meta": {"pile_set_name"}}, zstd level 3
    truth.json                  the planted duplicates, with their measured Jaccard
    _run.json                   timings of this run ("_": Kiln's input discovery skips it)

Give Kiln's clean stage the three folders, not ``--out`` itself (it would read truth.json as
WuDao). Split dumps are named ``X-pApB.xml.bz2`` + ``X-pApB-index.txt.bz2``, not Wikimedia's
``X.xml-pApB.bz2`` + ``...-index1.txt-pApB.bz2``: Kiln pairs a dump with its index only by the
``X.xml.bz2`` / ``X-index.txt.bz2`` rule (`tasks.text.units`), and would not split the latter.

Why it looks real: every sentence comes from the real pages the gensim wheel ships (the
enwiki and bgwiki samples the tests use), perturbed: word substitutions from the samples'
own vocabulary (by frequency) and halves of two sentences joined. A pool of such variants is
built once per run; documents draw sentences from it with numpy, so per-word Python work
happens only while building the pool. Wiki pages keep the sample's markup (links, bold,
templates, refs, tables, headings, categories) so the cleaner does real work; WuDao and Pile
get the plain text of the same pages as Kiln's own `clean_wikitext` renders it.

Why documents differ: a document is ~20-80 sentences out of a pool of ~10**5 variants, so
two documents share a sentence rarely and their 5-word shingle sets barely meet (Jaccard ~0).

Planted duplicates (about 10 % of documents, `truth.json`): exact copies (also across
formats, and wiki pages under another title and page id), near copies at Jaccard 0.95 /
0.90 / 0.85, controls at 0.70 / 0.60, clusters of 3-5 near copies and chains (copy of a
copy). Jaccard is measured exactly on the shingles Kiln's dedup hashes
(`tasks.text.dedup.MinHasher().shingle_hashes`) on the text as written; edits are repeated
until it is within `JACCARD_TOLERANCE` of the target.

Determinism without coordination: a document's text is a pure function of (seed, file,
slot): its own numpy generator is seeded from them. The plan (which slot is a copy of which)
is made up front in the parent; a worker writing a copy regenerates its original from the
original's seed, whichever file that lives in. Files are the unit of parallel work, so the
output is byte-identical for any `--workers`.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import json
import multiprocessing
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zstandard

REPO = Path(__file__).resolve().parents[1]
GB = 10**9
DATE = "20260101"
SAMPLES = {
    "en": "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "bg": "bgwiki-latest-pages-articles-shortened.xml.bz2",
}
BG_SHARE = 0.03
"""Share of the wiki third that is Bulgarian: the bgwiki sample has one article, so keep it small."""
FILE_TEXT = {"wiki": 200e6, "wudao": 150e6, "pile": 150e6}
"""Most text bytes per output file (the unit of parallel work)."""
DOC_MEDIAN = 3500.0
DOC_SIGMA = 0.6
DOC_MIN, DOC_MAX = 900, 40_000
WIKI_MIN = 1600
POOL_SENTENCES = 120_000
"""Variants per pool (plain and wikitext each, per language): large, so compressors see few whole repeats."""
SUB_RATE = 0.3
"""Share of lowercase words substituted in a variant: breaks long repeats of the sample's phrases."""
SPLICE_RATE = 0.5
_VARIANT_BLOCK = 8192
PAGES_PER_STREAM = 100
WIKI_ID_STRIDE = 10_000_000
WUDAO_ID_STRIDE = 10_000_000
BZ2_LEVEL = 9
"""As Wikimedia compresses; measured as fast as level 6 here (~15 MB/s a core), so no reason to go lower."""
JACCARD_TOLERANCE = 0.02
NEAR_MIN_BYTES = 2500
"""Originals of near copies are at least this long (~400 words: one edit moves Jaccard by ~0.012)."""
PLANT_FRACTION = 0.10
"""Share of documents that are planted copies."""
NEAR_TARGETS = (0.95, 0.90, 0.85)
CONTROL_TARGETS = (0.70, 0.60)
PILE_SETS = (("Pile-CC", 0.35), ("OpenWebText2", 0.2), ("Wikipedia (en)", 0.15), ("FreeLaw", 0.1),
             ("PubMed Abstracts", 0.1), ("StackExchange", 0.1))
WUDAO_TYPES = ("百科", "博客", "新闻", "问答", "论坛")
_SPLIT = re.compile(r"(?:(?<=[.!?])|(?<=</ref>)|(?<=/>)) +(?=\S)")
_WORD = re.compile(r"^[^\W\d_]{3,}$")
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)\b[^<>]*?(/?)>")
_BOLD = re.compile(r"'''[^'\n]+'''")
_ELLIPSIS = ("...", "…")
_QUOTES = "\"')»”"


@dataclass(frozen=True)
class FileSpec:
    """One output file: what it holds and how many document slots."""

    fid: int
    """Global file number: part of every document seed."""
    fmt: str
    """``wiki``, ``wudao`` or ``pile``."""
    lang: str
    rel: str
    """Path under the output folder."""
    n_docs: int
    text_bytes: int
    """Planned text bytes (the slots' sizes are scaled to sum to this)."""
    id_base: int = 0


Recipe = tuple[Any, ...]
"""How a document's text is made: ``("base", fid, slot)`` or ``("edit", parent, target, fid, slot)``."""


@dataclass
class Role:
    """What one slot of a file holds when it is a planted copy."""

    recipe: Recipe
    group: int
    original: tuple[int, int]
    """(fid, slot) of the group's original."""
    chain_root: tuple[int, int] | None = None


# ---------------------------------------------------------------- the sentence pool


@dataclass
class Pool:
    """Perturbed sentence variants of one language, shared by all documents of a run."""

    lang: str
    plain: list[str]
    plain_len: np.ndarray
    wiki: list[str]
    wiki_len: np.ndarray
    leads: list[str]
    headings: list[str]
    blocks: list[str]
    categories: list[str]
    vocab: list[str]
    vocab_p: np.ndarray
    titles: list[str]
    header: bytes
    plain_mean: float = 0.0
    """Mean of ``plain_len + 1`` (a numpy reduce per document was 10 % of the time)."""
    wiki_mean: float = 0.0
    original_plain: tuple[str, ...] = ()
    """The sample's articles as `clean_wikitext` renders them (for the compression comparison)."""
    original_xml_bz2: int = 0
    original_xml: int = 0


def load_sample(lang: str) -> tuple[bytes, list[Any]]:
    """The sample dump's XML (UTF-8) and its articles."""
    import importlib.resources

    from tasks.text.mediawiki import iter_pages

    path = Path(str(importlib.resources.files("gensim").joinpath(f"test/test_data/{SAMPLES[lang]}")))
    raw = bz2.decompress(path.read_bytes())
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):  # the bgwiki sample is UTF-16
        raw = raw.decode("utf-16").encode("utf-8")
    return raw, list(iter_pages(path))


def _balanced(s: str) -> bool:
    """Whether a piece of wikitext closes what it opens: links, templates, comments, HTML tags, quotes.

    A sentence that opens ``<!--`` or ``<ref>`` without closing it would swallow the rest of the page it
    lands in (the cleaner then leaves a stub that the length filter drops).
    """
    if s.count("[[") != s.count("]]") or s.count("{{") != s.count("}}") or s.count("<!--") != s.count("-->"):
        return False
    if s.count("''") % 2:
        return False
    depth: Counter[str] = Counter()
    for close, tag, selfclose in _TAG.findall(s):
        if not selfclose:
            depth[tag.lower()] += -1 if close else 1
    return not any(depth.values())


def split_wikitext(text: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """A page's prose sentences (markup kept, balanced), headings, blocks (templates, tables, lists) and categories."""
    sentences: list[str] = []
    headings: list[str] = []
    blocks: list[str] = []
    cats: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line:
            continue
        if line.startswith("==") and line.endswith("=="):
            title = line.strip("= ").strip()
            if 2 < len(title) < 60 and title.lower() not in ("references", "external links", "see also", "notes"):
                headings.append(title)
            continue
        if line.startswith("[[Category:") or line.startswith("[[Категория:"):
            cats.append(line)
            continue
        if line.startswith(("{{", "{|")) or line.startswith(("*", "#", ":", ";", "|", "!", "[[File:", "[[Image:")):
            block = [line]
            depth = line.count("{{") - line.count("}}") + line.count("{|") - line.count("|}")
            while i < len(lines) and (depth > 0 or lines[i].startswith(("*", "#")) and block[0][0] in "*#"):
                block.append(lines[i])
                depth += lines[i].count("{{") - lines[i].count("}}") + lines[i].count("{|") - lines[i].count("|}")
                i += 1
            joined = "\n".join(block)
            if depth == 0 and len(joined) < 3000:
                blocks.append(joined)
            continue
        pending = ""
        for piece in _SPLIT.split(line):
            pending = f"{pending} {piece}" if pending else piece
            if _balanced(pending):
                if 40 <= len(pending) <= 1500:
                    sentences.append(pending)
                pending = ""
    return sentences, headings, blocks, cats


def _prose(clean: str, wikitext: str) -> bool:
    """A wikitext sentence worth drawing: mostly text once cleaned, and not ending in an ellipsis.

    (A page has few lines once cleaned: one ending in "..." can break the ellipsis-lines filter's 0.3.)
    """
    return len(clean) >= max(30, 0.4 * len(wikitext)) and not clean.rstrip(_QUOTES).endswith(_ELLIPSIS)


def plain_sentences(clean: str) -> list[str]:
    out = []
    for para in clean.split("\n"):
        for s in _SPLIT.split(para.strip()):
            words = s.split()
            letters = sum(c.isalpha() for c in s)
            ellipsis = s.rstrip(_QUOTES).endswith(_ELLIPSIS)
            if 6 <= len(words) <= 120 and not ellipsis and letters > 0.7 * len(s.replace(" ", "")):
                out.append(" ".join(words))
    return out


def build_pool(lang: str, seed: int, size: int = POOL_SENTENCES) -> Pool:
    """Variants of the sample's sentences (plain and wikitext), built once per run from `seed`."""
    from tasks.text.wikitext import clean_wikitext

    raw, pages = load_sample(lang)
    header = raw[: raw.find(b"<page>")]
    header = header[: header.rfind(b"\n") + 1] if b"\n" in header else header
    rng = np.random.default_rng([seed, 0x9001, len(lang), ord(lang[0]), ord(lang[1])])
    plain: list[str] = []
    wiki: list[str] = []
    headings: list[str] = []
    blocks: list[str] = []
    cats: list[str] = []
    leads: list[str] = []
    clean_texts = []
    for page in pages:
        clean = clean_wikitext(page.text)
        clean_texts.append(clean)
        plain += plain_sentences(clean)
        s, h, b, c = split_wikitext(page.text)
        s = [x for x in s if _prose(clean_wikitext(x), x)]
        leads += [x for x in s[:3] if _BOLD.search(x)]
        b = [x for x in b if x.count("<!--") == x.count("-->")]
        wiki += s
        headings += h
        blocks += b
        cats += c
    counts = Counter(w for s in plain for w in s.split() if _WORD.match(w) and w.islower())
    vocab = sorted(counts)
    freq = np.array([counts[w] for w in vocab], dtype=np.float64)
    vocab_p = np.cumsum(freq / freq.sum())
    stripped = (w.strip(",.;:") for s in plain for w in s.split()[1:])
    cap = sorted({w for w in stripped if w[:1].isupper() and _WORD.match(w)})
    pool_plain = _variants(plain, size, rng, vocab, vocab_p, splice=True)
    pool_wiki = _variants(wiki, size, rng, vocab, vocab_p, splice=False)
    pool_leads = _variants(leads or wiki[:50], max(2000, size // 50), rng, vocab, vocab_p, splice=False)
    pool_blocks = _variants(blocks, max(2000, size // 20), rng, vocab, vocab_p, splice=False)
    pool = Pool(
        lang=lang,
        plain=pool_plain,
        plain_len=np.array([len(s.encode()) for s in pool_plain], dtype=np.int64),
        wiki=pool_wiki,
        wiki_len=np.array([len(s.encode()) for s in pool_wiki], dtype=np.int64),
        leads=pool_leads,
        headings=headings or ["History"],
        blocks=pool_blocks,
        categories=cats or ["[[Category:Articles]]"],
        vocab=vocab,
        vocab_p=vocab_p,
        titles=cap or vocab,
        header=header,
        original_plain=tuple(clean_texts),
        original_xml=len(raw),
    )
    pool.plain_mean = float(pool.plain_len.mean()) + 1
    pool.wiki_mean = float(pool.wiki_len.mean()) + 1
    pool.original_xml_bz2 = len(bz2.compress(raw, BZ2_LEVEL))
    return pool


def _variants(base: Sequence[str], n: int, rng: np.random.Generator, vocab: list[str], vocab_p: np.ndarray,
              *, splice: bool) -> list[str]:
    """`n` perturbed sentences: a random base (or halves of two), lowercase words substituted at `SUB_RATE`.

    Random numbers come in blocks of `_VARIANT_BLOCK` variants: a few MB at a time, not GBs of floats.
    """
    if not base:
        return []
    tokens = [s.split(" ") for s in base]
    # Positions of substitutable words (lowercase letters only: never markup, names or numbers).
    subst = [[j for j, t in enumerate(toks) if t.islower() and _WORD.match(t)] for toks in tokens]
    out: list[str] = []
    for lo in range(0, n, _VARIANT_BLOCK):
        m = min(_VARIANT_BLOCK, n - lo)
        picks = rng.integers(0, len(base), size=(m, 2)).tolist()
        do_splice = (rng.random(m) < SPLICE_RATE).tolist() if splice else [False] * m
        cuts = rng.random(m).tolist()
        words = np.searchsorted(vocab_p, rng.random(m * 16)).tolist() if vocab else [0]
        coins = rng.random(m * 40).tolist()
        wi = ci = 0
        for k in range(m):
            a, b = picks[k]
            ta, pa = tokens[a], subst[a]
            if do_splice[k] and len(ta) > 6 and len(tokens[b]) > 6:
                tb = tokens[b]
                ca, cb = max(3, int(len(ta) * (0.3 + 0.4 * cuts[k]))), int(len(tb) * (0.3 + 0.4 * cuts[k]))
                toks = ta[:ca] + tb[cb:]
                pos = [j for j in pa if j < ca] + [j - cb + ca for j in subst[b] if j >= cb]
            else:
                toks, pos = list(ta), pa
            if vocab:
                for j in pos:
                    if coins[ci % len(coins)] < SUB_RATE:
                        toks[j] = vocab[words[wi % len(words)]]
                        wi += 1
                    ci += 1
            out.append(" ".join(toks))
    return out


# ---------------------------------------------------------------- documents


def doc_rng(seed: int, fid: int, slot: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, fid, slot, salt])


def slot_sizes(seed: int, spec: FileSpec) -> np.ndarray:
    """Planned text bytes of every slot of a file, scaled to sum to its `text_bytes`."""
    rng = np.random.default_rng([seed, spec.fid, 0x5123])
    raw = np.clip(rng.lognormal(np.log(DOC_MEDIAN), DOC_SIGMA, spec.n_docs), DOC_MIN, DOC_MAX)
    floor = WIKI_MIN if spec.fmt == "wiki" else DOC_MIN // 2
    sizes = raw * (spec.text_bytes / raw.sum())
    for _ in range(4):  # the floor adds bytes: shrink the rest until the sum is right again
        sizes *= spec.text_bytes / np.maximum(floor, sizes).sum()
    return np.maximum(floor, sizes).astype(np.int64)


def _pick(rng: np.random.Generator, lens: np.ndarray, size: int, mean: float) -> np.ndarray:
    """Sentence indices whose lengths (plus a separator) first reach `size` bytes; `mean`: of lens + 1."""
    idx = rng.integers(0, len(lens), int(size / mean * 1.5) + 8)
    cum = np.cumsum(lens[idx] + 1)
    while cum[-1] < size:
        more = rng.integers(0, len(lens), len(idx))
        idx = np.concatenate([idx, more])
        cum = np.cumsum(lens[idx] + 1)
    return idx[: int(np.searchsorted(cum, size - mean / 2)) + 1]  # - mean / 2: no bias from the last sentence


def plain_doc(pool: Pool, rng: np.random.Generator, size: int) -> str:
    """Paragraphs of 2-8 plain sentences, about `size` bytes."""
    idx = _pick(rng, pool.plain_len, size, pool.plain_mean).tolist()
    sents = [pool.plain[i] for i in idx]
    bounds = np.cumsum(rng.integers(2, 9, len(sents))).tolist()
    paras, lo = [], 0
    for hi in bounds:
        paras.append(" ".join(sents[lo:hi]))
        if hi >= len(sents):
            break
        lo = hi
    return "\n\n".join(paras)


def make_title(pool: Pool, rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 4))
    words = [pool.titles[i] for i in rng.integers(0, len(pool.titles), n).tolist()]
    if rng.random() < 0.3:
        words.append(pool.vocab[int(rng.integers(0, len(pool.vocab)))])
    return " ".join(words)


def wiki_doc(pool: Pool, rng: np.random.Generator, size: int) -> tuple[str, str]:
    """(title, wikitext) of an article of about `size` bytes: bold title in the lead, sections, lists, categories."""
    title = make_title(pool, rng)
    parts: list[str] = []
    if rng.random() < 0.6 and pool.blocks:
        parts.append(pool.blocks[int(rng.integers(0, len(pool.blocks)))])
    lead = pool.leads[int(rng.integers(0, len(pool.leads)))] if pool.leads else ""
    bold = f"'''{title}'''"
    lead = _BOLD.sub(lambda _: bold, lead, count=1) if _BOLD.search(lead) else f"{bold} {lead}"
    ncat = int(rng.integers(1, 4))
    trailer = "== References ==\n{{Reflist}}\n\n" + "\n".join(
        pool.categories[i] for i in rng.integers(0, len(pool.categories), ncat).tolist())
    used = sum(len(p) for p in parts) + len(lead) + len(trailer)
    sents = [pool.wiki[i] for i in _pick(rng, pool.wiki_len, max(200, size - used), pool.wiki_mean).tolist()]
    n = len(sents)
    steps = rng.integers(2, 7, n + 2).tolist()
    coins = rng.random(n + 2).tolist()
    cut = min(n, int(rng.integers(2, 6)))
    parts.append(" ".join([lead, *sents[:cut]]))
    used += sum(len(s) + 1 for s in sents[:cut])
    pos, k = cut, 0
    while pos < n and used < size:
        if coins[k] < 0.3:
            parts.append(f"== {pool.headings[int(rng.integers(0, len(pool.headings)))]} ==")
            used += len(parts[-1]) + 2
        elif coins[k] < 0.38 and pool.blocks:
            parts.append(pool.blocks[int(rng.integers(0, len(pool.blocks)))])
            used += len(parts[-1]) + 2
        para = []
        for s in sents[pos : pos + steps[k]]:
            para.append(s)
            used += len(s) + 1
            if used >= size:
                break
        parts.append(" ".join(para))
        pos += steps[k]
        k += 1
    parts.append(trailer)
    return title, "\n\n".join(parts)


_BUILT: dict[tuple[str, int], Pool] = {}


def cached_pool(lang: str, seed: int) -> Pool:
    """`build_pool`, once per process (tests generate several corpora)."""
    if (lang, seed) not in _BUILT:
        _BUILT[(lang, seed)] = build_pool(lang, seed)
    return _BUILT[(lang, seed)]


class Maker:
    """Texts of documents from their recipes; memoizes slot sizes per file."""

    def __init__(self, seed: int, specs: Sequence[FileSpec], pools: dict[str, Pool], plan: Plan) -> None:
        from tasks.text.dedup import MinHasher

        self.seed, self.specs, self.pools, self.plan = seed, specs, pools, plan
        self.hasher = MinHasher()
        self._sizes: dict[int, np.ndarray] = {}

    def size(self, fid: int, slot: int) -> int:
        if fid not in self._sizes:
            if len(self._sizes) > 64:
                self._sizes.clear()
            self._sizes[fid] = slot_sizes(self.seed, self.specs[fid])
        size = int(self._sizes[fid][slot])
        if slot in self.plan.originals.get(fid, ()) or slot in self.plan.roles.get(fid, {}):
            return size  # others regenerate it (originals) or it takes its original's length (copies)
        return int(size * self.plan.scale.get(fid, 1.0))

    def base(self, fid: int, slot: int) -> tuple[str, str]:
        """(title, text) of the document a slot holds when it is no copy."""
        spec = self.specs[fid]
        rng = doc_rng(self.seed, fid, slot)
        pool = self.pools[spec.lang]
        if spec.fmt == "wiki":  # markup shrinks in cleaning: a floor keeps pages past the filters
            return wiki_doc(pool, rng, max(WIKI_MIN, self.size(fid, slot)))
        text = plain_doc(pool, rng, self.size(fid, slot))
        title = make_title(pool, rng) if spec.fmt == "wudao" else ""
        return title, text

    def realize(self, recipe: Recipe) -> str:
        if recipe[0] == "base":
            return self.base(recipe[1], recipe[2])[1]
        _, parent, target, fid, slot = recipe
        return self.near_copy(self.realize(parent), target, doc_rng(self.seed, fid, slot, 7))[0]

    def shingles(self, text: str) -> np.ndarray:
        return np.unique(self.hasher.shingle_hashes(text))

    def jaccard(self, a: str, b: str) -> float:
        return jaccard_sets(self.shingles(a), self.shingles(b))

    def near_copy(self, text: str, target: float, rng: np.random.Generator) -> tuple[str, float]:
        """`text` with word edits until its shingle Jaccard to `text` is within `JACCARD_TOLERANCE` of `target`."""
        a = self.shingles(text)
        words = text.split(" ")
        vocab = self.pools["en"].vocab
        s = 2 * target / (1 + target)  # equal-size sets: J = s / (2 - s), s = surviving shingles
        rate = 1 - s ** (1 / self.hasher.shingle)
        best: tuple[float, str, float] = (9.0, text, 1.0)
        k = max(1, round(rate * len(words)))
        for _ in range(20):
            k = max(1, min(len(words), k))
            out = list(words)
            pos = rng.choice(len(words), size=k, replace=False).tolist()
            kinds = rng.random(k).tolist()
            repl = rng.integers(0, len(vocab), k).tolist()
            for p, kind, r in zip(pos, kinds, repl, strict=True):
                if kind < 0.15:
                    out[p] = ""  # deletion (empty tokens vanish below)
                elif kind < 0.3:
                    out[p] = f"{out[p]} {vocab[r]}"  # insertion
                else:
                    out[p] = vocab[r] if "\n" not in out[p] else f"{vocab[r]}.\n\n{vocab[r]}"
            new = " ".join(filter(None, out))
            j = jaccard_sets(a, self.shingles(new))
            if abs(j - target) < best[0]:
                best = (abs(j - target), new, j)
            if abs(j - target) <= 0.75 * JACCARD_TOLERANCE:
                break
            # 1 - J grows about linearly with the number of edits; step at least one edit toward the target.
            step = round(k * max(0.5, min(2.0, (1 - target) / max(1e-6, 1 - j)))) - k
            k += step if step else (1 if j > target else -1)
        return best[1], best[2]


def jaccard_sets(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two sorted unique uint64 arrays."""
    if not len(a) and not len(b):
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


# ---------------------------------------------------------------- the plan


def plan_files(gb: float, seed: int) -> list[FileSpec]:
    """Output files of each format, sized so each holds at most `FILE_TEXT` bytes of text."""
    total = gb * GB
    shares = [("wiki", "en", total / 3 * (1 - BG_SHARE)), ("wiki", "bg", total / 3 * BG_SHARE),
              ("wudao", "en", total / 3), ("pile", "en", total / 3)]
    specs: list[FileSpec] = []
    mean = float(np.exp(np.log(DOC_MEDIAN) + DOC_SIGMA**2 / 2))
    for fmt, lang, text in shares:
        n_files = max(1, int(np.ceil(text / FILE_TEXT[fmt])))
        for k in range(n_files):
            fid = len(specs)
            per = int(text / n_files)
            n = max(4, int(round(per / mean)))
            if fmt == "wiki":
                base = 1 + fid * WIKI_ID_STRIDE
                stem = f"{lang}wiki-{DATE}-pages-articles-multistream"
                last = base + 2 * (n - 1)
                rel = f"wiki/{stem}.xml.bz2" if n_files == 1 else f"wiki/{stem}{k + 1}-p{base}p{last}.xml.bz2"
            elif fmt == "wudao":
                base, rel = (fid + 1) * WUDAO_ID_STRIDE, f"wudao/part-{k:04d}.json"
            else:
                base, rel = 0, f"pile/{k:02d}.jsonl.zst"
            specs.append(FileSpec(fid, fmt, lang, rel, n, per, base))
    return specs


@dataclass
class Plan:
    roles: dict[int, dict[int, Role]] = field(default_factory=dict)
    """fid -> slot -> role of every planted copy."""
    groups: list[dict[str, Any]] = field(default_factory=list)
    """Each: kind, original (fid, slot), copies [(fid, slot, target)], chain flag."""
    originals: dict[int, set[int]] = field(default_factory=dict)
    """fid -> slots that are the original of a group."""
    scale: dict[int, float] = field(default_factory=dict)
    """fid -> factor on the planned size of its other slots, so that the file still holds its share of text
    (near copies are of long originals: without it the corpus came out ~3 % over)."""


def plan_duplicates(specs: Sequence[FileSpec], seed: int) -> Plan:
    """Which slots are planted copies of which: deterministic in `seed` and the file list only."""
    rng = np.random.default_rng([seed, 0xD0B])
    plan = Plan()
    used: set[tuple[int, int]] = set()
    plain = [s for s in specs if s.fmt != "wiki"]
    wiki = [s for s in specs if s.fmt == "wiki" and s.lang == "en"] or [s for s in specs if s.fmt == "wiki"]
    n_plain = sum(s.n_docs for s in plain)
    weights = np.array([s.n_docs for s in plain], dtype=np.float64)
    weights /= weights.sum()

    sizes = {spec.fid: slot_sizes(seed, spec) for spec in plain}

    def random_slot(pool: Sequence[FileSpec], w: np.ndarray | None = None, fmt: str | None = None,
                    min_bytes: int = 0) -> tuple[int, int] | None:
        for _ in range(50):
            choices = [s for s in pool if fmt is None or s.fmt == fmt]
            if not choices:
                return None
            if w is not None and fmt is None:
                spec = pool[int(rng.choice(len(pool), p=w))]
            else:
                spec = choices[int(rng.integers(0, len(choices)))]
            key = (spec.fid, int(rng.integers(0, spec.n_docs)))
            if key not in used and (not min_bytes or sizes[spec.fid][key[1]] >= min_bytes):
                return key
        return None

    def place(orig: tuple[int, int], pool: Sequence[FileSpec]) -> tuple[int, int] | None:
        """A free slot for a copy of `orig`: near it in its file, elsewhere in its format, or in another format."""
        spec = specs[orig[0]]
        mode = rng.random()
        if mode < 0.3:
            for _ in range(20):
                slot = orig[1] + int(rng.integers(1, 60))
                if slot < spec.n_docs and (spec.fid, slot) not in used:
                    return (spec.fid, slot)
        if mode < 0.65:
            same = [s for s in pool if s.fmt == spec.fmt and s.fid != spec.fid] or [spec]
            return random_slot(same)
        other = [s for s in pool if s.fmt != spec.fmt] or list(pool)
        return random_slot(other)

    def add(kind: str, pool: Sequence[FileSpec], targets: Sequence[float | None], chain: bool = False,
            w: np.ndarray | None = None) -> None:
        # Near copies need a long original: in a short one a single edit moves Jaccard by more than the tolerance.
        orig = random_slot(pool, w, min_bytes=NEAR_MIN_BYTES if kind != "exact" else 0)
        if orig is None:
            return
        used.add(orig)
        plan.originals.setdefault(orig[0], set()).add(orig[1])
        group = len(plan.groups)
        copies: list[tuple[int, int, float | None]] = []
        parent: Recipe = ("base", *orig)
        for t in targets:
            key = place(orig, pool)
            if key is None:
                continue
            used.add(key)
            recipe: Recipe = parent if t is None else ("edit", parent, t, *key)
            plan.roles.setdefault(key[0], {})[key[1]] = Role(recipe, group, orig, orig if chain else None)
            copies.append((*key, t))
            if chain:
                parent = recipe
        plan.groups.append({"kind": kind, "original": orig, "copies": copies, "chain": chain})

    budget = int(PLANT_FRACTION * n_plain)
    planted = 0
    while planted < budget:
        r = rng.random()
        if r < 0.25:
            targets: Sequence[float | None] = [None]
            kind = "exact"
        elif r < 0.55:
            targets, kind = [float(rng.choice(NEAR_TARGETS))], "near"
        elif r < 0.7:
            targets, kind = [float(rng.choice(CONTROL_TARGETS))], "control"
        elif r < 0.9:
            targets = [float(t) for t in rng.choice(NEAR_TARGETS, int(rng.integers(3, 6)))]
            kind = "cluster"
        else:
            targets, kind = [0.9, 0.9], "chain"
        add(kind, plain, targets, chain=kind == "chain", w=weights)
        planted += len(targets)
    n_wiki = sum(s.n_docs for s in wiki)
    for _ in range(max(1, int(PLANT_FRACTION / 2 * n_wiki))):
        add("exact", wiki, [None])
    for spec in plain:
        fixed = sum(int(sizes[spec.fid][slot]) for slot in plan.originals.get(spec.fid, ()))
        fixed += sum(int(sizes[role.original[0]][role.original[1]]) for role in plan.roles.get(spec.fid, {}).values())
        planted = set(plan.originals.get(spec.fid, ())) | set(plan.roles.get(spec.fid, {}))
        free = int(sizes[spec.fid].sum()) - sum(int(sizes[spec.fid][slot]) for slot in planted)
        if free > 0:
            plan.scale[spec.fid] = max(0.5, min(1.5, (spec.text_bytes - fixed) / free))
    return plan


# ---------------------------------------------------------------- writers

_POOLS: dict[str, Pool] = {}
_SPECS: list[FileSpec] = []
_PLAN = Plan()
_SEED = 0


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _base36(digest: bytes) -> str:
    n, out = int.from_bytes(digest, "big"), []
    while n:
        n, r = divmod(n, 36)
        out.append("0123456789abcdefghijklmnopqrstuvwxyz"[r])
    return "".join(reversed(out)) or "0"


def _page_xml(title: str, ns: int, page_id: int, text: str, rng_val: int, redirect: str | None = None) -> bytes:
    body = text.encode("utf-8")
    redirect_xml = f'    <redirect title="{_escape(redirect)}" />\n' if redirect is not None else ""
    rev = page_id * 7 + 1_000_000_000
    ts = f"2025-{1 + rng_val % 12:02d}-{1 + rng_val % 28:02d}T{rng_val % 24:02d}:{rng_val % 60:02d}:{rng_val % 59:02d}Z"
    return (
        f"  <page>\n    <title>{_escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>\n{redirect_xml}"
        f"    <revision>\n      <id>{rev}</id>\n      <parentid>{rev - 3}</parentid>\n"
        f"      <timestamp>{ts}</timestamp>\n"
        f"      <contributor>\n        <username>Editor{rng_val % 9973}</username>\n"
        f"        <id>{rng_val % 99991}</id>\n"
        f"      </contributor>\n      <comment>copyedit</comment>\n      <model>wikitext</model>\n"
        f"      <format>text/x-wiki</format>\n"
        f'      <text bytes="{len(body)}" xml:space="preserve">{_escape(text)}</text>\n'
        f"      <sha1>{_base36(hashlib.sha1(body).digest())}</sha1>\n    </revision>\n  </page>\n"
    ).encode()


class Result:
    """What a worker reports for one file."""

    def __init__(self, spec: FileSpec) -> None:
        self.spec = spec
        self.docs = 0
        self.text_bytes = 0
        self.disk_bytes = 0
        self.raw_bytes = 0
        """Bytes before compression (XML, JSON lines): what the compression ratio divides."""
        self.copies: dict[int, dict[str, Any]] = {}
        """slot -> measured facts of a planted copy (jaccard, identities)."""
        self.seconds = 0.0


def _doc_text(maker: Maker, spec: FileSpec, slot: int, res: Result) -> tuple[str, str]:
    role = _PLAN.roles.get(spec.fid, {}).get(slot)
    title, text = maker.base(spec.fid, slot) if role is None or spec.fmt == "wiki" else ("", "")
    if role is None:
        return title, text
    orig_title, orig_text = maker.base(*role.original)
    if spec.fmt == "wiki":
        text = orig_text
        jac, parent_j = 1.0, None
    elif role.recipe[0] == "base":
        text, jac, parent_j = orig_text, 1.0, None
        title = make_title(maker.pools[spec.lang], doc_rng(_SEED, spec.fid, slot, 3))
    else:
        parent_text = maker.realize(role.recipe[1])
        text, jac = maker.near_copy(parent_text, role.recipe[2], doc_rng(_SEED, spec.fid, slot, 7))
        parent_j = maker.jaccard(orig_text, text) if role.recipe[1][0] == "edit" else None
        title = make_title(maker.pools[spec.lang], doc_rng(_SEED, spec.fid, slot, 3))
    res.copies[slot] = {"jaccard": round(jac, 4), "jaccard_to_original": None if parent_j is None else
                        round(parent_j, 4), "original_title": orig_title, "title": title}
    return title, text


def write_file(fid: int) -> Result:
    spec = _SPECS[fid]
    started = time.perf_counter()
    maker = Maker(_SEED, _SPECS, _POOLS, _PLAN)
    res = Result(spec)
    from storage.atomic import atomic_path

    target = Path(_OUT) / spec.rel
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        if spec.fmt == "wiki":
            _write_wiki(spec, maker, fh, res, target)
        elif spec.fmt == "wudao":
            _write_wudao(spec, maker, fh, res)
        else:
            _write_pile(spec, maker, fh, res)
    target.chmod(0o644)  # mkstemp's 0600 would make the corpus unreadable to other users
    res.disk_bytes = target.stat().st_size
    res.seconds = time.perf_counter() - started
    return res


_OUT = ""


def _write_wiki(spec: FileSpec, maker: Maker, fh: BinaryIO, res: Result, target: Path) -> None:
    from storage.atomic import atomic_path

    pool = maker.pools[spec.lang]
    extras = np.random.default_rng([_SEED, spec.fid, 0xE7]).random(spec.n_docs).tolist()
    index_path = target.with_name(target.name.removesuffix(".xml.bz2") + "-index.txt.bz2")
    offset = fh.write(bz2.compress(pool.header, BZ2_LEVEL))
    res.raw_bytes += len(pool.header) + len(b"</mediawiki>\n")
    with atomic_path(index_path) as itmp, bz2.open(itmp, "wt", encoding="utf-8", compresslevel=BZ2_LEVEL) as index:
        batch: list[bytes] = []
        entries: list[str] = []

        def flush() -> None:
            nonlocal offset, batch, entries
            if batch:
                raw = b"".join(batch)
                res.raw_bytes += len(raw)
                data = bz2.compress(raw, BZ2_LEVEL)
                index.write("".join(f"{offset}:{e}\n" for e in entries))
                offset += fh.write(data)
                batch, entries = [], []

        for slot in range(spec.n_docs):
            title, text = _doc_text(maker, spec, slot, res)
            page_id = spec.id_base + 2 * slot
            batch.append(_page_xml(title, 0, page_id, text, page_id * 2654435761 % 2**31))
            entries.append(f"{page_id}:{title}")
            res.docs += 1
            res.text_bytes += len(text.encode("utf-8"))
            if extras[slot] < 0.04 and slot + 1 < spec.n_docs:  # not after the last: the name's page range
                xid = page_id + 1
                if extras[slot] < 0.03:
                    t, ns, body, redir = f"{title} ({xid})", 0, f"#REDIRECT [[{title}]]", title
                else:
                    t, ns, body, redir = f"Talk:{title}", 1, f"== Sources ==\nIs this sourced? ~~~~ {xid}", None
                batch.append(_page_xml(t, ns, xid, body, xid, redir))
                entries.append(f"{xid}:{t}")
            if len(batch) >= PAGES_PER_STREAM:
                flush()
        flush()
    index_path.chmod(0o644)
    fh.write(bz2.compress(b"</mediawiki>\n", BZ2_LEVEL))


def _write_wudao(spec: FileSpec, maker: Maker, fh: BinaryIO, res: Result) -> None:
    types = np.random.default_rng([_SEED, spec.fid, 0x7A]).integers(0, len(WUDAO_TYPES), spec.n_docs).tolist()
    buf: list[str] = ["["]
    for slot in range(spec.n_docs):
        title, text = _doc_text(maker, spec, slot, res)
        rec = {"id": spec.id_base + slot, "dataType": WUDAO_TYPES[types[slot]], "title": title, "content": text}
        buf.append(("\n" if slot == 0 else ",\n") + json.dumps(rec, ensure_ascii=False))
        res.docs += 1
        res.text_bytes += len(text.encode("utf-8"))
        if len(buf) >= 256:
            res.raw_bytes += fh.write("".join(buf).encode("utf-8"))
            buf = []
    buf.append("\n]\n")
    res.raw_bytes += fh.write("".join(buf).encode("utf-8"))


def _write_pile(spec: FileSpec, maker: Maker, fh: BinaryIO, res: Result) -> None:
    names = [n for n, _ in PILE_SETS]
    p = np.array([w for _, w in PILE_SETS])
    sets = np.random.default_rng([_SEED, spec.fid, 0x91]).choice(len(names), spec.n_docs, p=p / p.sum()).tolist()
    with zstandard.ZstdCompressor(level=3).stream_writer(fh, closefd=False) as z:
        buf: list[str] = []
        for slot in range(spec.n_docs):
            _, text = _doc_text(maker, spec, slot, res)
            buf.append(json.dumps({"text": text, "meta": {"pile_set_name": names[sets[slot]]}}) + "\n")
            res.docs += 1
            res.text_bytes += len(text.encode("utf-8"))
            if len(buf) >= 256:
                res.raw_bytes += z.write("".join(buf).encode("utf-8"))
                buf = []
        res.raw_bytes += z.write("".join(buf).encode("utf-8"))


def _init(out: str, seed: int, specs: list[FileSpec], plan: Plan, pools: dict[str, Pool]) -> None:
    global _OUT, _SEED, _SPECS, _PLAN, _POOLS
    _OUT, _SEED, _SPECS, _PLAN, _POOLS = out, seed, specs, plan, pools


# ---------------------------------------------------------------- the run


def doc_identity(spec: FileSpec, slot: int, title: str = "") -> dict[str, Any]:
    """How the truth names a document, independent of Kiln's id scheme."""
    if spec.fmt == "wudao":
        return {"fmt": "wudao", "file": spec.rel, "index": slot, "id": spec.id_base + slot}
    if spec.fmt == "pile":
        return {"fmt": "pile", "file": spec.rel, "line": slot + 1}
    return {"fmt": "wiki", "file": spec.rel, "page_id": spec.id_base + 2 * slot, "title": title}


def _check_out(out: Path) -> Path:
    from kiln.errors import KilnError

    out = out.resolve()
    if out == REPO or REPO in out.parents:
        raise KilnError(f"{out}: inside the repository {REPO}; write the corpus elsewhere (e.g. /work/scale/gen)")
    return out


def generate(out: Path, gb: float, workers: int = 2, seed: int = 0) -> dict[str, Any]:
    """Write the corpus and ``truth.json`` under `out`; returns the summary (also in truth.json)."""
    from kiln.errors import KilnError

    if gb <= 0 or workers < 1:
        raise KilnError(f"scale_corpus: --gb must be > 0 and --workers >= 1, got {gb}, {workers}")
    out = _check_out(Path(out))
    started = time.perf_counter()
    pools = {lang: cached_pool(lang, seed) for lang in SAMPLES}
    specs = plan_files(gb, seed)
    plan = plan_duplicates(specs, seed)
    setup = time.perf_counter() - started
    _log(f"pools and plan ready in {setup:.1f}s: {len(specs)} files, {len(plan.groups)} planted groups")
    order = sorted(range(len(specs)), key=lambda i: -specs[i].text_bytes)
    results: dict[int, Result] = {}
    done_bytes = 0
    args = (str(out), seed, specs, plan, pools)
    gen_started = time.perf_counter()
    if workers == 1:
        _init(*args)
        it: Iterator[Result] = (write_file(i) for i in order)
        for res in it:
            done_bytes = _progress(results, res, done_bytes, len(specs), gen_started)
    else:
        ctx = multiprocessing.get_context("fork")  # workers inherit the pools (copy-on-write), no rebuild
        with ctx.Pool(workers, initializer=_init, initargs=args) as mp_pool:
            for res in mp_pool.imap_unordered(write_file, order):
                done_bytes = _progress(results, res, done_bytes, len(specs), gen_started)
    wall = time.perf_counter() - started
    summary = _summary(out, specs, results, pools, gb, workers, seed, wall, setup)
    groups = _truth_groups(specs, plan, results)
    summary["groups"] = dict(Counter(g["kind"] for g in groups))
    # truth.json is a pure function of (gb, seed): the timings stay out of it. They go to _run.json
    # ("_": Kiln's input discovery skips it).
    timing = ("out", "workers", "wall_s", "setup_s", "mb_per_s")
    truth = {"summary": {k: v for k, v in summary.items() if k not in timing}, "groups": groups}
    from storage.atomic import atomic_write_text

    atomic_write_text(out / "truth.json", json.dumps(truth, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out / "_run.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    for name in ("truth.json", "_run.json"):
        (out / name).chmod(0o644)
    _log(f"done: {summary['text_bytes'] / GB:.3f} GB text in {wall:.1f}s ({summary['mb_per_s']:.1f} MB/s)")
    return summary


def _progress(results: dict[int, Result], res: Result, done: int, n: int, started: float) -> int:
    results[res.spec.fid] = res
    done += res.text_bytes
    elapsed = time.perf_counter() - started
    _log(f"[{len(results)}/{n}] {res.spec.rel}: {res.docs} docs, {res.text_bytes / 1e6:.0f} MB text in "
         f"{res.seconds:.1f}s; total {done / GB:.3f} GB, {done / 1e6 / max(elapsed, 1e-9):.1f} MB/s")
    return done


def _log(msg: str) -> None:
    print(f"scale_corpus: {msg}", file=sys.stderr, flush=True)


def _truth_groups(specs: Sequence[FileSpec], plan: Plan, results: dict[int, Result]) -> list[dict[str, Any]]:
    groups = []
    for g in plan.groups:
        ofid, oslot = g["original"]
        copies = []
        orig_title = ""
        for fid, slot, target in g["copies"]:
            facts = results[fid].copies[slot]
            orig_title = facts["original_title"]
            entry: dict[str, Any] = {"doc": doc_identity(specs[fid], slot, facts["title"]), "jaccard": facts["jaccard"]}
            if target is not None:
                entry["target"] = target
            if facts["jaccard_to_original"] is not None:
                entry["parent"] = len(copies) - 1
                entry["jaccard_to_original"] = facts["jaccard_to_original"]
            copies.append(entry)
        if copies:
            groups.append({"kind": g["kind"], "original": doc_identity(specs[ofid], oslot, orig_title),
                           "copies": copies})
    return groups


def _summary(out: Path, specs: Sequence[FileSpec], results: dict[int, Result], pools: dict[str, Pool], gb: float,
             workers: int, seed: int, wall: float, setup: float) -> dict[str, Any]:
    by_fmt: dict[str, dict[str, float]] = {}
    for res in results.values():
        key = res.spec.fmt if res.spec.fmt != "wiki" else f"wiki-{res.spec.lang}"
        d = by_fmt.setdefault(key, {"files": 0, "docs": 0, "text_bytes": 0, "raw_bytes": 0, "disk_bytes": 0})
        d["files"] += 1
        d["docs"] += res.docs
        d["text_bytes"] += res.text_bytes
        d["disk_bytes"] += res.disk_bytes
        d["raw_bytes"] += res.raw_bytes
    for d in by_fmt.values():
        d["ratio"] = round(d["raw_bytes"] / max(1, d["disk_bytes"]), 3)  # uncompressed file / compressed file
    text = sum(r.text_bytes for r in results.values())
    en = pools["en"]
    sample = "".join(json.dumps({"text": t, "meta": {"pile_set_name": "Wikipedia (en)"}}) + "\n"
                     for t in en.original_plain).encode()
    copies = sum(len(res.copies) for res in results.values())
    return {
        "out": str(out), "gb": gb, "workers": workers, "seed": seed,
        "text_bytes": text, "docs": sum(r.docs for r in results.values()), "planted_copies": copies,
        "disk_bytes": sum(r.disk_bytes for r in results.values()),
        "wall_s": round(wall, 2), "setup_s": round(setup, 2), "mb_per_s": round(text / 1e6 / max(wall, 1e-9), 2),
        "formats": dict(sorted(by_fmt.items())),  # not in the order files finished
        "sample_ratio": {
            "enwiki_xml_bz2": round(en.original_xml / en.original_xml_bz2, 3),
            "enwiki_plain_jsonl_zstd3": round(len(sample) / len(zstandard.ZstdCompressor(level=3).compress(sample)), 3),
        },
        "bz2_level": BZ2_LEVEL,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (outside the repository)")
    parser.add_argument("--gb", type=float, default=1.0, help="text size in GB (10**9 bytes)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from kiln.errors import KilnError

    try:
        summary = generate(args.out, args.gb, args.workers, args.seed)
    except KilnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
