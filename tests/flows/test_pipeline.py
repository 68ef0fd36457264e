"""The whole DAG through the real `kiln` CLI and Prefect, in separate processes like a user runs it.

One module-scoped store and Prefect home are shared by the runs, so the test
sees what a user sees on their second run: every stage Cached, nothing computed;
`kiln plan` agrees (everything present, and a tokenizer change names exactly the
stages downstream of it); then that change reruns exactly those stages.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.flows.test_plan import parse_plan
from tests.prefect_server import server_env

pytestmark = pytest.mark.slow

# The demo config, shrunk so the whole DAG runs in well under a minute on 2 cores.
SHRINK = [
    "pretrain.schedule.warmup_steps=2",
    "pretrain.run.steps=12",
    "pretrain.run.val_every=6",
    "pretrain.run.val_batches=2",
    "pretrain.checkpoint.every_steps=6",
    "pretrain.data.seq_len=64",
    "pretrain.data.micro_batch_size=4",
    "pretrain.model.preset=debug",
    "tokenizer.vocab_size=1000",
    "generate.max_new_tokens=8",
    "sft.data.seq_len=64",
    "sft.schedule.warmup_steps=1",
    "sft.run.steps=4",
    "sft.run.val_every=2",
    "sft.run.val_batches=1",
    "sft.checkpoint.every_steps=2",
    "dpo.data.seq_len=64",
    "dpo.schedule.warmup_steps=1",
    "dpo.run.steps=4",
    "dpo.run.val_every=2",
    "dpo.run.val_batches=1",
    "dpo.checkpoint.every_steps=2",
    "evaluate.max_batches=2",
]
UPSTREAM = ("download", "clean", "sft_download", "dpo_download")
# A new tokenizer changes every later stage, the chat data shards (tokenized at training time) excepted.
DOWNSTREAM = ("tokenizer", "pretokenize", "pretrain", "generate", "sft", "dpo", "evaluate", "export")


def kiln_run(env: dict[str, str], tmp: Path, *extra: str, until: str = "all") -> dict[str, Any]:
    summary = tmp / "summary.json"
    summary.unlink(missing_ok=True)
    args = ["run", "configs/demo.toml", "--until", until, "--summary-json", str(summary)]
    for override in [*SHRINK, *extra]:
        args += ["-s", override]
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"kiln run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(summary.read_text())
    result["stdout"], result["stderr"] = proc.stdout, proc.stderr
    return result


def kiln_plan(env: dict[str, str], *extra: str) -> str:
    args = ["plan", "configs/demo.toml"]
    for override in [*SHRINK, *extra]:
        args += ["-s", override]
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kiln plan failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> dict[str, str]:
    """This module's store and Prefect home; the API is the session's server (tests/prefect_server.py)."""
    home = tmp_path_factory.mktemp("e2e")
    return {**server_env(home / "prefect", prefect_api), "KILN_HOME": str(home / "artifacts")}


def states(result: dict[str, Any]) -> dict[str, str]:
    return {stage: info["state"] for stage, info in result["stages"].items()}


def manifests(result: dict[str, Any]) -> dict[str, str]:
    return {s: (Path(i["artifact"]) / "manifest.json").read_text() for s, i in result["stages"].items()}


def test_demo_dag_runs_then_is_fully_cached_then_reruns_only_downstream(env, tmp_path: Path) -> None:
    first = kiln_run(env, tmp_path)
    assert set(states(first).values()) == {"Completed"}, states(first)
    assert first["samples"] and first["samples"][0]["text"]
    assert first["final_loss"] > 0
    assert "sample:" in first["stdout"] and "final training loss" in first["stdout"]

    second = kiln_run(env, tmp_path)
    assert set(states(second).values()) == {"Cached"}, states(second)
    assert manifests(second) == manifests(first)  # nothing rebuilt

    unchanged = kiln_plan(env)
    assert parse_plan(unchanged) == dict.fromkeys(first["stages"], "="), unchanged
    assert all(info["key"] in unchanged for info in first["stages"].values())  # the keys the run used
    assert unchanged.rstrip().endswith("0 of 14 stages would rebuild")
    changed = kiln_plan(env, "tokenizer.vocab_size=3000")
    assert {s for s, mark in parse_plan(changed).items() if mark != "="} == set(DOWNSTREAM), changed
    assert "~ tokenizer.vocab_size: 1000 -> 3000" in changed
    assert f"~ input tokenizer: {first['stages']['tokenizer']['key']} -> " in changed  # pretokenize, pretrain, …
    assert changed.rstrip().endswith(f"{len(DOWNSTREAM)} of 14 stages would rebuild")

    third = kiln_run(env, tmp_path, "tokenizer.vocab_size=1200")
    assert {s: states(third)[s] for s in UPSTREAM} == dict.fromkeys(UPSTREAM, "Cached")
    assert {s: states(third)[s] for s in DOWNSTREAM} == dict.fromkeys(DOWNSTREAM, "Completed")
    for stage in UPSTREAM:
        assert third["stages"][stage]["key"] == first["stages"][stage]["key"]
    for stage in DOWNSTREAM:
        assert third["stages"][stage]["key"] != first["stages"][stage]["key"]


def test_deleted_artifact_is_rebuilt_although_prefect_remembers_it(env, tmp_path: Path) -> None:
    before = kiln_run(env, tmp_path, until="tokenizer")
    shutil.rmtree(before["stages"]["tokenizer"]["artifact"])
    after = kiln_run(env, tmp_path, until="tokenizer")
    assert states(after) == {"download": "Cached", "clean": "Cached", "tokenizer": "Completed"}
    assert (Path(after["stages"]["tokenizer"]["artifact"]) / "manifest.json").exists()


def test_bad_config_is_one_clear_line(env, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", "configs/demo.toml", "-s", "tokenizer.vocab_sise=10"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown key 'tokenizer.vocab_sise'" in proc.stderr and "configs/demo.toml" in proc.stderr


def _api(env: dict[str, str], path: str, body: dict[str, Any]) -> Any:
    import urllib.request

    request = urllib.request.Request(f"{env['PREFECT_API_URL']}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def test_download_steps_show_under_their_own_names_with_their_reports(env, tmp_path: Path) -> None:
    """sft_download and dpo_download are the download stage, but the UI shows each under its step's name,
    with the stage report every stage publishes."""
    result = kiln_run(env, tmp_path, until="dpo_download")
    key = result["stages"]["dpo_download"]["key"]
    reports = _api(env, "/artifacts/filter", {"artifacts": {"key": {"any_": ["kiln-download-report"]}}})
    mine = [a for a in reports if a["data"].startswith(f"### download · `download/{key}`")]
    assert mine, [a["data"][:80] for a in reports]
    task_runs = _api(env, "/task_runs/filter", {"task_runs": {"id": {"any_": [a["task_run_id"] for a in mine]}}})
    assert task_runs and all(run["name"].startswith("dpo_download-") for run in task_runs)
