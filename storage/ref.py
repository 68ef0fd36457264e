"""What stages pass to each other: an artifact's stage, key and URI, never its data; and the key itself.

- key = hash(stage, stage code version, canonical stage config, input keys), so the
  same key always means the same content (`artifact_key`).
- `ArtifactRef.path` is a local directory. A ref into an object store (``s3://…``) is
  resolved by the store that made it: opening a remote store (`storage.store.open_store`)
  registers how its artifacts reach the local cache, so this module imports no backend.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.config import canonical_dict, canonical_json
from kiln.errors import KilnError

# Remote store URL -> how that store brings one of its artifacts into the local cache.
_REMOTE_ROOTS: dict[str, Callable[[ArtifactRef], Path]] = {}


@dataclass(frozen=True)
class ArtifactRef:
    """What stages pass to each other: where an artifact is, never its data."""

    stage: str
    key: str
    uri: str

    @property
    def path(self) -> Path:
        """A local directory holding the artifact; for a remote URI, its copy in the local cache
        (downloaded and verified on first use, so stages keep reading plain files)."""
        if not is_remote_url(self.uri):
            return Path(self.uri)
        root = self.uri.removesuffix(f"/{self.stage}/{self.key}")
        materialize = _REMOTE_ROOTS.get(root)
        if materialize is None:
            raise KilnError(f"{self.uri}: the store {root} is not open in this process; "
                            f"open it with storage.store.open_store({root!r}) before reading its artifacts")
        return materialize(self)

    def __str__(self) -> str:
        return f"{self.stage}/{self.key}"


def register_remote_root(url: str, materialize: Callable[[ArtifactRef], Path]) -> None:
    """Called by a remote store when it opens: refs under `url` resolve through `materialize`."""
    _REMOTE_ROOTS[url.rstrip("/")] = materialize


def artifact_key(stage: str, code_version: str, config: Any, inputs: Sequence[ArtifactRef]) -> str:
    """Hash of everything that determines a stage's output (20 hex chars of sha256)."""
    payload = canonical_json(
        {
            "stage": stage,
            "code_version": code_version,
            "config": canonical_dict(config),
            "inputs": [f"{r.stage}/{r.key}" for r in inputs],
        }
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def is_remote_url(root: str | os.PathLike | None) -> bool:
    """Whether `root` names an fsspec filesystem other than the local one (``s3://``, ``gs://``, …)."""
    if root is None or isinstance(root, Path):
        return False
    scheme, sep, _ = str(root).partition("://")
    return bool(sep) and scheme.isidentifier() and scheme not in ("file", "local")
