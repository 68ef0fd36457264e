"""Corpus scale: the data stages at 0.1, 1 and 10 GB of text, CPU and memory per GB, dedup against planted truth.

    python -m benchmarks.scale --work /data/scale --sizes 0.1 1 10 --datatrove-gb 1

For each size, in a fresh child process (so one size's memory never shows in the next):

1. `benchmarks.scale_corpus` writes the corpus (wiki multistream dumps, WuDao JSON, Pile
   ``.jsonl.zst``, with planted exact/near copies, clusters, chains and controls, and their
   truth) under ``--work`` (reused when already there for the same size and seed);
2. a Dask scheduler and 2 single-threaded workers are started as separate processes (``dask
   scheduler`` / ``dask worker``), the way a user brings a cluster, and the real stages run
   against it by address: clean (filters, exact and near dedup), tokenizer, pretokenize;
3. a sampler thread records the RSS of this process (the driver) and of every worker
   process twice a second; CPU is user+system of the driver, the scheduler and the workers
   over each stage; the clean manifest's timestamps split out its dedup phase.

At ``--datatrove-gb`` the child also cleans the corpus once more with dedup off and runs
datatrove 0.10.1's MinHash pipeline and Kiln's dedup steps on those same documents
(`benchmarks.baselines.datatrove_minhash`), each with 2 processes, scoring both against the
truth. At the smallest size the clean stage also runs on an embedded one-worker cluster in
another store: its files must equal the 2-worker ones.

Results: ``benchmarks/results/scale.json`` (``sizes_gb``, ``stages``, ``dedup``, and per size
everything measured). The corpora are deleted after their size ran unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "scale.json"
GB = 1e9
STAGES = ("clean", "dedup", "tokenizer", "pretokenize")
RUN_STAGES = ("clean", "tokenizer", "pretokenize")
"""The stages a size runs (dedup is part of clean)."""



class Sampler:
    """RSS of the driver and of each tracked worker process, every `period` seconds, with timestamps."""

    def __init__(self, worker_roots: list[int], period: float = 0.5) -> None:
        import psutil

        self.psutil, self.period = psutil, period
        self.me = psutil.Process()
        self.driver: Any = None
        """The process running the current stage (a child started per stage), if any."""
        self.roots = [psutil.Process(pid) for pid in worker_roots]
        self.samples: list[tuple[float, float, float]] = []  # (time, driver GB, largest worker GB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def workers(self, cluster_only: bool = False) -> list[Any]:
        """The cluster's processes, and (unless `cluster_only`) any the stage's driver started."""
        procs: dict[int, Any] = {}
        roots = [*self.roots] if cluster_only else [*self.roots, self.me]
        for root in roots:
            with contextlib.suppress(self.psutil.Error):
                for p in [root, *root.children(recursive=True)]:
                    procs.setdefault(p.pid, p)
        for skip in (self.me, self.driver):
            if skip is not None:
                procs.pop(skip.pid, None)
        return list(procs.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            worst = driver = 0.0
            for p in self.workers():
                with contextlib.suppress(self.psutil.Error):
                    worst = max(worst, p.memory_info().rss / GB)
            with contextlib.suppress(self.psutil.Error, AttributeError):
                driver = self.driver.memory_info().rss / GB
            self.samples.append((time.time(), driver, worst))
            self._stop.wait(self.period)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self, start: float, end: float) -> tuple[float, float]:
        """(driver, largest worker) peak RSS in GB between two timestamps."""
        window = [s for s in self.samples if start <= s[0] <= end] or self.samples[-1:]
        return round(max(s[1] for s in window), 3), round(max(s[2] for s in window), 3)

    def cluster_cpu(self) -> float:
        """User+system seconds of the cluster's processes (they live through all stages), now."""
        total = 0.0
        for p in self.workers(cluster_only=True):
            with contextlib.suppress(self.psutil.Error):
                total += sum(p.cpu_times()[:2])
        return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dask_cluster(workers: int, log_dir: Path) -> Iterator[tuple[str, list[int]]]:
    """A scheduler and `workers` single-threaded workers, each started by the ``dask`` CLI as its own process."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [str(Path(sys.executable).parent / "dask")]
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=open(log_dir / "scheduler.log", "w"), stderr=subprocess.STDOUT)]  # noqa: SIM115
    time.sleep(1.0)
    for i in range(workers):
        procs.append(subprocess.Popen(
            [*dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--memory-limit", "0",
             "--name", f"w{i}"], stdout=open(log_dir / f"worker-{i}.log", "w"), stderr=subprocess.STDOUT))  # noqa: SIM115
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address, [p.pid for p in procs]
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def corpus_inputs(corpus: Path) -> tuple[str, ...]:
    return (str(corpus / "wiki" / "*"), str(corpus / "wudao" / "*.json"), str(corpus / "pile" / "*.jsonl.zst"))


def clean_config(corpus: Path, **settings: Any) -> Any:
    """The clean stage's config for a scale corpus: all three formats read in place, English filters."""
    from tasks.clean import CleanConfig

    return CleanConfig(inputs=corpus_inputs(corpus), language="en", **settings)


def make_corpus(work: Path, gb: float, seed: int, workers: int) -> tuple[Path, dict[str, Any]]:
    from benchmarks.scale_corpus import generate

    corpus = work / f"corpus-{gb:g}gb"
    summary_file = corpus / "_summary.json"
    if summary_file.exists():
        return corpus, json.loads(summary_file.read_text())
    shutil.rmtree(corpus, ignore_errors=True)
    started = time.perf_counter()
    summary = generate(corpus, gb, workers, seed)
    summary["generate_wall_s"] = round(time.perf_counter() - started, 1)
    summary_file.write_text(json.dumps(summary, indent=1))
    return corpus, summary


def doc_ids(corpus: Path, truth_doc: dict[str, Any], labels: dict[str, str]) -> str:
    """The id the clean stage gives a document the generator's truth names (``<source>/<label>/<key>``)."""
    from tasks.text.sources import doc_id

    path = str(corpus / truth_doc["file"])
    fmt = truth_doc["fmt"]
    if fmt == "pile":
        return doc_id("pile", labels[path], truth_doc["line"])
    if fmt == "wudao":
        return doc_id("wudao", labels[path], truth_doc["id"])
    lang = Path(path).name.split("wiki-", 1)[0]
    return doc_id(f"wiki-{lang}", labels[path], truth_doc["page_id"])


def score(corpus: Path, kept: set[str], dropped: int, filtered: int, threshold: float = 0.8) -> dict[str, Any]:
    """Recall and precision of a dedup that dropped `dropped` documents, against the planted truth.

    Each planted group whose copies are all at or above `threshold` (near, cluster, chain
    links) or exact should keep exactly one member: recall = members gone / (members - 1).
    Controls (below the threshold) should keep both. Precision = planted members gone / all
    dedup drops. A member the quality filters dropped (`filtered` documents in all, ~0.06 %)
    is gone too but not thanks to the dedup; which ones they are is not recorded, so both
    figures are given as lower bounds, counting all `filtered` as planted members.
    """
    from tasks.text.units import discover_inputs

    inputs = discover_inputs([], corpus_inputs(corpus), "en")
    labels = {f.path: f.label for f in inputs}
    truth = json.loads((corpus / "truth.json").read_text())
    out: dict[str, Any] = {}
    wanted = {"near": [0, 0], "exact": [0, 0]}
    controls = [0, 0]  # merged, total
    for group in truth["groups"]:
        members = [group["original"], *(c["doc"] for c in group["copies"])]
        ids = [doc_ids(corpus, m, labels) for m in members]
        alive = sum(i in kept for i in ids)
        if group["kind"] == "control":
            controls[1] += 1
            controls[0] += alive < len(ids)
            continue
        above = all(c.get("jaccard", 1.0) >= threshold for c in group["copies"])
        if not above:
            continue
        key = "exact" if group["kind"] == "exact" else "near"
        wanted[key][0] += len(ids) - max(alive, 1)
        wanted[key][1] += len(ids) - 1
    found = wanted["near"][0] + wanted["exact"][0]
    out["near_recall"] = round(max(0, wanted["near"][0] - filtered) / max(wanted["near"][1], 1), 4)
    out["exact_recall"] = round(max(0, wanted["exact"][0] - filtered) / max(wanted["exact"][1], 1), 4)
    out["precision"] = round(max(0, min(found, dropped) - filtered) / dropped, 4) if dropped else 1.0
    out.update(planted_gone=found, planted_expected=wanted["near"][1] + wanted["exact"][1], dedup_drops=dropped,
               filter_drops=filtered, controls_merged=controls[0], controls=controls[1])
    return out


def filter_drops(counts: dict[str, int]) -> int:
    return counts["docs_in"] - counts["documents"] - dedup_drops(counts)


def dedup_drops(counts: dict[str, int]) -> int:
    return counts.get("dropped_duplicate", 0) + counts.get("dropped_near_duplicate", 0)


def kept_ids(docs_dir: Path) -> set[str]:
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for shard in sorted(docs_dir.glob("*.parquet")):
        ids.update(pq.read_table(shard, columns=["id"]).column("id").to_pylist())
    return ids


def run_size(work: Path, gb: float, seed: int, workers: int, datatrove: bool, check_workers: bool,
             stages: Sequence[str] = RUN_STAGES) -> dict[str, Any]:
    """One size, in this (child) process: the `stages` named (clean always: the others read its output)."""
    from storage.store import open_store
    from tasks.download import DownloadConfig, download

    corpus, summary = make_corpus(work, gb, seed, workers)
    text_gb = summary["text_bytes"] / GB
    result: dict[str, Any] = {"gb": gb, "text_gb": round(text_gb, 4), "corpus": summary, "stages": {}}
    store_root = work / f"store-{gb:g}gb"
    shutil.rmtree(store_root, ignore_errors=True)
    store = open_store(store_root)
    with dask_cluster(workers, work / "logs" / f"{gb:g}gb") as (address, pids), Sampler(pids) as sampler:
        raw = download(DownloadConfig(sources=[]), store)

        def stage(name: str) -> Path:
            """Run one stage in a fresh driver process (earlier ones are Cached there), measured."""
            cpu, start = sampler.cluster_cpu(), time.time()
            cmd = [sys.executable, "-m", "benchmarks.scale", "--work", str(work), "--stage", name, "--store",
                   str(store_root), "--corpus", str(corpus), "--address", address]
            with open(work / "logs" / f"{gb:g}gb" / f"{name}.log", "w") as log:
                proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
                sampler.driver = sampler.psutil.Process(proc.pid)
                assert proc.stdout is not None
                out = proc.stdout.read()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
            end = time.time()
            sampler.driver = None
            if proc.returncode:
                raise SystemExit(f"stage {name} failed ({proc.returncode}); see {log.name}")
            driver_cpu = usage.ru_utime + usage.ru_stime  # the driver and whatever it started and waited for
            cpu_s = driver_cpu + sampler.cluster_cpu() - cpu
            driver, worker = sampler.peaks(start, end)
            result["stages"][name] = {"wall_s": round(end - start, 1), "cpu_s": round(cpu_s, 1),
                                      "cpu_s_per_gb": round(cpu_s / text_gb, 1), "driver_cpu_s": round(driver_cpu, 1),
                                      "peak_rss_gb_driver": driver, "peak_rss_gb_per_worker": worker}
            print(f"[scale {gb:g} GB] {name}: {result['stages'][name]}", file=sys.stderr, flush=True)
            return Path(json.loads(out.strip().splitlines()[-1])["path"])

        docs_path = stage("clean")
        manifest = json.loads((docs_path / "manifest.json").read_text())
        run = manifest["run"]
        driver, worker = sampler.peaks(run["phase1_done_at"], run["dedup_done_at"])
        plan_s = run["dedup_done_at"] - run["phase1_done_at"] - run["dedup_steps_wall_s"] / max(1, workers)
        dedup_cpu = run["phase1_fingerprint_cpu_s"] + run["dedup_steps_cpu_s"] + max(0.0, plan_s)
        result["stages"]["dedup"] = {
            "wall_s": round(run["dedup_done_at"] - run["phase1_done_at"], 1), "cpu_s": round(dedup_cpu, 1),
            "cpu_s_per_gb": round(dedup_cpu / text_gb, 1), "peak_rss_gb_driver": driver,
            "peak_rss_gb_per_worker": worker,
            "note": "part of clean: fingerprint CPU inside phase 1 + the dedup steps + the driver's filter pass"}
        result["clean_run"] = run
        result["clean_counts"] = manifest["counts"]
        report = json.loads((docs_path / "report.json").read_text())
        result["clean_report"] = {"total": report["total"], "duplicates": report.get("duplicates")}
        if "tokenizer" in stages or "pretokenize" in stages:
            stage("tokenizer")
        if "pretokenize" in stages:
            pre_path = stage("pretokenize")
            result["pretokenize_counts"] = json.loads((pre_path / "manifest.json").read_text())["counts"]
        if datatrove:
            result["datatrove"] = compare_with_datatrove(work, corpus, raw, store, address)
    counts = result["clean_counts"]
    result["dedup_quality"] = score(corpus, kept_ids(docs_path / "docs"), dedup_drops(counts), filter_drops(counts))
    if check_workers:
        result["one_worker_identical"] = same_with_one_worker(work, corpus, manifest)
    return result


def run_stage(name: str, store_root: Path, corpus: Path, address: str) -> Path:
    """A stage's driver: the real stage functions, each earlier one Cached from the store; the artifact's path."""
    from storage.store import open_store
    from tasks.clean import clean
    from tasks.download import DownloadConfig, download
    from tasks.pretokenize import PretokenizeConfig, pretokenize
    from tasks.tokenizer import TokenizerConfig, train_tokenizer

    store = open_store(store_root)
    ref = download(DownloadConfig(sources=[]), store)
    docs = clean(ref, clean_config(corpus, dask_address=address), store)
    if name == "clean":
        return docs.path
    tok = train_tokenizer(docs, TokenizerConfig(vocab_size=32000), store)
    if name == "tokenizer":
        return tok.path
    return pretokenize(docs, tok, PretokenizeConfig(dask_address=address), store).path


def same_with_one_worker(work: Path, corpus: Path, manifest: dict[str, Any]) -> bool:
    """The clean stage on an embedded 1-worker cluster, in another store: the same files as with 2."""
    from storage.store import open_store
    from tasks.clean import clean
    from tasks.download import DownloadConfig, download

    other = open_store(work / "store-one-worker")
    ref = clean(download(DownloadConfig(sources=[]), other),
                clean_config(corpus, engine="dask", workers=1), other)
    same = other.manifest(ref)["files"] == manifest["files"]
    shutil.rmtree(work / "store-one-worker", ignore_errors=True)
    return bool(same)


def compare_with_datatrove(work: Path, corpus: Path, raw: Any, store: Any, address: str) -> dict[str, Any]:
    """Both tools' near dedup on the same cleaned, not yet deduplicated documents, scored on the truth."""
    from benchmarks.baselines.datatrove_minhash import measure, read_kept
    from tasks.clean import clean

    cfg = clean_config(corpus, dask_address=address, dedup=False, near_dedup=False)
    undeduped = clean(raw, cfg, store)
    filtered = filter_drops(store.manifest(undeduped)["counts"])
    files = sorted((undeduped.path / "docs").glob("*.parquet"))
    out: dict[str, Any] = {"docs": store.manifest(undeduped)["counts"]["documents"]}
    all_ids = kept_ids(undeduped.path / "docs")
    for tool in ("datatrove", "kiln"):
        res = measure(tool, files, work / f"dedup-{tool}")
        kept = read_kept(res)
        out[tool] = {**res, **score(corpus, set(kept), len(all_ids) - len(kept), filtered)}
        print(f"[scale] {tool}: {out[tool]}", file=sys.stderr, flush=True)
    return out


def marginal_rates(sizes: list[float], cpu_s: list[float]) -> list[float | None]:
    """CPU-s per GB added from each size to the next (None for the first): the cost that grows with
    the corpus, without the fixed start-up (interpreters, imports, first tasks) every run pays once."""
    return [None, *(round((c1 - c0) / (s1 - s0), 1)
                    for s0, s1, c0, c1 in zip(sizes, sizes[1:], cpu_s, cpu_s[1:], strict=False))]


def summarize(per_size: list[dict[str, Any]]) -> dict[str, Any]:
    """The top-level keys of scale.json."""
    sizes = [r["text_gb"] for r in per_size]
    stages = {name: {key: [r["stages"][name][key] for r in per_size]
                     for key in ("cpu_s_per_gb", "wall_s", "peak_rss_gb_per_worker", "peak_rss_gb_driver")}
              for name in STAGES if all(name in r["stages"] for r in per_size)}
    for name, row in stages.items():
        cpu = [r["stages"][name]["cpu_s"] for r in per_size]
        row["marginal_cpu_s_per_gb"] = marginal_rates(sizes, cpu)
    largest = per_size[-1]["dedup_quality"]
    dedup: dict[str, Any] = {"recall": largest["near_recall"], "precision": largest["precision"],
                             "exact_recall": largest["exact_recall"], "controls_merged": largest["controls_merged"],
                             "at_gb": sizes[-1]}
    compared = next((r for r in per_size if "datatrove" in r), None)
    if compared:
        dt, kl = compared["datatrove"]["datatrove"], compared["datatrove"]["kiln"]
        dedup.update(speedup_vs_datatrove_cpu_s=round(dt["cpu_s"] / kl["cpu_s"], 2),
                     datatrove_recall=dt["near_recall"], datatrove_precision=dt["precision"],
                     kiln_recall_same_docs=kl["near_recall"], kiln_precision_same_docs=kl["precision"],
                     compared_at_gb=compared["text_gb"])
    return {"sizes_gb": sizes, "stages": stages, "dedup": dedup}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="corpora, stores and logs (outside the repo)")
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    parser.add_argument("--datatrove-gb", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the corpora and stores")
    parser.add_argument("--stages", nargs="+", choices=RUN_STAGES, default=list(RUN_STAGES),
                        help="stages to measure (clean always runs)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the result JSON")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # a child running one size
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # a child driving one stage
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps({"path": str(run_stage(args.stage, args.store, args.corpus, args.address))}))
        return
    work = args.work.resolve()
    if work.is_relative_to(REPO):
        raise SystemExit(f"{work}: put the scale corpora outside the repository")
    if args.one is not None:
        smallest = min(args.sizes)
        result = run_size(work, args.one, args.seed, args.workers, args.one == args.datatrove_gb,
                          args.one == smallest, args.stages)
        (work / f"result-{args.one:g}gb.json").write_text(json.dumps(result, indent=1))
        return
    per_size = []
    for gb in sorted(args.sizes):
        part = work / f"result-{gb:g}gb.json"
        if not part.exists():
            cmd = [sys.executable, "-m", "benchmarks.scale", "--work", str(work), "--one", str(gb), "--sizes",
                   *map(str, args.sizes), "--datatrove-gb", str(args.datatrove_gb), "--workers", str(args.workers),
                   "--seed", str(args.seed), "--stages", *args.stages]
            subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        per_size.append(json.loads(part.read_text()))
        if not args.keep:
            for path in (work / f"corpus-{gb:g}gb", work / f"store-{gb:g}gb"):
                shutil.rmtree(path, ignore_errors=True)
    out = {**summarize(per_size), "per_size": per_size, "command": " ".join(sys.argv),
           "machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summarize(per_size), indent=1))


if __name__ == "__main__":
    main()
