"""Pipeline stages: one module per stage, each a plain typed function plus a thin Prefect task.

A stage function has the shape ``stage(inputs: ArtifactRef..., cfg: StageConfig,
store: ArtifactStore) -> ArtifactRef`` and can be called without a Prefect run;
its declaration (a `tasks.stage.Stage`) gives both its store call and its
``*_task`` wrapper's retries and its store lookup (Cached when the artifact is there). Helpers that are
not stages live in `tasks.text`.
"""
