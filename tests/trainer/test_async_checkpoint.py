"""Checkpoints that do not stall training: host staging, the background writer, and what survives a kill -9.

- `HostStager`'s copies serialize to the very bytes of the live state (tied weights, shared
  optimizer objects), are not touched by later in-place updates, and reuse their buffers.
- `SaveThread` raises a failed write's own error, with a note naming the checkpoint, in the
  loop's thread; the real loop stops on it.
- A trainer kill -9-ed while its background write hangs (after the tensors are written,
  before the manifest) leaves no checkpoint that counts; the rerun resumes from the previous
  one and reproduces the uninterrupted run's losses.
- On a ~80 MB state the loop's stall is well below the whole save.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from model import Llama, get_preset
from tests.trainer.conftest import content_digests, train_args, train_losses
from trainer import checkpoint
from trainer.checkpoint import list_checkpoints, step_of
from trainer.config import TrainConfig
from trainer.metrics import read_metrics
from trainer.optim import build_optimizer
from trainer.pretrain import main
from trainer.save_thread import SaveThread
from trainer.staging import HostStager
from trainer.summary import TrainSummary

REPO_ROOT = Path(__file__).resolve().parents[2]


def trained(device: str = "cpu") -> tuple[Llama, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Llama(get_preset("debug", tie_embeddings=True)).to(device)
    opt = build_optimizer(model, TrainConfig().optim)
    x = torch.randint(0, 512, (2, 16), device=device)
    model(x, x)[1].backward()
    opt.step()
    return model, opt


def pt_bytes(obj: object) -> dict[str, bytes]:
    buf = io.BytesIO()
    torch.save(obj, buf)
    archive = zipfile.ZipFile(buf)
    return {name: archive.read(name) for name in archive.namelist()}


def test_staged_state_saves_the_same_bytes_and_later_updates_do_not_reach_it():
    model, opt = trained()
    live = {"model": model.state_dict(), "optim": opt.state_dict()}
    stager = HostStager(torch.device("cpu"))
    snap = stager.stage(live)
    snap.wait()
    staged = snap.tree
    assert staged["model"]["output.weight"].data_ptr() == staged["model"]["tok_embeddings.weight"].data_ptr()
    for key in ("model", "optim"):  # torch.save writes storages and pickle references: both must be kept
        assert pt_bytes(staged[key]) == pt_bytes(live[key]), key
    before = pt_bytes(staged["model"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # what the next optimizer step does, in place
    assert pt_bytes(staged["model"]) == before
    assert snap.nbytes == sum(t.untyped_storage().nbytes() for t in model.state_dict().values()) - \
        model.tok_embeddings.weight.untyped_storage().nbytes() + sum(  # the tied matrix once
            t.untyped_storage().nbytes() for s in opt.state_dict()["state"].values() for t in s.values())
    again = stager.stage({"model": model.state_dict(), "optim": opt.state_dict()}).tree
    assert again["model"]["norm.weight"].data_ptr() == staged["model"]["norm.weight"].data_ptr()  # reused
    assert torch.equal(again["model"]["norm.weight"], model.norm.weight)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_copies_overlap_and_the_next_in_place_update_waits_for_them():
    model, opt = trained("cuda")
    stager = HostStager(torch.device("cuda"))
    stager.reserve({"model": model.state_dict()})
    want = {k: v.cpu() for k, v in model.state_dict().items()}
    snap = stager.stage({"model": model.state_dict()})  # returns before the copies are done
    stager.guard()  # as the optimizer's step pre-hook does
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.0)
    snap.wait()
    assert all(torch.equal(snap.tree["model"][k], v) for k, v in want.items())
    assert all(t.is_pinned() for t in snap.tree["model"].values())
    stager.close()


def test_a_failed_background_write_raises_its_own_error_with_the_checkpoint_named(caplog):
    thread = SaveThread()

    def fail() -> None:
        raise OSError(errno.EIO, "Input/output error")

    thread.submit("step-00000005", fail)
    with pytest.raises(RuntimeError, match="still in flight"):
        thread.submit("step-00000010", dict)
    with caplog.at_level(logging.ERROR, logger="trainer"), pytest.raises(OSError) as err:
        thread.wait()
    assert "raised by the background write of checkpoint step-00000005" in err.value.__notes__
    assert "step-00000005: background write failed" in caplog.text
    thread.submit("step-00000010", fail)
    thread.close()  # on the way out of a failed run: logged, not raised over the first error
    assert caplog.text.count("background write failed") == 2


def test_the_loop_stops_on_a_failed_background_write(pattern_data, tmp_path, monkeypatch):
    real = checkpoint.save_pt

    def disk_full_at_step_5(obj, path):
        if Path(path).name == "optimizer.pt" and "step-00000005" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(obj, path)

    monkeypatch.setattr(checkpoint, "save_pt", disk_full_at_step_5)
    with pytest.raises(OSError) as err:
        main(train_args(pattern_data, tmp_path))
    assert "raised by the background write of checkpoint step-00000005" in err.value.__notes__
    assert list_checkpoints(tmp_path) == []  # the failed save never counts
    assert len(train_losses(tmp_path)) <= 10  # surfaced by the next save at the latest, not at the end


# The trainer in a child process, its background write hanging once step 10's tensors are written.
HANGING = """
import sys, time
from pathlib import Path
from trainer import checkpoint
real = checkpoint._fsync_tree
def hang(directory):
    if directory.name == ".tmp-step-00000010":
        Path(sys.argv[1]).write_text("hung")
        time.sleep(600)
    real(directory)
checkpoint._fsync_tree = hang
from trainer.pretrain import main
sys.exit(main(sys.argv[2:]))
"""


def test_kill_9_during_a_background_write_leaves_nothing_that_is_reused(pattern_data, tmp_path):
    reference, run, hung = tmp_path / "reference", tmp_path / "run", tmp_path / "hung"
    assert main(train_args(pattern_data, reference)) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", HANGING, str(hung), *train_args(pattern_data, run)],
                             cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (hung.exists() and len(train_losses(run)) >= 14):  # the loop trains on while step 10 is written
        assert child.poll() is None, child.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the background write never hung"
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    partial = run / "checkpoints" / ".tmp-step-00000010"
    assert (partial / "model.pt").is_file() and not (partial / "manifest.json").exists()
    assert [step_of(p) for p in list_checkpoints(run)] == [5]

    assert main(train_args(pattern_data, run)) == 0  # resumes from step 5, never from the half-written 10
    assert train_losses(run) == train_losses(reference)
    assert content_digests(run) == content_digests(reference)
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_the_loop_waits_for_far_less_than_the_save(pattern_data, tmp_path):
    """~7 M parameters: weights + AdamW states ~80 MB. The loop waits for a host copy; the save also
    serializes, hashes and fsyncs it. (Only the ordering is asserted: absolute times vary with the box.)"""
    bigger = ("model.overrides.dim=384", "model.overrides.n_layers=4", "model.overrides.n_heads=6",
              "model.overrides.n_kv_heads=6", "model.overrides.ffn_hidden=1024", "run.steps=4",
              "checkpoint.every_steps=2", "run.val_every=0")
    assert main(train_args(pattern_data, tmp_path, *bigger)) == 0
    saves = read_metrics(tmp_path / "metrics.jsonl", "checkpoint")
    assert [r["step"] for r in saves] == [2, 4] and all(r["gb"] > 0.07 for r in saves)
    assert all(r["stall_s"] < r["save_s"] / 2 for r in saves), saves
    done = TrainSummary.read(tmp_path)
    assert done.checkpoint_stall_s_max == round(max(r["stall_s"] for r in saves), 4)
    assert json.loads((tmp_path / "DONE.json").read_text())["checkpoint_gb_per_s"] > 0


def test_every_save_is_recorded_whichever_call_sees_it_finish(pattern_data, tmp_path, monkeypatch):
    """Saves slower than a step, one every step: each finishes while the next save waits for it, not when a
    step polls. Each must still be one ``checkpoint`` metrics record (the save path once dropped them)."""
    real = checkpoint.save_pt

    def slow(obj, path):
        if Path(path).name == "model.pt":
            time.sleep(0.3)
        real(obj, path)

    monkeypatch.setattr(checkpoint, "save_pt", slow)
    assert main(train_args(pattern_data, tmp_path, "run.steps=6", "checkpoint.every_steps=1",
                           "run.val_every=3")) == 0
    saves = read_metrics(tmp_path / "metrics.jsonl", "checkpoint")
    assert [r["step"] for r in saves] == [1, 2, 3, 4, 5, 6]
    assert all(r["async"] and r["save_s"] >= 0.3 for r in saves)
