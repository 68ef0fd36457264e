"""Data-loader throughput against the training step it feeds: is the loader ever the bottleneck?

    python benchmarks/loader_throughput.py [--tokens 50_000_000] [--seq-len 2048] [--batch 8]

Writes synthetic token shards (uint32 ids, like a 128k vocab), then times
`trainer.data.TokenLoader` producing shuffled packed micro-batches from the
memory-mapped files (cold pages: the shards are new files read through the page
cache, not held as arrays), with and without per-source mixing. The step time it is
compared with is Kiln's own measured H100 step for the same batch shape
(benchmarks/results/train_throughput_h100.json: the 1b preset, micro-batch 8, seq 2048).
Results: benchmarks/results/loader_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storage.token_shards import TokenShardWriter  # noqa: E402
from trainer.data import PackedTokenDataset, TokenLoader  # noqa: E402


def write_shards(root: Path, tokens: int, shards: int = 4) -> None:
    """`shards` single-source shards of random documents (sources a, b alternating)."""
    rng = np.random.default_rng(0)
    for i in range(shards):
        writer = TokenShardWriter(root / f"{i:05d}", vocab_size=128256, eos_id=2)
        left = tokens // shards
        while left > 0:
            n = int(min(left, rng.integers(200, 4000)))
            writer.add(rng.integers(3, 128256, size=n), source="ab"[i % 2])
            left -= n + 1
        writer.close()


def time_loader(loader: TokenLoader, batches: int) -> float:
    """Seconds per batch over `batches` batches, after one warm-up batch."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return (time.perf_counter() - start) / batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=50_000_000)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/loader_throughput.json"))
    args = p.parse_args()
    h100 = json.loads((REPO / "benchmarks/results/train_throughput_h100.json").read_text())
    tok_s = h100["kiln"]["after_head_compile_standalone"]["kiln_1b_8"]["results"][0]["tokens_per_s"]
    step_s = args.batch * args.seq_len / tok_s
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_shards(Path(tmp), args.tokens)
        dataset = PackedTokenDataset(tmp, args.seq_len)
        for name, weights in (("natural", None), ("mixed a:0.7 b:0.3", {"a": 0.7, "b": 0.3})):
            loader = TokenLoader(dataset, args.batch, seed=0, source_weights=weights)
            per_batch = time_loader(loader, args.batches)
            rows.append({"variant": name, "s_per_batch": per_batch, "samples_per_s": args.batch / per_batch,
                         "fraction_of_h100_1b_step": per_batch / step_s})
    out = {"benchmark": "loader_throughput", "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": platform.processor() or platform.machine(), "tokens": args.tokens, "seq_len": args.seq_len,
           "micro_batch": args.batch, "h100_1b_step_s": step_s, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"H100 1b step (mb {args.batch} x {args.seq_len}): {step_s * 1000:.1f} ms")
    for r in rows:
        print(f"{r['variant']:<20} {r['samples_per_s']:>10,.0f} samples/s  {r['s_per_batch'] * 1000:7.3f} ms/batch"
              f"  = {100 * r['fraction_of_h100_1b_step']:.2f} % of a step")


if __name__ == "__main__":
    main()
