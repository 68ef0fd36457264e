"""The artifact store: keys, atomic builds, resume of units, cache tokens, locking, gc."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from kiln.errors import KilnError
from storage.store import ArtifactRef, ArtifactStore, Build, artifact_key, open_store


def write_two_units(build: Build, calls: list[str], fail_on: str | None = None) -> None:
    for unit in ("a", "b"):
        if build.unit_done(unit):
            continue
        if unit == fail_on:
            raise RuntimeError(f"boom in {unit}")
        calls.append(unit)
        (build.dir / f"{unit}.txt").write_text(unit * 3)
        build.mark_done(unit, {"n": 3})
    build.counts["units"] = 2


def test_key_depends_on_config_version_and_inputs() -> None:
    up1, up2 = ArtifactRef("clean", "k1", "/x"), ArtifactRef("clean", "k2", "/y")
    base = artifact_key("tok", "1", {"v": 1}, [up1])
    assert base == artifact_key("tok", "1", {"v": 1}, [ArtifactRef("clean", "k1", "/elsewhere")])
    assert base != artifact_key("tok", "2", {"v": 1}, [up1])
    assert base != artifact_key("tok", "1", {"v": 2}, [up1])
    assert base != artifact_key("tok", "1", {"v": 1}, [up2])


def test_produce_builds_once_with_manifest(store: ArtifactStore) -> None:
    calls: list[str] = []
    ref = store.produce("s", "1", {"x": 1}, [], lambda b: write_two_units(b, calls))
    again = store.produce("s", "1", {"x": 1}, [], lambda b: write_two_units(b, calls))
    assert ref == again and calls == ["a", "b"]
    manifest = store.manifest(ref)
    assert set(manifest["files"]) == {"a.txt", "b.txt"}
    assert manifest["counts"] == {"units": 2} and manifest["config"] == {"x": 1}
    store.verify(ref)
    assert not (ref.path / ".units").exists()


def test_failed_build_leaves_no_artifact_and_resumes(store: ArtifactStore) -> None:
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        store.produce("s", "1", {}, [], lambda b: write_two_units(b, calls, fail_on="b"))
    key = artifact_key("s", "1", {}, [])
    assert store.get("s", key) is None and not store.final_dir("s", key).exists()
    token = store.cache_token("s", key)
    assert token == store.cache_token("s", key)  # the retry is the same build
    ref = store.produce("s", "1", {}, [], lambda b: write_two_units(b, calls))
    assert calls == ["a", "b"]  # "a" was not redone
    assert store.manifest(ref)["build_id"] == token


def test_deleted_artifact_gets_a_new_cache_token(store: ArtifactStore) -> None:
    ref = store.produce("s", "1", {}, [], lambda b: write_two_units(b, []))
    token = store.cache_token("s", ref.key)
    assert token == store.manifest(ref)["build_id"]
    import shutil

    shutil.rmtree(ref.path)
    assert store.cache_token("s", ref.key) != token


def test_verify_and_get_detect_damage(store: ArtifactStore) -> None:
    ref = store.produce("s", "1", {}, [], lambda b: write_two_units(b, []))
    (ref.path / "a.txt").write_text("aaX")  # same size, other content
    with pytest.raises(KilnError, match="does not match its manifest"):
        store.verify(ref)
    (ref.path / "b.txt").write_text("truncated-and-longer")
    assert store.get("s", ref.key) is None


def _produce_in_child(root: str, out: str) -> None:
    import time

    def work(build: Build) -> None:
        time.sleep(0.5)
        with open(out, "a") as fh:
            fh.write("built\n")
        (build.dir / "x").write_text("x")

    open_store(root).produce("s", "1", {}, [], work)


def test_concurrent_builds_of_one_key_run_once(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_produce_in_child, args=(str(tmp_path / "st"), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert log.read_text() == "built\n"


def test_gc_keeps_what_recent_runs_used(store: ArtifactStore) -> None:
    old = store.produce("s", "1", {"v": 1}, [], lambda b: write_two_units(b, []))
    new = store.produce("s", "1", {"v": 2}, [], lambda b: write_two_units(b, []))
    store.record_run("first", {"s": old})
    store.record_run("second", {"s": new})
    assert [r["label"] for r in store.recent_runs(5)] == ["first", "second"]
    doomed = store.gc({f"s/{new.key}"})
    assert doomed == [old.path] and not old.path.exists() and store.get("s", new.key) == new
    assert json.loads((store.root / "runs.jsonl").read_text().splitlines()[0])["label"] == "first"
