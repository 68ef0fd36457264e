"""The real `trainer.pretrain.main` on a debug model: learning, exact resume, corruption, outputs."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch

from model import Llama, get_preset
from tests.trainer.conftest import content_digests, fresh_process_rngs, train_args, train_losses
from trainer import loop
from trainer.checkpoint import checkpoint_path, list_checkpoints, load_final, prune_checkpoints, step_of
from trainer.metrics import read_metrics
from trainer.parallelize import apply_compile, compile_kwargs
from trainer.pretrain import EXIT_STOPPED, STOP_ENV, main


@pytest.fixture(scope="module")
def straight_run(pattern_data, tmp_path_factory):
    """20 uninterrupted steps, shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("straight")
    torch.set_num_threads(1)
    assert main(train_args(pattern_data, out)) == 0
    return out


def test_loss_decreases(straight_run):
    losses = train_losses(straight_run)
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5  # ln(512) = 6.24 at init; the progressions are learnable
    val = read_metrics(straight_run / "metrics.jsonl", "val")
    assert [m["step"] for m in val] == [5, 10, 15, 20]
    assert val[-1]["val_loss"] < val[0]["val_loss"]


@pytest.mark.parametrize("async_save", ["true", "false"])
def test_stop_and_resume_reproduces_the_loss_curve_bitwise(pattern_data, straight_run, tmp_path, monkeypatch,
                                                          async_save):
    """The straight run saved in the background (the default); resuming from either kind of save is exact."""
    monkeypatch.setenv(STOP_ENV, "12")
    assert main(train_args(pattern_data, tmp_path, f"checkpoint.async_save={async_save}")) == EXIT_STOPPED
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000005", "step-00000010"]
    assert len(train_losses(tmp_path)) == 12  # steps 11-12 were logged, then "killed"
    monkeypatch.delenv(STOP_ENV)
    assert main(train_args(pattern_data, tmp_path)) == 0
    assert train_losses(tmp_path) == train_losses(straight_run)  # exact float equality, steps 1-20
    val = read_metrics(tmp_path / "metrics.jsonl", "val")
    assert [m["step"] for m in val] == [5, 10, 15, 20]  # no duplicate lines after the resume
    assert content_digests(tmp_path) == content_digests(straight_run)  # weights, optimizer, RNG: every byte


def test_two_runs_of_one_config_write_identical_content(pattern_data, straight_run, tmp_path):
    """Weights, optimizer and RNG states, checkpoint configs and states: byte for byte, in another directory."""
    fresh_process_rngs()
    assert main(train_args(pattern_data, tmp_path)) == 0
    ours, theirs = content_digests(tmp_path), content_digests(straight_run)
    assert {"final/model.safetensors", "checkpoints/step-00000020/model.pt",
            "checkpoints/step-00000020/optimizer.pt", "checkpoints/step-00000020/rng-rank00000.pt",
            "checkpoints/step-00000020/trainer_state.json", "checkpoints/step-00000020/config.json",
            "checkpoints/step-00000020/manifest.json"} <= set(ours)
    assert ours == theirs
    # What differs lives in the run logs: this run's directory, its wall clock.
    run_log = json.loads((tmp_path / "checkpoints" / "step-00000020" / "run.json").read_text())
    assert run_log["paths"]["run.out_dir"] == str(tmp_path) and run_log["elapsed_s"] > 0
    assert str(tmp_path) not in (tmp_path / "checkpoints" / "step-00000020" / "config.json").read_text()


def test_background_and_synchronous_saves_write_the_same_bytes(pattern_data, straight_run, tmp_path):
    """checkpoint.async_save is runtime-only: the same weights, optimizer, RNG and trainer state, byte for byte
    (the straight run saved in the background). config.json, the run's whole config, differs in that key alone."""
    assert main(train_args(pattern_data, tmp_path, "checkpoint.async_save=false")) == 0
    ours, theirs = content_digests(tmp_path), content_digests(straight_run)
    assert ours.keys() == theirs.keys()
    differ = {k for k in ours if ours[k] != theirs[k]}
    assert differ == {f"checkpoints/step-000000{s}/{f}" for s in (15, 20) for f in ("config.json", "manifest.json")}
    for step in (15, 20):
        sync, background = (json.loads((checkpoint_path(run, step) / "config.json").read_text())["train"]
                            for run in (tmp_path, straight_run))
        assert sync["checkpoint"].pop("async_save") is False and background["checkpoint"].pop("async_save") is True
        assert sync == background
        sync_files, background_files = (json.loads((checkpoint_path(run, step) / "manifest.json").read_text())["files"]
                                        for run in (tmp_path, straight_run))
        assert sync_files.pop("config.json") != background_files.pop("config.json")
        assert sync_files == background_files  # model.pt, optimizer.pt, rng-rank00000.pt, trainer_state.json
    ours, theirs = (read_metrics(run / "metrics.jsonl", "checkpoint") for run in (tmp_path, straight_run))
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == [5, 10, 15, 20]
    assert {r["async"] for r in ours} == {False} and {r["async"] for r in theirs} == {True}


def test_corrupt_newest_checkpoint_resumes_from_the_previous_one(pattern_data, straight_run, tmp_path,
                                                                 monkeypatch, caplog):
    monkeypatch.setenv(STOP_ENV, "16")
    assert main(train_args(pattern_data, tmp_path)) == EXIT_STOPPED
    newest = tmp_path / "checkpoints" / "step-00000015"
    blob = bytearray((newest / "optimizer.pt").read_bytes())
    blob[-100] ^= 0x01
    (newest / "optimizer.pt").write_bytes(bytes(blob))
    monkeypatch.delenv(STOP_ENV)
    with caplog.at_level(logging.INFO, logger="trainer"):
        assert main(train_args(pattern_data, tmp_path)) == 0
    assert "step-00000015 is corrupt (optimizer.pt does not match its sha256" in caplog.text
    assert "resumed from" in caplog.text and "step-00000010" in caplog.text
    assert (tmp_path / "checkpoints" / "corrupt-step-00000015").is_dir()  # kept aside, never loaded
    assert train_losses(tmp_path) == train_losses(straight_run)


class Crash(Exception):
    """The process dies here."""


def test_crash_between_the_last_save_and_its_pruning_keeps_the_same_checkpoints(pattern_data, straight_run,
                                                                                tmp_path, monkeypatch):
    def prune_or_crash(out_dir, keep_last, keep_best):
        if checkpoint_path(out_dir, 20).is_dir():
            raise Crash("after the final checkpoint, before pruning")
        return prune_checkpoints(out_dir, keep_last, keep_best)

    with monkeypatch.context() as mp:
        mp.setattr(loop, "prune_checkpoints", prune_or_crash)
        with pytest.raises(Crash):
            main(train_args(pattern_data, tmp_path))
    assert [step_of(p) for p in list_checkpoints(tmp_path)] == [10, 15, 20]
    assert main(train_args(pattern_data, tmp_path)) == 0  # resumes from the final checkpoint: nothing to train
    assert [step_of(p) for p in list_checkpoints(tmp_path)] == [15, 20]
    assert content_digests(tmp_path) == content_digests(straight_run)


def test_outputs_metrics_png_export_and_done(straight_run):
    train = read_metrics(straight_run / "metrics.jsonl", "train")
    fields = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_gb", "tokens_seen", "elapsed"}
    assert all(fields <= set(m) for m in train)
    assert train[-1]["tokens_seen"] == 20 * 32 * 4 * 2
    val = read_metrics(straight_run / "metrics.jsonl", "val")
    assert all({"val_loss", "val_ppl"} <= set(m) for m in val)
    assert (straight_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = json.loads((straight_run / "DONE.json").read_text())
    assert done["steps"] == 20 and done["final_loss"] == train[-1]["loss"]
    assert done["val_loss"] == val[-1]["val_loss"] and done["tokens_seen"] == train[-1]["tokens_seen"]
    assert done["checkpoint"] == "checkpoints/step-00000020"
    saves = read_metrics(straight_run / "metrics.jsonl", "checkpoint")  # one line per save, once it is on disk
    assert [r["step"] for r in saves] == [5, 10, 15, 20]
    assert all(r["stall_s"] > 0 and 0 < r["copy_s"] <= r["save_s"] and r["gb"] > 0 for r in saves)
    assert all(r["gb_per_s"] == pytest.approx(r["gb"] / r["save_s"]) for r in saves)
    assert done["checkpoint_stall_s_max"] == round(max(r["stall_s"] for r in saves), 4)
    assert 0 < done["checkpoint_stall_s_mean"] <= done["checkpoint_stall_s_max"] and done["checkpoint_gb_per_s"] > 0
    # keep_last=2 plus the best by val loss (the last one here, so just two remain).
    assert [p.name for p in list_checkpoints(straight_run)] == ["step-00000015", "step-00000020"]
    model, cfg = load_final(straight_run / "final")
    assert cfg.dim == 64 and not model.training


def test_rerun_of_a_finished_run_trains_nothing(pattern_data, straight_run, caplog):
    before = (straight_run / "metrics.jsonl").read_text()
    with caplog.at_level(logging.INFO, logger="trainer"):
        assert main(train_args(pattern_data, straight_run)) == 0
    assert "resumed from" in caplog.text and "step 20/20" not in caplog.text
    assert (straight_run / "metrics.jsonl").read_text() == before


def test_config_and_data_errors_exit_2_with_one_line(pattern_data, tmp_path, capsys):
    assert main(train_args(pattern_data, tmp_path, "data.seq_len=100000")) == 2
    assert main(train_args(pattern_data, tmp_path, "model.overrides.vocab_size=100")) == 2
    out = capsys.readouterr().out
    assert "error: train config: data.seq_len (100000) exceeds the model's max_seq_len" in out
    assert "model's vocab_size is 100" in out


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_changes_memory_not_math(pattern_data, straight_run, tmp_path, every):
    """Every block recomputed (ac_every=1), or every second one (2: the debug model's block 0 of 2)."""
    assert main(train_args(pattern_data, tmp_path, "run.activation_checkpointing=true", f"run.ac_every={every}")) == 0
    assert train_losses(tmp_path) == train_losses(straight_run)
    keys = torch.load(tmp_path / "checkpoints" / "step-00000020" / "model.pt", weights_only=True).keys()
    assert "layers.0.attention.wq.weight" in keys and not any("checkpoint_wrapped" in k for k in keys)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("weights", [[], ["run.parallel=fsdp", "run.param_dtype=bfloat16"],
                                     ["run.parallel=fsdp", "run.param_dtype=bfloat16", "optim.bf16_update=kahan"],
                                     ["run.parallel=fsdp", "run.compile_mode=tune-kernels"]],
                         ids=["fp32-weights-autocast", "bf16-weights-fsdp", "bf16-kahan-weights-fsdp",
                              "fsdp-tuned-kernels"])
def test_cuda_bf16_compiled_run_learns(pattern_data, tmp_path, weights):
    """bf16 compute with fp32 master weights (autocast), with bf16 weights under FSDP (the compiled
    stochastic-rounding AdamW), and with Inductor's kernels tuned on the device (run.compile_mode)."""
    args = train_args(pattern_data, tmp_path, "run.device=cuda", "run.compile=true", "run.dtype=bfloat16", *weights)
    assert main(args) == 0
    losses = train_losses(tmp_path)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert read_metrics(tmp_path / "metrics.jsonl", "train")[-1]["peak_mem_gb"] > 0


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor on CPU needs a C++ compiler")
def test_tune_kernels_reaches_inductor_as_an_option_and_computes_what_eager_does():
    """torch.compile takes a mode or options, not both: tune-kernels is an Inductor option (a misspelt
    one fails at compile), the torch modes pass through as modes."""
    assert compile_kwargs("tune-kernels") == {"options": {"coordinate_descent_tuning": True}}
    assert compile_kwargs("max-autotune-no-cudagraphs") == {"mode": "max-autotune-no-cudagraphs"}
    torch.manual_seed(0)
    model = Llama(get_preset("debug"))
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 32))
    with torch.no_grad():
        eager_logits, eager_loss = model(tokens, tokens)
        apply_compile(model, "tune-kernels")
        logits, loss = model(tokens, tokens)
    assert eager_logits is not None and logits is not None and eager_loss is not None and loss is not None
    torch.testing.assert_close(logits, eager_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)


def test_cpu_step_lines_show_no_mfu(pattern_data, tmp_path, caplog):
    """MFU needs the device's peak FLOP/s; on CPU there is none, so neither the log nor metrics show 0.0 %."""
    with caplog.at_level(logging.INFO, logger="trainer"):
        assert main(train_args(pattern_data, tmp_path, "run.steps=2", "schedule.warmup_steps=1")) == 0
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 2/2 |")]
    assert steps and "tok/s" in steps[0] and "mfu" not in steps[0]
    assert [m["mfu"] for m in read_metrics(tmp_path / "metrics.jsonl", "train")] == [None, None]


def test_fused_loss_trains_the_same_curve(pattern_data, straight_run, tmp_path):
    """run.fused_loss (chunks of 48 of the 128 positions per micro-batch: the last one short) learns what the
    plain head learns, to float rounding; it is a runtime field, so DONE.json records the same precision."""
    assert main(train_args(pattern_data, tmp_path, "run.fused_loss=true", "run.fused_loss_chunk=48")) == 0
    fused, plain = train_losses(tmp_path), train_losses(straight_run)
    assert fused == pytest.approx(plain, rel=1e-4)
    val = read_metrics(tmp_path / "metrics.jsonl", "val")  # validation runs the chunked loss without grads
    assert [m["val_loss"] for m in val] == pytest.approx(
        [m["val_loss"] for m in read_metrics(straight_run / "metrics.jsonl", "val")], rel=1e-4)
    assert json.loads((tmp_path / "DONE.json").read_text())["precision"] == "bf16"
