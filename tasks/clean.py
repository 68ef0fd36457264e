"""Clean stage: Wikipedia dumps, WuDao, The Pile and JSON lines → filtered, deduplicated Parquet shards.

    ref = clean(raw, CleanConfig(language="zh", inputs=("s3://corpus/wudao/*.json",)), store)

Inputs are the download artifact's ``files/`` plus `CleanConfig.inputs` (fsspec paths or
globs read in place; their size and mtime/ETag are part of the artifact key). The work runs
in three phases, each split into units marked done one by one in the build directory, so
a killed stage reruns only what is missing and writes byte-identical shards:

1. clean + filter (`tasks.text.pipeline.run_unit`), one unit per input file or per group
   of bz2 streams of a multistream dump, in parallel: intermediate chunks with each
   document's exact hash and MinHash signature;
2. dedup, on disk and in parallel (`tasks.text.dedup_steps`): per unit, exact hashes and LSH
   band keys partitioned to disk; per partition, exact groups and verified near-duplicate
   pairs; then connected components, so each cluster keeps its earliest document in input
   order; then the filter pass and the plan of the final shards (`assemble.plan_dedup`),
   one unit at a time;
3. write the final shards (`tasks.text.assemble.write_shard`), in parallel.

Units run serially or on Dask (`tasks.runner`); the result never depends on which,
nor on the number of workers. Document ids are ``<source>/<label>/<key>``: the label names
the input file, unique among the run's inputs (`units.input_labels`: ``00`` alone,
``a/00`` and ``b/00`` for two ``00.jsonl.zst`` in different folders), the key is the
record's own id (wiki page id, WuDao ``id``, JSON-lines ``id``) or its position (the Pile's
line), so ids are unique across inputs by construction and the same on every rerun.

The artifact holds ``docs/part-<input>-<k>.parquet``,
optionally ``jsonl/part-<input>-<k>-<j>.jsonl.zst``, ``dropped/<reason>.parquet`` (the first
`filters.keep_dropped` documents each filter rule or dedup step dropped, in input order, same
schema as ``docs/``), and ``report.json`` + ``report.md`` (per source: documents and characters
in and out, drops by reason); the manifest's ``counts`` hold the totals. `clean_task` also
publishes the report in the Prefect UI.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from kiln.config import canonical_dict, path_field, runtime_field
from kiln.errors import KilnError
from storage.atomic import atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.download import FILES_DIR
from tasks.report import artifact_key, progress
from tasks.runner import choose_engine, open_runner
from tasks.stage import Stage, reported
from tasks.text import assemble, dedup_steps, pipeline
from tasks.text.clean_report import REPORT_JSON, REPORT_MD, build_report, flat_counts, to_json, to_markdown
from tasks.text.dedup import lsh_params
from tasks.text.filters import FilterConfig
from tasks.text.units import Unit, discover_inputs, input_fingerprints, plan_units, unit_from_dict, unit_to_dict
from tasks.text.wikitext import WikitextOptions

STAGE = "clean"
WORK_DIR = ".work"  # intermediates; deleted before the artifact is finalized
MB = 1 << 20
log = logging.getLogger("kiln.clean")


@dataclass(frozen=True)
class CleanConfig:
    """How raw dumps and corpora become filtered, deduplicated documents."""

    language: str = "en"
    """Wiki language of dumps whose file name does not say it (``zhwiki-…`` says ``zh``); ``zh*``
    turns on variant-markup removal and traditional→simplified conversion."""
    keep_headings: bool = True
    """Keep section headings as plain lines (they help a model learn document structure)."""
    min_chars: int | None = None
    """Shorthand for ``filters.min_chars`` (configs/demo.toml sets it here); when given it replaces that."""
    filters: FilterConfig = field(default_factory=FilterConfig)
    """Quality filters; every dropped document is counted with its reason."""
    dedup: bool = True
    """Drop exact duplicates across all sources (same text after NFKC, case folding, punctuation and spacing)."""
    near_dedup: bool = True
    """Also drop near duplicates (MinHash LSH over word 5-grams, or character 5-grams for Chinese)."""
    near_dedup_threshold: float = 0.8
    """Estimated Jaccard similarity at which two documents are near duplicates."""
    num_perm: int = 128
    """MinHash permutations (signature length): LSH bands come from these."""
    sketch_size: int = 512
    """Shingle hashes in each document's bottom-k sketch, which verifies LSH candidates against the threshold
    (error ~0.018 at 0.8 with 512; exact for documents of at most that many shingles)."""
    inputs: tuple[str, ...] = path_field(())
    """Extra inputs read in place: local paths, directories, globs or fsspec URLs (``s3://…/*.jsonl.zst``)."""
    pile_sets: tuple[str, ...] = ()
    """The Pile subsets to keep (``meta.pile_set_name``, e.g. ``"Wikipedia (en)"``); empty keeps all."""
    jsonl_text_key: str = "text"
    """Field holding the text in generic JSON-lines inputs."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed record: fail naming file and position, or skip it and count it in the report."""
    allow_empty_sources: bool = runtime_field(False)
    """Let an input file that yields no documents (empty, or every record skipped) pass; by default
    the stage fails naming it. It decides only whether the build may finish, not what it writes,
    so it is not part of the artifact key: rerunning with it set resumes the failed build."""
    docs_per_shard: int = 100_000
    """At most this many documents per output shard."""
    shard_mb: float = 64.0
    """Target UTF-8 text per output shard in MiB (a shard closes once it reaches this); Parquet is ~3x smaller."""
    parquet_engine: Literal["pyarrow", "fastparquet"] = "pyarrow"
    """Parquet writer; both write the same schema."""
    jsonl_zst: bool = False
    """Also write Open-Llama-style ``jsonl/*.jsonl.zst`` files (one JSON document per line)."""
    jsonl_lines: int = 16384
    """Lines per ``.jsonl.zst`` file (Open-Llama uses 16384)."""
    engine: Literal["auto", "dask", "serial"] = runtime_field("auto")
    """``auto``: Dask for inputs of ``serial_below_mb`` or more (or with ``dask_address``), else in process."""
    workers: int = runtime_field(0)
    """Local Dask worker processes; 0 = one per CPU this process may use."""
    dask_address: str = runtime_field("")
    """An existing Dask scheduler (``tcp://host:8786``); its workers must see the artifact store's path."""
    serial_below_mb: float = runtime_field(16.0)
    """Inputs smaller than this (compressed MiB) run in process: a local cluster's start-up costs 2-3 s."""
    streams_per_unit: int = runtime_field(100)
    """bz2 streams (100 pages each) per unit of a multistream dump; set on a stage's first run."""

    def __post_init__(self) -> None:
        if self.min_chars is not None:
            if self.min_chars < 0:
                raise KilnError(f"clean.min_chars must be >= 0, got {self.min_chars}")
            object.__setattr__(self, "filters", replace(self.filters, min_chars=self.min_chars))
        for name in ("docs_per_shard", "jsonl_lines", "num_perm", "sketch_size", "streams_per_unit"):
            if getattr(self, name) < 1:
                raise KilnError(f"clean.{name} must be >= 1, got {getattr(self, name)}")
        if self.shard_mb <= 0 or self.workers < 0 or self.serial_below_mb < 0:
            raise KilnError("clean.shard_mb must be > 0, clean.workers and clean.serial_below_mb >= 0")
        if not 0 < self.near_dedup_threshold <= 1:
            raise KilnError(f"clean.near_dedup_threshold must be in (0, 1], got {self.near_dedup_threshold}")
        if self.near_dedup:
            lsh_params(self.num_perm, self.near_dedup_threshold)  # raises if no banding fits
        if not self.language.isascii() or not self.language.replace("-", "").isalnum():
            raise KilnError(f"clean.language {self.language!r}: use a wiki language code such as 'en' or 'zh'")


def key_config(cfg: CleanConfig) -> dict[str, Any]:
    """What the artifact key hashes: the config plus a fingerprint of every file `inputs` names."""
    data = canonical_dict(cfg)
    if cfg.inputs:
        data["input_fingerprints"] = [list(pair) for pair in input_fingerprints(cfg.inputs)]
    return data


CLEAN = Stage(STAGE, "3", CleanConfig, inputs=("raw",), key_config=key_config)


def clean(raw: ArtifactRef, cfg: CleanConfig, store: ArtifactStore) -> ArtifactRef:
    """Turn the files of a download artifact (plus `cfg.inputs`) into filtered, deduplicated document shards."""
    return CLEAN.produce(store, cfg, {"raw": raw}, lambda build: _clean_into(build, raw, cfg))


def _clean_into(build: Build, raw: ArtifactRef, cfg: CleanConfig) -> None:
    work = build.dir / WORK_DIR
    run: dict[str, Any] = {}
    if not build.unit_done("report"):
        units = _units(build, raw, cfg)
        input_bytes = sum({u.input.index: u.input.size for u in units}.values())
        engine = choose_engine(cfg.engine, cfg.dask_address, input_bytes, int(cfg.serial_below_mb * MB), len(units))
        with open_runner(engine, cfg.workers, cfg.dask_address) as runner:
            run["started_at"] = time.time()
            dedup = _phase1_and_dedup(build, units, cfg, runner, run)
            run["dedup_done_at"] = time.time()
            _phase3(build, cfg, runner)
            run["shards_done_at"] = time.time()
            run["phase12_s"] = round(run["dedup_done_at"] - run["started_at"], 3)
            run["phase3_s"] = round(run["shards_done_at"] - run["dedup_done_at"], 3)
            run.update(engine=engine, workers=runner.workers, **_unit_seconds(build, units))
        _write_dropped(build, units, cfg)
        _write_report(build, units, dedup, cfg)
    shutil.rmtree(work, ignore_errors=True)
    for stray in build.dir.rglob(".*.tmp"):  # temp files of writes a kill interrupted
        stray.unlink()
    report = json.loads((build.dir / REPORT_JSON).read_text(encoding="utf-8"))
    if report["total"]["docs_out"] == 0 and not cfg.allow_empty_sources:
        _fail_on_nothing_kept(build.dir, report)
    build.counts.update(flat_counts(report))
    build.extra["run"] = run  # timings live in the manifest, never in the data or report files
    log.info("clean: %d documents in, %d out", report["total"]["docs_in"], report["total"]["docs_out"])


def _fail_on_nothing_kept(build_dir: Path, report: dict[str, Any]) -> None:
    """Every document was dropped: an artifact of no documents would only fail the tokenizer later,
    with a hint ("run the clean stage") that misleads. Name the drop reasons instead."""
    total = report["total"]
    reasons = sorted(total["dropped"].items(), key=lambda kv: -kv[1])
    why = ", ".join(f"{reason} {n}" for reason, n in reasons[:4]) or "none recorded"
    raise KilnError(f"{build_dir / REPORT_JSON}: clean kept 0 of {total['docs_in']} documents (dropped: {why}); "
                    "loosen clean.filters (e.g. clean.min_chars) or check the inputs, or set "
                    "clean.allow_empty_sources = true to accept an empty corpus")


def _units(build: Build, raw: ArtifactRef, cfg: CleanConfig) -> list[Unit]:
    """The unit split, made on the first attempt and reused by resumed ones (so it never shifts)."""
    path = build.dir / WORK_DIR / "units.json"
    if path.exists():
        return [unit_from_dict(d) for d in json.loads(path.read_text(encoding="utf-8"))]
    local = [p for p in (raw.path / FILES_DIR).glob("*") if p.is_file() and not p.name.startswith(".")]
    inputs = discover_inputs(local, cfg.inputs, cfg.language)
    if not inputs:
        raise KilnError(f"{raw.path / FILES_DIR}: no input files; check download.sources or clean.inputs")
    units = plan_units(inputs, cfg.streams_per_unit)
    atomic_write_text(path, json.dumps([unit_to_dict(u) for u in units]))
    return units


def _phase1_and_dedup(build: Build, units: list[Unit], cfg: CleanConfig, runner: Any,
                      run: dict[str, Any]) -> dict[str, Any]:
    """Clean every unit not yet done, then dedup over all of them (once); `run` gets the phase-1 end time."""
    if build.unit_done("dedup"):
        return build.unit_info("dedup")
    work = build.dir / WORK_DIR
    settings = pipeline.UnitSettings(
        filters=cfg.filters,
        wikitext=WikitextOptions(keep_headings=cfg.keep_headings),
        pile_sets=cfg.pile_sets,
        text_key=cfg.jsonl_text_key,
        on_error=cfg.on_error,
        exact_hash=cfg.dedup,
        num_perm=cfg.num_perm if cfg.near_dedup else 0,
        sketch_size=cfg.sketch_size,
    )
    jobs = [
        (u.name, (u, settings, str(assemble.unit_dir(work, u.name))))
        for u in units
        if not build.unit_done(f"p1-{u.name}")
    ]
    log.info("clean: %d of %d units to clean", len(jobs), len(units))
    done = [len(units) - len(jobs)]
    by_name = {u.name: u for u in units}
    pending = Counter(by_name[name].input.index for name, _ in jobs)

    def finished(name: str, info: dict[str, Any]) -> None:
        _done(build, f"p1-{name}", info)
        done[0] += 1
        progress(STAGE, done[0] / len(units))  # the Prefect UI's progress bar; a no-op outside a run
        index = by_name[name].input.index
        pending[index] -= 1
        if not pending[index] and not cfg.allow_empty_sources:  # fail on an empty input as soon as it is read
            _check_not_empty(build, [u for u in units if u.input.index == index])

    runner.run(pipeline.run_unit, jobs, finished)
    if not cfg.allow_empty_sources:  # again for inputs an earlier attempt finished
        for index in sorted({u.input.index for u in units}):
            _check_not_empty(build, [u for u in units if u.input.index == index])
    run["phase1_done_at"] = time.time()
    chunks = {u.name: build.unit_info(f"p1-{u.name}")["chunks"] for u in units}
    clusters = _find_duplicates(build, units, chunks, cfg, runner)
    dedup = assemble.plan_dedup(units, chunks, work, _assemble_settings(cfg))
    dedup["clusters"] = clusters
    build.mark_done("dedup", dedup)
    return dedup


def _find_duplicates(build: Build, units: list[Unit], chunks: dict[str, int], cfg: CleanConfig,
                     runner: Any) -> dict[str, Any]:
    """Phase 2's three steps (`tasks.text.dedup_steps`), each job marked done on its own; returns cluster counts."""
    s = dedup_steps.DedupSettings(exact=cfg.dedup, near=cfg.near_dedup, threshold=cfg.near_dedup_threshold,
                                  num_perm=cfg.num_perm, sketch_size=cfg.sketch_size)
    if not (s.exact or s.near):
        return {}
    if not build.unit_done("d0-layout"):  # fixed on the first attempt, so a resume partitions the same way
        docs = sum(build.unit_info(f"p1-{u.name}")["docs"] for u in units)
        build.mark_done("d0-layout", {"partitions": dedup_steps.partitions_for(docs, s), "docs": docs})
    s = replace(s, partitions=build.unit_info("d0-layout")["partitions"])
    work = build.dir / WORK_DIR
    out = str(assemble.dedup_dir(work))
    dirs = [str(assemble.fingerprint_dir(work, u.name)) for u in units]
    mark = build.mark_done
    runner.run(dedup_steps.fingerprint_unit, [
        (f"d1-{u.name}", (k, [str(assemble.unit_dir(work, u.name) / pipeline.chunk_name(c))
                             for c in range(chunks[u.name])], dirs[k], s))
        for k, u in enumerate(units) if not build.unit_done(f"d1-{u.name}")], mark)
    assemble.dedup_dir(work).mkdir(parents=True, exist_ok=True)
    runner.run(dedup_steps.bucket_partition, [
        (f"d2-{p:05d}", (p, dirs, out, s)) for p in range(s.partitions) if not build.unit_done(f"d2-{p:05d}")], mark)
    if not build.unit_done("d3-cluster"):
        runner.run(dedup_steps.cluster_duplicates, [("d3-cluster", (out, s.partitions, s))], mark)
    parts = [build.unit_info(f"d2-{p:05d}") for p in range(s.partitions)]
    info = build.unit_info("d3-cluster")
    return {
        "partitions": s.partitions,
        "exact_groups": sum(p.get("exact_groups", 0) for p in parts),
        "exact_largest": max((p.get("exact_largest", 0) for p in parts), default=0),
        "near_candidates": sum(p.get("candidates", 0) for p in parts),
        "near_edges": info.get("edges", 0),
        "near_clusters": info.get("near_clusters", 0),
        "near_largest": info.get("near_largest", 0),
    }


def _check_not_empty(build: Build, units: list[Unit]) -> None:
    """Fail naming the input file of `units` (all of one input) if its reader produced no document."""
    docs = 0
    reader: Counter[str] = Counter()
    for u in units:
        info = build.unit_info(f"p1-{u.name}")
        docs += sum(c["docs_in"] for c in info["filters"].values())
        for counts in info["reader"].values():
            reader.update({k: v for k, v in counts.items() if k.startswith(("skipped_", "filtered_"))})
    f = units[0].input
    if docs or reader["filtered_pile_set"]:  # documents that clean.pile_sets left out were there
        return
    skipped = sum(n for k, n in reader.items() if k.startswith("skipped_"))
    why = f"every record was malformed and skipped ({skipped})" if skipped else (
        "the file is empty" if f.size == 0 else "it holds no documents")
    raise KilnError(f"{f.path}: source {f.source!r} yields no documents ({why}); fix or remove this input, "
                    "or set clean.allow_empty_sources = true")


def _phase3(build: Build, cfg: CleanConfig, runner: Any) -> None:
    work = build.dir / WORK_DIR
    jobs = [
        (name, args)
        for name, args in assemble.shard_jobs(work, build.dir, _assemble_settings(cfg))
        if not build.unit_done(f"p3-{name}")
    ]
    runner.run(assemble.write_shard, jobs, lambda name, info: _done(build, f"p3-{name}", info))


def _write_dropped(build: Build, units: list[Unit], cfg: CleanConfig) -> None:
    """The samples of dropped documents (small: read and written here, once)."""
    if build.unit_done("dropped"):
        return
    samples = {u.name: build.unit_info(f"p1-{u.name}").get("dropped_samples", {}) for u in units}
    written = assemble.write_dropped([u.name for u in units], samples, build.dir / WORK_DIR, build.dir,
                                     _assemble_settings(cfg))
    build.mark_done("dropped", written)


def _unit_seconds(build: Build, units: list[Unit]) -> dict[str, float]:
    """CPU and wall summed over jobs: phase 1 (and, within it, the dedup fingerprints), the dedup steps, the shards.

    Each is the job's own thread's time, not its process's (a Dask worker's event loop runs beside it).
    """
    def total(names: list[str], key: str) -> float:
        return round(sum(build.unit_info(n).get("seconds", {}).get(key, 0.0) for n in names if build.unit_done(n)), 3)

    p1 = [f"p1-{u.name}" for u in units]
    steps = [f"d1-{u.name}" for u in units] + ["d3-cluster"]
    if build.unit_done("d0-layout"):
        steps += [f"d2-{p:05d}" for p in range(build.unit_info("d0-layout")["partitions"])]
    return {"phase1_unit_wall_s": total(p1, "wall"), "phase1_unit_cpu_s": total(p1, "cpu"),
            "phase1_fingerprint_cpu_s": total(p1, "fingerprint_cpu"), "dedup_steps_cpu_s": total(steps, "cpu"),
            "dedup_steps_wall_s": total(steps, "wall")}


def _done(build: Build, unit: str, info: dict[str, Any]) -> None:
    build.mark_done(unit, info)
    log.info("clean: unit %s done (%s documents)", unit, info.get("docs"))


def _assemble_settings(cfg: CleanConfig) -> assemble.AssembleSettings:
    return assemble.AssembleSettings(
        exact=cfg.dedup,
        near=cfg.near_dedup,
        docs_per_shard=cfg.docs_per_shard,
        shard_bytes=int(cfg.shard_mb * MB),
        engine=cfg.parquet_engine,
        jsonl_lines=cfg.jsonl_lines if cfg.jsonl_zst else 0,
        keep_dropped=cfg.filters.keep_dropped,
    )


def _write_report(build: Build, units: list[Unit], dedup: dict[str, Any], cfg: CleanConfig) -> None:
    infos = {u.name: build.unit_info(f"p1-{u.name}") for u in units}
    shards = assemble.planned_shards(build.dir / WORK_DIR)
    jsonl = sum(-(-docs // cfg.jsonl_lines) for *_, docs in shards) if cfg.jsonl_zst else 0
    output = {"documents": dedup["documents"], "chars": dedup["chars"], "shards": len(shards), "jsonl_files": jsonl,
              "units": len(units)}
    report = build_report(units, infos, dedup, output, build.unit_info("dropped"))
    atomic_write_text(build.dir / REPORT_JSON, to_json(report))
    atomic_write_text(build.dir / REPORT_MD, to_markdown(report))
    build.mark_done("report")


def create_markdown_artifact(**kwargs: Any) -> Any:
    """Prefect's, imported on first use so that loading this module (the DAG, `kiln plan`) does not import Prefect."""
    from prefect.artifacts import create_markdown_artifact as create

    return create(**kwargs)


@CLEAN.task
def clean_task(raw: ArtifactRef, cfg: CleanConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key; publishes the stage card and the per-source report in the UI."""
    ref = reported(clean(raw, cfg, open_store(store_root)))
    try:
        create_markdown_artifact(
            markdown=(ref.path / REPORT_MD).read_text(encoding="utf-8"),
            key=artifact_key(STAGE, "sources"),
            description=f"clean/{ref.key}: documents in and out per source, drops by reason",
        )
    except Exception as exc:  # noqa: BLE001 - the artifact is built; a UI decoration must not fail it
        log.warning("could not publish the clean report artifact: %s: %s", type(exc).__name__, exc)
    return ref
