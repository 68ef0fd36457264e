"""Document shards: Parquet files with Kiln's document schema.

Schema (DESIGN.md): ``id, source, title, text, url, meta`` — all strings, `meta`
holding JSON. Shards are written atomically (temp + rename) with either pyarrow
or fastparquet, and read back in record batches so memory stays bounded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from kiln.errors import KilnError
from storage.atomic import atomic_path

DOC_FIELDS = ("id", "source", "title", "text", "url", "meta")
DOC_SCHEMA = pa.schema([(name, pa.string()) for name in DOC_FIELDS])
Engine = Literal["pyarrow", "fastparquet"]


def normalize_doc(doc: dict[str, Any]) -> dict[str, str]:
    """A record with exactly the schema's fields as strings (meta serialized as JSON)."""
    meta = doc.get("meta", {})
    out = {name: str(doc.get(name, "") or "") for name in DOC_FIELDS[:-1]}
    out["meta"] = meta if isinstance(meta, str) else json.dumps(meta, sort_keys=True, ensure_ascii=False)
    return out


def write_documents(path: str | Path, docs: Iterable[dict[str, Any]], engine: Engine = "pyarrow") -> int:
    """Write documents to one Parquet file atomically; returns the number written."""
    rows = [normalize_doc(d) for d in docs]
    table = pa.Table.from_pylist(rows, schema=DOC_SCHEMA)
    with atomic_path(path) as tmp:
        if engine == "pyarrow":
            # Fixed writer settings so equal content gives equal bytes (resume and worker-count checks rely on it).
            pq.write_table(table, tmp, compression="zstd", write_statistics=False, use_dictionary=["source"])  # pyright: ignore[reportArgumentType]
        elif engine == "fastparquet":
            _write_fastparquet(table, tmp)
        else:
            raise KilnError(f"parquet engine {engine!r}: use 'pyarrow' or 'fastparquet'")
    return len(rows)


def _write_fastparquet(table: pa.Table, path: Path) -> None:
    try:
        import fastparquet
    except ImportError:
        raise KilnError("fastparquet is not installed: pip install fastparquet, or use engine 'pyarrow'") from None
    fastparquet.write(str(path), table.to_pandas(), compression="ZSTD", stats=False)  # pyright: ignore[reportArgumentType]


def iter_documents(
    paths: Sequence[str | Path], columns: Sequence[str] = DOC_FIELDS, batch_size: int = 1024
) -> Iterator[dict[str, str]]:
    """Stream documents from Parquet shards in order, a record batch at a time."""
    for path in paths:
        try:
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns)):
                yield from batch.to_pylist()
        except (OSError, pa.ArrowInvalid) as exc:
            raise KilnError(f"{path}: not a readable Parquet shard ({exc}); rerun the clean stage") from None


def count_documents(paths: Sequence[str | Path]) -> int:
    """Number of rows across shards, from Parquet metadata alone."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in paths)


DOCS_DIR = "docs"


def doc_shard_name(source_index: int, shard_index: int) -> str:
    """Path of a document shard inside an artifact: shard `shard_index` cut from input `source_index`.

    Names sort in input order, so readers see documents in a fixed order whatever
    the number of workers that wrote them.
    """
    return f"{DOCS_DIR}/part-{source_index:04d}-{shard_index:05d}.parquet"


def doc_shards(artifact_dir: str | Path) -> list[Path]:
    """The document shards of a clean-stage artifact, in order."""
    shards = sorted(Path(artifact_dir).glob(f"{DOCS_DIR}/part-*.parquet"))
    if not shards:
        raise KilnError(f"{artifact_dir}: no document shards in {DOCS_DIR}/; run the clean stage first")
    return shards
