"""A run that fails in one stage, rerun once fixed: earlier stages Cached, the failed stage resumes, nothing redone.

The fault is the trainer's own test hook: ``KILN_TRAIN_STOP_AFTER_STEP=6`` makes it
exit with code 75 right after step 6 (as if the node were lost), so `kiln run` fails
in pretrain after a checkpoint at step 6. The rerun without it must show download …
pretokenize as Cached and resume training at step 7. Unit-level resume inside data
stages (kill -9 between units) is tested in tests/storage/test_reliability.py, and the
same recovery through the UI's "Retry" button in tests/flows/test_deployments.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.flows.test_deployments import UPSTREAM
from tests.flows.test_pipeline import SHRINK
from tests.prefect_server import server_env

pytestmark = pytest.mark.slow


def kiln_run(env: dict[str, str], summary: Path, *, until: str) -> subprocess.CompletedProcess[str]:
    summary.unlink(missing_ok=True)
    args = ["run", "configs/demo.toml", "--until", until, "--summary-json", str(summary)]
    for override in SHRINK:
        args += ["-s", override]
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def train_steps(artifact: Path) -> list[int]:
    records = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if r.get("kind") == "train"]


def test_failed_pretrain_resumes_from_its_checkpoint_with_upstream_cached(tmp_path: Path, prefect_api: str) -> None:
    store = tmp_path / "artifacts"
    env: dict[str, Any] = {**server_env(tmp_path / "prefect", prefect_api), "KILN_HOME": str(store)}
    summary = tmp_path / "summary.json"

    failed = kiln_run({**env, "KILN_TRAIN_STOP_AFTER_STEP": "6"}, summary, until="pretrain")
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "kiln: error:" in failed.stderr and "trainer exited with code 75" in failed.stderr
    (partial,) = (store / "pretrain").glob(".partial-*")
    assert (partial / "checkpoints" / "step-00000006").is_dir() and not (partial / "DONE.json").exists()
    upstream = {s: json.loads(next((store / s).glob("[!.]*/manifest.json")).read_text()) for s in UPSTREAM}

    fixed = kiln_run(env, summary, until="pretrain")
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    result = json.loads(summary.read_text())
    states = {stage: info["state"] for stage, info in result["stages"].items()}
    assert states == {**dict.fromkeys(UPSTREAM, "Cached"), "pretrain": "Completed"}
    for stage, before in upstream.items():
        assert json.loads((store / stage / before["key"] / "manifest.json").read_text()) == before

    artifact = Path(result["stages"]["pretrain"]["artifact"])
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["training"]["resumed"] is True and manifest["counts"]["steps"] == 12
    log = (artifact / "train.log").read_text()
    assert "resumed from" in log and "step-00000006" in log
    steps = train_steps(artifact)
    assert steps == sorted(set(steps)) and steps[-1] == 12  # every step trained once, none twice
    assert not list((store / "pretrain").glob(".partial-*"))
