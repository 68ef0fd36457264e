"""What `kiln run` would do, without running anything: ``kiln plan CONFIG [--until STAGE] [-s key=value …]``.

For every stage of the plan: its artifact key, whether that artifact is already in
the store, and if not why — the config values and upstream keys that differ from
the closest existing artifact of that stage, like ``terraform plan``:

    ~ tokenizer     tokenizer/5d0c…  rebuild (differs from tokenizer/9a1e…, 2026-12-01T10:00:00+00:00)
        ~ tokenizer.vocab_size: 1000 -> 3000

Keys come from the same `Stage.key` the run uses (local file fingerprints included),
and downstream keys from the upstream keys computed here, not from the store, so
one change shows at every stage it reaches. Nothing here imports Prefect or starts
a server, and nothing is written to the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.dag import STEPS, plan, section, step_inputs
from kiln.config import canonical_json
from storage.store import ArtifactRef, ArtifactStore
from tasks.pipeline_config import PipelineConfig


@dataclass(frozen=True)
class StagePlan:
    """One stage of a plan: the artifact it needs and, when that is missing, what changed."""

    step: str
    ref: ArtifactRef
    present: bool
    reason: str = ""
    changes: list[str] = field(default_factory=list)


def make_plan(cfg: PipelineConfig, until: str, store: ArtifactStore) -> list[StagePlan]:
    """The stages `kiln run --until until` would run, each with its key and whether it would build."""
    existing = store.list()
    refs: dict[str, ArtifactRef] = {}
    out = []
    for name in plan(cfg, until):
        stage = STEPS[name].stage
        inputs = step_inputs(cfg, name, refs)
        config, given = stage.key_material(section(cfg, name), inputs)
        key = stage.key_of(config, given)
        refs[name] = ref = store.ref(stage.name, key)
        if store.get(stage.name, key) is not None:
            out.append(StagePlan(name, ref, present=True))
            continue
        wanted = {"code_version": stage.code_version, "config": _plain(config),
                  "inputs": [(n, r) for n, r in inputs.items() if r is not None]}
        out.append(_why(name, ref, wanted, [m for m in existing if m.get("stage") == stage.name]))
    return out


def _why(step: str, ref: ArtifactRef, wanted: dict[str, Any], manifests: list[dict[str, Any]]) -> StagePlan:
    """Diff against the artifact of this stage with the fewest differences (the newest among equals)."""
    if any(m.get("key") == ref.key for m in manifests):
        return StagePlan(step, ref, False, "incomplete artifact (files missing or of the wrong size): rebuild")
    best: tuple[dict[str, Any], list[str]] | None = None
    for m in manifests:  # oldest first, so `<=` keeps the newest of equally close ones
        changes = diff(step, wanted, m)
        if best is None or len(changes) <= len(best[1]):
            best = (m, changes)
    if best is None:
        return StagePlan(step, ref, False, "build: no artifact of this stage yet")
    m, changes = best
    reason = f"rebuild (differs from {m['stage']}/{m['key']}, {m.get('created_at', '?')})"
    return StagePlan(step, ref, False, reason, changes or ["~ (no config or input change found: key format?)"])


def diff(step: str, wanted: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """``~ section.key: old -> new`` lines for the config values and inputs that differ from `manifest`."""
    lines = []
    if str(manifest.get("code_version")) != wanted["code_version"]:
        lines.append(f"~ code_version: {manifest.get('code_version')} -> {wanted['code_version']}")
    old, new = dict(_flatten(manifest.get("config"), step)), dict(_flatten(wanted["config"], step))
    for path in sorted(set(old) | set(new), key=lambda p: (p not in old or p not in new, p)):
        if path not in old:
            lines.append(f"+ {path}: {_show(new[path])}")
        elif path not in new:
            lines.append(f"- {path}: {_show(old[path])}")
        elif old[path] != new[path]:
            lines.append(f"~ {path}: {_show(old[path])} -> {_show(new[path])}")
    return lines + _input_diff(wanted["inputs"], manifest.get("inputs", []))


def _input_diff(new: Sequence[tuple[str, ArtifactRef]], old: Sequence[dict[str, Any]]) -> list[str]:
    old_names = [f"{i.get('stage')}/{i.get('key')}" for i in old]
    if len(old_names) != len(new):
        return [f"~ inputs: [{', '.join(old_names)}] -> [{', '.join(f'{n}={r}' for n, r in new)}]"]
    lines = []
    for (name, ref), was in zip(new, old, strict=True):
        if was.get("stage") == ref.stage and was.get("key") != ref.key:
            lines.append(f"~ input {name}: {was.get('key')} -> {ref.key}")
        elif was.get("stage") != ref.stage:
            lines.append(f"~ input {name}: {was.get('stage')}/{was.get('key')} -> {ref}")
    return lines


def _plain(config: Any) -> Any:
    """The config as the manifest holds it (canonical, through JSON: tuples become lists)."""
    return json.loads(canonical_json(config))


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Dotted paths to leaf values; lists of tables by index (``download.sources[0].url``)."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # as in the manifest: "text", 3000, true, null


def render(stages: Sequence[StagePlan]) -> str:
    """The plan as text, one line per stage plus its changes, then a summary line."""
    width = max((len(s.step) for s in stages), default=0)
    ref_width = max((len(str(s.ref)) for s in stages), default=0)
    lines = []
    for s in stages:
        mark = "=" if s.present else ("+" if s.reason.startswith("build") else "~")
        lines.append(f"{mark} {s.step:<{width}}  {str(s.ref):<{ref_width}}  {'present' if s.present else s.reason}")
        lines += [f"      {c}" for c in s.changes]
    rebuild = sum(not s.present for s in stages)
    lines.append(f"\n{rebuild} of {len(stages)} stages would rebuild")
    return "\n".join(lines)
