"""TrainConfig: every shipped configs/train/*.toml parses; bad values are errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kiln.config import canonical_dict, load_config
from kiln.errors import KilnError
from trainer.config import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.toml"))


def test_the_shipped_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"debug", "125m", "1b"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_parses(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.data.seq_len <= cfg.model_config().max_seq_len
    # grad_accum_steps counts micro-batches over all ranks: it must split over 1, 2, 4 and 8 GPUs.
    assert cfg.data.grad_accum_steps % 8 == 0 or cfg.run.device == "cpu"


def test_overrides_and_model_resolution():
    cfg = load_config(TrainConfig, None, ["model.preset=tiny", "model.overrides.vocab_size=2048",
                                          "data.seq_len=64", "run.compile=true"])
    assert cfg.model_config().vocab_size == 2048 and cfg.model_config().dim == 128
    assert cfg.with_vocab_size(4096).model_config().vocab_size == 4096
    assert cfg.tokens_per_step == 64 * cfg.data.micro_batch_size * cfg.data.grad_accum_steps


@pytest.mark.parametrize(("override", "key"), [
    ("optim.lr=0", "optim.lr"),
    ("optim.min_lr=1.0", "optim.min_lr"),
    ("data.seq_len=4096", "data.seq_len"),
    ("schedule.kind=linear", "schedule.kind"),
    ("run.dtype=fp8", "run.dtype"),
    ("run.stepz=5", "run.stepz"),
    ("model.preset=huge", "huge"),
    ("model.overrides.dim=65", "dim"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last"),
    ("run.precision=fp8", "run.precision"),
    ("run.fused_loss_chunk=-1", "run.fused_loss_chunk"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(KilnError, match=key.replace(".", r"\.")):
        load_config(TrainConfig, None, [override])


def test_runtime_fields_stay_out_of_the_artifact_key():
    base = canonical_dict(TrainConfig())
    fast = canonical_dict(load_config(TrainConfig, None, ["run.compile=true", "data.num_workers=4",
                                                          "run.parallel=fsdp", "checkpoint.every_steps=7",
                                                          "run.fused_loss=true", "run.fused_loss_chunk=512"]))
    assert base == fast
    assert canonical_dict(load_config(TrainConfig, None, ["optim.lr=1e-3"])) != base
    # FP8 rounds inside the block matmuls: a different run, a different artifact.
    assert canonical_dict(load_config(TrainConfig, None, ["run.precision=fp8-rowwise"])) != base
    assert canonical_dict(load_config(TrainConfig, None, ["run.fp8_filter=all"])) != base
    fp8 = ["run.precision=fp8-tensorwise", "run.fused_loss=true"]
    assert (canonical_dict(load_config(TrainConfig, None, [*fp8, "run.fp8_head=true"]))
            != canonical_dict(load_config(TrainConfig, None, fp8)))


def test_fp8_configs_validate_without_a_gpu_or_torchao():
    cfg = load_config(TrainConfig, None, ["run.precision=fp8-tensorwise", "run.device=cpu"])
    assert cfg.run.precision == "fp8-tensorwise"  # the device is checked when the model is built
    with pytest.raises(KilnError, match=r"run\.precision.*bfloat16"):
        load_config(TrainConfig, None, ["run.precision=fp8-rowwise", "run.dtype=float32"])
    assert load_config(TrainConfig, None, ["run.precision=fp8-rowwise", "run.fused_loss=true",
                                           "run.fp8_head=true"]).run.fp8_head
    for missing in (["run.precision=fp8-tensorwise"], ["run.fused_loss=true"]):
        with pytest.raises(KilnError, match=r"run\.fp8_head.*needs an fp8-\* run\.precision and run\.fused_loss"):
            load_config(TrainConfig, None, [*missing, "run.fp8_head=true"])


def test_sdpa_backend_is_runtime_only_and_flash_switches_cudnn_attention_off():
    from trainer.parallelize import select_attention_backend

    base = canonical_dict(TrainConfig())
    flash = load_config(TrainConfig, None, ["run.sdpa_backend=flash"])
    assert canonical_dict(flash) == base  # the same math, another kernel
    try:
        select_attention_backend(flash.run)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        select_attention_backend(TrainConfig().run)
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
