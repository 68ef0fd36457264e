"""Pipeline stages: one module per stage, each a plain typed function plus a thin Prefect task.

A stage function has the shape ``stage(inputs: ArtifactRef..., cfg: StageConfig,
store: ArtifactStore) -> ArtifactRef`` and can be called without a Prefect run;
its ``*_task`` wrapper adds retries and the artifact-keyed cache policy from
`tasks.common`. Helpers that are not stages live in `tasks.text`.
"""
