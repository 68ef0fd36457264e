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
- An object store (`storage.remote.RemoteStore`) keeps one of these as its local build
  and read cache. Open either through `storage.store.open_store`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.config import canonical_dict
from kiln.errors import KilnError
from storage.atomic import atomic_write_text, disk_error
from storage.ref import ArtifactRef, artifact_key

MANIFEST = "manifest.json"
UNITS_DIR = ".units"
BUILD_ID_FILE = ".build-id"
DEFAULT_ROOT = "kiln-artifacts"
RUNS_LOG = "runs.jsonl"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Streaming sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _local_path(root: str | os.PathLike) -> Path:
    text = str(root)
    return Path(text.removeprefix("file://") if text.startswith("file://") else text).resolve()


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
        """The artifact if it exists complete (manifest present and its files of the right size)."""
        ref = self.ref(stage, key)
        try:
            manifest = self.manifest(ref)
        except KilnError:
            return None
        for rel, meta in manifest["files"].items():
            f = ref.path / rel
            if not f.is_file() or f.stat().st_size != meta["size"]:
                return None
        return ref

    def manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        """The artifact's manifest; KilnError if it is missing or unreadable."""
        path = ref.path / MANIFEST
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KilnError(f"{path}: artifact {ref} does not exist; run its stage first") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise KilnError(f"{path}: unreadable manifest ({exc}); delete {ref.path} to rebuild it") from None

    def verify(self, ref: ArtifactRef) -> None:
        """Recompute every file's sha256 against the manifest; KilnError naming the first mismatch."""
        for rel, meta in self.manifest(ref)["files"].items():
            f = ref.path / rel
            if not f.is_file() or sha256_file(f) != meta["sha256"]:
                raise KilnError(f"{f}: content does not match its manifest; delete {ref.path} to rebuild it")

    def cache_token(self, stage: str, key: str) -> str:
        """Identifies one build of this key; Prefect's cache key is built from it.

        It changes when the artifact is deleted and rebuilt, so Prefect never reports
        Cached for an artifact that no longer exists. A killed build keeps its token,
        so its retry is the same logical build, resumed.
        """
        ref = self.get(stage, key)
        if ref is not None:
            return str(self.manifest(ref).get("build_id", "none"))
        return self.partial_token(stage, key)

    def partial_token(self, stage: str, key: str) -> str:
        """The build token of the (possibly killed) partial build of `key`, created on first use."""
        partial = self.partial_dir(stage, key)
        token_file = partial / BUILD_ID_FILE
        if token_file.exists():
            return token_file.read_text().strip()
        token = uuid.uuid4().hex[:12]
        partial.mkdir(parents=True, exist_ok=True)
        atomic_write_text(token_file, token)
        return token

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
            if (ref := self.get(stage, key)) is not None:  # another run finished it meanwhile
                return ref
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
        token_file = build.dir / BUILD_ID_FILE
        build_id = token_file.read_text().strip() if token_file.exists() else uuid.uuid4().hex[:12]
        token_file.unlink(missing_ok=True)
        files = {
            str(p.relative_to(build.dir)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(build.dir.rglob("*"))
            if p.is_file() and p != build.dir / MANIFEST
        }
        manifest = {
            "stage": build.stage,
            "key": build.key,
            "code_version": code_version,
            "build_id": build_id,
            "kiln_version": __version__,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "elapsed_s": round(elapsed, 3),
            "config": canonical_dict(config),
            "inputs": [{"stage": r.stage, "key": r.key} for r in inputs],
            "counts": build.counts,
            "files": files,
            **build.extra,
        }
        atomic_write_text(build.dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False))
        final = self.final_dir(build.stage, build.key)
        if final.exists():  # a stale incomplete directory (manifest lost): replace it
            shutil.rmtree(final)
        os.rename(build.dir, final)

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
