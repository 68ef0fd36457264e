#!/usr/bin/env python3
"""Peak memory of one near-dedup partition job (`bucket_partition`) as its candidate pairs grow.

    python -m benchmarks.dedup_memory --work /tmp/dedup-memory --docs 150000 --shared 0 0.3 1

At 10 GB of the scale corpus, near-dedup candidates grew faster than the documents (0.26 →
0.98 per document from 1 to 10 GB), and the partition jobs, which then read the sketches
of all their candidates at once, peaked at 1.3 GB. Verification now reads one batch of
`VERIFY_BATCH` pairs at a time. This measures both ways on the same partition, each in a
fresh process (``wait4``'s peak RSS): the documents stay fixed, and the share of them in
large buckets (unrelated documents that collide in one LSH band, as on that corpus) sets
the candidate count, from none to ~8 per document (`PAIR_FANOUT`).

The fingerprints are synthetic (random signatures and sketches; the shared ones copy a
bucket leader's first band), written by the real `FingerprintWriter`: memory depends on the
record and candidate counts, not on the text. Random sketches make every candidate fail
verification, which is the case that grew. Results: ``benchmarks/results/dedup_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.text import dedup_steps  # noqa: E402
from tasks.text.dedup import sketch_jaccard  # noqa: E402
from tasks.text.dedup_steps import DedupSettings, FingerprintWriter, SketchReader  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "dedup_memory.json"
BUCKET = 64
"""Documents per shared bucket: each member past the 8th meets the first 8 (the fanout)."""
UNITS = 4


def write_units(work: Path, docs: int, shared: float, s: DedupSettings, seed: int = 0) -> list[str]:
    """`UNITS` fingerprint dirs of ``docs / UNITS`` documents; a `shared` fraction of them in buckets of `BUCKET`."""
    rng = np.random.default_rng(seed)
    _, rows = s.bands_rows
    sigs = rng.integers(0, 2**32 - 1, size=(docs, s.num_perm), dtype=np.uint32)
    members = rng.permutation(docs)[: int(docs * shared)]
    leaders = members[:: BUCKET]
    sigs[members, :rows] = sigs[np.repeat(leaders, BUCKET)[: len(members)], :rows]
    dirs = []
    per_unit = docs // UNITS
    for u in range(UNITS):
        out = work / f"unit-{u:03d}"
        writer = FingerprintWriter(u, out, s)
        for lo in range(u * per_unit, (u + 1) * per_unit, 4096):
            hi = min(lo + 4096, (u + 1) * per_unit)
            sketches = np.sort(rng.integers(0, 2**32 - 2, size=(hi - lo, s.sketch_size), dtype=np.uint32), axis=1)
            writer.add(None, sigs[lo:hi], sketches)
        writer.close()
        dirs.append(str(out))
    return dirs


def verified_all_at_once(candidates: np.ndarray, sketches: SketchReader, threshold: float) -> np.ndarray:
    """Verification as it was before 2c947a8: every candidate's sketch read into one table first."""
    if not len(candidates):
        return candidates
    nodes, inverse = np.unique(np.concatenate([candidates["a"], candidates["b"]]), return_inverse=True)
    table = sketches.read(nodes)
    ia, ib = inverse[: len(candidates)], inverse[len(candidates):]
    similarity = np.empty(len(candidates), dtype=np.float64)
    for lo in range(0, len(candidates), 8192):
        similarity[lo:lo + 8192] = sketch_jaccard(table[ia[lo:lo + 8192]], table[ib[lo:lo + 8192]])
    return candidates[similarity >= threshold]


def child(dirs: list[str], out: str, way: str) -> None:
    """One `bucket_partition` of partition 0, in this process; prints its info."""
    if way == "all-at-once":
        dedup_steps.verified = verified_all_at_once  # the module-level name bucket_partition calls
    s = DedupSettings(exact=False, near=True, partitions=1)
    print(json.dumps(dedup_steps.bucket_partition(0, dirs, out, s)))


def measure(dirs: list[str], work: Path, way: str) -> dict[str, Any]:
    """`child` in a fresh interpreter: its info, CPU and peak RSS from ``wait4``."""
    cmd = [sys.executable, "-m", "benchmarks.dedup_memory", "--child", way, "--work", str(work), "--dirs", *dirs]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{way} partition job failed")
    info = json.loads(out.strip().splitlines()[-1])
    return {"candidates": info["candidates"], "edges": info["edges"],
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied per size)")
    parser.add_argument("--docs", type=int, default=150_000)
    parser.add_argument("--shared", type=float, nargs="+", default=[0.0, 0.3, 1.0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", choices=["batched", "all-at-once"], help=argparse.SUPPRESS)
    parser.add_argument("--dirs", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dirs, str(args.work), args.child)
        return
    s = DedupSettings(exact=False, near=True, partitions=1)
    rows = []
    for shared in args.shared:
        shutil.rmtree(args.work, ignore_errors=True)
        args.work.mkdir(parents=True)
        dirs = write_units(args.work / "fp", args.docs, shared, s)
        row: dict[str, Any] = {"docs": args.docs, "shared": shared}
        for way in ("batched", "all-at-once"):
            row[way] = measure(dirs, args.work, way)
        row["candidates_per_doc"] = round(row["batched"]["candidates"] / args.docs, 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    shutil.rmtree(args.work, ignore_errors=True)
    result = {"command": " ".join(["python -m benchmarks.dedup_memory", *sys.argv[1:]]),
              "verify_batch": dedup_steps.VERIFY_BATCH, "sketch_size": s.sketch_size, "bands_rows": s.bands_rows,
              "rows": rows, "date": time.strftime("%Y-%m-%d")}
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
