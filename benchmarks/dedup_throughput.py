"""Throughput of the text readers, quality filters and dedup hashing, one process, one core.

    python benchmarks/dedup_throughput.py [--repeat 5] [--out results.json]

Data: the real enwiki sample shipped in the gensim wheel (106 articles after `clean_wikitext`,
~2.9 MB of text), plus generated WuDao (Chinese, JSON array) and Pile (.jsonl.zst) files in a
temporary directory. Each row is timed `--repeat` times, interleaved, and the best wall time is
reported (noise only ever adds time), with CPU time beside it: on a shared machine the steadier figure.

Rows:
- filters: `apply_filters` with the defaults on every article.
- minhash: `MinHasher.signature` (vectorized shingle hashing) and, for comparison, the same
  permutations over shingles hashed one by one with `hashlib.blake2b` (the obvious design).
- exact hash: `exact_hash` (normalize + blake2b).
- lsh: `near_duplicate_clusters` over 20,000 random signatures (the single-place step).
- readers: `iter_wudao` vs `json.load` of the whole file; `iter_pile` vs a bare
  `zstandard.stream_reader` + `json.loads` loop (which cannot see truncation).
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import importlib.resources
import io
import json
import random
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.text.dedup import MinHasher, exact_hash, near_duplicate_clusters, normalize_for_dedup  # noqa: E402
from tasks.text.filters import FilterConfig, apply_filters  # noqa: E402
from tasks.text.sources import iter_pile, iter_wudao  # noqa: E402
from tasks.text.wikitext import clean_wikitext  # noqa: E402

SAMPLE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def articles() -> list[str]:
    """Cleaned text of the sample's main-namespace, non-redirect pages."""
    path = Path(str(importlib.resources.files("gensim").joinpath(SAMPLE)))
    out = []
    with bz2.open(path) as f:
        for _, el in ET.iterparse(f):
            if el.tag.rsplit("}", 1)[-1] == "page":
                if el.findtext("{*}ns") == "0" and el.find("{*}redirect") is None:
                    out.append(clean_wikitext(el.findtext("{*}revision/{*}text") or ""))
                el.clear()
    return out


def blake2b_signature(hasher: MinHasher, text: str) -> np.ndarray:
    """The baseline: word 5-gram shingles hashed one Python call each, then the same permutations."""
    words = normalize_for_dedup(text).split()
    k = min(hasher.shingle, len(words))
    shingles = {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)} if k else set()
    hashes = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")
                       for s in shingles], dtype=np.uint64)
    return hasher.signature_of_hashes(hashes)


def write_inputs(root: Path) -> tuple[Path, Path]:
    rng = random.Random(0)
    hanzi = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出"
             "就分对成会可主发年动同工也能下过子说产种面而方后多定")
    records = [
        {"id": i, "dataType": "百科", "title": f"标题{i}",
         "content": "".join(rng.choices(hanzi, k=rng.randint(200, 3000)))}
        for i in range(10_000)
    ]
    wudao = root / "wudao.json"
    wudao.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    vocab = "the of and to in a is that for it as was with be by on not he this are or his from at which"
    lines = [json.dumps({"text": " ".join(rng.choices(vocab.split(), k=rng.randint(100, 2000))),
                         "meta": {"pile_set_name": "Pile-CC"}}) + "\n" for _ in range(10_000)]
    pile = root / "00.jsonl.zst"
    pile.write_bytes(zstandard.ZstdCompressor(level=3, write_checksum=True).compress("".join(lines).encode()))
    return wudao, pile


def baseline_pile(path: Path) -> int:
    with path.open("rb") as f:
        lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        return sum(1 for line in lines if json.loads(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    texts = articles()
    n_chars = sum(map(len, texts))
    hasher, cfg = MinHasher(), FilterConfig()
    apply_filters(texts[0], cfg)  # build the lookup tables outside the timings
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, (20_000, 128), dtype=np.uint64).astype(np.uint32)
    with tempfile.TemporaryDirectory() as tmp:
        wudao, pile = write_inputs(Path(tmp))
        wudao_bytes = wudao.stat().st_size
        pile_bytes = len(zstandard.ZstdDecompressor().decompress(pile.read_bytes()))
        rows: dict[str, tuple[Callable[[], object], int, int]] = {  # name: (work, items, bytes)
            "filters (apply_filters, defaults)": (lambda: [apply_filters(t, cfg) for t in texts], len(texts), n_chars),
            "minhash (vectorized shingles)": (lambda: [hasher.signature(t) for t in texts], len(texts), n_chars),
            "minhash (blake2b per shingle)": (lambda: [blake2b_signature(hasher, t) for t in texts], len(texts),
                                              n_chars),
            "exact_hash": (lambda: [exact_hash(t) for t in texts], len(texts), n_chars),
            "lsh clusters (20k signatures)": (lambda: near_duplicate_clusters(enumerate(sigs)), len(sigs), 0),
            "iter_wudao (streaming)": (lambda: sum(1 for _ in iter_wudao(wudao)), 10_000, wudao_bytes),
            "json.load (whole file)": (lambda: len(json.loads(wudao.read_text(encoding="utf-8"))), 10_000,
                                       wudao_bytes),
            "iter_pile (.jsonl.zst)": (lambda: sum(1 for _ in iter_pile(pile)), 10_000, pile_bytes),
            "stream_reader + json.loads": (lambda: baseline_pile(pile), 10_000, pile_bytes),
        }
        best = {name: float("inf") for name in rows}
        cpu = dict(best)
        for _ in range(args.repeat):
            for name, (work, _, _) in rows.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                work()
                best[name] = min(best[name], time.perf_counter() - start)
                cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    results = []
    print("| row | wall s | items/s | MB/s | cpu s | MB/s by cpu |\n|---|---:|---:|---:|---:|---:|")
    for name, (_, items, size) in rows.items():
        secs = best[name]
        results.append({"row": name, "seconds": secs, "cpu_seconds": cpu[name], "items_per_s": items / secs,
                        "mb_per_s": size / secs / 1e6})
        print(f"| {name} | {secs:.3f} | {items / secs:,.0f} | {size / secs / 1e6:.1f} | {cpu[name]:.3f} "
              f"| {size / cpu[name] / 1e6:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
