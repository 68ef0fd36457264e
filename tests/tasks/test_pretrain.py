"""Pretrain stage end to end: a real tokenizer, real Wikipedia tokens, the trainer as a subprocess.

Covers the artifact layout, the cache (a rerun launches nothing), a trainer failure
becoming a KilnError with no artifact, and a run killed midway resuming from its
checkpoint on the next call.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import tasks.launch as launcher
import tasks.pretrain as stage
from kiln.config import load_config
from kiln.errors import KilnError
from model.tokenizer import Tokenizer
from storage.store import ArtifactRef, ArtifactStore, Build, open_store
from storage.token_shards import write_token_shard
from tasks.launch import launch_command
from tasks.pretrain import PretrainConfig, pretrain
from tasks.tokenizer import TokenizerConfig, train_tokenizer
from tests.tasks.tokenizer_fixtures import load_enwiki_docs, make_docs_artifact
from trainer.config import CheckpointSection, DataSection, LaunchSection, OptimSection, RunSection, ScheduleSection
from trainer.pretrain import STOP_ENV

N_VAL_DOCS = 6


def make_inputs(store: ArtifactStore) -> tuple[ArtifactRef, ArtifactRef]:
    """A 400-piece tokenizer trained on 40 enwiki articles, and those articles as train/val token shards."""
    texts = [d["text"] for d in load_enwiki_docs(max_chars=3000, limit=40)]
    docs = make_docs_artifact(store, load_enwiki_docs(max_chars=3000, limit=40), n_shards=1)
    tok_ref = train_tokenizer(docs, TokenizerConfig(vocab_size=400), store)
    tok = Tokenizer.load(tok_ref.path)

    def work(build: Build) -> None:
        ids = [tok.encode(t) for t in texts]
        common = dict(vocab_size=tok.vocab_size, eos_id=tok.eos_id)
        write_token_shard(build.dir / "train" / "00000", ids[N_VAL_DOCS::2], **common)
        write_token_shard(build.dir / "train" / "00001", ids[N_VAL_DOCS + 1::2], **common)
        write_token_shard(build.dir / "val" / "00000", ids[:N_VAL_DOCS], **common)

    tokens_ref = store.produce("pretokenize", "test", {"docs": 40}, [docs, tok_ref], work)
    return tokens_ref, tok_ref


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArtifactRef, ArtifactRef]:
    return make_inputs(open_store(tmp_path_factory.mktemp("pretrain-inputs")))


def tiny_config(**run: object) -> PretrainConfig:
    """8 steps of the debug model on 4 x 64 tokens, checkpoints every 4 steps."""
    return PretrainConfig(
        data=DataSection(seq_len=64, micro_batch_size=4, grad_accum_steps=1),
        optim=OptimSection(lr=3e-3, min_lr=3e-4),
        schedule=ScheduleSection(warmup_steps=1),
        checkpoint=CheckpointSection(every_steps=4, keep_last=2),
        run=RunSection(**{"steps": 8, "log_every": 2, "val_every": 4, "val_batches": 2, "device": "cpu", **run}),
    )


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory: pytest.TempPathFactory) -> tuple[ArtifactStore, ArtifactRef]:
    store = open_store(tmp_path_factory.mktemp("pretrain-store"))
    tokens, tok = inputs
    return store, pretrain(tokens, tok, tiny_config(), store)


@pytest.fixture(scope="module", autouse=True)
def one_thread_trainer() -> Iterator[None]:
    """One torch thread in every trainer subprocess: faster for the debug model on a shared 2-core box,
    and the same thread count in every launch, so resumed and straight runs compare bitwise."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def test_artifact_is_self_contained(inputs, trained) -> None:
    store, ref = trained
    tok = Tokenizer.load(inputs[1].path)
    final = ref.path / "final"
    assert {"config.json", "tokenizer.model", "tokenizer_meta.json", "generation.json"} <= {
        p.name for p in final.iterdir()}
    assert (final / "model.safetensors").is_file() or (final / "model.pt").is_file()
    assert json.loads((final / "config.json").read_text())["vocab_size"] == tok.model_vocab_size == 448
    # The shards were written without BOS, so prompts start after an EOS, like every packed document.
    assert json.loads((final / "generation.json").read_text())["prompt_prefix"] == [tok.eos_id]
    for name in ("metrics.jsonl", "DONE.json", "train.log", "train_config.json"):
        assert (ref.path / name).is_file(), name
    assert (ref.path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in (ref.path / "checkpoints").iterdir()] == ["step-00000008"]  # keep_checkpoints=1
    train_cfg = json.loads((ref.path / "train_config.json").read_text())
    assert train_cfg["data"]["train_dir"] == str(inputs[0].path / "train")
    assert train_cfg["data"]["val_dir"] == str(inputs[0].path / "val")
    manifest = store.manifest(ref)
    assert manifest["counts"]["steps"] == 8 and manifest["counts"]["tokens_seen"] == 8 * 4 * 64
    assert manifest["training"]["resumed"] is False
    done = json.loads((ref.path / "DONE.json").read_text())
    assert done["final_loss"] < 6.1  # ln(448) = 6.1 at init
    store.verify(ref)


def test_rerun_returns_the_artifact_without_launching(inputs, trained, monkeypatch) -> None:
    store, ref = trained

    def no_launch(*args: object, **kwargs: object) -> None:
        raise AssertionError("the trainer was launched for a cached artifact")

    monkeypatch.setattr(launcher, "run_trainer", no_launch)
    assert pretrain(*inputs, tiny_config(), store) == ref
    # Runtime-only settings (more workers, torchrun, compile) do not change the key either.
    faster = dataclasses.replace(tiny_config(compile=True), launch=LaunchSection(nproc_per_node=2, launcher="torchrun"))
    assert pretrain(*inputs, faster, store) == ref
    assert stage.pretrain_task.fn(*inputs, tiny_config(), str(store.root)) == ref


def test_failing_trainer_is_a_kiln_error_and_leaves_no_artifact(inputs, tmp_path, monkeypatch) -> None:
    store = open_store(tmp_path)
    # Valid config, impossible data: no shard holds one 20001-token sequence. Only the trainer finds out.
    cfg = dataclasses.replace(tiny_config(), data=DataSection(seq_len=20000, micro_batch_size=1),
                              model=dataclasses.replace(tiny_config().model, overrides={"max_seq_len": 20000}))
    with pytest.raises(KilnError) as err:
        pretrain(*inputs, cfg, store)
    message = str(err.value)
    assert "trainer exited with code 2" in message and "lower data.seq_len" in message
    assert "train.log" in message.splitlines()[0]
    key = stage.PRETRAIN.key(cfg, dict(zip(stage.PRETRAIN.inputs, inputs, strict=True)))
    assert store.get(stage.STAGE, key) is None
    assert (store.partial_dir(stage.STAGE, key) / "train.log").is_file()


def test_killed_run_resumes_from_its_checkpoint(inputs, trained, tmp_path, monkeypatch) -> None:
    store = open_store(tmp_path)
    cfg = tiny_config()
    monkeypatch.setenv(STOP_ENV, "6")  # "killed" after step 6; the last checkpoint is step 4
    with pytest.raises(KilnError, match="stopped: after step 6"):
        pretrain(*inputs, cfg, store)
    monkeypatch.delenv(STOP_ENV)
    ref = pretrain(*inputs, cfg, store)
    log = (ref.path / "train.log").read_text()
    assert "resumed from" in log and "step-00000004" in log
    assert store.manifest(ref)["training"]["resumed"] is True
    # Exact resume: the same per-step losses as the uninterrupted run of the same config.
    def losses(r: ArtifactRef) -> list[float]:
        lines = (r.path / "metrics.jsonl").read_text().splitlines()
        return [m["loss"] for m in map(json.loads, lines) if m["kind"] == "train"]

    assert losses(ref) == losses(trained[1])
    assert logs_and_content(store, ref)[::2] == logs_and_content(*trained)[::2]  # files and content_sha256


def logs_and_content(store: ArtifactStore, ref: ArtifactRef) -> tuple[dict[str, str], dict[str, str], str]:
    manifest = store.manifest(ref)
    digest = {rel: meta["sha256"] for rel, meta in manifest["files"].items()}
    return digest, {rel: meta["sha256"] for rel, meta in manifest["logs"].items()}, manifest["content_sha256"]


def test_two_stores_build_the_same_content_with_their_own_logs(inputs, trained, tmp_path) -> None:
    store = open_store(tmp_path)
    ref = pretrain(*inputs, tiny_config(), store)
    files, logs, content = logs_and_content(store, ref)
    their_files, their_logs, their_content = logs_and_content(*trained)
    assert {"final/model.safetensors", "final/config.json", "checkpoints/step-00000008/model.pt",
            "checkpoints/step-00000008/optimizer.pt", "checkpoints/step-00000008/rng-rank00000.pt",
            "checkpoints/step-00000008/trainer_state.json", "checkpoints/step-00000008/config.json"} <= set(files)
    assert files == their_files and content == their_content
    assert {"metrics.jsonl", "train.log", "DONE.json", "loss.png", "train_config.json",
            "checkpoints/step-00000008/run.json"} == set(logs) == set(their_logs)
    assert logs["train_config.json"] != their_logs["train_config.json"]  # another store: other host paths
    assert logs["metrics.jsonl"] != their_logs["metrics.jsonl"]  # other wall-clock timings


# Runs a trainer module, SIGKILLing itself (kill -9: no cleanup, nothing flushed) while it writes the
# checkpoint of step $KILL_AT_STEP: its model, optimizer and RNG files are written, its manifest is not.
KILL_DURING_CHECKPOINT = textwrap.dedent("""
    import os, runpy, signal, sys
    import trainer.checkpoint as ckpt

    real_write_manifest = ckpt._write_manifest

    def write_manifest(directory, step, val_loss):
        if step == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)
        real_write_manifest(directory, step, val_loss)

    ckpt._write_manifest = write_manifest
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
""")


def test_kill_9_mid_training_then_resume_builds_the_same_content(inputs, trained, tmp_path, monkeypatch) -> None:
    store, cfg = open_store(tmp_path), tiny_config()
    real_command = launcher.launch_command

    def killed_command(module: str, launch: LaunchSection, config_path: Path) -> list[str]:
        python, _, *rest = real_command(module, launch, config_path)  # [python, -m, module, --config, path]
        return [python, "-c", KILL_DURING_CHECKPOINT, *rest]

    with monkeypatch.context() as mp:
        mp.setattr(launcher, "launch_command", killed_command)
        mp.setenv("KILL_AT_STEP", "8")  # the last checkpoint; step 4's is complete
        with pytest.raises(KilnError, match="trainer exited with code -9"):
            pretrain(*inputs, cfg, store)
    key = stage.PRETRAIN.key(cfg, dict(zip(stage.PRETRAIN.inputs, inputs, strict=True)))
    partial = store.partial_dir(stage.STAGE, key)
    assert (partial / "checkpoints" / ".tmp-step-00000008" / "model.pt").is_file()  # died mid-save
    ref = pretrain(*inputs, cfg, store)
    assert "resumed from" in (ref.path / "train.log").read_text()
    assert logs_and_content(store, ref)[::2] == logs_and_content(*trained)[::2]  # files and content_sha256


def test_config_rejects_paths_and_vocab(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="pretrain.data.train_dir"):
        PretrainConfig(data=DataSection(train_dir="/x"))
    with pytest.raises(KilnError, match="vocab_size"):
        load_config(PretrainConfig, None, ["model.overrides.vocab_size=1000"])
    with pytest.raises(KilnError, match="data.seq_len"):
        load_config(PretrainConfig, None, ["data.seq_len=4096"])
    with pytest.raises(KilnError, match="torchrun"):
        PretrainConfig(launch=LaunchSection(nproc_per_node=2, launcher="python"))


def test_launch_command_picks_python_for_one_process(tmp_path: Path) -> None:
    one = launch_command("trainer.pretrain", PretrainConfig().launch, tmp_path / "c.json")
    assert one[1:3] == ["-m", "trainer.pretrain"]
    four = launch_command("trainer.pretrain", PretrainConfig(launch=LaunchSection(nproc_per_node=4)).launch,
                          tmp_path / "c.json")
    assert four[1:7] == ["-m", "trainer.lifeline", "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node=4"]
    assert four[7:9] == ["-m", "trainer.pretrain"]
