"""The DAG, written once: every flow runs the part of it that a chosen stage needs.

    download ─▶ clean ─▶ tokenizer ─▶ pretokenize ─▶ pretrain ─▶ generate
                                                        │
    sft_download ─▶ sft_data ─────────────────────────▶ sft ─▶ dpo ─▶ evaluate, export
    dpo_download ─▶ dpo_data ────────────────────────────────▶ ┘

Post-training stages run only when the config names their data (``[sft_download]``,
``[dpo_download]``). Each task is called with ``return_state=True`` so the flow can
report, per stage, whether it ran or came from the cache (what the UI shows as Cached).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import KilnError
from storage.store import ArtifactRef, ArtifactStore
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
from tasks.tokenizer import tokenizer_task
from trainer.summary import TrainSummary

Refs = dict[str, ArtifactRef]


def final_model(refs: Refs) -> ArtifactRef:
    """The most trained model among the stages that ran."""
    return refs.get("dpo") or refs.get("sft") or refs["pretrain"]


@dataclass(frozen=True)
class Step:
    """A stage in the DAG: what it needs and how to call its task."""

    needs: tuple[str, ...]
    call: Callable[[PipelineConfig, Refs, str], Any]
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True


STEPS: dict[str, Step] = {
    "download": Step((), lambda c, r, root: download_task(c.download, root, return_state=True)),
    "clean": Step(("download",), lambda c, r, root: clean_task(r["download"], c.clean, root, return_state=True)),
    "tokenizer": Step(("clean",), lambda c, r, root: tokenizer_task(r["clean"], c.tokenizer, root, return_state=True)),
    "pretokenize": Step(("clean", "tokenizer"), lambda c, r, root: pretokenize_task(
        r["clean"], r["tokenizer"], c.pretokenize, root, return_state=True)),
    "pretrain": Step(("pretokenize", "tokenizer"), lambda c, r, root: pretrain_task(
        r["pretokenize"], r["tokenizer"], c.pretrain, root, return_state=True)),
    "generate": Step(("pretrain", "tokenizer"), lambda c, r, root: generate_task(
        r["pretrain"], r["tokenizer"], c.generate, root, return_state=True)),
    "sft_download": Step((), lambda c, r, root: download_task(c.sft_download, root, return_state=True),
                         enabled=lambda c: c.sft_download is not None),
    "sft_data": Step(("sft_download",), lambda c, r, root: prepare_sft_task(
        r["sft_download"], c.sft_data, root, return_state=True), enabled=lambda c: c.sft_download is not None),
    "sft": Step(("pretrain", "sft_data"), lambda c, r, root: sft_task(
        r["pretrain"], r["sft_data"], c.sft, root, return_state=True), enabled=lambda c: c.sft_download is not None),
    "dpo_download": Step((), lambda c, r, root: download_task(c.dpo_download, root, return_state=True),
                         enabled=lambda c: c.dpo_download is not None),
    "dpo_data": Step(("dpo_download",), lambda c, r, root: prepare_dpo_task(
        r["dpo_download"], c.dpo_data, root, return_state=True), enabled=lambda c: c.dpo_download is not None),
    "dpo": Step(("sft", "dpo_data"), lambda c, r, root: dpo_task(
        r["sft"], r["dpo_data"], c.dpo, root, return_state=True),
        enabled=lambda c: c.sft_download is not None and c.dpo_download is not None),
    "evaluate": Step(("pretrain", "pretokenize", "sft", "dpo"), lambda c, r, root: evaluate_task(
        final_model(r), r["pretokenize"], r.get("sft_data"), c.evaluate, root, return_state=True)),
    "export": Step(("pretrain", "sft", "dpo"), lambda c, r, root: export_task(
        final_model(r), c.export, root, return_state=True)),
}
STAGES = tuple(STEPS)


def plan(cfg: PipelineConfig, until: str) -> list[str]:
    """Stages to run, in DAG order: `until` and everything enabled that it needs ("all": every enabled stage)."""
    if until != "all" and until not in STEPS:
        raise KilnError(f"unknown stage {until!r}; stages: all, {', '.join(STAGES)}")
    if until != "all" and not STEPS[until].enabled(cfg):
        raise KilnError(f"stage {until!r} needs its data configured ([sft_download] / [dpo_download] sections)")
    wanted: set[str] = set()

    def need(stage: str) -> None:
        if stage not in wanted and STEPS[stage].enabled(cfg):
            wanted.add(stage)
            for dep in STEPS[stage].needs:
                need(dep)

    for stage in STAGES if until == "all" else (until,):
        need(stage)
    return [s for s in STAGES if s in wanted]


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
    cfg = load_pipeline_config(config, overrides)
    root = ArtifactStore(cfg.store.root or None).location  # a URL for object stores, so remote workers agree
    result = DagResult()
    for stage in plan(cfg, until):
        state = STEPS[stage].call(cfg, result.refs, root)
        result.states[stage] = state.name
        result.refs[stage] = state.result()  # raises the stage's error if it failed
    ArtifactStore(root).record_run(f"{config} until {until}", result.refs)
    return result
