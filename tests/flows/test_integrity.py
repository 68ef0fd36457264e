"""Nothing reused unverified, end to end through the real `kiln` CLI and Prefect (issue 14, points 1, 3, 4).

- a same-size corruption of a cached artifact is detected, set aside and rebuilt by
  the next run, and what depended on it is still found Cached;
- a copied store is judged by its own files (the shared Prefect home remembers the
  original), and keeps working once the original is moved away;
- Prefect persists no task results, so a crafted pickle where Prefect used to keep
  them runs no code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.flows.test_pipeline import env, kiln_run, states  # noqa: F401  (env is a fixture)
from tests.storage.test_store import flip_a_byte_keeping_mtime

pytestmark = pytest.mark.slow


def artifact(result: dict, stage: str) -> Path:
    return Path(result["stages"][stage]["artifact"])


def test_a_corrupted_cached_shard_is_rebuilt_not_reused(env, tmp_path: Path) -> None:  # noqa: F811
    first = kiln_run(env, tmp_path, until="tokenizer")
    clean = artifact(first, "clean")
    shard = sorted((clean / "docs").glob("part-*.parquet"))[0]
    good = shard.read_bytes()
    flip_a_byte_keeping_mtime(shard)

    second = kiln_run(env, tmp_path, until="tokenizer")
    assert states(second) == {"download": "Cached", "clean": "Completed", "tokenizer": "Cached"}
    assert shard.read_bytes() == good  # the same key, rebuilt byte-identical
    (aside,) = clean.parent.glob(f".corrupt-{clean.name}-*")
    assert (aside / shard.relative_to(clean)).read_bytes() != good
    assert f"moved it to {aside}" in second["stdout"] + second["stderr"]


def test_a_copied_store_is_cached_by_its_own_files_and_survives_the_original_moving(
        env, tmp_path: Path) -> None:  # noqa: F811
    original = Path(env["KILN_HOME"])
    kiln_run(env, tmp_path, until="tokenizer")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True)
    copy_env = {**env, "KILN_HOME": str(copy)}  # the same Prefect home, as by default

    cached = kiln_run(copy_env, tmp_path, until="tokenizer")
    assert set(states(cached).values()) == {"Cached"}
    assert all(artifact(cached, s).is_relative_to(copy) for s in cached["stages"])
    moved = tmp_path / "moved-away"
    original.rename(moved)
    try:
        after = kiln_run(copy_env, tmp_path, until="pretokenize")  # reads the copy's tokenizer
        assert states(after)["tokenizer"] == "Cached" and states(after)["pretokenize"] == "Completed"
        assert artifact(after, "pretokenize").is_relative_to(copy)
    finally:
        moved.rename(original)


class _Payload:
    """Unpickling this creates `marker`: proof that code from Prefect's storage ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_poisoned_prefect_result_file_runs_no_code(env, tmp_path: Path) -> None:  # noqa: F811
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    first = kiln_run(env, tmp_path, until="tokenizer")
    storage = Path(env["PREFECT_HOME"]) / "storage"
    assert not storage.exists() or not any(storage.iterdir())  # Prefect persisted no results
    marker = tmp_path / "pwned"
    storage.mkdir(parents=True, exist_ok=True)
    for stage, info in first["stages"].items():  # where Prefect's cache used to keep each task's result
        manifest = json.loads((artifact(first, stage) / "manifest.json").read_text())
        name = f"kiln-{manifest['stage']}-{info['key']}-{manifest['build_id']}"
        record = ResultRecord(metadata=ResultRecordMetadata(storage_key=str(storage / name),
                                                            serializer=PickleSerializer()),
                              result=_Payload(marker))
        (storage / name).write_bytes(record.serialize())
    second = kiln_run(env, tmp_path, until="tokenizer")
    assert set(states(second).values()) == {"Cached"}
    assert not marker.exists()
