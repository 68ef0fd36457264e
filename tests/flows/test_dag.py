"""The DAG derived from the stage declarations: config sections, wiring and what `--until` selects."""

from __future__ import annotations

import typing

import pytest

from flows.dag import STEPS, plan, section, wiring
from kiln.errors import KilnError
from tasks.pipeline_config import PipelineConfig, load_pipeline_config
from tests.conftest import REPO_ROOT

DEMO = REPO_ROOT / "configs" / "demo.toml"


def test_every_step_reads_a_config_section_of_its_stage_config_type() -> None:
    hints = typing.get_type_hints(PipelineConfig)
    for name, step in STEPS.items():
        field = name  # a step reads the PipelineConfig section of its own name
        assert field in hints, f"step {name}: PipelineConfig has no section {field!r}"
        assert step.stage.config in (hints[field], *typing.get_args(hints[field])), (name, hints[field])
        assert set(step.sources) == set(step.stage.inputs), f"step {name}: wire exactly the stage's inputs"
        for providers in step.sources.values():
            for provider in (providers,) if isinstance(providers, str) else providers:
                assert list(STEPS).index(provider) < list(STEPS).index(name), f"{name} before {provider}"


def test_post_training_is_off_without_its_data_and_evaluate_falls_back_to_pretrain() -> None:
    cfg = load_pipeline_config(DEMO)
    assert wiring(cfg)["evaluate"] == {"model": "dpo", "tokens": "pretokenize", "chat": "sft_data"}
    assert section(cfg, "sft_download") is cfg.sft_download
    bare = PipelineConfig(download=cfg.download, tokenizer=cfg.tokenizer)  # no [sft_download], [dpo_download]
    assert wiring(bare)["evaluate"] == {"model": "pretrain", "tokens": "pretokenize", "chat": None}
    assert wiring(bare)["export"] == {"model": "pretrain"}
    assert plan(bare, "all") == ["download", "clean", "tokenizer", "pretokenize", "pretrain", "generate",
                                 "evaluate", "export"]
    with pytest.raises(KilnError, match="needs its data configured"):
        plan(bare, "sft")


def test_until_selects_a_stage_and_what_it_needs() -> None:
    cfg = load_pipeline_config(DEMO)
    assert plan(cfg, "tokenizer") == ["download", "clean", "tokenizer"]
    assert plan(cfg, "dpo_data") == ["dpo_download", "dpo_data"]
    assert plan(cfg, "export") == [s for s in STEPS if s not in ("generate", "evaluate")]
    with pytest.raises(KilnError, match="unknown stage 'tokenizr' for --until; stages: all, download, clean"):
        plan(cfg, "tokenizr")


def test_each_step_runs_under_its_own_task_name() -> None:
    """sft_download and dpo_download are the download stage; the UI must still tell the three apart."""
    from flows.dag import step_task

    for name, step in STEPS.items():
        task = step_task(name)
        assert task.name == name
        assert task.fn is step.task.prefect_task.fn and task.cache_policy == step.task.cache_policy  # the same task
    assert STEPS["sft_download"].stage is STEPS["download"].stage
