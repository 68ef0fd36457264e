"""Prefect flows and the DAG they run: they wire stage tasks together and hold no stage logic.

`flows.dag` says where each stage's inputs come from; `flows.pipeline.pipeline`
runs the whole DAG; `flows.stages` has one flow per stage (each runs the stages it
depends on, which are cached when done); `flows.plan` is ``kiln plan``, which
computes the same keys without Prefect.
"""
