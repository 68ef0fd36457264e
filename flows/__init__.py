"""Prefect flows: they wire stage tasks together and hold no logic of their own.

`flows.pipeline.pipeline` runs the whole DAG; `flows.stages` has one flow per
stage (each runs the stages it depends on, which are cached when done).
"""
