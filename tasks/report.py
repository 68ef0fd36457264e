"""Prefect artifacts for the UI: a stage's report card, its progress bar and the loss curve.

Task wrappers call these after (or while) the stage function runs:

    ref = clean(raw, cfg, store)
    publish_stage_report("clean", ref, store.manifest(ref))     # counts, sizes, timings, where it lives
    progress("pretokenize", done / total)                       # a progress bar on the task run
    publish_image("pretrain", ref.path / "loss.png")            # the loss curve

Outside a flow or task run (plain library calls, tests, the trainer under torchrun)
every function does nothing and returns None. Reports are best effort: a failure to
reach the Prefect API is logged and never fails the stage that produced the artifact.

Prefect 3.8.8's image artifact stores a URL that the UI puts in ``<img src>`` and also
prints as text; a local PNG has no URL a browser could open, so a local image becomes
a markdown artifact embedding it as a ``data:`` URL (the UI's markdown renderer turns
image tokens into ``<img src>`` as they are), with its path beside it.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from storage.store import ArtifactRef

log = logging.getLogger("kiln.report")

MAX_INLINE_IMAGE_BYTES = 1 << 20  # a loss.png is ~50 kB; a 1 MB image is already slow to load as text
TOP_FILES = 5  # the largest files listed in a report

# Progress artifacts created in this process, per (run id, stage): later calls update them.
_progress_ids: dict[tuple[str, str], UUID] = {}
_progress_last: dict[tuple[str, str], int] = {}


def artifact_key(stage: str, kind: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only (others are rejected)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"kiln-{stage}-{kind}".lower()).strip("-")


def _run_id() -> str | None:
    """The current task run's id (else the flow run's), or None outside a Prefect run."""
    from prefect.context import FlowRunContext, TaskRunContext

    if (task_ctx := TaskRunContext.get()) is not None:
        return str(task_ctx.task_run.id)
    if (flow_ctx := FlowRunContext.get()) is not None and flow_ctx.flow_run is not None:
        return str(flow_ctx.flow_run.id)
    return None


def publish_stage_report(stage: str, ref: ArtifactRef, manifest: Mapping[str, Any] | None = None) -> UUID | None:
    """A markdown artifact with the stage's counts, file sizes and timings, and where the artifact lives."""
    if _run_id() is None:
        return None
    markdown = stage_report_markdown(stage, ref, manifest or {})
    return _best_effort("stage report", lambda: _create_markdown(markdown, artifact_key(stage, "report"),
                                                                 f"{stage} artifact {ref}"))


def stage_report_markdown(stage: str, ref: ArtifactRef, manifest: Mapping[str, Any]) -> str:
    """The report's markdown (pure, so tests can read it without a Prefect server)."""
    files: Mapping[str, Any] = manifest.get("files", {})
    total = sum(int(meta.get("size", 0)) for meta in files.values())
    location = f"[{ref.uri}]({ref.uri})" if ref.uri.startswith(("http://", "https://")) else f"`{ref.uri}`"
    lines = [
        f"### {stage} · `{ref.stage}/{ref.key}`",
        "",
        "| | |",
        "|---|---|",
        f"| artifact | {location} |",
        f"| build | `{manifest.get('build_id', '?')}`, created {manifest.get('created_at', '?')} |",
        f"| elapsed | {_seconds(manifest.get('elapsed_s'))} |",
        f"| files | {len(files)} files, {_size(total)} |",
    ]
    for name, value in manifest.get("counts", {}).items():
        lines.append(f"| {_cell(name)} | {_cell(_number(value))} |")
    for name, value in manifest.get("training", {}).items():
        lines.append(f"| training.{_cell(name)} | {_cell(_number(value))} |")
    largest = sorted(files.items(), key=lambda item: -int(item[1].get("size", 0)))[:TOP_FILES]
    if largest:
        lines += ["", "| largest files | size |", "|---|---:|"]
        lines += [f"| `{_cell(rel)}` | {_size(int(meta.get('size', 0)))} |" for rel, meta in largest]
    return "\n".join(lines) + "\n"


def progress(stage: str, fraction: float) -> UUID | None:
    """Create (first call in a run) or move the stage's progress bar; `fraction` is 0..1.

    Updates are sent only when the whole percentage changes, so calling this once per
    unit of work in a tight loop costs at most ~100 API calls per stage.
    """
    run_id = _run_id()
    if run_id is None:
        return None
    percent = max(0.0, min(100.0, 100.0 * float(fraction)))
    slot = (run_id, stage)
    if _progress_last.get(slot) == int(percent):
        return _progress_ids.get(slot)
    _progress_last[slot] = int(percent)
    return _best_effort("progress", lambda: _move_progress(slot, stage, percent))


def _move_progress(slot: tuple[str, str], stage: str, percent: float) -> UUID:
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    # cast: Prefect's sync/async dispatch types these as "UUID | Coroutine"; called from sync code they return UUID.
    if slot not in _progress_ids:
        _progress_ids[slot] = cast(UUID, create_progress_artifact(
            progress=percent, key=artifact_key(stage, "progress"), description=f"{stage}: units of work done"))
    else:
        update_progress_artifact(artifact_id=_progress_ids[slot], progress=percent)
    return _progress_ids[slot]


def publish_image(stage: str, image: str | Path, *, name: str = "loss-curve", description: str = "") -> UUID | None:
    """Show an image in the UI: an image artifact for an http(s) URL, else the local file embedded in markdown."""
    if _run_id() is None:
        return None
    key = artifact_key(stage, name)
    text = str(image)
    if text.startswith(("http://", "https://")):
        from prefect.artifacts import create_image_artifact

        return _best_effort("image", lambda: create_image_artifact(image_url=text, key=key, description=description))
    return _best_effort("image", lambda: _create_markdown(image_markdown(Path(image), description), key, description))


def image_markdown(path: Path, caption: str = "") -> str:
    """Markdown showing a local PNG/JPEG/SVG inline (as a data URL) with its path; only the path if it is large."""
    label = caption or path.stem.replace("-", " ").replace("_", " ")
    size = path.stat().st_size if path.is_file() else -1
    if size < 0:
        return f"**{label}**: `{path}` (not found)\n"
    if size > MAX_INLINE_IMAGE_BYTES:
        return f"**{label}**: `{path}` ({_size(size)}, too large to show inline)\n"
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}.get(
        path.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"![{label}](data:{mime};base64,{data})\n\n`{path}`\n"


def _create_markdown(markdown: str, key: str, description: str) -> UUID:
    from prefect.artifacts import create_markdown_artifact

    return cast(UUID, create_markdown_artifact(markdown=markdown, key=key, description=description))


def _best_effort(what: str, publish: Any) -> UUID | None:
    try:
        return publish()
    except Exception as exc:  # the artifact is built; a UI decoration must not fail it
        log.warning("could not publish the %s artifact: %s: %s", what, type(exc).__name__, exc)
        return None


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for bigger in ("kB", "MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def _seconds(value: Any) -> str:
    return f"{float(value):.1f} s" if isinstance(value, int | float) else "?"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
