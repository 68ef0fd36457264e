"""The artifact store: keys, atomic builds, resume of units, verified reuse, content vs run logs, locking, gc."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import pytest

from kiln.errors import KilnError
from storage import local
from storage.store import ArtifactRef, ArtifactStore, Build, artifact_key, content_sha256, open_store


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
    store.produce("s", "1", {}, [], lambda b: write_two_units(b, calls))
    assert calls == ["a", "b"]  # "a" was not redone


def test_verify_and_get_detect_damage(store: ArtifactStore) -> None:
    ref = store.produce("s", "1", {}, [], lambda b: write_two_units(b, []))
    (ref.path / "a.txt").write_text("aaX")  # same size, other content
    with pytest.raises(KilnError, match="does not match its sha256 in the manifest"):
        store.verify(ref)
    (ref.path / "b.txt").write_text("truncated-and-longer")
    assert store.get("s", ref.key) is None


def flip_a_byte_keeping_mtime(path: Path) -> None:
    """A same-size corruption that even restores the file's mtime (only ctime betrays it)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_a_same_size_corruption_is_never_reused_it_is_set_aside_and_rebuilt(
        store: ArtifactStore, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    ref = store.produce("s", "1", {}, [], lambda b: write_two_units(b, calls))
    assert store.get("s", ref.key) == ref  # verified (from the stats recorded at build time)
    flip_a_byte_keeping_mtime(ref.path / "a.txt")
    assert store.get("s", ref.key) is None  # the consumer is never handed the damaged file
    with caplog.at_level(logging.WARNING, logger="kiln.store"):
        again = store.produce("s", "1", {}, [], lambda b: write_two_units(b, calls))
    assert again == ref and calls == ["a", "b", "a", "b"]  # rebuilt, not reused
    assert (ref.path / "a.txt").read_text() == "aaa"
    (aside,) = (store.root / "s").glob(f".corrupt-{ref.key}-*")
    assert (aside / "a.txt").read_bytes() != b"aaa"  # the bad copy, kept for inspection
    (line,) = [r.getMessage() for r in caplog.records if "moved it to" in r.getMessage()]
    assert "a.txt: content does not match its sha256" in line and str(aside) in line
    assert store.gc({f"s/{ref.key}"}) == [aside]  # gc removes the set-aside copy


def test_warm_check_hashes_only_files_whose_stat_changed(
        store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = store.produce("s", "1", {}, [], lambda b: write_two_units(b, []))
    hashed: list[str] = []
    real = local.sha256_file
    monkeypatch.setattr(local, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    assert store.get("s", ref.key) == ref and hashed == []  # a warm rerun: stats only
    (ref.path / "b.txt").write_text("bbb")  # rewritten with the same content: new stat, same hash
    assert store.get("s", ref.key) == ref and hashed == ["b.txt"]
    assert store.get("s", ref.key) == ref and hashed == ["b.txt"]  # its new stat was recorded
    store.verify(ref)  # kiln artifacts show --verify: every file, whatever the stats
    assert sorted(hashed) == ["a.txt", "b.txt", "b.txt"]


def test_a_copied_store_is_verified_once_by_its_own_files(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a")
    ref = store.produce("s", "1", {}, [], lambda b: write_two_units(b, []))
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)  # new inodes: every file re-hashed
    copy = open_store(tmp_path / "b")
    flip_a_byte_keeping_mtime(copy.ref("s", ref.key).path / "b.txt")
    assert copy.get("s", ref.key) is None and store.get("s", ref.key) == ref


def test_a_file_added_to_an_artifact_makes_it_unusable(store: ArtifactStore) -> None:
    ref = store.produce("s", "1", {}, [], lambda b: write_two_units(b, []))
    (ref.path / "c.txt").write_text("injected")  # a consumer globbing *.txt would read it
    assert store.get("s", ref.key) is None
    with pytest.raises(KilnError, match="c.txt: not listed in the manifest"):
        store.verify(ref)


def test_manifest_separates_content_from_run_logs(tmp_path: Path) -> None:
    def work(build: Build, took: float) -> None:
        build.run_logs = ["timings.json", "logs/*"]
        (build.dir / "weights.bin").write_bytes(b"w" * 64)
        (build.dir / "timings.json").write_text(json.dumps({"elapsed_s": took}))
        (build.dir / "logs").mkdir()
        (build.dir / "logs" / "run.log").write_text(f"took {took}")

    one = open_store(tmp_path / "one").produce("s", "1", {}, [], lambda b: work(b, 1.5))
    two = open_store(tmp_path / "two").produce("s", "1", {}, [], lambda b: work(b, 2.25))
    m1, m2 = (json.loads((r.path / "manifest.json").read_text()) for r in (one, two))
    assert set(m1["files"]) == {"weights.bin"} and set(m1["logs"]) == {"timings.json", "logs/run.log"}
    assert m1["content_sha256"] == m2["content_sha256"] == content_sha256(m1["files"])
    assert m1["logs"] != m2["logs"]
    flip_a_byte_keeping_mtime(one.path / "logs" / "run.log")  # logs are verified like content
    assert open_store(tmp_path / "one").get("s", one.key) is None


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
