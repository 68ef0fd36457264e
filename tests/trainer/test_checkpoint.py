"""Checkpoints: atomic layout with manifest, weights_only loading, corruption fallback, pruning, export."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch

from model import Llama, get_preset
from trainer.checkpoint import (
    checkpoint_path,
    checkpoint_problem,
    export_final,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_final,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    save_pt,
    set_rng_state,
)
from trainer.config import RunSection, TrainConfig
from trainer.optim import build_optimizer
from trainer.parallelize import DistEnv

SINGLE = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), mode="none")


def trained_model(seed: int = 0) -> tuple[Llama, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Llama(get_preset("debug"))
    opt = build_optimizer(model, TrainConfig().optim)
    x = torch.randint(0, 512, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    return model, opt


def save(out_dir, step, model, opt, val_loss=None):
    return save_checkpoint(out_dir, step, model=model, raw=model, optimizer=opt,
                           trainer_state={"step": step, "tokens_seen": step * 10, "data": {"epoch": 0}},
                           cfg=TrainConfig(), model_cfg=model.cfg, dist=SINGLE, val_loss=val_loss)


def test_layout_manifest_and_weights_only_load(tmp_path):
    model, opt = trained_model()
    path = save(tmp_path, 7, model, opt)
    assert path == checkpoint_path(tmp_path, 7) and path.name == "step-00000007"
    names = {p.name for p in path.iterdir()}
    assert names == {"model.pt", "optimizer.pt", "rng-rank00000.pt", "trainer_state.json", "config.json",
                     "manifest.json", "run.json"}
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json", "run.json"}  # run.json is the run's log
    assert all(len(m["sha256"]) == 64 for m in manifest["files"].values())
    for name in ("model.pt", "optimizer.pt", "rng-rank00000.pt"):
        torch.load(path / name, weights_only=True)  # raises if anything but tensors/containers is inside
    configs = json.loads((path / "config.json").read_text())
    assert configs["model"]["dim"] == 64 and configs["train"]["model"]["preset"] == "debug"
    assert not list(path.parent.glob(".tmp-*"))


def test_load_restores_weights_optimizer_and_state(tmp_path):
    model, opt = trained_model(seed=0)
    path = save(tmp_path, 3, model, opt)
    other, other_opt = trained_model(seed=1)
    state = load_checkpoint(path, model=other, raw=other, optimizer=other_opt, dist=SINGLE)
    assert state["step"] == 3 and state["scheduler"] == {"step": 3} and state["data"] == {"epoch": 0}
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    exp_avg = [opt.state[p]["exp_avg"] for p in model.parameters()]
    assert all(torch.equal(a, other_opt.state[p]["exp_avg"]) for a, p in zip(exp_avg, other.parameters(),
                                                                              strict=True))


def test_rng_states_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    saved = rng_state()
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    model, opt = trained_model()
    save(tmp_path, 5, model, opt)
    newest = save(tmp_path, 10, model, opt)
    blob = bytearray((newest / "model.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # flip one byte
    (newest / "model.pt").write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        found = latest_valid_checkpoint(tmp_path)
    assert found == checkpoint_path(tmp_path, 5)
    assert "step-00000010" in caplog.text and "model.pt" in caplog.text and "corrupt" in caplog.text


def test_checkpoint_without_manifest_does_not_count(tmp_path):
    model, opt = trained_model()
    save(tmp_path, 5, model, opt)
    (save(tmp_path, 10, model, opt) / "manifest.json").unlink()
    assert latest_valid_checkpoint(tmp_path) == checkpoint_path(tmp_path, 5)
    assert latest_valid_checkpoint(tmp_path / "nothing-here") is None


def test_prune_keeps_last_k_and_the_best(tmp_path):
    model, opt = trained_model()
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, None), (5, 2.5)]:
        save(tmp_path, step, model, opt, val_loss=val)
    (tmp_path / "checkpoints" / ".tmp-step-00000006").mkdir()  # a save killed before its rename
    prune_checkpoints(tmp_path, keep_last=2, keep_best=True)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004", "step-00000005"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    prune_checkpoints(tmp_path, keep_last=1, keep_best=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000005"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_final_round_trips(tmp_path, dtype):
    model, _ = trained_model()
    final = export_final(model.state_dict(), model.cfg, tmp_path / "final", dtype=dtype, extra={"step": 1})
    assert (final / "config.json").is_file()
    assert (final / "model.safetensors").is_file() or (final / "model.pt").is_file()
    loaded, cfg = load_final(final)
    assert cfg == model.cfg
    x = torch.randint(0, 512, (1, 12))
    tol = 0 if dtype == "float32" else 0.1
    torch.testing.assert_close(loaded(x)[0], model(x)[0], atol=tol, rtol=tol)


def test_run_log_is_outside_the_manifest_and_a_garbled_one_only_restarts_the_clock(tmp_path, caplog):
    model, opt = trained_model()

    def save_from(run_dir: str, elapsed: float):  # another directory, another wall clock
        cfg = TrainConfig(run=RunSection(out_dir=str(tmp_path / run_dir)))
        return save_checkpoint(tmp_path / run_dir, 3, model=model, raw=model, optimizer=opt, trainer_state={"step": 3},
                               cfg=cfg, model_cfg=model.cfg, dist=SINGLE, run_log={"elapsed_s": elapsed})

    a, b = save_from("a", 1.5), save_from("b", 9.25)
    for name in ("model.pt", "optimizer.pt", "trainer_state.json", "config.json", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert json.loads((a / "run.json").read_text()) == {"elapsed_s": 1.5, "paths": {
        "data.train_dir": "", "data.val_dir": "", "run.out_dir": str(tmp_path / "a")}}
    other, other_opt = trained_model(seed=1)
    assert load_checkpoint(a, model=other, raw=other, optimizer=other_opt, dist=SINGLE)["elapsed_s"] == 1.5
    (a / "run.json").write_text("{not json")
    assert checkpoint_problem(a) is None  # a log: not part of what the manifest vouches for
    with caplog.at_level(logging.WARNING, logger="trainer"):
        state = load_checkpoint(a, model=other, raw=other, optimizer=other_opt, dist=SINGLE)
    assert "elapsed_s" not in state and "run.json: unreadable" in caplog.text


def test_pt_bytes_do_not_depend_on_the_file_name(tmp_path):
    blob = {"w": torch.arange(6.0)}
    save_pt(blob, tmp_path / "model.pt")
    save_pt(blob, tmp_path / ".model.pt.x8k2.tmp")
    assert (tmp_path / "model.pt").read_bytes() == (tmp_path / ".model.pt.x8k2.tmp").read_bytes()
