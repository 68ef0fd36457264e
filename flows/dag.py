"""The DAG, written once: every flow runs the part of it that a chosen stage needs.

    download ─▶ clean ─▶ tokenizer ─▶ pretokenize ─▶ pretrain ─▶ generate
                                                        │
    sft_download ─▶ sft_data ─────────────────────────▶ sft ─▶ dpo ─▶ evaluate, export
    dpo_download ─▶ dpo_data ────────────────────────────────▶ ┘

A step is a declared stage (`tasks.stage.Stage`, reached through its task) plus where
each of its inputs comes from; what a step needs follows from that. Post-training
steps run only when the config names their data (``[sft_download]``,
``[dpo_download]``): a step whose section is unset, or whose required input has no
enabled provider, is off. Each task is called with ``return_state=True`` so the flow
can report, per stage, whether it ran or came from the cache (what the UI shows as Cached).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.sweep import crash_abandoned_task_runs
from kiln.errors import KilnError
from storage.store import ArtifactRef, open_store
from tasks.clean import clean_task
from tasks.download import download_task
from tasks.dpo import dpo_task
from tasks.evaluate import evaluate_task
from tasks.export import export_task
from tasks.generate import generate_task
from tasks.pipeline_config import PipelineConfig, load_pipeline_config
from tasks.pretokenize import pretokenize_task
from tasks.pretrain import pretrain_task
from tasks.sft import sft_task
from tasks.sft_data import prepare_dpo_task, prepare_sft_task
from tasks.stage import Stage, StageTask
from tasks.tokenizer import tokenizer_task
from trainer.summary import TrainSummary

Refs = dict[str, ArtifactRef]

# The most trained model among the steps that are on: evaluate and export take it.
FINAL_MODEL = ("dpo", "sft", "pretrain")


@dataclass(frozen=True)
class Step:
    """A stage in the DAG: its task and, per stage input, the step(s) providing it (the first one that is on)."""

    task: StageTask
    sources: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)

    @property
    def stage(self) -> Stage:
        return self.task.stage


STEPS: dict[str, Step] = {
    "download": Step(download_task),
    "clean": Step(clean_task, {"raw": "download"}),
    "tokenizer": Step(tokenizer_task, {"docs": "clean"}),
    "pretokenize": Step(pretokenize_task, {"docs": "clean", "tokenizer": "tokenizer"}),
    "pretrain": Step(pretrain_task, {"tokens": "pretokenize", "tokenizer": "tokenizer"}),
    "generate": Step(generate_task, {"model_ref": "pretrain", "tokenizer_ref": "tokenizer"}),
    "sft_download": Step(download_task),
    "sft_data": Step(prepare_sft_task, {"raw": "sft_download"}),
    "sft": Step(sft_task, {"base": "pretrain", "data": "sft_data"}),
    "dpo_download": Step(download_task),
    "dpo_data": Step(prepare_dpo_task, {"raw": "dpo_download"}),
    "dpo": Step(dpo_task, {"base": "sft", "data": "dpo_data"}),
    "evaluate": Step(evaluate_task, {"model": FINAL_MODEL, "tokens": "pretokenize", "chat": "sft_data"}),
    "export": Step(export_task, {"model": FINAL_MODEL}),
}
STAGES = tuple(STEPS)


def section(cfg: PipelineConfig, step: str) -> Any:
    """The config section a step runs with (None: not configured)."""
    return getattr(cfg, step)  # each step's config is the `PipelineConfig` field of its name


def wiring(cfg: PipelineConfig) -> dict[str, dict[str, str | None]]:
    """Per enabled step, in DAG order: each stage input → the step providing it (None: an optional input left out)."""
    wired: dict[str, dict[str, str | None]] = {}
    for name, step in STEPS.items():
        if section(cfg, name) is None:
            continue
        chosen: dict[str, str | None] = {}
        for inp in step.stage.inputs:
            options = step.sources.get(inp, ())
            options = (options,) if isinstance(options, str) else options
            chosen[inp] = next((s for s in options if s in wired), None)
        if all(src is not None or inp in step.stage.optional for inp, src in chosen.items()):
            wired[name] = chosen
    return wired


def plan(cfg: PipelineConfig, until: str) -> list[str]:
    """Stages to run, in DAG order: `until` and everything enabled that it needs ("all": every enabled stage)."""
    check_until(until)
    wired = wiring(cfg)
    if until != "all" and until not in wired:
        raise KilnError(f"stage {until!r} needs its data configured ([sft_download] / [dpo_download] sections)")
    wanted: set[str] = set()

    def need(stage: str) -> None:
        if stage not in wanted:
            wanted.add(stage)
            for dep in wired[stage].values():
                if dep is not None:
                    need(dep)

    for stage in wired if until == "all" else (until,):
        need(stage)
    return [s for s in STAGES if s in wanted]


def check_until(until: str) -> None:
    """KilnError naming the valid stages unless `until` is one of them (or "all")."""
    if until != "all" and until not in STEPS:
        raise KilnError(f"unknown stage {until!r} for --until; stages: all, {', '.join(STAGES)}")


def step_inputs(cfg: PipelineConfig, step: str, refs: Mapping[str, ArtifactRef]) -> dict[str, ArtifactRef | None]:
    """A step's stage inputs, from the refs of the steps before it."""
    return {inp: None if src is None else refs[src] for inp, src in wiring(cfg)[step].items()}


def step_task(step: str) -> Any:
    """A step's Prefect task under the step's name: the three download steps share one stage
    (and so its task name), but the UI should show ``sft_download``, not ``download-…``."""
    return STEPS[step].task.with_options(name=step)


def run_step(cfg: PipelineConfig, step: str, refs: Mapping[str, ArtifactRef], root: str) -> Any:
    """Call a step's Prefect task; its final state (Completed, Cached, Failed …)."""
    inputs = step_inputs(cfg, step, refs)
    return step_task(step)(*inputs.values(), section(cfg, step), root, return_state=True)


@dataclass
class DagResult:
    """Per stage: the artifact and the Prefect state name (Completed, Cached, …)."""

    refs: Refs = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Per-stage state and artifact, plus the headline results of the stages that ran."""
        out: dict[str, Any] = {
            "stages": {
                stage: {"state": self.states[stage], "artifact": ref.uri, "key": ref.key}
                for stage, ref in self.refs.items()
            }
        }
        if "pretrain" in self.refs:
            out["final_loss"] = TrainSummary.read(self.refs["pretrain"].path).final_loss
        if "generate" in self.refs:
            out["samples"] = json.loads((self.refs["generate"].path / "samples.json").read_text())
        if "evaluate" in self.refs:
            out["evaluation"] = json.loads((self.refs["evaluate"].path / "eval.json").read_text())
        return out


def run_dag(config: str, overrides: Sequence[str] = (), until: str = "all") -> DagResult:
    """Run the stages `until` needs (call from inside a flow); records the run for `kiln artifacts gc`."""
    crash_abandoned_task_runs()  # a crashed earlier attempt's task runs must not stay "Running"
    cfg = load_pipeline_config(config, overrides)
    root = open_store(cfg.store.root or None).location  # a URL for object stores, so remote workers agree
    result = DagResult()
    for stage in plan(cfg, until):
        state = run_step(cfg, stage, result.refs, root)
        result.states[stage] = state.name
        result.refs[stage] = state.result()  # raises the stage's error if it failed
    open_store(root).record_run(f"{config} until {until}", result.refs)
    return result
