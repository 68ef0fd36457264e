"""Tests for model.flops: parameter counts match built models and published figures; FLOPs by hand."""

from __future__ import annotations

import pytest
import torch

from model import PRESETS, Llama, count_params, flops_per_token, get_preset, mfu
from model.config import ModelConfig
from model.flops import H100_BF16_PEAK

PUBLISHED = {
    "7b": 6_738_415_616,  # Llama-2-7B
    "llama3-8b": 8_030_261_248,  # Llama-3-8B
    "llama3.1-8b": 8_030_261_248,  # Llama-3.1-8B: same shape, longer RoPE
    "1b": 1_235_814_400,  # Llama-3.2-1B (tied embeddings)
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_count_params_equals_built_model(name: str) -> None:
    cfg = PRESETS[name]
    with torch.device("meta"):  # no memory: even 8B builds instantly
        model = Llama(cfg)
    assert count_params(cfg) == model.num_params() == sum(p.numel() for p in model.parameters())
    assert count_params(cfg, exclude_embeddings=True) == model.num_params(exclude_embeddings=True)
    if name in PUBLISHED:
        assert count_params(cfg) == PUBLISHED[name]


@pytest.mark.parametrize("tied", [False, True])
def test_count_params_tied_and_untied_debug(tied: bool) -> None:
    cfg = get_preset("debug", tie_embeddings=tied)
    model = Llama(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    untied = count_params(get_preset("debug", tie_embeddings=False))
    assert untied - count_params(cfg) == (512 * 64 if tied else 0)


def test_flops_per_token_by_hand() -> None:
    cfg = ModelConfig(vocab_size=10, dim=8, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=16, max_seq_len=8)
    # head_dim 4; per layer: wq 8*8 + wk 8*4 + wv 8*4 + wo 8*8 = 192, SwiGLU 3 * 8*16 = 384 -> 576
    # N = 2 layers * 576 + output head 10*8 = 1232 (input embedding and norms excluded)
    # attention: 12 * L=2 * H=2 * Q=4 * T=5 = 960
    assert flops_per_token(cfg, seq_len=5) == 6 * 1232 + 960
    tied = ModelConfig(**{**cfg.__dict__, "tie_embeddings": True})
    assert flops_per_token(tied, seq_len=5) == 6 * 1232 + 960  # a tied head still does the matmul


def test_flops_per_token_llama2_7b() -> None:
    cfg = PRESETS["7b"]
    # matmul params = all params - input embedding - 65 RMSNorm gains (2 per layer + final)
    n = count_params(cfg) - cfg.vocab_size * cfg.dim - (2 * 32 + 1) * 4096
    assert flops_per_token(cfg, 4096) == 6 * n + 12 * 32 * 4096 * 4096
    # ~6.7e9 matmul params * 6 = 4.04e10, plus 6.4e9 for attention at 4096 tokens
    assert flops_per_token(cfg, 4096) == pytest.approx(4.61e10, rel=0.01)


def test_mfu() -> None:
    cfg = get_preset("125m")
    tps = 0.4 * H100_BF16_PEAK / flops_per_token(cfg, 1024)
    assert mfu(tps, cfg, 1024) == pytest.approx(0.4)
    assert mfu(tps, cfg, 1024, peak_flops=2 * H100_BF16_PEAK) == pytest.approx(0.2)
    assert H100_BF16_PEAK == 989e12
