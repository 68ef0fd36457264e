"""Near dedup side by side (issue 15): datatrove 0.10.1's four-stage MinHash vs Kiln's dedup steps, same documents.

    python -m benchmarks.baselines.datatrove_minhash --docs 'DIR/docs/*.parquet' --work W --tool kiln --out r.json

writes ``r.json`` (times, CPU, memory, drop counts) and ``r.kept_ids.txt`` beside it (one id a
line, input order for Kiln, datatrove's output order for datatrove). The lead's benchmark calls
`measure`, which runs that command in a subprocess and takes the CPU of its whole process tree
from ``os.wait4``.

Why a subprocess per tool: both tools use worker processes, and a process's CPU is only
counted in its parent's ``RUSAGE_CHILDREN`` once the parent has waited for it. ``wait4`` on
the CLI process returns its own usage plus that of every descendant it reaped, so the CLI
makes sure there is nothing it did not reap:
- datatrove's `LocalPipelineExecutor` starts its pools with ``forkserver``: pool workers are
  children of the fork server, not of us, and the fork server lives until interpreter exit,
  when it would be orphaned, taking its workers' CPU with it. `run_datatrove` stops it
  explicitly (``_stop`` waits for it, after it has reaped its workers).
- the CLI marks itself a child subreaper (Linux ``prctl``), so any orphaned descendant is
  reparented to it, and reaps those before it exits (``orphans_reaped`` in the result).
``peak_rss_gb`` is the largest ``ru_maxrss`` of any single process in the tree (Linux reports the
maximum over reaped children, not a sum): the memory of one worker, not of the whole tree.

The datatrove side is wired as its ``examples/minhash_deduplication.py`` does: one
`MinhashConfig` for all four stages; signatures and filter with the same reader and the same
task count (the filter's ``.remove`` files are by signature task and document index in that
task); buckets with ``tasks = num_buckets``; cluster with one task. What is matched to Kiln and
what cannot be:
- 16 buckets x 8 hashes = Kiln's 16 bands x 8 rows of 128 permutations; word 5-grams; 64-bit
  hashes (``HashConfig(precision=64)``, datatrove's xxhash; its sha1 if xxhash 3 is not installed).
- Normalization: datatrove's `simplify_text` with lower-casing, punctuation to spaces and
  whitespace collapsed, as Kiln; its number and diacritics normalization are off (Kiln does
  neither). Still different: Kiln applies NFKC and ``casefold`` and removes every Unicode
  P*/S* character; datatrove uses ``str.lower`` and its own punctuation list.
- Words: datatrove's English tokenizer needs NLTK (not installed, and its punkt data cannot
  be fetched offline); `WhitespaceTokenizer` splits on whitespace instead. On text whose
  punctuation is already gone, NLTK's word split is almost a whitespace split. Kiln also
  makes every Han/Kana character a word; here they stay in runs (Chinese texts get far
  fewer shingles under datatrove).
- Decisions: datatrove keeps pairs that agree on a whole bucket, unverified; Kiln verifies each
  candidate by its estimated Jaccard (>= 0.8). datatrove's survivor of a cluster is the root
  of its union-find (union by size), not always the earliest document; Kiln keeps the earliest.
- Kiln also drops exact copies of the normalized text (a blake2b hash), as its clean stage does;
  datatrove's MinHash alone finds those as near copies with Jaccard 1.
- Output: the filter stage writes only the kept ids (a JSONL writer with an id-only adapter,
  no compression), not the documents, so its time is read + filter; Kiln's filter pass
  (`tasks.text.assemble.plan_dedup` plus writing) is not run on its side at all.

`run_kiln` runs the clean stage's steps (`tasks.text.dedup_steps`) on the shards, one shard a
unit: hashing and signatures happen in the per-unit job here (phase 1 of the clean stage does
them while it cleans), then one job per partition, then the clustering.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

TOOLS = ("datatrove", "kiln")
KEPT_IDS = ".kept_ids.txt"
"""Suffix of the kept-ids file: ``result.json`` -> ``result.kept_ids.txt`` (one per tool in one folder)."""
_PR_SET_CHILD_SUBREAPER = 36

try:  # datatrove is not a Kiln dependency: only the datatrove side needs it
    from datatrove.utils.word_tokenizers import WordTokenizer
except ImportError:  # pragma: no cover - depends on the environment
    WordTokenizer = object  # type: ignore[assignment,misc]


class WhitespaceTokenizer(WordTokenizer):  # type: ignore[misc,valid-type]
    """Words = runs of non-whitespace: the default English tokenizer needs NLTK data we cannot fetch offline."""

    def __init__(self) -> None:
        self.language = "en"

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def _id_only(self: Any, document: Any) -> dict[str, Any]:
    """JSONL writer adapter: the kept document's id and nothing else (module level: it travels to workers)."""
    return {"id": document.id}


def _cpu_now() -> tuple[float, float]:
    """(CPU seconds of this process plus its reaped descendants, largest max RSS in bytes among them)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
            max(me.ru_maxrss, kids.ru_maxrss) * 1024.0)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _stop_forkserver() -> None:
    """Stop (and wait for) `multiprocess`'s fork server, so its workers' CPU reaches our RUSAGE_CHILDREN."""
    with contextlib.suppress(ImportError, AttributeError, OSError, ChildProcessError):
        from multiprocess import forkserver  # pyright: ignore[reportMissingImports]

        forkserver._forkserver._stop()  # noqa: SLF001 - the only way to stop it before exit


def run_datatrove(parquet_files: list[Path], work: Path, tasks: int = 2, num_buckets: int = 16,
                  hashes_per_bucket: int = 8, n_grams: int = 5) -> dict[str, Any]:
    """datatrove's signature → buckets → cluster → filter on `parquet_files`; the ids it kept, times, CPU."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig

    try:  # datatrove's default; it hashes str, which xxhash 4 refuses (datatrove pins xxhash<4)
        import xxhash  # pyright: ignore[reportMissingImports]

        xxhash.xxh64_intdigest("x")
        hash_fc = "xxhash"
    except (ImportError, TypeError):
        hash_fc = "sha1"
    config = MinhashConfig(
        n_grams=n_grams, num_buckets=num_buckets, hashes_per_bucket=hashes_per_bucket,
        norm_config=TextNormConfig(norm_numbers=False, norm_unicode_diacritics=False),
        hash_config=HashConfig(precision=64, hash_fc=hash_fc),  # pyright: ignore[reportArgumentType]
    )
    started, (cpu0, _) = time.perf_counter(), _cpu_now()
    work = _fresh(work)
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in parquet_files]))
    paths_file = work / "inputs.txt"
    paths_file.write_text("".join(f"{p.resolve().relative_to(root)}\n" for p in parquet_files))

    def reader() -> Any:
        return ParquetReader(str(root), paths_file=str(paths_file), text_key="text", id_key="id",
                             read_metadata=False)

    tokenizer = WhitespaceTokenizer()
    stages = {
        "signatures": ([reader(), MinhashDedupSignature(str(work / "signatures"), config=config,
                                                        language=tokenizer)], tasks, 2),  # pyright: ignore[reportArgumentType]
        "buckets": ([MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=config)],
                    num_buckets, 2),
        "cluster": ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove_ids"), config=config)], 1, 1),
        "filter": ([reader(), MinhashDedupFilter(str(work / "remove_ids")),
                    JsonlWriter(str(work / "kept"), compression=None, adapter=_id_only)], tasks, 2),
    }
    seconds: dict[str, float] = {}
    try:
        for name, (pipeline, n_tasks, workers) in stages.items():
            t = time.perf_counter()
            LocalPipelineExecutor(pipeline, tasks=n_tasks, workers=min(workers, n_tasks),
                                  logging_dir=str(work / "logs" / name)).run()
            seconds[name] = time.perf_counter() - t
    finally:
        _stop_forkserver()
    kept = [json.loads(line)["id"] for f in sorted((work / "kept").glob("*.jsonl"))
            for line in f.read_text().splitlines() if line]
    removed = sum(f.stat().st_size // 4 for f in (work / "remove_ids").glob("*.remove"))
    cpu1, rss = _cpu_now()
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in parquet_files)
    return {"tool": "datatrove", "docs": total, "kept": len(kept), "near_dropped": removed, "kept_ids": kept,
            "wall_s": time.perf_counter() - started, "cpu_s": cpu1 - cpu0, "peak_rss_gb": rss / 1e9,
            "stage_wall_s": seconds,
            "config": {"tasks": tasks, "num_buckets": num_buckets, "hashes_per_bucket": hashes_per_bucket,
                       "n_grams": n_grams, "hash": f"{hash_fc}/64", "tokenizer": "whitespace"}}


def _kiln_unit(ordinal: int, path: str, out: str, s: Any) -> dict[str, Any]:
    """Step 1 for one shard: exact hashes, signatures and sketches of its texts, a batch at a time."""
    from tasks.text.dedup_steps import FingerprintWriter, fingerprint_texts

    writer = FingerprintWriter(ordinal, Path(out), s)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=["text"]):
        writer.add(*fingerprint_texts([t or "" for t in batch.column(0).to_pylist()], s))
    return writer.close()


def run_kiln(parquet_files: list[Path], work: Path, workers: int = 2) -> dict[str, Any]:
    """Kiln's exact + near dedup steps over `workers` processes (shards as units); kept ids, times, CPU."""
    from tasks.runner import open_runner
    from tasks.text.dedup_steps import (
        EXACT_DROPS,
        NEAR_DROPS,
        DedupSettings,
        bucket_partition,
        cluster_duplicates,
        partitions_for,
        row_of,
        unit_of,
    )

    started, (cpu0, _) = time.perf_counter(), _cpu_now()
    work = _fresh(work)
    total = sum(pq.ParquetFile(p).metadata.num_rows for p in parquet_files)
    s = DedupSettings(exact=True, near=True, threshold=0.8, num_perm=128)
    s = DedupSettings(exact=True, near=True, threshold=0.8, num_perm=128, partitions=partitions_for(total, s))
    dirs = [str(work / "fp" / f"{k:05d}") for k in range(len(parquet_files))]
    out = work / "dedup"
    out.mkdir()
    seconds: dict[str, float] = {}
    engine = "serial" if workers == 1 else "processes"
    with open_runner(engine, workers) as runner:
        t = time.perf_counter()
        runner.run(_kiln_unit, [(f"d1-{k}", (k, str(p), dirs[k], s)) for k, p in enumerate(parquet_files)],
                   lambda name, info: None)
        seconds["fingerprint"] = time.perf_counter() - t
        t = time.perf_counter()
        runner.run(bucket_partition, [(f"d2-{p}", (p, dirs, str(out), s)) for p in range(s.partitions)],
                   lambda name, info: None)
        seconds["buckets"] = time.perf_counter() - t
    t = time.perf_counter()
    cluster_duplicates(str(out), s.partitions, s)
    seconds["cluster"] = time.perf_counter() - t
    exact = np.load(out / EXACT_DROPS)["doc"]
    near = np.setdiff1d(np.load(out / NEAR_DROPS)["doc"], exact)
    dropped = np.union1d(exact, near)
    units, rows = unit_of(dropped), row_of(dropped)
    kept: list[str] = []
    for k, path in enumerate(parquet_files):
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        mask = np.ones(len(ids), dtype=bool)
        mask[rows[units == k]] = False
        kept.extend(i for i, keep in zip(ids, mask.tolist(), strict=True) if keep)
    cpu1, rss = _cpu_now()
    return {"tool": "kiln", "docs": total, "kept": len(kept), "exact_dropped": len(exact),
            "near_dropped": len(near), "kept_ids": kept, "wall_s": time.perf_counter() - started,
            "cpu_s": cpu1 - cpu0, "peak_rss_gb": rss / 1e9, "stage_wall_s": seconds,
            "config": {"workers": workers, "engine": engine, "partitions": s.partitions,
                       "bands_rows": list(s.bands_rows), "threshold": s.threshold, "num_perm": s.num_perm}}


def _reap_orphans() -> int:
    """Wait for every descendant reparented to us (we are a subreaper) that has exited; returns how many."""
    n = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return n
        if pid == 0:
            return n
        n += 1


def _become_subreaper() -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def write_result(result: dict[str, Any], out: Path) -> None:
    """`result` as JSON at `out`, its kept ids one a line in `kept_path` (`out`) beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    ids = result.pop("kept_ids")
    kept_path(out).write_text("".join(f"{i}\n" for i in ids))
    out.write_text(json.dumps(result, indent=1, sort_keys=True))


def kept_path(out: Path) -> Path:
    return out.with_name(out.stem + KEPT_IDS)


def measure(tool: str, parquet_files: Sequence[Path], work: Path, out: Path | None = None,
            extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run the CLI for `tool` in a subprocess; its result plus the whole process tree's CPU and peak RSS (wait4).

    ``cpu_s`` / ``wall_s`` / ``peak_rss_gb`` are then the subprocess's, interpreter start and
    imports included; the tool's own in-process numbers stay under ``inner_*``. Kept ids are in
    `kept_path` (`out`); `out` defaults to ``<work>-<tool>.json`` beside `work`.
    """
    if tool not in TOOLS:
        raise ValueError(f"tool {tool!r}: use one of {', '.join(TOOLS)}")
    out = out or work.parent / f"{work.name}-{tool}.json"
    log = out.with_suffix(".log")
    listing = out.with_suffix(".inputs")
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{p}\n" for p in parquet_files))
    cmd = [sys.executable, "-m", "benchmarks.baselines.datatrove_minhash", "--docs-list", str(listing),
           "--work", str(work), "--tool", tool, "--out", str(out), *extra]
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=repo)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"{tool} run failed (exit {proc.returncode}); see {log}: {' | '.join(tail)}")
    result = json.loads(out.read_text())
    for key in ("cpu_s", "wall_s", "peak_rss_gb"):
        result[f"inner_{key}"] = result.pop(key)
    result.update(cpu_s=usage.ru_utime + usage.ru_stime, user_s=usage.ru_utime, sys_s=usage.ru_stime,
                  wall_s=wall, peak_rss_gb=usage.ru_maxrss * 1024 / 1e9, kept_ids_file=str(kept_path(out)))
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def read_kept(result: dict[str, Any]) -> list[str]:
    """The kept ids of a `measure` result."""
    return Path(result["kept_ids_file"]).read_text().splitlines()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--docs", help="glob of Kiln document shards, e.g. 'ART/docs/*.parquet' (sorted)")
    src.add_argument("--docs-list", type=Path, help="a file with one shard path a line, in this order")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    ap.add_argument("--tool", choices=TOOLS, required=True)
    ap.add_argument("--out", type=Path, required=True, help="result JSON; <stem>.kept_ids.txt goes beside it")
    ap.add_argument("--workers", type=int, default=2, help="kiln: worker processes; datatrove: tasks and workers")
    args = ap.parse_args(argv)
    files = ([Path(p) for p in sorted(glob.glob(args.docs))] if args.docs
             else [Path(p) for p in args.docs_list.read_text().splitlines() if p])
    if not files:
        sys.exit(f"datatrove_minhash: no shards at {args.docs or args.docs_list}; check the path")
    subreaper = _become_subreaper()
    if args.tool == "datatrove":
        result = run_datatrove(files, args.work, tasks=args.workers)
    else:
        result = run_kiln(files, args.work, workers=args.workers)
    result.update(subreaper=subreaper, orphans_reaped=_reap_orphans(), shards=len(files))
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    # Run as the module's importable name, so worker processes unpickle `_kiln_unit` and `_id_only` from it.
    from benchmarks.baselines import datatrove_minhash as _self

    sys.exit(_self.main())
