"""Stage declarations: what the Prefect task looks up in the store and what the stage builds come from one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.dag import STEPS, section
from kiln.errors import KilnError
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from tasks.download import DOWNLOAD, download, download_task
from tasks.evaluate import evaluate_task
from tasks.pipeline_config import load_pipeline_config
from tasks.stage import Stage
from tests.conftest import REPO_ROOT

CFG = load_pipeline_config(REPO_ROOT / "configs" / "demo.toml")


def upstream(name: str) -> ArtifactRef:
    """A ref to an upstream artifact; its key is all a downstream key reads."""
    return ArtifactRef(name, f"{name}-key-0123", f"/nowhere/{name}")


def write_something(build: Build) -> None:
    (build.dir / "out.txt").write_text("x")


def check_policy_matches_store(step: str, inputs: dict[str, ArtifactRef | None], store: ArtifactStore) -> None:
    task = STEPS[step].task
    cfg = section(CFG, step)
    params = {**inputs, "cfg": cfg, "store_root": str(store.root)}
    assert task.stage.find(params) is None  # what the task checks before running: nothing yet
    ref = task.stage.produce(store, cfg, inputs, write_something)  # the stage function's store call
    assert task.stage.key(cfg, inputs) == ref.key
    # Once built, the task finds exactly that artifact (what makes the UI show Cached).
    assert task.stage.find(params) == ref


@pytest.mark.parametrize("step", list(STEPS))
def test_policy_key_is_the_produced_artifact_key(step: str, tmp_path: Path) -> None:
    stage = STEPS[step].stage
    check_policy_matches_store(step, {name: upstream(name) for name in stage.inputs}, open_store(tmp_path))


def test_evaluate_with_a_missing_optional_input_hashes_only_the_given_ones(tmp_path: Path) -> None:
    model, tokens, chat = upstream("pretrain"), upstream("pretokenize"), upstream("sft_data")
    store = open_store(tmp_path / "a")
    check_policy_matches_store("evaluate", {"model": model, "tokens": tokens, "chat": None}, store)
    (manifest,) = store.list()
    assert [i["stage"] for i in manifest["inputs"]] == ["pretrain", "pretokenize"]
    other = open_store(tmp_path / "b")
    check_policy_matches_store("evaluate", {"model": model, "tokens": None, "chat": chat}, other)
    keys = {evaluate_task.stage.key(CFG.evaluate, refs) for refs in (
        {"model": model, "tokens": tokens, "chat": None}, {"model": model, "tokens": None, "chat": chat},
        {"model": model, "tokens": tokens, "chat": chat})}
    assert len(keys) == 3


def test_real_download_keys_like_its_task_including_the_file_fingerprint(tmp_path: Path) -> None:
    source = tmp_path / "data.jsonl"
    source.write_text('{"text": "a"}\n')
    cfg = load_pipeline_config(REPO_ROOT / "configs" / "demo.toml",
                               [f'download.sources=[{{name="data.jsonl", url="{source}"}}]']).download
    store = open_store(tmp_path / "store")
    params = {"cfg": cfg, "store_root": str(store.root)}
    assert download_task.stage.find(params) is None
    ref = download(cfg, store)
    assert download_task.stage.find(params) == ref
    assert json.loads((ref.path / "manifest.json").read_text())["config"]["sources"][0]["fingerprint"].startswith(
        "sha256:")
    source.write_text('{"text": "b"}\n')  # same config, new content: a new key for both
    assert DOWNLOAD.key(cfg, {}) != ref.key
    assert download_task.stage.find(params) is None


def test_task_parameters_must_follow_the_declaration() -> None:
    stage = Stage("s", "1", dict, inputs=("a", "b"), optional=("b",))

    def wrong(b: ArtifactRef, a: ArtifactRef, cfg: dict, store_root: str) -> ArtifactRef:
        raise AssertionError

    with pytest.raises(TypeError, match=r"must be the inputs of stage s \('a', 'b'\)"):
        stage.task(wrong)
    with pytest.raises(ValueError, match="optional inputs"):
        Stage("s", "1", dict, inputs=("a",), optional=("c",))


def test_missing_required_or_unknown_input_is_an_error() -> None:
    stage = Stage("s", "1", dict, inputs=("a", "b"), optional=("b",))
    assert stage.key({}, {"a": upstream("a")}) == stage.key({}, {"a": upstream("a"), "b": None})
    assert stage.key({}, {"a": upstream("a")}) != stage.key({}, {"a": upstream("a"), "b": upstream("b")})
    with pytest.raises(KilnError, match="input 'a' is required"):
        stage.key({}, {"b": upstream("b")})
    with pytest.raises(KilnError, match="unknown inputs"):
        stage.key({}, {"a": upstream("a"), "c": upstream("c")})


def test_a_task_that_finds_its_artifact_built_meanwhile_reports_cached(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs at once: the one that waited on the key's lock built nothing, so it must not say Completed."""
    cfg = load_pipeline_config(REPO_ROOT / "configs" / "demo.toml",
                               [f'download.sources=[{{name="a.jsonl", url="{tmp_path / "a.jsonl"}"}}]']).download
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n')
    store = open_store(tmp_path / "store")
    built = download_task.run_unless_stored(cfg, str(store.root))  # builds: the plain ref (Completed)
    assert isinstance(built, ArtifactRef)
    again = download_task.run_unless_stored(cfg, str(store.root))  # found before running
    assert again.name == "Cached" and "is in the store" in again.message
    # The other run's build finishes while this one waits: its lookup said "missing", produce found it.
    monkeypatch.setattr(Stage, "find", lambda self, params: None)
    waited = download_task.run_unless_stored(cfg, str(store.root))
    assert waited.name == "Cached" and "built meanwhile" in waited.message
    assert waited.data == built  # the ref travels in the state, for the next stage
