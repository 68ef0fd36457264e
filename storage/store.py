"""The artifact store's one entry point: `open_store(location)`, and the interface every backend offers.

    store = open_store()                      # $KILN_HOME, else ./kiln-artifacts
    store = open_store("s3://bucket/kiln")    # an object store (the `s3` extra), cached locally
    ref = store.produce("clean", "1", cfg, [raw_ref], build_fn)   # built once per key, then reused

Backends are composed, not inherited: `storage.local.LocalStore` is a directory;
`storage.remote.RemoteStore` is an fsspec URL that holds a `LocalStore` as its build and
read cache. Both satisfy `ArtifactStore`. Which one a location means is decided here,
from the location alone (a URL with a scheme other than ``file://`` is remote), so a
location string is all that tasks and remote workers need to open the same store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from storage.local import (
    DEFAULT_ROOT,
    MANIFEST,
    RUNS_LOG,
    UNITS_DIR,
    Build,
    LocalStore,
    content_sha256,
    manifest_files,
    record_builds,
    sha256_file,
)
from storage.ref import ArtifactRef, artifact_key, is_remote_url
from storage.remote import RemoteStore

__all__ = [
    "DEFAULT_ROOT", "MANIFEST", "RUNS_LOG", "UNITS_DIR", "ArtifactRef", "ArtifactStore", "Build", "content_sha256",
    "manifest_files", "LocalStore", "RemoteStore", "artifact_key", "default_location", "is_remote_url", "open_store",
    "record_builds", "sha256_file",
]


class ArtifactStore(Protocol):
    """What every store offers; stages and the CLI use nothing else."""

    @property
    def location(self) -> str:
        """A path or URL that `open_store` turns back into this store (what tasks receive)."""
        ...

    @property
    def root(self) -> Path:
        """The local directory where stages build and artifacts are read."""
        ...

    def final_dir(self, stage: str, key: str) -> Path: ...
    def partial_dir(self, stage: str, key: str) -> Path: ...
    def ref(self, stage: str, key: str) -> ArtifactRef: ...
    def get(self, stage: str, key: str) -> ArtifactRef | None: ...
    def manifest(self, ref: ArtifactRef) -> dict[str, Any]: ...
    def verify(self, ref: ArtifactRef) -> None: ...
    def list(self) -> list[dict[str, Any]]: ...
    def produce(self, stage: str, code_version: str, config: Any, inputs: Sequence[ArtifactRef],
                work: Callable[[Build], None]) -> ArtifactRef: ...
    def lock(self, stage: str, key: str) -> AbstractContextManager[None]: ...
    def record_run(self, label: str, refs: dict[str, ArtifactRef]) -> None: ...
    def recent_runs(self, n: int) -> list[dict[str, Any]]: ...
    def gc(self, keep: set[str], *, dry_run: bool = False) -> Sequence[Path | str]: ...


def default_location() -> str:
    """``$KILN_HOME`` if set (a path or a URL), else ``./kiln-artifacts``."""
    return os.environ.get("KILN_HOME") or DEFAULT_ROOT


def open_store(location: str | os.PathLike | None = None) -> ArtifactStore:
    """The store at `location` (default: `default_location()`): remote for an fsspec URL, else local."""
    where = location or default_location()
    if is_remote_url(where):
        return RemoteStore(str(where))
    return LocalStore(where)
