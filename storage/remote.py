"""Artifacts under any fsspec URL (``s3://bucket/kiln``, ``gs://…``): built locally, uploaded, fetched on demand.

    KILN_HOME=s3://bucket/kiln kiln run configs/demo.toml      # or [store] root = "s3://bucket/kiln"

Keys and cache tokens are the local store's. The layout under the remote root:

    <stage>/<key>/manifest.json            written last: the artifact exists exactly when it does
    <stage>/<key>/data-<build_id>/<files>  the files that manifest lists (sizes, sha256)
    runs/<time>-<id>.json                  one object per pipeline run (object stores cannot append)

Files sit under their build id because two machines may build one key at the same
time: each uploads into its own prefix and the manifest, written last, names one
complete set, so a reader never mixes the files of two builds; `gc` drops the other set.

Locally, ``$KILN_CACHE_DIR/<scheme>/<bucket>/<path>`` (default ``~/.cache/kiln/…``) is an
ordinary `LocalStore`, the remote store's `mirror` (composed, not inherited): stages build
there, because memmaps, sentencepiece and torchrun need POSIX paths, and `ArtifactRef.path`
downloads an artifact there the first time it is read, keeping it only if every size and
sha256 matches the manifest.

Credentials come from the filesystem library's environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for s3fs) and never from the URL: URLs
appear in logs, errors and the Prefect UI, so ``s3://key:secret@bucket`` is refused.
Manifests hold stage configs and hashes only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kiln.errors import KilnError
from storage.atomic import atomic_write_bytes, disk_error
from storage.local import MANIFEST, Build, LocalStore, manifest_files, sha256_file
from storage.ref import ArtifactRef, artifact_key, register_remote_root

CACHE_ENV = "KILN_CACHE_DIR"
RUNS_DIR = "runs"
DATA_PREFIX = "data-"
log = logging.getLogger("kiln.storage")

# Remote artifacts already checked into the local cache by this process: `ArtifactRef.path`
# is read in loops, and each check would otherwise re-read a manifest and stat every file.
_MATERIALIZED: dict[str, Path] = {}


def cache_dir_for(url: str) -> Path:
    """The local cache directory of a remote root: the same on every run on this machine."""
    parts = urlsplit(url)
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "kiln")
    return (base / parts.scheme / parts.netloc / parts.path.strip("/")).resolve()


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.username or parts.password:  # say where, without repeating the secret
        raise KilnError(f"{parts.scheme}://…@{parts.hostname}: credentials in a store URL end up in logs; "
                        "remove them and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the backend's env)")
    if not parts.netloc:
        raise KilnError(f"{url}: a remote store URL needs a bucket, e.g. s3://bucket/kiln")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class RemoteStore:
    """The artifact store under an fsspec URL, with a `LocalStore` as its build and read cache."""

    def __init__(self, url: str) -> None:
        _check_url(url)
        self.url = url.rstrip("/")
        self.mirror = LocalStore(cache_dir_for(self.url))
        self._fs: Any = None
        self._base = ""
        self._bucket_checked = False
        register_remote_root(self.url, self._materialize_ref)

    @property
    def location(self) -> str:
        """The store's URL: what tasks and remote workers receive to open the same store."""
        return self.url

    @property
    def root(self) -> Path:
        """The local cache directory (where stages build and artifacts are read)."""
        return self.mirror.root

    def __getstate__(self) -> dict[str, Any]:
        # A filesystem holds sessions and event loops; a store travelling to a worker opens its own.
        return {**self.__dict__, "_fs": None, "_base": ""}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        register_remote_root(self.url, self._materialize_ref)

    # -- the filesystem ----------------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The fsspec filesystem (imported on first use: ``kiln artifacts ls`` on a local store needs none)."""
        if self._fs is None:
            try:
                import fsspec

                self._fs, self._base = fsspec.core.url_to_fs(self.url)
            except ImportError as exc:
                raise KilnError(f"{self.url}: {_first_line(exc)}; install Kiln's extra for it, "
                                "e.g. pip install 'kiln[s3]'") from None
            self._base = self._base.rstrip("/")
        return self._fs

    def _rpath(self, *parts: str) -> str:
        fs = self.fs  # sets self._base
        del fs
        return "/".join([self._base, *parts])

    def _data_prefix(self, stage: str, key: str, manifest: dict[str, Any]) -> str:
        return self._rpath(stage, key, f"{DATA_PREFIX}{manifest['build_id']}")

    @contextlib.contextmanager
    def _errors(self, doing: str, missing: str | None = None) -> Iterator[None]:
        """Backend errors as one-line KilnErrors; FileNotFoundError passes unless `missing` says what it means."""
        try:
            yield
        except KilnError:
            raise
        except FileNotFoundError:
            if missing is None:
                raise
            raise KilnError(f"{self.url}: {missing} while {doing}") from None
        except PermissionError:
            raise KilnError(f"{self.url}: access denied while {doing}; check the storage credentials (AWS_ACCESS_KEY_ID"
                            " / AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL) and the bucket policy") from None
        except Exception as exc:  # botocore, aiohttp, gcsfs… share no base class; the message is what the user needs
            raise KilnError(f"{self.url}: {doing} failed: {type(exc).__name__}: {_first_line(exc)}") from None

    # -- locations and queries --------------------------------------------------------------
    def final_dir(self, stage: str, key: str) -> Path:
        return self.mirror.final_dir(stage, key)

    def partial_dir(self, stage: str, key: str) -> Path:
        return self.mirror.partial_dir(stage, key)

    def ref(self, stage: str, key: str) -> ArtifactRef:
        return ArtifactRef(stage, key, f"{self.url}/{stage}/{key}")

    def lock(self, stage: str, key: str) -> contextlib.AbstractContextManager[None]:
        """The per-key lock of the local cache: one build or download of a key at a time on this machine."""
        return self.mirror.lock(stage, key)

    def _remote_manifest(self, stage: str, key: str) -> tuple[dict[str, Any], bytes] | None:
        """The remote manifest (parsed and raw), None if absent or unreadable (then the key is rebuilt)."""
        path = self._rpath(stage, key, MANIFEST)
        with self._errors(f"reading {stage}/{key}/{MANIFEST}"):
            try:
                self.fs.invalidate_cache(path)  # another machine may have written it since we last looked
                raw = self.fs.cat_file(path)
            except FileNotFoundError:
                return None
        try:
            return json.loads(raw), raw
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("%s/%s/%s/%s is unreadable; the artifact will be rebuilt", self.url, stage, key, MANIFEST)
            return None

    def get(self, stage: str, key: str) -> ArtifactRef | None:
        """The artifact if its remote manifest exists and every file it lists is there with the right size."""
        found = self._remote_manifest(stage, key)
        if found is None:
            return None
        manifest = found[0]
        prefix = self._data_prefix(stage, key, manifest)
        with self._errors(f"listing {stage}/{key}"):
            self.fs.invalidate_cache(prefix)
            try:
                listing = self.fs.find(prefix, detail=True)
            except FileNotFoundError:
                listing = {}
        strip = self.fs._strip_protocol(prefix).rstrip("/") + "/"
        sizes = {path.removeprefix(strip): info.get("size") for path, info in listing.items()}
        if any(sizes.get(rel) != meta["size"] for rel, meta in manifest_files(manifest).items()):
            return None
        return self.ref(stage, key)

    def manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        local = self.mirror.get(ref.stage, ref.key)
        if local is not None:
            return self.mirror.manifest(local)
        found = self._remote_manifest(ref.stage, ref.key)
        if found is None:
            raise KilnError(f"{ref.uri}: artifact {ref} does not exist; run its stage first")
        return found[0]

    def verify(self, ref: ArtifactRef) -> None:
        """Download if needed (re-download if the remote was rebuilt) and check every sha256."""
        found = self._remote_manifest(ref.stage, ref.key)
        local = self.mirror.get(ref.stage, ref.key)
        if found is not None and local is not None and self.mirror.manifest(local)["build_id"] != found[0]["build_id"]:
            shutil.rmtree(local.path)  # a stale copy of an older build of the same key
            _MATERIALIZED.pop(ref.uri, None)
        self.mirror.verify(self.mirror.ref(ref.stage, self.materialize(ref.stage, ref.key).name))

    def list(self) -> list[dict[str, Any]]:
        with self._errors("listing artifacts", missing="bucket or path not found"):
            self.fs.invalidate_cache()
            paths = self.fs.glob(self._rpath("*", "*", MANIFEST))
            raws = [self.fs.cat_file(p) for p in paths]
        out = []
        for raw in raws:
            with contextlib.suppress(UnicodeDecodeError, json.JSONDecodeError):
                m = json.loads(raw)
                m["uri"] = f"{self.url}/{m['stage']}/{m['key']}"
                out.append(m)
        return sorted(out, key=lambda m: m.get("created_at", ""))

    # -- building, uploading, downloading ---------------------------------------------------------
    def produce(
        self,
        stage: str,
        code_version: str,
        config: Any,
        inputs: Sequence[ArtifactRef],
        work: Callable[[Build], None],
    ) -> ArtifactRef:
        """Build in the local cache (resuming a killed build), then upload files and, last, the manifest."""
        key = artifact_key(stage, code_version, config, inputs)
        if (ref := self.get(stage, key)) is not None:
            return ref
        self._require_bucket()  # fail before a long build whose upload could only fail
        self.mirror.produce(stage, code_version, config, inputs, work)  # a no-op if built here before
        with self.lock(stage, key):
            if self.get(stage, key) is None:  # another process on this machine may have uploaded it
                self._upload(stage, key)
        return self.ref(stage, key)

    def _require_bucket(self) -> None:
        if self._bucket_checked:
            return
        bucket = self._rpath().lstrip("/").split("/")[0]
        with self._errors(f"checking bucket {bucket!r}"):
            if not self.fs.exists(bucket):
                raise KilnError(f"{self.url}: bucket {bucket!r} does not exist (or these credentials cannot see it); "
                                "create it or fix the store URL")
        self._bucket_checked = True

    def _upload(self, stage: str, key: str) -> None:
        local = self.mirror.final_dir(stage, key)
        raw = (local / MANIFEST).read_bytes()
        manifest = json.loads(raw)
        prefix = self._data_prefix(stage, key, manifest)
        with self._errors(f"uploading {stage}/{key}", missing="bucket not found"):
            for rel in manifest_files(manifest):
                self.fs.put_file(str(local / rel), f"{prefix}/{rel}")
            self.fs.pipe_file(self._rpath(stage, key, MANIFEST), raw)  # last: now the artifact exists
        files = manifest_files(manifest)
        size = sum(meta["size"] for meta in files.values())
        log.info("uploaded %s/%s (%d files, %.1f MB) to %s", stage, key, len(files), size / 1e6, self.url)

    def _materialize_ref(self, ref: ArtifactRef) -> Path:
        """`ArtifactRef.path` for this store's refs: memoized, as it is read in loops."""
        hit = _MATERIALIZED.get(ref.uri)
        if hit is not None and (hit / MANIFEST).is_file():
            return hit
        path = _MATERIALIZED[ref.uri] = self.materialize(ref.stage, ref.key)
        return path

    def materialize(self, stage: str, key: str) -> Path:
        """The artifact's local directory, downloading it first if this machine has no complete copy."""
        final = self.mirror.final_dir(stage, key)
        if self.mirror.get(stage, key) is not None:
            return final
        with self.mirror.lock(stage, key):
            if self.mirror.get(stage, key) is not None:
                return final
            found = self._remote_manifest(stage, key)
            if found is None:
                raise KilnError(f"{self.url}/{stage}/{key}: artifact does not exist (deleted by gc or never "
                                "uploaded); rerun its stage")
            self._download(stage, key, *found)
        return final

    def _download(self, stage: str, key: str, manifest: dict[str, Any], raw: bytes) -> None:
        final = self.mirror.final_dir(stage, key)
        tmp = final.with_name(f".download-{key}")
        prefix = self._data_prefix(stage, key, manifest)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            for rel, meta in manifest_files(manifest).items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with self._errors(f"downloading {stage}/{key}/{rel}", missing="file listed in the manifest is gone"):
                    self.fs.get_file(f"{prefix}/{rel}", str(target))
                if target.stat().st_size != meta["size"] or sha256_file(target) != meta["sha256"]:
                    raise KilnError(f"{self.url}/{stage}/{key}: {rel} does not match its manifest (size or sha256); "
                                    f"the remote artifact is damaged: delete {self.url}/{stage}/{key} to rebuild it")
            atomic_write_bytes(tmp / MANIFEST, raw)  # last, as in a local build
            if final.exists():  # a stale incomplete copy
                shutil.rmtree(final)
            os.rename(tmp, final)
        except OSError as exc:
            raise disk_error(tmp, exc) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("downloaded %s/%s from %s into %s", stage, key, self.url, final)

    # -- run log and garbage collection ---------------------------------------------------------
    def record_run(self, label: str, refs: dict[str, ArtifactRef]) -> None:
        entry = LocalStore.run_entry(label, refs)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%f")  # sorts by time, then a random tie-break
        with self._errors("recording the run", missing="bucket not found"):
            self.fs.pipe_file(self._rpath(RUNS_DIR, f"{stamp}-{uuid.uuid4().hex[:8]}.json"),
                              json.dumps(entry).encode("utf-8"))

    def recent_runs(self, n: int) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        with self._errors("reading the run log"):
            self.fs.invalidate_cache(self._rpath(RUNS_DIR))
            try:
                paths = sorted(self.fs.glob(self._rpath(RUNS_DIR, "*.json")))[-n:]
            except FileNotFoundError:
                return []
            return [json.loads(self.fs.cat_file(p)) for p in paths]

    def gc(self, keep: set[str], *, dry_run: bool = False) -> Sequence[Path | str]:
        """Delete remote artifacts not in `keep` and stray build prefixes of kept ones, then the same locally."""
        doomed: list[str] = []
        with self._errors("collecting garbage", missing="bucket or path not found"):
            self.fs.invalidate_cache()
            for key_dir in sorted(self.fs.glob(self._rpath("*", "*"))):
                stage, key = key_dir.rstrip("/").split("/")[-2:]
                if stage == RUNS_DIR or not self.fs.isdir(key_dir):
                    continue
                if f"{stage}/{key}" not in keep:
                    doomed.append(key_dir)
                    continue
                found = self._remote_manifest(stage, key)
                live = f"{DATA_PREFIX}{found[0]['build_id']}" if found else None
                for sub in self.fs.ls(key_dir, detail=False):
                    name = sub.rstrip("/").rsplit("/", 1)[-1]
                    if name.startswith(DATA_PREFIX) and name != live:
                        doomed.append(sub)
            if not dry_run:
                for path in doomed:
                    self.fs.rm(path, recursive=True)
        for uri in [u for u in _MATERIALIZED if u.startswith(self.url + "/")]:
            _MATERIALIZED.pop(uri)
        local = self.mirror.gc(keep, dry_run=dry_run)
        return [self.fs.unstrip_protocol(p) for p in doomed] + [str(p) for p in local]
