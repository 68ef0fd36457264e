"""What every stage task shares: the cache policy that makes Prefect's cache follow the artifact store.

The store is the source of truth. Prefect's cache key for a stage is its artifact
key plus the store's build token (`ArtifactStore.cache_token`), computed from
canonical data only — upstream artifact keys as strings, configs as sorted JSON —
because results read back from Prefect's cache are unpickled and their `repr` or
class identity may differ from the originals. So:

- a finished stage shows as Cached in the UI and does no work;
- changing a stage's config changes its key and its downstream keys, and only those rerun;
- an artifact deleted from the store gets a new build token, so Prefect's stale
  Cached record is never used for it;
- a killed build keeps its token, so the retry is the same build and resumes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from prefect.cache_policies import CachePolicy

from storage.store import MANIFEST, ArtifactRef, artifact_key, open_store


@dataclasses.dataclass
class ArtifactCachePolicy(CachePolicy):
    """Cache key = ``<stage>-<artifact key>-<build token>`` read from the task's own parameters.

    `inputs` names the task parameters holding upstream `ArtifactRef`s, in the
    order the stage function hashes them; `config` and `store_root` name the
    parameters holding the stage config and the store root.
    """

    stage: str = ""
    code_version: str = "1"
    inputs: Sequence[str] = ()
    config: str = "cfg"
    store_root: str = "store_root"
    # Maps the config to what the stage hashes, when that is more than the config
    # itself (download adds a fingerprint of local source files).
    key_config: Callable[[Any], Any] | None = None

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        refs = [_as_ref(inputs[name]) for name in self.inputs]
        cfg = inputs[self.config]
        key = artifact_key(self.stage, self.code_version, self.key_config(cfg) if self.key_config else cfg, refs)
        token = open_store(inputs[self.store_root]).cache_token(self.stage, key)
        return f"kiln-{self.stage}-{key}-{token}"


def _as_ref(value: Any) -> ArtifactRef:
    """Rebuild a ref from its fields, whatever class object unpickling produced."""
    return ArtifactRef(stage=str(value.stage), key=str(value.key), uri=str(value.uri))


def stage_task_options(
    stage: str,
    code_version: str,
    inputs: Sequence[str],
    *,
    retries: int = 0,
    key_config: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """The `@task(...)` keyword arguments every stage uses (results persisted, so caching works)."""
    policy = ArtifactCachePolicy(stage=stage, code_version=code_version, inputs=tuple(inputs), key_config=key_config)
    return {
        "name": stage,
        "cache_policy": policy,
        "persist_result": True,
        "retries": retries,
        "retry_delay_seconds": 5 if retries else 0,
    }


def reported(stage: str, ref: ArtifactRef) -> ArtifactRef:
    """Publish a finished stage's Prefect artifacts (counts/sizes/timings table, loss curve); pass `ref` on.

    Called by the task wrappers only: outside a Prefect run the publishers do nothing.
    """
    from tasks.report import publish_image, publish_stage_report

    manifest = json.loads((ref.path / MANIFEST).read_text(encoding="utf-8"))
    publish_stage_report(stage, ref, manifest)
    if "loss.png" in manifest.get("files", {}):
        publish_image(stage, ref.path / "loss.png")
    return ref
