"""Tokenizer training memory: peak RSS and time as the corpus grows, bounded sample vs. unbounded.

    python benchmarks/tokenizer_memory.py                   # ~5 min on 2 cores
    python benchmarks/tokenizer_memory.py --scales 1 4 16   # quicker

Corpora are the real enwiki sample from the gensim wheel repeated `scale` times, the
lines of every copy shuffled with its own seed (same vocabulary, different documents),
written as a "clean" artifact of fixed-size shards (as the clean stage writes them). For
each scale the tokenizer stage (8000-piece BPE) runs in a fresh process twice:

- ``bounded``: ``input_sentence_size = --bound`` (the reservoir keeps at most that many
  sentences; SentencePiece's own cap is a second guard) — memory should go flat once
  the corpus has more sentences than the bound;
- ``unbounded``: ``input_sentence_size`` larger than the corpus, i.e. what training on
  everything (SentencePiece's default behaviour) costs.

Peak RSS is the child process's ``ru_maxrss``; the RSS after imports is reported beside
it. Results: ``benchmarks/results/tokenizer_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "tokenizer_memory.json"
UNBOUNDED = 1 << 40


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_corpus(root: Path, scale: int, copies_per_shard: int) -> dict[str, Any]:
    """A docs artifact of `scale` line-shuffled copies of the enwiki sample; returns its ref and size."""
    from storage.documents import doc_shard_name, write_documents
    from storage.store import Build, open_store
    from tests.tasks.tokenizer_fixtures import load_enwiki_docs

    base = load_enwiki_docs()
    store = open_store(root)
    chars = 0

    def write(build: Build) -> None:
        nonlocal chars
        # Shards of fixed size, as the clean stage writes them (docs_per_shard): more data = more shards.
        per_shard = copies_per_shard
        for s in range(0, scale, per_shard):
            docs = []
            for copy in range(s, min(scale, s + per_shard)):
                rng = random.Random(copy)
                for d in base:
                    lines = d["text"].split("\n")
                    rng.shuffle(lines)
                    docs.append({**d, "id": f"{d['id']}-c{copy}", "text": "\n".join(lines)})
            chars += sum(len(d["text"]) for d in docs)
            write_documents(build.dir / doc_shard_name(0, s // per_shard), docs)

    ref = store.produce("clean", "bench-memory", {"scale": scale}, [], write)
    parquet_bytes = sum(p.stat().st_size for p in ref.path.rglob("*.parquet"))
    return {"docs": ref.__dict__, "chars": chars, "parquet_bytes": parquet_bytes}


def run_child(docs: dict[str, Any], bound: int, vocab: int, store_root: Path) -> dict[str, Any]:
    """In a fresh process: train once, report peak RSS and the stage's timings."""
    from storage.store import ArtifactRef, open_store
    from tasks.tokenizer import TokenizerConfig, train_tokenizer

    rss_after_imports = _rss_mb()
    store = open_store(store_root)
    started = time.perf_counter()
    ref = train_tokenizer(ArtifactRef(**docs), TokenizerConfig(vocab_size=vocab, input_sentence_size=bound), store)
    wall = time.perf_counter() - started
    manifest = store.manifest(ref)
    sample = json.loads((ref.path / "tokenizer_meta.json").read_text())["sample"]
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mb": round(rss_after_imports, 1),
        "wall_s": round(wall, 2),
        "timings_s": manifest["timings_s"],
        "sentences_seen": sample["sentences_seen"],
        "sentences_sampled": sample["sentences_sampled"],
    }


def _spawn(docs: dict[str, Any], bound: int, vocab: int, work: Path) -> dict[str, Any]:
    store_root = work / "tok-store"
    shutil.rmtree(store_root, ignore_errors=True)
    args = json.dumps({"docs": docs, "bound": bound, "vocab": vocab, "store": str(store_root)})
    proc = subprocess.run([sys.executable, __file__, "--child", args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    ap.add_argument("--bound", type=int, default=50_000, help="input_sentence_size of the bounded runs")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--copies-per-shard", type=int, default=2, help="sample copies per Parquet shard (~5 MB)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        a = json.loads(args.child)
        print(json.dumps(run_child(a["docs"], a["bound"], a["vocab"], Path(a["store"]))))
        return
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-tokmem-"))
    rows = []
    try:
        print(f"{'scale':>5} {'M chars':>8} {'sentences':>10} {'mode':>9} {'sampled':>8} "
              f"{'peak RSS MB':>11} {'sample s':>8} {'train s':>8}")
        for scale in args.scales:
            corpus = make_corpus(work / f"docs-{scale}", scale, args.copies_per_shard)
            for mode, bound in (("bounded", args.bound), ("unbounded", UNBOUNDED)):
                r = _spawn(corpus["docs"], bound, args.vocab, work)
                rows.append({"scale": scale, "mode": mode, "bound": bound if bound != UNBOUNDED else None,
                             "chars": corpus["chars"], "parquet_bytes": corpus["parquet_bytes"], **r})
                _print_row(rows[-1])
            shutil.rmtree(work / f"docs-{scale}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "config": {"vocab_size": args.vocab, "model_type": "bpe", "bound": args.bound},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def _print_row(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"{r['scale']:>5} {r['mode']:>9} ERROR {r['error']}")
        return
    t = r["timings_s"]
    print(f"{r['scale']:>5} {r['chars'] / 1e6:>8.1f} {r['sentences_seen']:>10,d} {r['mode']:>9} "
          f"{r['sentences_sampled']:>8,d} {r['peak_rss_mb']:>11.0f} {t['sample']:>8.2f} {t['train']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
