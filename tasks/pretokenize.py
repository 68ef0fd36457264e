"""Pretokenize stage: document shards → token shards (train/val) that the trainer memory-maps.

    ref = pretokenize(docs_ref, tokenizer_ref, PretokenizeConfig(), open_store())

One unit of work per input Parquet shard i, written to ``train/{i:05d}/`` and
``val/{i:05d}/`` (the token shard format of `storage.token_shards`) and marked
done as ``shard-{i:05d}``: a killed stage resumes with only the missing shards.
A document goes to val when a stable hash of its id falls under `val_fraction`,
so the split depends on nothing but the id, and the bytes written depend on
neither the number of workers nor the engine.

Engines (runtime settings, never part of the artifact key; `tasks.runner` runs them for every data stage):
- ``serial``: this process; SentencePiece still encodes each batch on `workers` threads.
- ``processes``: a spawn-based ``ProcessPoolExecutor`` of `workers` processes.
- ``dask``: a ``dask.distributed.LocalCluster`` of `workers` single-threaded processes
  (or the scheduler at `dask_address`), for big inputs and a dashboard.
- ``auto`` (default): ``serial`` when one shard is left, `workers` is 1 or the pending
  input is under `serial_max_mb`; ``dask`` otherwise. Measured on 2 cores
  (benchmarks/pretokenize_throughput.py): 2 spawned workers start in ~1.9 s wall / 3.6 s CPU
  (each re-imports Prefect, pyarrow, SentencePiece), a Dask LocalCluster in ~3.7 s / 5.2 s,
  while the serial engine starts at once and encodes ~1.1 M tokens/s per core; 2 Dask
  workers overtake it from ~12 MB of Parquet (~8 M tokens).

Each worker process loads the tokenizer once and reuses it for every shard.

Artifact layout::

    train/00000/{tokens.bin,index.npy,manifest.json}   val/00000/…   (one per input shard)
    pretokenize_meta.json   # tokenizer key, vocab sizes, special ids, splits, totals
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from kiln.config import runtime_field
from kiln.errors import KilnError
from model.tokenizer import Tokenizer
from storage.atomic import atomic_write_text
from storage.documents import doc_shards
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from storage.token_shards import TokenShardWriter
from tasks import runner
from tasks.stage import Stage, reported

STAGE = "pretokenize"
SPLITS = ("train", "val")
META_FILE = "pretokenize_meta.json"


@dataclass(frozen=True)
class PretokenizeConfig:
    """How documents become token shards (``[pretokenize]`` in a pipeline config)."""

    add_bos: bool = False
    """Write BOS before every document (EOS is always written after it)."""
    val_fraction: float = 0.01
    """Share of documents held out for validation, chosen by a stable hash of the document id."""
    batch_size: int = runtime_field(256)
    """Documents per SentencePiece batch-encode call (memory vs. call overhead)."""
    workers: int = runtime_field(2)
    """Worker processes (threads for the serial engine)."""
    engine: runner.EngineName = runtime_field("auto")
    """"auto", "serial", "processes" or "dask" (see the module docstring)."""
    serial_max_mb: int = runtime_field(16)
    """With engine "auto", pending Parquet input below this many MB is done serially (no start-up cost)."""
    dask_address: str = runtime_field("")
    """Address of an existing Dask scheduler; empty starts a LocalCluster."""

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise KilnError(f"pretokenize.val_fraction: must be in [0, 1), got {self.val_fraction!r}")
        for name in ("batch_size", "workers", "serial_max_mb"):
            if getattr(self, name) < 1:
                raise KilnError(f"pretokenize.{name}: must be ≥ 1, got {getattr(self, name)!r}")
        if self.engine not in ("auto", *runner.ENGINES):
            raise KilnError(f"pretokenize.engine: must be auto, serial, processes or dask, got {self.engine!r}")


PRETOKENIZE = Stage(STAGE, "1", PretokenizeConfig, inputs=("docs", "tokenizer"))


def pretokenize(docs: ArtifactRef, tokenizer: ArtifactRef, cfg: PretokenizeConfig, store: ArtifactStore) -> ArtifactRef:
    """The token-shard artifact for `docs` encoded with `tokenizer`, computed only if not in the store."""
    return PRETOKENIZE.produce(store, cfg, {"docs": docs, "tokenizer": tokenizer},
                               lambda build: _pretokenize_into(build, docs, tokenizer, cfg))


@PRETOKENIZE.task
def pretokenize_task(docs: ArtifactRef, tokenizer: ArtifactRef, cfg: PretokenizeConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key (see tasks.stage)."""
    return reported(pretokenize(docs, tokenizer, cfg, open_store(store_root)))


def is_val(doc_id: str, fraction: float) -> bool:
    """Whether a document is held out: a keyed hash of its id, so the split is stable everywhere."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8, person=b"kiln-val").digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


# -- one unit: a Parquet shard → a train and a val token shard ------------------
@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs for one unit (small and picklable: paths, not data)."""

    index: int
    shard: str
    out_dir: str
    tokenizer_dir: str
    add_bos: bool
    val_fraction: float
    batch_size: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


@functools.lru_cache(maxsize=2)
def _load_tokenizer(directory: str) -> Tokenizer:
    """One tokenizer per worker process, reused for every shard it handles."""
    return Tokenizer.load(directory)


def tokenize_shard(job: ShardJob) -> dict[str, Any]:
    """Encode one Parquet shard into ``train/<i>`` and ``val/<i>``; returns the unit's counts."""
    tok = _load_tokenizer(job.tokenizer_dir)
    writers: dict[str, TokenShardWriter] = {}
    for split in SPLITS:
        out = Path(job.out_dir) / split / job.name
        shutil.rmtree(out, ignore_errors=True)  # leftovers (temp files) of a killed attempt
        writers[split] = TokenShardWriter(
            out, vocab_size=tok.vocab_size, eos_id=tok.eos_id, bos_id=tok.bos_id if job.add_bos else None,
            meta={"split": split, "source_shard": Path(job.shard).name},
        )
    docs = {split: 0 for split in SPLITS}
    empty = 0
    try:
        reader = pq.ParquetFile(job.shard)
        for batch in reader.iter_batches(batch_size=job.batch_size, columns=["id", "source", "text"]):
            ids, sources, texts = (batch.column(c).to_pylist() for c in ("id", "source", "text"))
            keep = [k for k, text in enumerate(texts) if text]  # an empty document would be a lone EOS
            empty += len(texts) - len(keep)
            encoded = tok.encode_batch([texts[k] for k in keep], num_threads=job.threads)
            for k, token_ids in zip(keep, encoded, strict=True):
                split = "val" if is_val(ids[k] or "", job.val_fraction) else "train"
                writers[split].add(token_ids, sources[k] or "")
                docs[split] += 1
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    manifests = {split: w.close() for split, w in writers.items()}
    return {
        "documents": sum(docs.values()),
        "empty_documents": empty,
        **{f"documents_{s}": docs[s] for s in SPLITS},
        **{f"tokens_{s}": manifests[s]["n_tokens"] for s in SPLITS},
        "tokens_per_source": _merge_counts(m["tokens_per_source"] for m in manifests.values()),
    }


def combine_units(per_shard: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The stage's totals from each unit's counts (`tokenize_shard`'s result, read back from its marker).

    Plain Python sums of ints, exact at any size (a few thousand shards pass 2**32 tokens), where a
    numpy sum of a uint32/int32 column would wrap and uint64 mixed with int64 would turn float64.
    """
    totals: dict[str, Any] = {key: sum(int(c[key]) for c in per_shard)
                              for key in per_shard[0] if key != "tokens_per_source"}
    totals["tokens_per_source"] = _merge_counts(c["tokens_per_source"] for c in per_shard)
    totals["shards"] = len(per_shard)
    return totals


def _merge_counts(parts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + int(n)
    return dict(sorted(total.items()))


# -- the stage ---------------------------------------------------------------------
def _pretokenize_into(build: Build, docs: ArtifactRef, tokenizer: ArtifactRef, cfg: PretokenizeConfig) -> None:
    started = time.monotonic()
    shards = doc_shards(docs.path)
    tok = Tokenizer.load(tokenizer.path)  # fail here, not in a worker, if the tokenizer is unusable
    pending = [i for i in range(len(shards)) if not build.unit_done(_unit(i))]
    engine = choose_engine(cfg, [shards[i] for i in pending])
    jobs = [
        ShardJob(i, str(shards[i]), str(build.dir), str(tokenizer.path), cfg.add_bos, cfg.val_fraction,
                 cfg.batch_size, threads=cfg.workers if engine == "serial" else 1)
        for i in pending
    ]

    with runner.open_runner(engine, cfg.workers, cfg.dask_address) as units:
        # each shard is marked done as soon as it lands, so a killed stage redoes only the rest
        units.run(tokenize_shard, [(_unit(job.index), (job,)) for job in jobs], build.mark_done)
    totals = combine_units([build.unit_info(_unit(i)) for i in range(len(shards))])
    _write_meta(build, tok, tokenizer, cfg, shards, totals)
    elapsed = time.monotonic() - started
    build.counts.update(totals)
    build.extra["run"] = {
        "engine": engine, "workers": cfg.workers, "units_computed": len(jobs), "elapsed_s": round(elapsed, 3),
        "tokens_per_s": round((totals["tokens_train"] + totals["tokens_val"]) / max(elapsed, 1e-9)),
    }


def _unit(index: int) -> str:
    return f"shard-{index:05d}"


def _write_meta(
    build: Build, tok: Tokenizer, tokenizer: ArtifactRef, cfg: PretokenizeConfig, shards: Sequence[Path],
    totals: dict[str, Any],
) -> None:
    """What a reader needs besides the shards: vocab sizes, special ids, where each shard came from."""
    meta = {
        "tokenizer": str(tokenizer),
        "vocab_size": tok.vocab_size,
        "model_vocab_size": tok.model_vocab_size,
        "eos_id": tok.eos_id,
        "bos_id": tok.bos_id if cfg.add_bos else None,
        "pad_id": tok.pad_id,
        "val_fraction": cfg.val_fraction,
        "splits": list(SPLITS),
        "source_shards": [p.name for p in shards],
        "totals": totals,
    }
    atomic_write_text(build.dir / META_FILE, json.dumps(meta, indent=2, sort_keys=True))


# -- engines ---------------------------------------------------------------------------
def choose_engine(cfg: PretokenizeConfig, pending: Sequence[Path]) -> str:
    """The engine `auto` stands for, given the shards left to do."""
    input_bytes = sum(p.stat().st_size for p in pending)
    return runner.choose_engine(cfg.engine, cfg.dask_address, input_bytes, cfg.serial_max_mb * 2**20, len(pending),
                                cfg.workers)
