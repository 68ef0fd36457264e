"""A stage, declared once: name, code version, inputs and config type, from which everything else follows.

    CLEAN = Stage("clean", "2", CleanConfig, inputs=("raw",), key_config=key_config)

    def clean(raw: ArtifactRef, cfg: CleanConfig, store: ArtifactStore) -> ArtifactRef:
        return CLEAN.produce(store, cfg, {"raw": raw}, lambda build: ...)   # the store call

    @CLEAN.task                                                              # the Prefect task
    def clean_task(raw: ArtifactRef, cfg: CleanConfig, store_root: str) -> ArtifactRef: ...

One method, `Stage.key_material`, turns (config, input refs) into what the artifact
key hashes; the store call, the Prefect task's lookup (`Stage.find`) and `kiln plan` all go through
it, so the UI can never show Cached for an artifact the store would build differently.

Whether a stage has work to do is decided by the store alone, never by Prefect's
result cache: before running, the task looks its artifact key up in the store it was
given (`ArtifactStore.get`, which verifies the files), and if the artifact is there
it ends as Cached without calling the stage. So:

- a finished stage shows as Cached in the UI and does no work;
- changing a stage's config changes its key and its downstream keys, and only those rerun;
- the answer is about the store the run points at: a copied or moved store is judged by
  its own files, not by a record of where an artifact used to be;
- a damaged or deleted artifact is rebuilt (the store moves a damaged one aside);
- a killed build resumes from its partial directory, whatever Prefect recorded;
- Prefect persists no results: nothing is ever unpickled from ``$PREFECT_HOME``,
  and results are only artifact references, re-checked against the store on every run.

Prefect is imported only when a task is first called or inspected, so the config
loader, the DAG and `kiln plan` run without it.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kiln.errors import KilnError, is_transient
from storage.store import (
    MANIFEST,
    ArtifactRef,
    ArtifactStore,
    Build,
    artifact_key,
    manifest_files,
    open_store,
    record_builds,
)

# Every task wrapper takes the stage's inputs (in declaration order), then these two.
TASK_PARAMS = ("cfg", "store_root")

Refs = Mapping[str, ArtifactRef | None]


@dataclass(frozen=True)
class Stage:
    """What determines a stage's artifact: everything its key, its task and its store call are built from."""

    name: str
    """Store directory and Prefect task name."""
    code_version: str
    """Bump when the stage's code changes what it writes."""
    config: type
    """The stage's config dataclass (its section in `tasks.pipeline_config.PipelineConfig`)."""
    inputs: tuple[str, ...] = ()
    """Upstream artifacts, by task parameter name, in the order the key hashes them."""
    optional: tuple[str, ...] = ()
    """Inputs that may be None; only the given ones are hashed."""
    key_config: Callable[[Any], Any] | None = None
    """Maps the config to what the key hashes, when that is more than the config (local file fingerprints)."""
    retries: int = 0

    def __post_init__(self) -> None:
        if not set(self.optional) <= set(self.inputs):
            raise ValueError(f"stage {self.name}: optional inputs {self.optional} are not among {self.inputs}")

    def key_material(self, cfg: Any, refs: Refs) -> tuple[Any, list[ArtifactRef]]:
        """(hashed config, hashed input refs): what `artifact_key` and the manifest get for this call."""
        unknown = sorted(set(refs) - set(self.inputs))
        if unknown:
            raise KilnError(f"stage {self.name}: unknown inputs {unknown}; it takes {list(self.inputs)}")
        given: list[ArtifactRef] = []
        for name in self.inputs:
            ref = refs.get(name)
            if ref is None and name not in self.optional:
                raise KilnError(f"stage {self.name}: input {name!r} is required")
            if ref is not None:
                given.append(ref)
        return (self.key_config(cfg) if self.key_config else cfg), given

    def key(self, cfg: Any, refs: Refs) -> str:
        """The artifact key of this stage for `cfg` and `refs` (what `produce` builds or finds)."""
        return self.key_of(*self.key_material(cfg, refs))

    def key_of(self, config: Any, inputs: list[ArtifactRef]) -> str:
        """The artifact key of already computed `key_material` (it may hash local files: compute it once)."""
        return artifact_key(self.name, self.code_version, config, inputs)

    def produce(self, store: ArtifactStore, cfg: Any, refs: Refs, work: Callable[[Build], None]) -> ArtifactRef:
        """The store call of the stage function: return the artifact, running `work` only if it is missing."""
        config, inputs = self.key_material(cfg, refs)
        return store.produce(self.name, self.code_version, config, inputs, work)

    def find(self, params: Mapping[str, Any]) -> ArtifactRef | None:
        """The finished, verified artifact that a task call with `params` would return, if the store has it."""
        refs = {name: None if params.get(name) is None else _as_ref(params[name]) for name in self.inputs}
        return open_store(params["store_root"]).get(self.name, self.key(params["cfg"], refs))

    def task(self, fn: Callable[..., ArtifactRef]) -> StageTask:
        """Decorator: `fn` (the stage's inputs, then ``cfg, store_root``) as this stage's Prefect task."""
        params = tuple(inspect.signature(fn).parameters)
        if params != (*self.inputs, *TASK_PARAMS):
            raise TypeError(f"{fn.__name__}: parameters {params} must be the inputs of stage {self.name} "
                            f"{self.inputs} followed by {TASK_PARAMS}")
        return StageTask(self, fn)


class StageTask:
    """A stage's Prefect task, built on first use; `.fn` is the plain function and needs no Prefect."""

    def __init__(self, stage: Stage, fn: Callable[..., ArtifactRef]) -> None:
        self.stage = stage
        self.fn = fn
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def prefect_task(self) -> Any:
        """The `prefect.Task`: Cached when the store holds the artifact, no persisted results, retried as declared."""
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        stage = self.stage

        @functools.wraps(self.fn)  # Prefect reads the stage function's parameters through __wrapped__
        def body(*args: Any, **kwargs: Any) -> Any:
            return self.run_unless_stored(*args, **kwargs)

        return task(
            body,
            name=stage.name,
            cache_policy=NO_CACHE,
            persist_result=False,
            result_serializer="json",  # should Prefect ever write a result, it is not a pickle
            retries=stage.retries,
            retry_delay_seconds=5 if stage.retries else 0,
            retry_condition_fn=_retry_if_transient,
        )

    def run_unless_stored(self, *args: Any, **kwargs: Any) -> Any:
        """The task body: a Cached state holding the stored artifact's ref, else the stage's result."""
        from prefect.states import Completed

        ref = self.stage.find(self.signature.bind(*args, **kwargs).arguments)
        if ref is not None:
            return Completed(name="Cached", data=ref, message=f"{ref} is in the store (verified); nothing to do")
        with record_builds() as built:
            ref = self.fn(*args, **kwargs)
        if str(ref) not in built:  # another run finished it while this one waited for the key's lock
            return Completed(name="Cached", data=ref, message=f"{ref} was built meanwhile by another run")
        return ref

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.prefect_task(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # cache_policy, submit, with_options, …
        if name.startswith("__") or name == "prefect_task":  # no recursion if building the task fails
            raise AttributeError(name)
        return getattr(self.prefect_task, name)


def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: retry only failures worth it (`kiln.errors.is_transient`), not a
    missing file or bad data. A plain function: Prefect calls only those (`inspect.isfunction`)."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


def _as_ref(value: Any) -> ArtifactRef:
    """A ref from its fields (a deployment's parameters arrive as plain JSON)."""
    return ArtifactRef(stage=str(value.stage), key=str(value.key), uri=str(value.uri))


def reported(ref: ArtifactRef) -> ArtifactRef:
    """Publish a finished stage's Prefect artifacts (counts/sizes/timings table, loss curve); pass `ref` on.

    Called by the task wrappers only: outside a Prefect run the publishers do nothing.
    """
    from tasks.report import publish_image, publish_stage_report

    manifest = json.loads((ref.path / MANIFEST).read_text(encoding="utf-8"))
    publish_stage_report(ref.stage, ref, manifest)
    if "loss.png" in manifest_files(manifest):
        publish_image(ref.stage, ref.path / "loss.png")
    return ref
