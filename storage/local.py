"""The local artifact store: every stage output lives at ``<root>/<stage>/<key>/``.

Why a store of our own rather than Prefect's result storage: artifacts are large
directories (Parquet shards, token files, checkpoints) that the trainer reads
without Prefect, and "is this stage done?" must have one answer whoever asks.

- A stage builds into ``<root>/<stage>/.partial-<key>/``. Units of work inside it
  (input shard i → output shard i) are marked done one by one, so a killed stage
  resumes with only the missing units. When all is written, ``manifest.json``
  (files with sizes and sha256, counts, config, inputs) is written last and the
  directory is renamed to ``<root>/<stage>/<key>/`` in one step: an artifact either
  exists complete or not at all.
- An exclusive lock per key means two runs of the same stage never write the same
  artifact at once; the second finds the first's result.
- Nothing is reused unverified (`LocalStore.check`): an artifact counts as present only
  if every file its manifest lists is there, no unlisted file was added, and every
  file's content matches its sha256. Re-hashing everything on each warm run would cost
  minutes on a multi-GB artifact, so, as git's index does, the store records each
  file's (size, mtime_ns, ctime_ns, inode) after verifying it (``.verified.json``, not
  part of the artifact) and re-hashes only files whose stat changed. Writing a file
  changes its ctime, which no user-space call can set back, so a same-size corruption
  is always re-hashed; a copied store (new inodes) is re-hashed once. A corrupt artifact
  is moved aside to ``<stage>/.corrupt-<key>-<time>/`` for inspection and rebuilt.
- The manifest separates content (``files``, hashed together as ``content_sha256``) from
  run logs (``logs``: timings, host paths, metrics), so two builds of one key with the
  same content have the same ``content_sha256`` however long they took.
- An object store (`storage.remote.RemoteStore`) keeps one of these as its local build
  and read cache. Open either through `storage.store.open_store`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.config import canonical_dict, canonical_json
from kiln.errors import KilnError
from kiln.hashing import sha256_file
from storage.atomic import atomic_write_text, disk_error
from storage.ref import ArtifactRef, artifact_key

MANIFEST = "manifest.json"
UNITS_DIR = ".units"
STAT_CACHE = ".verified.json"
DEFAULT_ROOT = "kiln-artifacts"
RUNS_LOG = "runs.jsonl"
CORRUPT_PREFIX = ".corrupt-"
log = logging.getLogger("kiln.store")
_BUILT_HERE: ContextVar[set[str] | None] = ContextVar("kiln_built_here", default=None)


@contextlib.contextmanager
def record_builds() -> Iterator[set[str]]:
    """Collect the ``stage/key`` of every artifact finalized in this context (thread) while the block runs.

    Lets a caller tell "built it" from "found it finished by another run" after waiting on its lock.
    """
    built: set[str] = set()
    token = _BUILT_HERE.set(built)
    try:
        yield built
    finally:
        _BUILT_HERE.reset(token)


def manifest_files(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every file an artifact holds, content and run logs: ``{relative path: {size, sha256}}``."""
    return {**manifest["files"], **manifest.get("logs", {})}


def content_sha256(files: dict[str, dict[str, Any]]) -> str:
    """One hash of an artifact's content files (paths and their sha256): equal for equal content."""
    return hashlib.sha256(canonical_json({rel: meta["sha256"] for rel, meta in files.items()}).encode()).hexdigest()


def _stat_signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _local_path(root: str | os.PathLike) -> Path:
    text = str(root)
    return Path(text.removeprefix("file://") if text.startswith("file://") else text).resolve()


def artifact_problem(path: str | os.PathLike) -> str | None:
    """If `path` is a local artifact directory or lies inside one (e.g. a training artifact's ``final/``),
    why that artifact fails its store check (`LocalStore.check`); None if it passes or is no artifact.

    For readers handed a path rather than a ref (``kiln generate <dir>``): the model's own checksums
    catch damage, this also catches weights rewritten together with their checksums.
    """
    here = Path(path).resolve()
    for candidate in (here, *list(here.parents)[:2]):
        if (candidate / MANIFEST).is_file() and not candidate.name.startswith("."):
            ref = ArtifactRef(candidate.parent.name, candidate.name, str(candidate))
            return LocalStore(candidate.parent.parent).check(ref)
    return None


def build_error(partial: Path, exc: OSError) -> KilnError:
    """One line for an OSError escaping a stage: a full or read-only disk names the file (else the build
    directory) being written; a failure on any other file (an input that is unreadable or missing) names it."""
    where = Path(exc.filename) if exc.filename else partial
    if where.is_relative_to(partial):
        return disk_error(where, exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # e.g. shutil.copyfile names its source
        return disk_error(partial, exc)
    reason = exc.strerror or type(exc).__name__
    return KilnError(f"{where}: cannot read ({reason}); check that the stage's input exists and is readable")


@dataclass
class Build:
    """A stage's work-in-progress directory, with per-unit completion markers for resume."""

    dir: Path
    stage: str
    key: str
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    run_logs: list[str] = field(default_factory=list)
    """Glob patterns (relative to `dir`) of files that record how the build ran (timings, host paths,
    metrics), not what it made: listed under the manifest's ``logs``, outside ``content_sha256``."""

    def is_run_log(self, rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, pattern) for pattern in self.run_logs)

    def unit_done(self, name: str) -> bool:
        """Whether unit `name` finished in this or an earlier (killed) attempt."""
        return (self.dir / UNITS_DIR / f"{name}.done").exists()

    def mark_done(self, name: str, info: dict[str, Any] | None = None) -> None:
        """Record that unit `name` is fully written (call only after its outputs are in place)."""
        atomic_write_text(self.dir / UNITS_DIR / f"{name}.done", json.dumps(info or {}))

    def unit_info(self, name: str) -> dict[str, Any]:
        """The info saved with `mark_done` (e.g. counts of that unit)."""
        return json.loads((self.dir / UNITS_DIR / f"{name}.done").read_text())


class LocalStore:
    """The artifact store in a local directory `root` (created on first write)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = _local_path(root)

    @property
    def location(self) -> str:
        """Where the artifacts live: for this store, its directory."""
        return str(self.root)

    # -- locations -----------------------------------------------------------
    def final_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def partial_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / f".partial-{key}"

    def ref(self, stage: str, key: str) -> ArtifactRef:
        return ArtifactRef(stage, key, str(self.final_dir(stage, key)))

    # -- queries -------------------------------------------------------------
    def get(self, stage: str, key: str) -> ArtifactRef | None:
        """The artifact if it exists complete and verified (see `check`); None if it must be (re)built."""
        ref = self.ref(stage, key)
        return ref if (ref.path / MANIFEST).is_file() and self.check(ref) is None else None

    def manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        """The artifact's manifest; KilnError if it is missing or unreadable."""
        path = ref.path / MANIFEST
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KilnError(f"{path}: artifact {ref} does not exist; run its stage first") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise KilnError(f"{path}: unreadable manifest ({exc}); delete {ref.path} to rebuild it") from None

    def check(self, ref: ArtifactRef, *, rehash: bool = False) -> str | None:
        """Why the artifact cannot be used (missing, unlisted or changed file, bad manifest), or None.

        A file whose stat matches the one recorded when it was last verified is not re-hashed,
        unless `rehash`; every other file is, and the new stats are recorded.
        """
        try:
            files = manifest_files(self.manifest(ref))
        except (KilnError, KeyError, TypeError, AttributeError) as exc:
            return f"{ref.path / MANIFEST}: unreadable manifest ({exc})"
        seen = self._stat_cache(ref)
        verified: dict[str, list[int]] = {}
        for rel, meta in files.items():
            f = ref.path / rel
            try:
                st = f.stat()
            except OSError:
                return f"{f}: listed in the manifest but missing"
            if not stat.S_ISREG(st.st_mode) or st.st_size != meta["size"]:
                return f"{f}: size {st.st_size} bytes, the manifest says {meta['size']}"
            signature = _stat_signature(st)
            if (rehash or seen.get(rel) != signature) and sha256_file(f) != meta["sha256"]:
                return f"{f}: content does not match its sha256 in the manifest"
            verified[rel] = signature
        unlisted = sorted({str(p.relative_to(ref.path)) for p in ref.path.rglob("*") if p.is_file()}
                          - set(files) - {MANIFEST, STAT_CACHE})
        if unlisted:
            return f"{ref.path / unlisted[0]}: not listed in the manifest (added after the build)"
        if verified != seen:
            with contextlib.suppress(OSError):  # a read-only store is verified again next time
                atomic_write_text(ref.path / STAT_CACHE, json.dumps(verified))
        return None

    def _stat_cache(self, ref: ArtifactRef) -> dict[str, Any]:
        try:
            cache = json.loads((ref.path / STAT_CACHE).read_text())
        except (OSError, ValueError):
            return {}
        return cache if isinstance(cache, dict) else {}

    def verify(self, ref: ArtifactRef) -> None:
        """Re-hash every file against the manifest, whatever the recorded stats; KilnError naming the problem."""
        problem = self.check(ref, rehash=True)
        if problem is not None:
            raise KilnError(f"{problem}; rerun its stage to rebuild {ref} (the damaged copy is moved aside)")

    def set_aside(self, ref: ArtifactRef, problem: str) -> Path:
        """Move a damaged artifact out of the way (kept for inspection until gc) so its stage rebuilds it."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        aside = ref.path.with_name(f"{CORRUPT_PREFIX}{ref.key}-{stamp}")
        os.rename(ref.path, aside)
        log.warning("%s: %s; moved it to %s and rebuilding it", ref, problem, aside)
        return aside

    def list(self) -> list[dict[str, Any]]:
        """Manifests of every complete artifact, oldest first."""
        out = []
        for manifest_path in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            if manifest_path.parent.name.startswith("."):
                continue
            try:
                m = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            m["uri"] = str(manifest_path.parent)
            out.append(m)
        return sorted(out, key=lambda m: m.get("created_at", ""))

    # -- building ------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Exclusive per-key lock (a file lock: it holds across processes on this machine)."""
        lock_path = self.root / stage / f".lock-{key}"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def produce(
        self,
        stage: str,
        code_version: str,
        config: Any,
        inputs: Sequence[ArtifactRef],
        work: Callable[[Build], None],
    ) -> ArtifactRef:
        """Return the artifact for (stage, config, inputs), running `work` only if it does not exist.

        `work` writes into `build.dir` and fills `build.counts`; it may skip units
        already marked done by a killed earlier attempt.
        """
        key = artifact_key(stage, code_version, config, inputs)
        if (ref := self.get(stage, key)) is not None:
            return ref
        with self.lock(stage, key):
            final = self.ref(stage, key)
            if final.path.exists():  # finished meanwhile by another run, or damaged (or left without a manifest)
                if (problem := self.check(final)) is None:
                    return final
                self.set_aside(final, problem)
            partial = self.partial_dir(stage, key)
            try:
                partial.mkdir(parents=True, exist_ok=True)
                build = Build(partial, stage, key)
                started = time.monotonic()
                work(build)
                self._finalize(build, code_version, config, inputs, time.monotonic() - started)
            except OSError as exc:
                raise build_error(partial, exc) from exc
        ref = self.get(stage, key)
        if ref is None:
            raise KilnError(f"{self.final_dir(stage, key)}: stage {stage} finished but left no valid artifact")
        return ref

    def _finalize(
        self, build: Build, code_version: str, config: Any, inputs: Sequence[ArtifactRef], elapsed: float
    ) -> None:
        shutil.rmtree(build.dir / UNITS_DIR, ignore_errors=True)
        files: dict[str, dict[str, Any]] = {}
        logs: dict[str, dict[str, Any]] = {}
        for p in sorted(build.dir.rglob("*")):
            rel = str(p.relative_to(build.dir))
            if p.is_file() and rel not in (MANIFEST, STAT_CACHE):
                (logs if build.is_run_log(rel) else files)[rel] = {"size": p.stat().st_size,
                                                                   "sha256": sha256_file(p)}
        manifest = {
            "stage": build.stage,
            "key": build.key,
            "code_version": code_version,
            "build_id": uuid.uuid4().hex[:12],
            "content_sha256": content_sha256(files),
            "kiln_version": __version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 3),
            "config": canonical_dict(config),
            "inputs": [{"stage": r.stage, "key": r.key} for r in inputs],
            "counts": build.counts,
            "files": files,
            "logs": logs,
            **build.extra,
        }
        atomic_write_text(build.dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
        final = self.final_dir(build.stage, build.key)  # absent: `produce` set any earlier one aside
        os.rename(build.dir, final)
        if (built := _BUILT_HERE.get()) is not None:
            built.add(f"{build.stage}/{build.key}")
        # Just hashed: record the stats so the next run's check need not hash again.
        signatures = {rel: _stat_signature((final / rel).stat()) for rel in {**files, **logs}}
        atomic_write_text(final / STAT_CACHE, json.dumps(signatures))

    # -- run log and garbage collection -----------------------------------------
    def record_run(self, label: str, refs: dict[str, ArtifactRef]) -> None:
        """Append the artifacts a pipeline run used to ``runs.jsonl`` (what gc keeps)."""
        entry = self.run_entry(label, refs)
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock("", "runs"), open(self.root / RUNS_LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    @staticmethod
    def run_entry(label: str, refs: dict[str, ArtifactRef]) -> dict[str, Any]:
        return {
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "label": label,
            "artifacts": {stage: f"{ref.stage}/{ref.key}" for stage, ref in refs.items()},
        }

    def recent_runs(self, n: int) -> list[dict[str, Any]]:
        """The last `n` entries of the run log, oldest first."""
        path = self.root / RUNS_LOG
        if not path.exists():
            return []
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return [json.loads(ln) for ln in lines[-n:]] if n > 0 else []

    def gc(self, keep: set[str], *, dry_run: bool = False) -> Sequence[Path | str]:
        """Delete artifacts whose ``stage/key`` is not in `keep`, plus abandoned partial builds."""
        doomed = [
            p
            for p in sorted(self.root.glob("*/*"))
            if p.is_dir() and (p.name.startswith(".partial-") or f"{p.parent.name}/{p.name}" not in keep)
        ]
        if not dry_run:
            for p in doomed:
                shutil.rmtree(p, ignore_errors=True)
        return doomed
