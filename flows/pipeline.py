"""The whole pipeline as one Prefect flow: ``kiln run configs/demo.toml`` or a deployment of it."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.dag import run_dag


def kiln_flow(name: str) -> Any:
    """The decorator of every kiln flow. Results are artifact refs and summaries, re-checked against the
    store on each run, so none is persisted; what Prefect writes anyway (a failed flow's exception, which
    it always saves) is JSON, never a pickle."""
    return flow(name=name, log_prints=True, persist_result=False, result_serializer="json")


@kiln_flow("kiln-pipeline")
def pipeline(
    config: str = "configs/demo.toml", overrides: list[str] | None = None, until: str = "all"
) -> dict[str, Any]:
    """download → clean → tokenizer → pretokenize → pretrain → generate (→ sft → dpo → evaluate, export),
    each stage cached by artifact key.

    `overrides` are ``section.key=value`` strings; `until` runs only that stage and what it needs.
    """
    return run_dag(config, overrides or [], until=until).summary()
