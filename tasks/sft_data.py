"""Chat data stages: raw SFT / DPO records (.json, .jsonl) → one Parquet chat artifact.

    sft = prepare_sft(raw_ref, SFTDataConfig(format="auto"), store)   # id, source, format, messages, n_turns
    dpo = prepare_dpo(raw_ref, DPODataConfig(), store)                # id, source, prompt, chosen, rejected

The input is a download artifact whose ``files/`` hold ``.json`` (an array of records,
or JSON lines as some BELLE releases ship them), ``.jsonl`` or their ``.gz``. Records
are converted by `kiln.chat` (alpaca, BELLE, ShareGPT, firefly, OpenAI messages,
auto-detected per record unless `format` says otherwise) and checked once here, so
the trainer reads clean messages. A malformed record is a `KilnError` naming the
file and its line (JSONL) or record number (JSON array), both 1-based; with
``on_error = "skip"`` it is counted instead, and the first reasons land in the manifest.

Output: ``train/part-<file>.parquet`` and ``val/part-<file>.parquet`` per input file
(a record goes to val when a stable hash of its id falls under `val_fraction`), plus
``sft_meta.json``. Each input file is one unit of work, so a killed stage resumes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from kiln.chat import RecordError, detect_format, to_messages, to_preference
from kiln.errors import KilnError
from storage.atomic import atomic_path, atomic_write_text
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.download import FILES_DIR
from tasks.stage import Stage, reported
from trainer.sft_data import META_FILE

SFT_STAGE, DPO_STAGE = "sft_data", "dpo_data"
SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
MAX_REPORTED_ERRORS = 20
SFT_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("format", pa.string()),
                        ("messages", pa.string()), ("n_turns", pa.int32())])
DPO_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("prompt", pa.string()),
                        ("chosen", pa.string()), ("rejected", pa.string())])
log = logging.getLogger("kiln.sft_data")


@dataclass(frozen=True)
class DPODataConfig:
    """How preference records become the DPO artifact (``[dpo_data]``)."""

    system_prompt: str = ""
    """System message added to prompts that have none (empty: none added)."""
    val_fraction: float = 0.05
    """Share of records held out for validation, by a stable hash of the record id."""
    on_error: Literal["raise", "skip"] = "raise"
    """A malformed record stops the stage with its file and position, or is skipped and counted."""
    dedup: bool = True
    """Drop records whose converted content equals an earlier one's in the same file (files are
    independent units of work, so duplicates across files are kept)."""

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise KilnError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class SFTDataConfig(DPODataConfig):
    """How instruction records become the SFT artifact (``[sft_data]``)."""

    format: Literal["auto", "alpaca", "belle", "sharegpt", "firefly", "messages"] = "auto"
    """Record format; auto detects it per record from the keys."""


SFT_DATA = Stage(SFT_STAGE, "1", SFTDataConfig, inputs=("raw",))
DPO_DATA = Stage(DPO_STAGE, "1", DPODataConfig, inputs=("raw",))


def prepare_sft(raw: ArtifactRef, cfg: SFTDataConfig, store: ArtifactStore) -> ArtifactRef:
    """Convert the SFT files of a download artifact into a chat artifact (cached by artifact key)."""
    return SFT_DATA.produce(store, cfg, {"raw": raw}, lambda build: _build(build, raw, cfg, "sft"))


def prepare_dpo(raw: ArtifactRef, cfg: DPODataConfig, store: ArtifactStore) -> ArtifactRef:
    """Convert the DPO files of a download artifact into a preference artifact."""
    return DPO_DATA.produce(store, cfg, {"raw": raw}, lambda build: _build(build, raw, cfg, "dpo"))


def input_files(raw: ArtifactRef) -> list[Path]:
    """The .json/.jsonl(.gz) files of a download artifact, in name order; others are an error."""
    files = sorted((raw.path / FILES_DIR).glob("*"))
    if not files:
        raise KilnError(f"{raw.path / FILES_DIR}: no input files; check the download stage's sources")
    for f in files:
        if not f.name.endswith(SUFFIXES):
            raise KilnError(f"{f}: unsupported file type; chat data must be .json or .jsonl (optionally .gz)")
    return files


def _build(build: Build, raw: ArtifactRef, cfg: DPODataConfig, kind: Literal["sft", "dpo"]) -> None:
    totals: Counter[str] = Counter()
    errors: list[str] = []
    for i, path in enumerate(input_files(raw)):
        unit = f"file-{i:04d}"
        if not build.unit_done(unit):
            stats, unit_errors = _convert_file(build, i, path, cfg, kind)
            build.mark_done(unit, {"counts": stats, "errors": unit_errors})
        info = build.unit_info(unit)
        totals.update(info["counts"])
        errors += info["errors"]
    if totals["train"] == 0:
        raise KilnError(f"{raw.path / FILES_DIR}: no usable {kind.upper()} records for training "
                        f"({totals['records']} read, {totals['skipped_malformed']} malformed)")
    build.counts.update(dict(sorted(totals.items())))
    build.extra["skipped_examples"] = errors[:MAX_REPORTED_ERRORS]
    meta = {"kind": kind, "counts": dict(sorted(totals.items())), "columns": _schema(kind).names}
    atomic_write_text(build.dir / META_FILE, json.dumps(meta, indent=2))
    log.info("%s data: %d train, %d val, %d skipped", kind, totals["train"], totals["val"], totals["skipped_malformed"])


def _schema(kind: str) -> pa.Schema:
    return SFT_SCHEMA if kind == "sft" else DPO_SCHEMA


def _convert_file(build: Build, index: int, path: Path, cfg: DPODataConfig,
                  kind: Literal["sft", "dpo"]) -> tuple[dict[str, int], list[str]]:
    """Convert one input file into its train/val parts; returns counts and skipped-record reasons."""
    stats: Counter[str] = Counter()
    errors: list[str] = []
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    seen: set[bytes] = set()
    convert = _sft_row if kind == "sft" else _dpo_row
    source = path.name.split(".")[0]
    for where, record in iter_records(path):
        stats["records"] += 1
        try:
            if isinstance(record, RecordError):
                raise record
            row = convert(record, cfg)
        except RecordError as exc:
            message = f"{path.name}: {where}: {exc}"
            if cfg.on_error == "raise":
                raise KilnError(f"{message} (set on_error = \"skip\" to skip such records)") from None
            stats["skipped_malformed"] += 1
            errors.append(message)
            continue
        digest = hashlib.blake2b(json.dumps(row, sort_keys=True).encode(), digest_size=16).digest()
        if cfg.dedup and digest in seen:
            stats["duplicates"] += 1
            continue
        seen.add(digest)
        row = {"id": f"{path.name}:{where.split()[-1]}", "source": source, **row}
        split = "val" if _in_val(row["id"], cfg.val_fraction) else "train"
        rows[split].append(row)
        stats[split] += 1
        stats[f"format_{row.get('format', 'dpo')}"] += 1
    for split, part in rows.items():
        if part:
            _write_part(build.dir / split / f"part-{index:04d}.parquet", part, _schema(kind))
    return dict(stats), errors


def _sft_row(record: Any, cfg: DPODataConfig) -> dict[str, Any]:
    assert isinstance(cfg, SFTDataConfig)
    fmt = cfg.format
    messages = to_messages(record, fmt, cfg.system_prompt)
    detected = fmt if fmt != "auto" else detect_format(record)
    return {"format": detected, "messages": json.dumps(messages, ensure_ascii=False),
            "n_turns": sum(m["role"] == "assistant" for m in messages)}


def _dpo_row(record: Any, cfg: DPODataConfig) -> dict[str, Any]:
    prompt, chosen, rejected = to_preference(record, cfg.system_prompt)
    return {"prompt": json.dumps(prompt, ensure_ascii=False), "chosen": chosen, "rejected": rejected}


def _in_val(record_id: str, fraction: float) -> bool:
    """Stable split by id: the same record lands in the same split on every run and machine."""
    h = int.from_bytes(hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


def _write_part(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=False)


# ---------------------------------------------------------------- reading records
def _open(path: Path) -> Any:
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else open(path, encoding="utf-8")


def iter_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(position, record) pairs of a .json array or JSON-lines file; positions are 'line N' or 'record N'."""
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        yield from _iter_lines(path)
        return
    with _open(path) as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line under a .json name (BELLE does this)
            yield from _iter_lines(path)
            return
        raise KilnError(f"{path.name}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise KilnError(f"{path.name}: expected a JSON array of records, got {type(data).__name__}")
    for i, record in enumerate(data, 1):
        yield f"record {i}", record


def _iter_lines(path: Path) -> Iterator[tuple[str, Any]]:
    with _open(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                # Passed on as a bad record, so `on_error` decides about it like any other.
                record = RecordError(f"invalid JSON ({exc.msg} at column {exc.colno})")
            yield f"line {n}", record


@SFT_DATA.task
def prepare_sft_task(raw: ArtifactRef, cfg: SFTDataConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key."""
    return reported(prepare_sft(raw, cfg, open_store(store_root)))


@DPO_DATA.task
def prepare_dpo_task(raw: ArtifactRef, cfg: DPODataConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: cached by artifact key."""
    return reported(prepare_dpo(raw, cfg, open_store(store_root)))
