"""Download stage: fetch source files (dumps, WuDao JSON, Pile .jsonl.zst) into an artifact.

Sources are URLs: ``http(s)://`` (streamed, resumed with an HTTP Range request
after an interruption, retried with backoff), ``file://`` or a plain path, and
``pkg://<package>/<path>`` for data that an installed package ships (the demo's
Wikipedia sample comes from the gensim wheel). A given sha256/sha1/md5 is
verified; a mismatch deletes the file and fails. Each source is one unit: a
killed stage keeps finished files and the partial bytes of the current one.

The artifact key covers the URLs and checksums, plus size and mtime of local
files, so replacing a local file is noticed.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import task

from kiln.config import canonical_dict, runtime_field
from kiln.errors import KilnError
from storage.store import ArtifactRef, ArtifactStore, Build
from tasks.common import stage_task_options

STAGE = "download"
CODE_VERSION = "1"
FILES_DIR = "files"
CHUNK = 1 << 20
log = logging.getLogger("kiln.download")


@dataclass(frozen=True)
class SourceSpec:
    """One file to fetch."""

    name: str
    """File name inside the artifact (e.g. ``enwiki-sample.xml.bz2``); readers pick formats by its suffix."""
    url: str
    """``http(s)://…``, ``file://…``, a local path, or ``pkg://package/path/in/package``."""
    sha256: str = ""
    sha1: str = ""
    md5: str = ""
    """Expected checksums (hex); any given one is verified. Wikipedia publishes sha1 and md5 sums."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise KilnError(f"download source name {self.name!r}: must be a plain file name")
        if not self.url:
            raise KilnError(f"download source {self.name!r}: 'url' is empty")


@dataclass(frozen=True)
class DownloadConfig:
    """Which files to fetch and how hard to try."""

    sources: list[SourceSpec] = field(default_factory=list)
    attempts: int = runtime_field(5)
    """HTTP attempts per file before failing (each resumes where the last stopped)."""
    timeout_s: float = runtime_field(60.0)
    """Socket timeout for one HTTP read."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise KilnError("download.sources is empty: add at least one [[download.sources]] with name and url")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise KilnError(f"download.sources: duplicate names in {names}")


def resolve_local(url: str) -> Path | None:
    """The local path behind a ``file://``, ``pkg://`` or plain-path URL; None for http(s)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "pkg":
        try:
            return Path(str(importlib.resources.files(parsed.netloc).joinpath(parsed.path.lstrip("/"))))
        except ModuleNotFoundError:
            raise KilnError(f"{url}: package {parsed.netloc!r} is not installed; pip install 'kiln[demo]'") from None
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "":
        return Path(url)
    raise KilnError(f"{url}: unsupported URL scheme {parsed.scheme!r}; use http(s)://, file://, pkg:// or a path")


def key_config(cfg: DownloadConfig) -> dict[str, Any]:
    """What the artifact key hashes: the config plus size and mtime of local sources."""
    data = canonical_dict(cfg)
    for spec, entry in zip(cfg.sources, data["sources"], strict=True):
        path = resolve_local(spec.url)
        if path is not None and path.exists():
            st = path.stat()
            entry["fingerprint"] = f"{st.st_size}:{st.st_mtime_ns}"
    return data


def download(cfg: DownloadConfig, store: ArtifactStore) -> ArtifactRef:
    """Fetch every source into ``files/<name>`` of one artifact."""
    return store.produce(STAGE, CODE_VERSION, key_config(cfg), [], lambda build: _download_into(build, cfg))


def _download_into(build: Build, cfg: DownloadConfig) -> None:
    out_dir = build.dir / FILES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for spec in cfg.sources:
        target = out_dir / spec.name
        if not build.unit_done(spec.name):
            fetch(spec, target, attempts=cfg.attempts, timeout_s=cfg.timeout_s)
            verify_checksums(spec, target)
            build.mark_done(spec.name, {"bytes": target.stat().st_size})
        total += target.stat().st_size
        log.info("downloaded %s (%.1f MB)", spec.name, target.stat().st_size / 1e6)
    build.counts.update({"files": len(cfg.sources), "bytes": total})


def fetch(spec: SourceSpec, target: Path, *, attempts: int = 5, timeout_s: float = 60.0) -> None:
    """Copy or download `spec.url` to `target` via ``target.part`` (renamed only when complete)."""
    local = resolve_local(spec.url)
    part = target.with_name(target.name + ".part")
    if local is not None:
        if not local.is_file():
            raise KilnError(f"{local}: source file for {spec.name!r} not found; fix download.sources url")
        shutil.copyfile(local, part)
    else:
        _http_fetch(spec.url, part, attempts=attempts, timeout_s=timeout_s)
    os.replace(part, target)


def _http_fetch(url: str, part: Path, *, attempts: int, timeout_s: float) -> None:
    """Stream `url` into `part`, resuming from its current size after each failure."""
    for attempt in range(1, attempts + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                if have and resp.status != 206:  # server ignored the range: start over
                    have = 0
                expected = _expected_size(resp, have)
                with open(part, "ab" if have else "wb") as fh:
                    while block := resp.read(CHUNK):
                        fh.write(block)
            if expected is not None and part.stat().st_size != expected:
                raise urllib.error.URLError(f"connection closed at {part.stat().st_size} of {expected} bytes")
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # range past the end: the part file is already complete
                return
            if 400 <= exc.code < 500 and exc.code != 429:
                raise KilnError(f"{url}: HTTP {exc.code} {exc.reason}; check download.sources url") from None
            error: Exception = exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            error = exc
        log.warning("download %s: attempt %d/%d failed (%s); resuming", url, attempt, attempts, error)
        time.sleep(min(0.2 * 2**attempt, 10.0))
    raise KilnError(f"{url}: download failed after {attempts} attempts ({error}); rerun to resume")


def _expected_size(resp: Any, have: int) -> int | None:
    length = resp.headers.get("Content-Length")
    return have + int(length) if length is not None else None


def verify_checksums(spec: SourceSpec, path: Path) -> None:
    """Check every checksum given for `spec`; a mismatch deletes the file so a rerun fetches it again."""
    wanted = {alg: getattr(spec, alg).lower() for alg in ("sha256", "sha1", "md5") if getattr(spec, alg)}
    if not wanted:
        return
    hashers = {alg: hashlib.new(alg) for alg in wanted}
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            for h in hashers.values():
                h.update(block)
    for alg, h in hashers.items():
        if h.hexdigest() != wanted[alg]:
            path.unlink()
            raise KilnError(
                f"{spec.url}: {alg} mismatch (got {h.hexdigest()}, expected {wanted[alg]}); "
                "the file was deleted, rerun to download it again"
            )


@task(**stage_task_options(STAGE, CODE_VERSION, inputs=[], retries=2, key_config=key_config))
def download_task(cfg: DownloadConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: retried, cached by artifact key."""
    return download(cfg, ArtifactStore(store_root))
