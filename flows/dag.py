"""The DAG, written once: every flow runs a prefix of it.

download ─▶ clean ─▶ tokenizer ─▶ pretokenize ─▶ pretrain ─▶ generate

Each task is called with ``return_state=True`` so the flow can report, per
stage, whether it ran or came from the cache (what the UI shows as Cached).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.store import ArtifactRef, ArtifactStore
from tasks.clean import clean_task
from tasks.download import download_task
from tasks.generate import generate_task
from tasks.pipeline_config import load_pipeline_config
from tasks.pretokenize import pretokenize_task
from tasks.pretrain import pretrain_task
from tasks.tokenizer import tokenizer_task

STAGES = ("download", "clean", "tokenizer", "pretokenize", "pretrain", "generate")


@dataclass
class DagResult:
    """Per stage: the artifact and the Prefect state name (Completed, Cached, …)."""

    refs: dict[str, ArtifactRef] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Per-stage state and artifact, plus the final loss and samples when those stages ran."""
        out: dict[str, Any] = {
            "stages": {
                stage: {"state": self.states[stage], "artifact": ref.uri, "key": ref.key}
                for stage, ref in self.refs.items()
            }
        }
        if "pretrain" in self.refs:
            done = json.loads((self.refs["pretrain"].path / "DONE.json").read_text())
            out["final_loss"] = done.get("final_loss")
        if "generate" in self.refs:
            out["samples"] = json.loads((self.refs["generate"].path / "samples.json").read_text())
        return out


def run_dag(config: str, overrides: Sequence[str] = (), until: str = "generate") -> DagResult:
    """Run the stages up to and including `until` (call from inside a flow)."""
    if until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    cfg = load_pipeline_config(config, overrides)
    root = str(ArtifactStore(cfg.store.root or None).root)
    result = DagResult()

    def run(stage: str, task: Any, *args: Any) -> ArtifactRef | None:
        if STAGES.index(stage) > STAGES.index(until):
            return None
        state = task(*args, root, return_state=True)
        result.states[stage] = state.name
        result.refs[stage] = state.result()  # raises the stage's error if it failed
        return result.refs[stage]

    raw = run("download", download_task, cfg.download)
    docs = run("clean", clean_task, raw, cfg.clean)
    tok = run("tokenizer", tokenizer_task, docs, cfg.tokenizer)
    tokens = run("pretokenize", pretokenize_task, docs, tok, cfg.pretokenize)
    model = run("pretrain", pretrain_task, tokens, tok, cfg.pretrain)
    run("generate", generate_task, model, tok, cfg.generate)
    ArtifactStore(root).record_run(f"{config} until {until}", result.refs)
    return result
