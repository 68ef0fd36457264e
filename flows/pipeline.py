"""The whole pipeline as one Prefect flow: ``kiln run configs/demo.toml`` or a deployment of it."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.dag import run_dag


@flow(name="kiln-pipeline", log_prints=True, persist_result=False)  # results are refs into the store
def pipeline(
    config: str = "configs/demo.toml", overrides: list[str] | None = None, until: str = "all"
) -> dict[str, Any]:
    """download → clean → tokenizer → pretokenize → pretrain → generate (→ sft → dpo → evaluate, export),
    each stage cached by artifact key.

    `overrides` are ``section.key=value`` strings; `until` runs only that stage and what it needs.
    """
    return run_dag(config, overrides or [], until=until).summary()
