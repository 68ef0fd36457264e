"""Download stage: fetch source files (dumps, WuDao JSON, Pile .jsonl.zst) into an artifact.

Sources are URLs: ``http(s)://`` (streamed, resumed with an HTTP Range request
after an interruption, retried with backoff), ``file://`` or a plain path, and
``pkg://<package>/<path>`` for data that an installed package ships (the demo's
Wikipedia sample comes from the gensim wheel). A given sha256/sha1/md5 is
verified; a mismatch deletes the file and fails. Each source is one unit: a
killed stage keeps finished files and the partial bytes of the current one.

Only transient failures are retried: a download that still fails after its attempts
raises `TransientError`, which the Prefect task retries; a 4xx, a missing local file
or a checksum mismatch raises a plain `KilnError` and fails at once.

The artifact key covers the URLs and checksums, plus a fingerprint of local
files (content for small ones, size and mtime for large ones), so replacing a
local file is noticed.

With no sources the artifact is empty (a corpus read in place through ``clean.inputs``
needs nothing fetched); `pipeline_config.check_data` refuses a config with no data at all.

Wikipedia dumps: `wikipedia_sources("zh", "20240601")` gives the sources of a
``pages-articles-multistream`` dump and its index in the standard dumps.wikimedia.org
layout, with the sha1 and md5 the mirror publishes; ``python -m tasks.download
zh:20240601 en:20240601`` prints them as config TOML.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.resources
import json
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

from kiln.config import canonical_dict, check_path_text, path_field, runtime_field
from kiln.errors import KilnError, TransientError, is_transient
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.stage import Stage, reported

STAGE = "download"
FILES_DIR = "files"
CHUNK = 1 << 20
log = logging.getLogger("kiln.download")


@dataclass(frozen=True)
class SourceSpec:
    """One file to fetch."""

    name: str = path_field()
    """File name inside the artifact (e.g. ``enwiki-sample.xml.bz2``); readers pick formats by its suffix."""
    url: str = path_field()
    """``http(s)://…``, ``file://…``, a local path, or ``pkg://package/path/in/package``."""
    sha256: str = ""
    sha1: str = ""
    md5: str = ""
    """Expected checksums (hex); any given one is verified. Wikipedia publishes sha1 and md5 sums."""

    def __post_init__(self) -> None:
        check_path_text(self.name, "download source name")
        check_path_text(self.url, f"download source {self.name!r} url")
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
        # No sources is allowed: a pipeline whose corpus is all `clean.inputs` (read in place) then gets an
        # empty artifact, at no cost, and the DAG keeps its shape. `pipeline_config.check_data` says when
        # a config has nothing to read at all.
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


# Local sources up to this size are fingerprinted by content (stable across clones and
# checkouts); larger ones by size and mtime, so a multi-GB dump is not re-hashed every run.
HASH_LOCAL_UP_TO = 64 << 20


def key_config(cfg: DownloadConfig) -> dict[str, Any]:
    """What the artifact key hashes: the config plus a fingerprint of each local source."""
    data = canonical_dict(cfg)
    for spec, entry in zip(cfg.sources, data["sources"], strict=True):
        path = resolve_local(spec.url)
        if path is not None and path.is_file():
            st = path.stat()
            if st.st_size <= HASH_LOCAL_UP_TO:
                entry["fingerprint"] = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                entry["fingerprint"] = f"{st.st_size}:{st.st_mtime_ns}"
    return data


# The task retries only transient failures (`kiln.errors.is_transient`: `_http_fetch` gave up on a flaky
# network); a missing file, a 404 or a checksum mismatch fails at once.
DOWNLOAD = Stage(STAGE, "1", DownloadConfig, key_config=key_config, retries=2)


def download(cfg: DownloadConfig, store: ArtifactStore) -> ArtifactRef:
    """Fetch every source into ``files/<name>`` of one artifact."""
    return DOWNLOAD.produce(store, cfg, {}, lambda build: _download_into(build, cfg))


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
    """Stream `url` into `part`, resuming from its current size after each transient failure.

    A 4xx (but 408/429) is the URL's fault and fails at once as a `KilnError`; network errors,
    5xx and timeouts are retried here, then raised as a `TransientError` (the task may retry).
    """
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
            if not is_transient(exc):
                raise KilnError(f"{url}: HTTP {exc.code} {exc.reason}; check download.sources url") from None
            error: Exception = exc
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, a response cut short
            if isinstance(exc, urllib.error.URLError) and not is_transient(exc):  # e.g. a bad TLS certificate
                raise KilnError(f"{url}: {exc.reason}; check download.sources url") from None
            if not is_transient(exc):
                raise
            error = exc
        log.warning("download %s: attempt %d/%d failed (%s); resuming", url, attempt, attempts, error)
        if attempt < attempts:
            time.sleep(min(0.2 * 2**attempt, 10.0))
    raise TransientError(f"{url}: download failed after {attempts} attempts ({error}); rerun to resume")


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


# ---------------------------------------------------------------- Wikipedia dump URLs
WIKIMEDIA_DUMPS = "https://dumps.wikimedia.org"
WIKI_DUMP_KINDS = ("pages-articles-multistream", "pages-articles")


def wiki_db(language: str) -> str:
    """Wikimedia's database name of a Wikipedia: ``zh`` → ``zhwiki``, ``zh-yue`` → ``zh_yuewiki``."""
    if not language or not language.replace("-", "").isalnum():
        raise KilnError(f"wikipedia language {language!r}: use a code such as 'en', 'zh' or 'zh-yue'")
    return language.replace("-", "_") + "wiki"


def wikipedia_dump_url(
    language: str, date: str = "latest", kind: str = "pages-articles-multistream", *, mirror: str = WIKIMEDIA_DUMPS
) -> str:
    """URL of a dump file in the standard layout ``<mirror>/<db>/<date>/<db>-<date>-<kind>.xml.bz2``.

    `kind` ``pages-articles-multistream-index`` names the multistream index (``.txt.bz2``).
    """
    if date != "latest" and not (len(date) == 8 and date.isdigit()):
        raise KilnError(f"wikipedia dump date {date!r}: use YYYYMMDD (e.g. 20240601) or 'latest'")
    db = wiki_db(language)
    suffix = ".txt.bz2" if kind.endswith("-index") else ".xml.bz2"
    return f"{mirror.rstrip('/')}/{db}/{date}/{db}-{date}-{kind}{suffix}"


def parse_checksums(text: str) -> dict[str, str]:
    """``{file name: hex digest}`` from a published ``<db>-<date>-sha1sums.txt`` / ``md5sums.txt``."""
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()  # "*name" marks binary mode in sha1sum output
    return sums


def wikipedia_sources(
    language: str,
    date: str = "latest",
    *,
    multistream: bool = True,
    mirror: str = WIKIMEDIA_DUMPS,
    checksums: tuple[str, ...] = ("sha1", "md5"),
    timeout_s: float = 60.0,
) -> list[SourceSpec]:
    """Download sources for one Wikipedia dump (and its multistream index), checksums read from the mirror.

    The sums files list dated names even under ``latest/``, so files are matched by what
    follows the date. Pin a date for reproducible runs: ``latest`` moves every month.
    """
    kinds = ["pages-articles-multistream", "pages-articles-multistream-index"] if multistream else ["pages-articles"]
    urls = [wikipedia_dump_url(language, date, kind, mirror=mirror) for kind in kinds]
    db = wiki_db(language)
    specs = []
    sums = {alg: _by_suffix(parse_checksums(_fetch_text(_sums_url(mirror, db, date, alg), timeout_s)), db)
            for alg in checksums}
    for url in urls:
        name = url.rsplit("/", 1)[1]
        found = {alg: table.get(_after_date(name, db)) for alg, table in sums.items()}
        missing = [alg for alg, digest in found.items() if digest is None]
        if missing:
            raise KilnError(f"{_sums_url(mirror, db, date, missing[0])}: no {missing[0]} for {name}; is the dump done?")
        specs.append(SourceSpec(name=name, url=url, **{alg: d for alg, d in found.items() if d}))
    return specs


def sources_toml(specs: list[SourceSpec]) -> str:
    """``[[download.sources]]`` tables for a pipeline config file."""
    blocks = []
    for spec in specs:
        lines = ["[[download.sources]]"]
        lines += [f"{k} = {json.dumps(getattr(spec, k))}" for k in ("name", "url", "sha256", "sha1", "md5")
                  if getattr(spec, k)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _sums_url(mirror: str, db: str, date: str, alg: str) -> str:
    return f"{mirror.rstrip('/')}/{db}/{date}/{db}-{date}-{alg}sums.txt"


def _after_date(name: str, db: str) -> str:
    """``zhwiki-20240601-pages-articles.xml.bz2`` → ``pages-articles.xml.bz2``."""
    return name.removeprefix(f"{db}-").split("-", 1)[-1]


def _by_suffix(sums: dict[str, str], db: str) -> dict[str, str]:
    return {_after_date(name, db): digest for name, digest in sums.items() if name.startswith(f"{db}-")}


def _fetch_text(url: str, timeout_s: float, attempts: int = 3) -> str:
    """A small text file over http(s), file:// or a path, retried on network errors."""
    local = resolve_local(url)
    if local is not None:
        if not local.is_file():
            raise KilnError(f"{url}: not found")
        return local.read_text(encoding="utf-8")
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                return resp.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            if not is_transient(exc):
                raise KilnError(f"{url}: HTTP {exc.code} {exc.reason}; check language, date and mirror") from None
            error: Exception = exc
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.URLError) and not is_transient(exc):
                raise KilnError(f"{url}: {exc.reason}; check language, date and mirror") from None
            if not is_transient(exc):
                raise
            error = exc
        if attempt < attempts:
            time.sleep(min(0.2 * 2**attempt, 10.0))
    raise TransientError(f"{url}: failed after {attempts} attempts ({error})")


def main(argv: list[str] | None = None) -> None:
    """Print ``[[download.sources]]`` for Wikipedia dumps: ``python -m tasks.download zh:20240601 en:20240601``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dumps", nargs="+", help="LANGUAGE[:DATE], DATE as YYYYMMDD or 'latest'")
    parser.add_argument("--mirror", default=WIKIMEDIA_DUMPS)
    parser.add_argument("--single-stream", action="store_true", help="pages-articles instead of multistream")
    args = parser.parse_args(argv)
    for item in args.dumps:
        language, _, date = item.partition(":")
        specs = wikipedia_sources(language, date or "latest", multistream=not args.single_stream, mirror=args.mirror)
        print(sources_toml(specs))



@DOWNLOAD.task
def download_task(cfg: DownloadConfig, store_root: str) -> ArtifactRef:
    """Prefect wrapper: retried on transient (network) failures only, cached by artifact key."""
    return reported(download(cfg, open_store(store_root)))


if __name__ == "__main__":
    main()
