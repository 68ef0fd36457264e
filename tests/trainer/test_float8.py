"""FP8 training (`trainer.float8`): which linears convert, the errors without torchao or an FP8 GPU, and on
CUDA (sm_89+) an FP8 run that trains like bf16."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kiln.errors import KilnError
from model import Llama, get_preset
from tests.trainer.conftest import train_args, train_losses
from trainer import float8
from trainer.config import RunSection
from trainer.parallelize import DistEnv, build_model
from trainer.summary import TrainSummary

REPO = Path(__file__).resolve().parents[2]
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
needs_torchao = pytest.mark.skipif(not HAS_TORCHAO, reason=f"needs {float8.TORCHAO_PIN}")
FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= float8.FP8_MIN_CAPABILITY
needs_fp8_gpu = pytest.mark.skipif(not (FP8_GPU and HAS_TORCHAO), reason="needs an sm_89+ GPU and torchao")


def _kinds(model: nn.Module) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _meta_model(preset: str, **overrides: object) -> Llama:
    with torch.device("meta"):
        return Llama(get_preset(preset, **overrides))


# -- which linears convert (CPU: conversion works on the meta device) -------------------------------------------
@needs_torchao
@pytest.mark.parametrize(("precision", "expected"), [
    # Llama-3.2-1B: wk/wv are 2048 -> 512, too small for tensorwise to gain; rowwise gains only on w1/w3.
    ("fp8-tensorwise", {"attention.wq", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"}),
    ("fp8-rowwise", {"feed_forward.w1", "feed_forward.w3"}),
])
def test_auto_filter_on_the_1b_shape_converts_only_the_large_block_linears(precision, expected):
    model = _meta_model("1b")
    converted = float8.convert_to_float8(model, precision)
    assert {name.split(".", 2)[2] for name in converted} == expected
    assert len(converted) == 16 * len(expected)
    kinds = _kinds(model)
    assert {n for n, k in kinds.items() if k == "Float8Linear"} == set(converted)
    assert kinds["output"] == "Linear"  # the head stays in bf16 ...
    assert model.output.weight is model.tok_embeddings.weight  # ... and stays tied


@needs_torchao
def test_8b_rowwise_converts_everything_but_the_narrow_kv_projections():
    converted = float8.convert_to_float8(_meta_model("llama3-8b"), "fp8-rowwise")
    assert {name.split(".", 2)[2] for name in converted} == {
        "attention.wq", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"}


@needs_torchao
def test_filter_all_converts_every_block_linear_and_keeps_state_dict_keys():
    model = Llama(get_preset("debug"))
    keys = set(model.state_dict())
    converted = float8.convert_to_float8(model, "fp8-tensorwise", fp8_filter="all")
    assert len(converted) == 2 * 7  # wq wk wv wo w1 w2 w3 per block
    assert _kinds(model)["output"] == "Linear"
    assert set(model.state_dict()) == keys  # checkpoints and the HF export see the same names


def test_filter_skips_dims_that_are_not_multiples_of_16_and_the_head():
    keep = float8.fp8_linear_filter("tensorwise", "all")
    assert keep(nn.Linear(4096, 4096), "layers.0.attention.wq")
    assert not keep(nn.Linear(4096, 4100), "layers.0.feed_forward.w1")  # tensor cores want % 16
    assert not keep(nn.Linear(4096, 128256), "output")
    assert not keep(nn.Embedding(10, 16), "tok_embeddings")
    auto = float8.fp8_linear_filter("rowwise")
    assert auto(nn.Linear(2048, 8192, device="meta"), "w1") and not auto(nn.Linear(8192, 2048, device="meta"), "w2")


@needs_torchao
def test_bf16_precision_converts_nothing():
    model = Llama(get_preset("debug"))
    assert float8.convert_to_float8(model, "bf16") == []
    assert "Float8Linear" not in _kinds(model).values()


@needs_torchao
def test_fp8_changes_the_numbers_but_not_by_much_on_cpu():
    """torchao's FP8 matmul emulates on CPU: the loss moves off bf16's by rounding only."""
    torch.manual_seed(0)
    model = Llama(get_preset("debug"))
    x = torch.randint(0, 512, (4, 64))
    _, ref = model(x, x.roll(-1, 1))
    float8.convert_to_float8(model, "fp8-tensorwise", fp8_filter="all")
    try:
        _, loss = model(x, x.roll(-1, 1))
    except (NotImplementedError, RuntimeError) as exc:  # a CPU build without torch._scaled_mm
        pytest.skip(f"no FP8 matmul on this CPU build: {exc}")
    assert loss is not None and ref is not None
    assert loss.item() != ref.item() and abs(loss.item() - ref.item()) < 0.02 * ref.item()


# -- clear errors ---------------------------------------------------------------------------------------------------
def test_cpu_device_is_refused_with_what_to_do():
    with pytest.raises(KilnError, match=r"CUDA GPU with FP8.*run\.precision=bf16"):
        float8.check_fp8_device(torch.device("cpu"))


def test_pre_ada_gpu_is_refused_naming_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(KilnError, match=r"sm_89\+\); got NVIDIA A100-SXM4-80GB \(sm_80\)"):
        float8.check_fp8_device(torch.device("cuda", 0))


def test_missing_torchao_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # import fails as if not installed
    with pytest.raises(KilnError, match=r"pip install torchao==0\.18\.0"):
        float8.import_float8()


def test_building_an_fp8_model_on_cpu_fails_before_any_conversion():
    run = RunSection(device="cpu", precision="fp8-rowwise")
    dist = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), mode="none")
    with pytest.raises(KilnError, match="CUDA GPU with FP8"):
        build_model(get_preset("debug"), run, dist)


def test_the_trainer_imports_and_validates_fp8_configs_without_torchao():
    code = ("import sys; sys.modules['torchao'] = None\n"
            "import trainer.pretrain, trainer.sft, trainer.float8\n"
            "from kiln.config import load_config\nfrom trainer.config import TrainConfig\n"
            "load_config(TrainConfig, None, ['run.precision=fp8-rowwise'])\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "ok"


# -- CUDA (sm_89+): FP8 trains --------------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize("precision", ["fp8-tensorwise", "fp8-rowwise"])
def test_cuda_fp8_forward_backward_tracks_bf16(precision):
    """A block shaped to be converted under the auto filter: FP8 loss and grads close to bf16's, with compile."""
    cfg = get_preset("debug", dim=1024, n_heads=8, n_kv_heads=8, ffn_hidden=4096, n_layers=2, vocab_size=4096,
                     max_seq_len=256)
    torch.manual_seed(0)
    ref = Llama(cfg).cuda()
    fp8 = Llama(cfg).cuda()
    fp8.load_state_dict(ref.state_dict())
    converted = float8.convert_to_float8(fp8, precision, fp8_filter="all")
    assert converted and _kinds(fp8)["output"] == "Linear"
    for block in fp8.layers:
        block.compile(fullgraph=True)
    x = torch.randint(0, cfg.vocab_size, (4, 256), device="cuda")
    losses = []
    for model in (ref, fp8):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(x, x.roll(-1, 1))
        loss.backward()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and abs(losses[1] - losses[0]) < 0.01 * losses[0]
    g_ref, g_fp8 = ref.layers[0].feed_forward.w1.weight.grad, fp8.layers[0].feed_forward.w1.weight.grad
    assert g_ref is not None and g_fp8 is not None
    assert torch.nn.functional.cosine_similarity(g_ref.flatten(), g_fp8.flatten(), dim=0) > 0.98


@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize(("precision", "head"), [("fp8-tensorwise", False), ("fp8-rowwise", False),
                                               ("fp8-tensorwise", True)])
def test_cuda_fp8_pretrain_run_learns_and_records_its_precision(pattern_data, tmp_path, precision, head):
    from trainer.pretrain import main

    args = train_args(pattern_data, tmp_path, "run.device=cuda", "run.compile=true", "run.dtype=bfloat16",
                      f"run.precision={precision}", "run.fp8_filter=all", "run.fused_loss=true",
                      f"run.fp8_head={str(head).lower()}")
    assert main(args) == 0
    losses = train_losses(tmp_path)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.5
    assert TrainSummary.read(tmp_path).precision == precision
