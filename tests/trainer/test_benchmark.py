"""The training throughput benchmark's CPU smoke mode: it runs the trainer's step and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_cpu_smoke_writes_metrics_for_every_variant(bench, tmp_path):
    out = tmp_path / "bench.json"
    report = bench.main(["--device", "cpu", "--preset", "debug", "--steps", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["peak_tflops"] == 989.0 and "dense bf16" in report["peak_note"]
    rows = report["results"]
    assert [(r["vocab_size"], r["compile"]) for r in rows] == [(512, False), (513, False)]  # padding effect
    for row in rows:
        assert set(bench.METRIC_KEYS) <= set(row)
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1 and row["peak_mem_gb"] > 0
        assert len(row["step_times_s"]) == 1 + 3  # warmup + timed
        assert row["tokens_per_step"] == 4 * 128
        assert row["tokens_per_s_pipelined"] == pytest.approx(4 * 128 / row["step_time_s_pipelined"])
        assert 0 < row["mfu_pipelined"] < 1


def test_device_gaps_adds_up_busy_and_idle_time(bench):
    """Overlapping kernels count once; gaps are named by the kernel ending last before and the next one."""
    def ev(name, ts, dur, cat="kernel"):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}

    events = [ev("mm", 0, 100), ev("side", 10, 20), ev("norm", 100, 50), ev("copy", 400, 10, "gpu_memcpy"),
              ev("cpu_op", 150, 250, "cpu_op"), ev("adam", 200, 100), ev("tiny", 302, 1),
              ev("Optimizer.step#AdamW.step", 140, 270, "gpu_user_annotation")]  # spans kernels: not counted
    text = bench.device_gaps(events, min_gap_us=5)
    # busy: [0, 150] + [200, 300] + [302, 303] + [400, 410] = 261 of a 410 us span
    assert text.splitlines()[0] == ("device gaps: span 0.41 ms, busy 0.26 ms, idle 0.15 ms (36.3 %) "
                                    "in 2 gaps >= 5 us (0.15 ms)")
    assert "97.0 us  after tiny  before copy" in text.splitlines()[1]
    assert "50.0 us  after norm  before adam" in text.splitlines()[2]
    assert bench.device_gaps([ev("cpu_op", 0, 5, "cpu_op")]).startswith("device gaps: no device events")


@pytest.mark.filterwarnings("ignore:DTensor random operators")  # CPU meshes: harmless for init
def test_single_gpu_fsdp_path_runs_on_cpu(bench, tmp_path):
    """The CUDA default is FSDP on one device; its code path works in a 1-rank gloo group too."""
    report = bench.main(["--device", "cpu", "--preset", "debug", "--steps", "1", "--parallel", "fsdp",
                         "--vocab-sizes", "none", "--seq-len", "32", "--out", str(tmp_path / "b.json")])
    assert [r["parallel"] for r in report["results"]] == ["fsdp"]
    assert not torch.distributed.is_initialized()


def test_rows_record_precision_fused_loss_and_head_tying(bench, tmp_path):
    report = bench.main(["--device", "cpu", "--preset", "debug", "--steps", "1", "--vocab-sizes", "none",
                         "--seq-len", "32", "--fused-loss", "--untied-head", "--out", str(tmp_path / "b.json")])
    (row,) = report["results"]
    assert (row["precision"], row["fp8_filter"], row["fused_loss"], row["tie_embeddings"]) == ("bf16", "auto", True,
                                                                                               False)
    assert row["params"] == bench.count_params(bench.get_preset("debug", tie_embeddings=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs an sm_89+ GPU")
def test_cuda_fp8_rows(bench, tmp_path):
    """125m tensorwise: the auto filter converts the FFN linears (768 -> 2048 and back), so FP8 GEMMs run."""
    report = bench.main(["--preset", "125m", "--seq-len", "256", "--steps", "3", "--warmup", "2", "--compile", "on",
                         "--vocab-sizes", "none", "--precision", "fp8-tensorwise", "--fused-loss",
                         "--out", str(tmp_path / "fp8.json")])
    (row,) = report["results"]
    assert "error" not in row and row["precision"] == "fp8-tensorwise" and row["tokens_per_s"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compile_and_bf16(bench, tmp_path):
    report = bench.main(["--preset", "debug", "--seq-len", "128", "--steps", "3", "--warmup", "2",
                         "--vocab-sizes", "none", "--out", str(tmp_path / "gpu.json")])
    assert [r["compile"] for r in report["results"]] == [False, True]
    assert all(r["peak_mem_gb"] > 0 for r in report["results"])


def test_checkpoint_stall_benchmark_cpu_smoke(tmp_path):
    """benchmarks/checkpoint_stall.py on the debug preset: one row per mode, a verified resume, JSON written."""
    spec = importlib.util.spec_from_file_location("checkpoint_stall", SCRIPT.with_name("checkpoint_stall.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "stall.json"
    report = module.main(["--device", "cpu", "--preset", "debug", "--save-at", "4", "--steps-after", "2",
                          "--work-dir", str(tmp_path), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [r["mode"] for r in report["rows"]] == ["async", "sync"]
    for row in report["rows"]:
        assert row["gb"] > 0 and 0 < row["copy_s"] <= row["save_s"] and row["resume_loss_rel_diff"] == 0.0
    assert report["checkpoint_stall_s"] == max(report["rows"][0]["stall_s"], report["rows"][0]["loop_stall_s"])
    assert list(tmp_path.iterdir()) == [out]  # the checkpoints and tokens are removed
