"""Artifacts survive what production throws at them: kill -9 mid-stage, two runs at once, a full disk, unreadable input.

Stages run in child processes (``python -c``) so they can really be SIGKILLed. A
small hook in the child, around `Build.mark_done`, logs each finished unit and can
stop the stage for good between writing a unit's outputs and marking it done, the
worst moment to die.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from kiln.errors import KilnError
from storage.local import STAT_CACHE
from storage.store import MANIFEST, ArtifactStore, Build, artifact_key, open_store
from tasks.download import DownloadConfig, SourceSpec, download
from tests.conftest import BGWIKI_SAMPLE, ENWIKI_SAMPLE, REPO_ROOT, gensim_file

TABLE_SAMPLE = "enwiki-table-markup.xml.bz2"

# Runs one stage in a child process. argv: stage, store root, sources (JSON), marks log, hang-at-mark
# (0 = never), ready file, go file (wait for it before starting; "" = start at once).
CHILD = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from storage.store import ArtifactStore, Build, open_store
    from tasks.clean import CleanConfig, clean
    from tasks.download import DownloadConfig, SourceSpec, download

    stage, root, sources, marks, hang_at, ready, go = sys.argv[1:]
    real_mark_done, count = Build.mark_done, [0]

    def mark_done(self, name, info=None):
        count[0] += 1
        if count[0] == int(hang_at):  # this unit's outputs are written, its marker is not
            Path(ready).write_text("hung")
            time.sleep(600)
        real_mark_done(self, name, info)
        with open(marks, "a") as fh:
            fh.write(f"{os.getpid()} {name}\\n")
        time.sleep(0.2)  # let a concurrent run catch up with this one

    Build.mark_done = mark_done
    if go:
        Path(ready).write_text("ready")
        while not Path(go).exists():
            time.sleep(0.05)
    store = open_store(root)
    cfg = DownloadConfig(sources=[SourceSpec(name, url) for name, url in json.loads(sources)])
    ref = download(cfg, store)
    if stage == "clean":
        ref = clean(ref, CleanConfig(docs_per_shard=40), store)
    print(json.dumps({"stage": ref.stage, "key": ref.key, "uri": ref.uri}))
""")


def sources() -> str:
    """Three real dumps, so each stage has three units."""
    files = [ENWIKI_SAMPLE, BGWIKI_SAMPLE, TABLE_SAMPLE]
    return json.dumps([[f"{i}-{name.split('-')[0]}.xml.bz2", str(gensim_file(name))] for i, name in enumerate(files)])


def start(stage: str, root: Path, marks: Path, *, hang_at: int = 0, ready: Path | None = None,
          go: Path | None = None) -> subprocess.Popen[str]:
    args = [stage, str(root), sources(), str(marks), str(hang_at), str(ready or ""), str(go or "")]
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def marked(marks: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in marks.read_text().splitlines()] if marks.exists() else []


def data_digests(artifact: Path) -> dict[str, str]:
    """sha256 of every file but the manifest (which records times and the build id) and the store's
    record of verified file stats."""
    return {str(p.relative_to(artifact)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(artifact.rglob("*")) if p.is_file() and p.name not in (MANIFEST, STAT_CACHE)}


def marked_for(reference: dict[str, Path], stage: str) -> list[str]:
    """The unit names a stage marks in an uninterrupted run (download's are its source names)."""
    names = marked(reference["marks"])
    source_names = [name for name, _ in json.loads(sources())]
    return [n for n in names if n in source_names] if stage == "download" else \
        [n for n in names if n not in source_names]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both stages run once without interruption: what every other run must reproduce byte for byte."""
    root = tmp_path_factory.mktemp("reference")
    ref = finish(start("clean", root, root / "marks.log"))
    raw = open_store(root).list()[0]
    return {"download": Path(raw["uri"]), "clean": Path(ref["uri"]), "marks": root / "marks.log"}


@pytest.mark.parametrize("stage", ["download", "clean"])
def test_kill_9_mid_stage_then_rerun_is_byte_identical_and_redoes_only_unfinished_units(
    stage: str, reference: dict[str, Path], tmp_path: Path
) -> None:
    root, marks, ready = tmp_path / "store", tmp_path / "marks.log", tmp_path / "hung"
    # Download first, uninterrupted, when clean is the stage to kill.
    hang_at = 2 if stage == "download" else len(marked_for(reference, "download")) + 2
    victim = start(stage, root, marks, hang_at=hang_at, ready=ready)
    wait_for(ready, victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    survived = marked(marks)
    assert not [p for p in (root / stage).glob("[!.]*")], "a killed stage must leave no artifact"

    marks.rename(tmp_path / "killed.log")
    result = finish(start(stage, root, marks))
    redone = marked(marks)
    finished_before = [m for m in survived if m in marked_for(reference, stage)]
    assert finished_before and not set(finished_before) & set(redone), (finished_before, redone)
    rebuilt = Path(result["uri"])
    assert data_digests(rebuilt) == data_digests(reference[stage])
    ours = json.loads((rebuilt / MANIFEST).read_text())
    theirs = json.loads((reference[stage] / MANIFEST).read_text())
    assert ours["files"] == theirs["files"] and ours["counts"] == theirs["counts"]  # nothing duplicated
    assert not list(rebuilt.rglob("*.part")) and not list(rebuilt.rglob(".*.tmp"))


def test_two_runs_of_one_stage_at_once_build_it_once(reference: dict[str, Path], tmp_path: Path) -> None:
    root, marks, go = tmp_path / "store", tmp_path / "marks.log", tmp_path / "go"
    procs = [start("clean", root, marks, ready=tmp_path / f"ready-{i}", go=go) for i in range(2)]
    for i, proc in enumerate(procs):
        wait_for(tmp_path / f"ready-{i}", proc)
    go.write_text("go")  # both call the stage within milliseconds of each other
    results = [finish(proc) for proc in procs]
    assert results[0] == results[1]
    lines = marks.read_text().splitlines()
    units = [line.split(" ", 1)[1] for line in lines]
    assert sorted(units) == sorted(marked(reference["marks"])), "every unit was built exactly once"
    store = open_store(root)
    for m in store.list():
        store.verify(store.ref(m["stage"], m["key"]))
    assert data_digests(Path(results[0]["uri"])) == data_digests(reference["clean"])


# -- a full disk ------------------------------------------------------------------------------------------
def write_units(build: Build, size: int) -> None:
    for unit in ("a", "b"):
        if not build.unit_done(unit):
            (build.dir / f"{unit}.bin").write_bytes(os.urandom(size))
            build.mark_done(unit)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs (needs root and mount rights; skipped elsewhere, the monkeypatched test still runs)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_is_one_line_naming_the_file_and_keeps_earlier_artifacts(tiny_disk: Path) -> None:
    store = open_store(tiny_disk / "store")
    small = download(DownloadConfig(sources=[SourceSpec("bg.xml.bz2", str(gensim_file(BGWIKI_SAMPLE)))]), store)
    with pytest.raises(KilnError) as err:  # the enwiki sample is 1.7 MB
        download(DownloadConfig(sources=[SourceSpec("en.xml.bz2", str(gensim_file(ENWIKI_SAMPLE)))]), store)
    message = str(err.value)
    assert "disk full" in message and str(tiny_disk) in message and "\n" not in message
    assert [m["key"] for m in store.list()] == [small.key]  # no half artifact
    store.verify(small)


def test_disk_full_while_writing_the_manifest_leaves_no_artifact(store: ArtifactStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = store.produce("s", "1", {"v": 1}, [], lambda b: write_units(b, 10))
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        if Path(dst).name == MANIFEST:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KilnError) as err:
        store.produce("s", "1", {"v": 2}, [], lambda b: write_units(b, 10))
    key = artifact_key("s", "1", {"v": 2}, [])
    assert str(err.value).startswith(str(store.partial_dir("s", key) / MANIFEST)) and "disk full" in str(err.value)
    assert store.get("s", key) is None and not store.final_dir("s", key).exists()
    monkeypatch.setattr(os, "replace", real_replace)
    store.verify(before)
    assert store.produce("s", "1", {"v": 2}, [], lambda b: write_units(b, 10)).key == key  # resumes once space is back


def test_disk_full_inside_a_stage_names_the_file_being_written(store: ArtifactStore) -> None:
    def work(build: Build) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(build.dir / "shard-00003.parquet"))

    with pytest.raises(KilnError, match=r"shard-00003.parquet: disk full while writing"):
        store.produce("s", "1", {}, [], work)


# -- unreadable input -------------------------------------------------------------------------------------
def test_unreadable_source_names_the_source_not_the_store(store: ArtifactStore, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, where chmod 000 does not stop reads: make the read fail as it would for a user.
    source = tmp_path / "locked.xml.bz2"
    shutil.copyfile(gensim_file(BGWIKI_SAMPLE), source)
    real_copyfile = shutil.copyfile

    def copyfile(src: Any, dst: Any, **kwargs: Any) -> Any:
        if Path(src) == source:
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return real_copyfile(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    with pytest.raises(KilnError) as err:
        download(DownloadConfig(sources=[SourceSpec("x.xml.bz2", str(source))]), store)
    assert str(err.value).startswith(f"{source}: cannot read (Permission denied)") and "\n" not in str(err.value)
    assert store.list() == []


def test_directory_in_place_of_an_input_file_is_a_clear_error(store: ArtifactStore) -> None:
    from tasks.clean import CleanConfig, clean

    raw = download(DownloadConfig(sources=[SourceSpec("bg.xml.bz2", str(gensim_file(BGWIKI_SAMPLE)))]), store)
    dump = raw.path / "files" / "bg.xml.bz2"
    dump.unlink()  # a damaged copy of the artifact: the dump is now a directory
    dump.mkdir()
    with pytest.raises(KilnError) as err:
        clean(raw, CleanConfig(), store)
    assert str(raw.path) in str(err.value) and "\n" not in str(err.value)
    assert [m["stage"] for m in store.list()] == ["download"]  # no clean artifact


@pytest.mark.parametrize("step", ["d1-", "d2-", "d3-"])
def test_kill_9_in_a_dedup_step_then_rerun_is_byte_identical(step: str, reference: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """Killed after a dedup job wrote its outputs but before its marker: the rerun keeps what was marked."""
    root, marks, ready = tmp_path / "store", tmp_path / "marks.log", tmp_path / "hung"
    names = marked(reference["marks"])
    hang_at = next(i for i, name in enumerate(names, 1) if name.startswith(step))
    victim = start("clean", root, marks, hang_at=hang_at, ready=ready)
    wait_for(ready, victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    survived = marked(marks)
    marks.rename(tmp_path / "killed.log")
    result = finish(start("clean", root, marks))
    redone = marked(marks)
    assert not set(survived) & set(redone) - set(marked_for(reference, "download"))
    assert names[hang_at - 1] in redone
    assert data_digests(Path(result["uri"])) == data_digests(reference["clean"])
